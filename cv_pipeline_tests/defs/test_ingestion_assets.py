"""The ingestion asset on real Spark and Delta: a batch failing a blocking check is held back (kept, shown,
left out of training) until a fixed export is re-ingested; unreadable batches leave tables as they were."""

import json
import shutil

import dagster as dg
import pytest
from dagster_pyspark import PySparkResource

from cv_pipeline.data.delta_io import read_table, table_version
from cv_pipeline.data.spark import delta_spark_config
from cv_pipeline.defs.ingestion import COCO_TABLES, QUALITY_TABLE, coco_tables
from cv_pipeline.defs.partitions import landing_batches
from cv_pipeline.defs.resources import IngestionPolicy, LakeResource, LandingZoneResource
from cv_pipeline_tests.samples import SAMPLES


@pytest.fixture(scope="module")
def workspace(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest_assets")
    landing = root / "landing"
    landing.mkdir()
    for source in (SAMPLES / "landing" / "batch_0001", SAMPLES / "defective" / "batch_defective"):
        shutil.copytree(source, landing / source.name)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(landing_batches.name, ["batch_0001", "batch_defective", "batch_bad_json"])
    resources = {
        "spark": PySparkResource(spark_config=delta_spark_config()),
        "lake": LakeResource(lake_dir=str(root / "lake")),
        "landing": LandingZoneResource(landing_dir=str(landing)),
        "ingestion": IngestionPolicy(),
    }
    return {"root": root, "landing": landing, "lake": root / "lake", "instance": instance, "resources": resources}


def ingest(workspace, batch_id):
    return dg.materialize([coco_tables], partition_key=batch_id, instance=workspace["instance"],
                          resources=workspace["resources"], raise_on_error=False)


def test_good_batch_materializes_all_tables_and_passes_checks(workspace):
    result = ingest(workspace, "batch_0001")
    assert result.success
    materialized = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert set(materialized) == set(COCO_TABLES) | {QUALITY_TABLE}
    assert materialized["coco_annotations"]["dagster/row_count"].value == 271
    assert materialized["coco_images"]["delta_version"].value == 0
    assert materialized["coco_annotations"]["delta_versions"].value == {name: 0 for name in COCO_TABLES}
    # coco_batches: written 'pending' with the rows (version 0), then 'validated' once the checks passed
    assert materialized["coco_batches"]["delta_version"].value == 1
    assert materialized["coco_batches"]["status"].value == "validated"
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations if e.severity == dg.AssetCheckSeverity.ERROR)
    [batch] = read_table(workspace["lake"] / "coco_batches").to_pylist()
    assert json.loads(batch["records_read"]) == {"images": 110, "annotations": 271, "categories": 6}
    assert batch["status"] == "validated" and batch["status_message"].startswith("every blocking check passed")
    metrics = read_table(workspace["lake"] / QUALITY_TABLE).to_pandas()
    assert len(metrics) == len(evaluations) and set(metrics.batch_id) == {"batch_0001"}


def test_defective_batch_fails_blocking_checks_and_keeps_rejects(workspace):
    result = ingest(workspace, "batch_defective")
    # failed blocking checks fail the run, so the retrain sensor (run success) is not triggered by it
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "blocking asset check" in str(failure.event_specific_data.error)
    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    assert "annotations_bbox_inside_image" in failed
    assert 9000016 in failed["annotations_bbox_inside_image"].metadata["unexpected_sample"].value
    assert failed["annotations_bbox_inside_image"].severity == dg.AssetCheckSeverity.ERROR
    assert {name for name, e in failed.items() if e.severity == dg.AssetCheckSeverity.ERROR} == {
        "annotations_bbox_inside_image"}
    # the batch is held back, its rows kept: coco_batches says so, with the failed checks
    materialized = {e.asset_key.to_user_string(): e.materialization.metadata
                    for e in result.get_asset_materialization_events()}
    assert set(materialized) == set(COCO_TABLES) | {QUALITY_TABLE}
    assert materialized["coco_batches"]["status"].value == "held_back"
    [row] = read_table(workspace["lake"] / "coco_batches", filters=[("batch_id", "=", "batch_defective")]).to_pylist()
    assert row["status"] == "held_back" and "annotations_bbox_inside_image" in row["status_message"]
    assert {c["check"] for c in json.loads(row["failed_checks"])} == set(failed)
    images = read_table(workspace["lake"] / "coco_images", filters=[("batch_id", "=", "batch_defective")])
    assert images.num_rows == 9
    quarantine = read_table(workspace["lake"] / "coco_quarantine").to_pandas()
    reasons = set(quarantine.loc[quarantine.batch_id == "batch_defective", "reason_code"])
    assert {"unknown_category", "unknown_image", "image_missing", "image_undecodable", "image_rejected",
            "duplicate_id"} <= reasons
    # the failed checks are in the per-batch quality history too
    metrics = read_table(workspace["lake"] / QUALITY_TABLE).to_pandas()
    failed_rows = metrics[(metrics.batch_id == "batch_defective") & ~metrics.passed]
    assert set(failed_rows.check_name) == set(failed)


def test_unreadable_batch_fails_and_leaves_tables_as_they_were(workspace):
    shutil.copytree(SAMPLES / "defective" / "batch_bad_json", workspace["landing"] / "batch_bad_json")
    before = {name: table_version(workspace["lake"] / name) for name in COCO_TABLES[:3]}
    result = ingest(workspace, "batch_bad_json")
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "batch_bad_json/annotations.json: invalid JSON at line" in str(failure.event_specific_data.error)
    assert {name: table_version(workspace["lake"] / name) for name in COCO_TABLES[:3]} == before
    quarantine = read_table(workspace["lake"] / "coco_quarantine").to_pandas()
    record = quarantine[(quarantine.batch_id == "batch_bad_json") & (quarantine.record_type == "batch")]
    assert len(record) == 1 and "invalid JSON" in record.iloc[0].message


def test_training_dataset_leaves_out_the_held_back_batch(workspace):
    from cv_pipeline.defs.training import TrainingDatasetConfig, training_dataset

    result = training_dataset(dg.build_asset_context(), config=TrainingDatasetConfig(),
                              lake=workspace["resources"]["lake"])
    assert result.metadata["batches"].value == ["batch_0001"]
    held = result.metadata["held_back_batches"].value
    assert [(b["batch_id"], b["failed_checks"]) for b in held] == [("batch_defective", ["annotations_bbox_inside_image"])]
    dataset = read_table(workspace["lake"] / "training_dataset")
    assert set(dataset.column("batch_id").to_pylist()) == {"batch_0001"}


def test_reingesting_a_fixed_export_makes_the_batch_eligible(workspace):
    from pycocotools import mask as mask_utils

    from cv_pipeline.data.quality import held_back_batches
    from cv_pipeline.training.dataset import build_training_dataset

    path = workspace["landing"] / "batch_defective" / "annotations.json"
    document = json.loads(path.read_text())
    image_size = {i["id"]: (i["height"], i["width"]) for i in document["images"]}
    [bad] = [a for a in document["annotations"] if a["id"] == 9000016]
    rle = mask_utils.merge(mask_utils.frPyObjects(bad["segmentation"], *image_size[bad["image_id"]]))
    bad["bbox"] = [float(v) for v in mask_utils.toBbox(rle)]  # the box of its own segmentation
    path.write_text(json.dumps(document))

    result = ingest(workspace, "batch_defective")
    assert result.success
    assert held_back_batches(workspace["lake"]) == []
    [row] = read_table(workspace["lake"] / "coco_batches", filters=[("batch_id", "=", "batch_defective")]).to_pylist()
    assert row["status"] == "validated"
    manifest = build_training_dataset(workspace["lake"], output_table="training_dataset_fixed")
    assert manifest.batches == ["batch_0001", "batch_defective"] and manifest.held_back_batches == []


def test_reingesting_a_batch_replaces_its_rows(workspace):
    first = read_table(workspace["lake"] / "coco_annotations").to_pandas()
    assert ingest(workspace, "batch_0001").success
    again = read_table(workspace["lake"] / "coco_annotations").to_pandas()
    assert len(again) == len(first)
    assert (again.batch_id == "batch_0001").sum() == 271


def test_batch_is_written_back_as_the_same_coco_document(workspace):
    from cv_pipeline.data.export import read_batch_document

    source = json.loads((workspace["landing"] / "batch_0001" / "annotations.json").read_text())
    for annotation in source["annotations"]:
        annotation.setdefault("iscrowd", 0)  # the documented default
    document = read_batch_document(lambda name: str(workspace["lake"] / name), "batch_0001")
    assert document == source


def test_conflicting_taxonomy_is_quarantined_with_its_annotations(workspace):
    batch = workspace["landing"] / "batch_renamed"
    shutil.copytree(SAMPLES / "landing" / "batch_0002", batch)
    document = json.loads((batch / "annotations.json").read_text())
    renamed = document["categories"][0]
    renamed["name"] = renamed["name"] + "_v2"  # same id, another name than batch_0001 gave it
    (batch / "annotations.json").write_text(json.dumps(document))
    workspace["instance"].add_dynamic_partitions(landing_batches.name, ["batch_renamed"])
    result = ingest(workspace, "batch_renamed")
    materialized = {e.asset_key.to_user_string(): e.materialization.metadata
                    for e in result.get_asset_materialization_events()}
    assert materialized["coco_categories"]["taxonomy_conflicts"].value == 1
    quarantine = read_table(workspace["lake"] / "coco_quarantine", filters=[("batch_id", "=", "batch_renamed")])
    rows = quarantine.to_pandas()
    conflict = rows[rows.reason_code == "taxonomy_conflict"]
    assert list(conflict.record_id) == [str(renamed["id"])]
    assert "conflicts with the landing zone's taxonomy" in conflict.iloc[0].message
    dropped = rows[rows.reason_code == "category_rejected"]
    expected = [a["id"] for a in document["annotations"] if a["category_id"] == renamed["id"]]
    assert sorted(int(i) for i in dropped.record_id) == sorted(expected) and expected
    categories = read_table(workspace["lake"] / "coco_categories", filters=[("batch_id", "=", "batch_renamed")])
    assert renamed["id"] not in categories.column("category_id").to_pylist()
