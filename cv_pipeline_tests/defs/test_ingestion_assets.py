"""The ingestion asset on real Spark and Delta: quality checks block, unreadable batches leave tables as they were."""

import shutil

import dagster as dg
import pytest
from dagster_pyspark import PySparkResource

from cv_pipeline.data.delta_io import read_table, table_version
from cv_pipeline.data.spark import delta_spark_config
from cv_pipeline.defs.ingestion import COCO_TABLES, coco_tables
from cv_pipeline.defs.partitions import landing_batches
from cv_pipeline.defs.resources import LakeResource, LandingZoneResource
from cv_pipeline_tests.conftest import SAMPLES


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
    }
    return {"root": root, "landing": landing, "lake": root / "lake", "instance": instance, "resources": resources}


def ingest(workspace, batch_id):
    return dg.materialize([coco_tables], partition_key=batch_id, instance=workspace["instance"],
                          resources=workspace["resources"], raise_on_error=False)


def test_good_batch_materializes_all_tables_and_passes_checks(workspace):
    result = ingest(workspace, "batch_0001")
    assert result.success
    materialized = {e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert set(materialized) == set(COCO_TABLES)
    assert materialized["coco_annotations"]["dagster/row_count"].value == 271
    assert materialized["coco_images"]["delta_version"].value == 0
    evaluations = result.get_asset_check_evaluations()
    assert evaluations and all(e.passed for e in evaluations if e.severity == dg.AssetCheckSeverity.ERROR)


def test_defective_batch_fails_blocking_checks_and_keeps_rejects(workspace):
    result = ingest(workspace, "batch_defective")
    # failed blocking checks fail the run, so the retrain sensor (run success) and the CLI do not train
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "blocking asset checks failed" in str(failure.event_specific_data.error)
    failed = {e.check_name: e for e in result.get_asset_check_evaluations() if not e.passed}
    assert {"annotations_unique_ids", "annotations_bbox_inside_image"} <= set(failed)
    assert 9000016 in failed["annotations_bbox_inside_image"].metadata["unexpected_sample"].value
    assert all(failed[name].severity == dg.AssetCheckSeverity.ERROR
               for name in ("annotations_unique_ids", "annotations_bbox_inside_image"))
    quarantine = read_table(workspace["lake"] / "coco_quarantine").to_pandas()
    reasons = set(quarantine.loc[quarantine.batch_id == "batch_defective", "reason_code"])
    assert {"unknown_category", "unknown_image", "image_missing", "image_undecodable", "image_rejected"} <= reasons


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


def test_reingesting_a_batch_replaces_its_rows(workspace):
    first = read_table(workspace["lake"] / "coco_annotations").to_pandas()
    assert ingest(workspace, "batch_0001").success
    again = read_table(workspace["lake"] / "coco_annotations").to_pandas()
    assert len(again) == len(first)
    assert (again.batch_id == "batch_0001").sum() == 271
