"""training_dataset: deterministic splits pinned to source versions; time travel rebuilds old ones."""

import pyarrow as pa
import pytest

from cv_pipeline.data.delta_io import replace_batch
from cv_pipeline.data.processor import COCOProcessor
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
