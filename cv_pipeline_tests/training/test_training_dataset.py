"""training_dataset: deterministic splits pinned to source versions; time travel rebuilds old ones;
only batches whose quality checks passed are read."""

import json

import pyarrow as pa
import pytest

from cv_pipeline.data.delta_io import read_table, replace_batch
from cv_pipeline.data.processor import COCOProcessor
from cv_pipeline.data.quality import eligible_batches, held_back_batches, validate_ingested_batch
from cv_pipeline.training.crops import CropDataset, load_crops
from cv_pipeline.training.dataset import (
    SOURCE_TABLES,
    assign_split,
    build_training_dataset,
    load_manifest,
    load_split,
    resolve_labels,
)
from cv_pipeline_tests.samples import SAMPLES


@pytest.fixture(scope="module")
def gated_lake(spark, tmp_path_factory):
    """The two sample batches and the defective one, each written to every table and checked as
    ingestion does (`validate_ingested_batch`): the defective batch fails the blocking check
    annotations_bbox_inside_image and is held back. A fourth batch (batch_0002's export under another
    id) is written but never checked: it stays 'pending'."""
    lake_dir = tmp_path_factory.mktemp("gated_lake")
    processor = COCOProcessor(spark)
    validations = {}
    for batch_dir in (SAMPLES / "landing" / "batch_0001", SAMPLES / "landing" / "batch_0002",
                      SAMPLES / "defective" / "batch_defective"):
        batch = processor.ingest_batch(batch_dir)
        batch.write(lambda name: lake_dir / name)
        validations[batch.batch_id] = validate_ingested_batch(spark, lambda name: lake_dir / name, batch.batch_id)
    processor.ingest_batch(SAMPLES / "landing" / "batch_0002", "batch_unchecked", inspect_images=False).write(
        lambda name: lake_dir / name)
    return lake_dir, validations


def test_a_batch_failing_a_blocking_check_never_reaches_the_training_dataset(gated_lake, lake):
    lake_dir, validations = gated_lake
    assert {b: v.status for b, v in validations.items()} == {
        "batch_0001": "validated", "batch_0002": "validated", "batch_defective": "held_back"}
    assert [r.name for r in validations["batch_defective"].results if not r.passed and r.severity == "ERROR"] == [
        "annotations_bbox_inside_image"]
    manifest = build_training_dataset(lake_dir, output_table="ds_gated")
    assert manifest.batches == ["batch_0001", "batch_0002"]
    rows = [r for split in ("train", "val", "test") for r in load_split(manifest.table_path, manifest.version, split)]
    assert {r["batch_id"] for r in rows} == {"batch_0001", "batch_0002"}
    # No image of the held-back batch, by id or by content.
    defective = read_table(lake_dir / "coco_images", filters=[("batch_id", "=", "batch_defective")])
    assert defective.num_rows > 0
    assert not set(defective.column("sha256").to_pylist()) & {r["sha256"] for r in rows}
    # Its rows stay in the tables, for inspection; the manifest says which batches were left out and why.
    held = {b["batch_id"]: b for b in manifest.held_back_batches}
    assert set(held) == {"batch_defective", "batch_unchecked"}
    assert held["batch_defective"]["failed_checks"] == ["annotations_bbox_inside_image"]
    assert "9000016" in held["batch_defective"]["message"]
    assert held["batch_unchecked"]["failed_checks"] == [] and "have not run" in held["batch_unchecked"]["message"]
    assert set(manifest.source_versions) == {*SOURCE_TABLES, "coco_batches"}
    assert load_manifest(manifest.table_path).batches == manifest.batches
    # The same objects, labels and splits as a lake that holds the two sample batches only.
    assert build_training_dataset(lake, output_table="ds_two").content_hash == manifest.content_hash


def test_the_detection_and_segmentation_datasets_read_only_the_gated_batches(gated_lake):
    from cv_pipeline.training.coco_dataset import load_image_records

    lake_dir, _ = gated_lake
    manifest = build_training_dataset(lake_dir, output_table="ds_gated_images")
    records = [r for split in ("train", "val", "test") for r in load_image_records(manifest, split)]
    assert {r.batch_id for r in records} == {"batch_0001", "batch_0002"}
    assert len(records) == 220


def test_held_back_batches_are_read_from_coco_batches(gated_lake):
    lake_dir, _ = gated_lake
    held = held_back_batches(lake_dir)
    assert [(b.batch_id, b.failed_checks) for b in held] == [
        ("batch_defective", ["annotations_bbox_inside_image"]), ("batch_unchecked", [])]
    batch_id, failed, message = held[0]  # a plain (batch_id, failed check names, message) tuple
    assert message.startswith("held back: failed blocking checks annotations_bbox_inside_image (1 of ")
    assert eligible_batches(lake_dir) == ["batch_0001", "batch_0002"]
    rows = {r["batch_id"]: r for r in read_table(lake_dir / "coco_batches").to_pylist()}
    assert rows["batch_0001"]["status"] == "validated" and rows["batch_0001"]["checked_at"] is not None
    failed_checks = json.loads(rows["batch_defective"]["failed_checks"])
    blocking = [c for c in failed_checks if c["severity"] == "ERROR"]
    assert [(c["check"], c["unexpected_sample"]) for c in blocking] == [("annotations_bbox_inside_image", [9000016])]
    assert rows["batch_unchecked"]["status"] == "pending" and rows["batch_unchecked"]["failed_checks"] is None
    # A lake without coco_batches (tables written by code that ran no checks) has no gate.
    assert held_back_batches(lake_dir / "nowhere") == [] and eligible_batches(lake_dir / "nowhere") is None


def test_no_validated_batch_is_a_clear_error(gated_lake, tmp_path):
    import shutil

    lake_dir, _ = gated_lake
    only_held = tmp_path / "lake"
    shutil.copytree(lake_dir, only_held)
    for name in ("coco_batches", *SOURCE_TABLES):
        replace_batch(read_table(only_held / name).slice(0, 0), only_held / name, "batch_0001")
        replace_batch(read_table(only_held / name).slice(0, 0), only_held / name, "batch_0002")
    with pytest.raises(ValueError, match=r"no validated batch to train on; held back: batch_defective \(held back"):
        build_training_dataset(only_held, output_table="ds_none")


def test_training_dataset_asset_lists_included_and_held_back_batches(gated_lake):
    import dagster as dg

    from cv_pipeline.defs.resources import LakeResource
    from cv_pipeline.defs.training import TrainingDatasetConfig, training_dataset

    lake_dir, _ = gated_lake
    result = training_dataset(dg.build_asset_context(), config=TrainingDatasetConfig(),
                              lake=LakeResource(lake_dir=str(lake_dir)))
    assert result.metadata["batches"].value == ["batch_0001", "batch_0002"]
    held = result.metadata["held_back_batches"].value
    assert [b["batch_id"] for b in held] == ["batch_defective", "batch_unchecked"]
    assert held[0]["failed_checks"] == ["annotations_bbox_inside_image"]


@pytest.fixture(scope="module")
def lake(spark, tmp_path_factory):
    lake_dir = tmp_path_factory.mktemp("lake")
    processor = COCOProcessor(spark)
    for batch_id in ("batch_0001", "batch_0002"):
        batch = processor.ingest_batch(SAMPLES / "landing" / batch_id)
        for name, frame in (("coco_images", batch.images), ("coco_annotations", batch.annotations),
                            ("coco_categories", batch.categories)):
            replace_batch(frame, lake_dir / name, batch_id)
    return lake_dir


def test_split_is_deterministic_and_complete(lake):
    first = build_training_dataset(lake, output_table="ds_a")
    second = build_training_dataset(lake, output_table="ds_b")
    assert first.content_hash == second.content_hash
    assert first.source_versions == {"coco_images": 1, "coco_annotations": 1, "coco_categories": 1}
    assert sum(first.split_counts.values()) == first.extra["objects"]
    assert first.split_counts["train"] > first.split_counts["val"] > 0
    assert [label["category_id"] for label in first.labels] == [1, 2, 4, 5, 7, 9]
    assert load_manifest(first.table_path).content_hash == first.content_hash
    rows = {split: load_split(first.table_path, first.version, split) for split in ("train", "val", "test")}
    images = {split: {r["sha256"] for r in rows[split]} for split in rows}
    assert not (images["train"] & images["test"]) and not (images["train"] & images["val"])  # no leakage
    assert all(r["iscrowd"] == 0 for split in rows.values() for r in split)


def test_time_travel_rebuilds_an_older_dataset(lake):
    old = build_training_dataset(lake, output_table="ds_old", versions={name: 0 for name in SOURCE_TABLES})
    assert old.source_versions == {name: 0 for name in SOURCE_TABLES}
    batches = {r["batch_id"] for split in ("train", "val", "test") for r in load_split(old.table_path, old.version, split)}
    assert batches == {"batch_0001"}
    again = build_training_dataset(lake, output_table="ds_old2", versions={name: 0 for name in SOURCE_TABLES})
    assert again.content_hash == old.content_hash


def test_fractions_are_validated(lake):
    with pytest.raises(ValueError, match="fractions"):
        build_training_dataset(lake, output_table="bad", fractions={"train": 0.9, "val": 0.2, "test": 0.1})


def test_missing_tables_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="coco_images does not exist"):
        build_training_dataset(tmp_path)


def test_conflicting_category_names_are_an_error():
    table = pa.Table.from_pylist([
        {"batch_id": "b1", "category_id": 1, "name": "circle", "supercategory": "round"},
        {"batch_id": "b2", "category_id": 1, "name": "disc", "supercategory": "round"},
    ])
    with pytest.raises(ValueError, match="category_id 1 is named 'circle' in one batch and 'disc' in batch 'b2'"):
        resolve_labels(table)


def test_assign_split_follows_fractions():
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    splits = [assign_split(str(i), 3, fractions) for i in range(4000)]
    assert abs(splits.count("train") / 4000 - 0.7) < 0.03
    assert splits == [assign_split(str(i), 3, fractions) for i in range(4000)]


def test_crops_match_rows(lake):
    manifest = build_training_dataset(lake, output_table="ds_crops")
    rows = load_split(manifest.table_path, manifest.version, "val")[:10]
    crops, labels = load_crops(rows, 32)
    assert crops.shape == (10, 3, 32, 32) and crops.dtype.is_floating_point is False
    image, label = CropDataset(crops, labels)[0]
    assert image.shape == (3, 32, 32) and int(label) == rows[0]["label"]


def test_training_dataset_asset_function(lake):
    import dagster as dg

    from cv_pipeline.defs.resources import LakeResource
    from cv_pipeline.defs.training import TrainingDatasetConfig, training_dataset

    result = training_dataset(dg.build_asset_context(), config=TrainingDatasetConfig(seed=5),
                              lake=LakeResource(lake_dir=str(lake)))
    metadata = result.metadata
    assert metadata["num_classes"] == 6
    assert metadata["source_versions"].value == {"coco_images": 1, "coco_annotations": 1, "coco_categories": 1}
    assert metadata["dagster/row_count"] == sum(metadata["split_objects"].value.values())
    # identical image content never lands in two splits (GX on the written manifest)
    [check] = result.check_results
    assert check.check_name == "training_split_no_leakage" and check.passed
