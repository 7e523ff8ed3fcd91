"""`cv-pipeline ingest`'s summary, from real ingestion runs of a landing zone with bad batches."""

import io
import re
import shutil

import dagster as dg
import pytest
from dagster_pyspark import PySparkResource

from cv_pipeline.cli import ingest_batches, print_ingestion
from cv_pipeline.console import ConsoleReporter
from cv_pipeline.data.coco import COCOFormatError
from cv_pipeline.data.processor import COCOProcessor, find_complete_batches
from cv_pipeline.data.spark import delta_spark_config
from cv_pipeline.defs.ingestion import coco_tables
from cv_pipeline.defs.jobs import ingest_job
from cv_pipeline.defs.resources import IngestionPolicy, LakeResource, LandingZoneResource
from cv_pipeline_tests.samples import SAMPLES


def test_ingest_prints_counts_reasons_and_failed_checks_per_batch(spark, tmp_path):
    landing = tmp_path / "landing"
    for batch in ("batch_defective", "batch_bad_json", "batch_incomplete"):
        shutil.copytree(SAMPLES / "defective" / batch, landing / batch)
    defs = dg.Definitions(assets=[coco_tables], jobs=[ingest_job], resources={
        "spark": PySparkResource(spark_config=delta_spark_config()),
        "lake": LakeResource(lake_dir=str(tmp_path / "lake")),
        "landing": LandingZoneResource(landing_dir=str(landing)),
        "ingestion": IngestionPolicy(),
    })
    batches = find_complete_batches(landing)
    assert batches == ["batch_bad_json", "batch_defective"]  # the one still being copied waits
    stream = io.StringIO()
    console = ConsoleReporter(stream)
    outcomes = ingest_batches(defs, dg.DagsterInstance.ephemeral(), batches, console)
    print_ingestion(console, outcomes)
    out = stream.getvalue()

    assert re.search(r"^  ERR coco_tables \[batch_bad_json\]  \d+\.\ds  .*invalid JSON at line", out, re.M), out
    assert re.search(r"^  batch_bad_json +FAILED", out, re.M), out
    defective = out.split("  batch_defective HELD BACK")[1]
    assert defective.startswith(" images 12/9/3  annotations 29/16/13  categories 6/6/0")  # read/accepted/quarantined
    for reason in ("duplicate_id 1", "image_missing 1", "image_undecodable 2", "unknown_category 1",
                   "unknown_image 1"):
        assert reason in defective.splitlines()[1], (reason, defective)
    assert "held back by blocking checks: annotations_bbox_inside_image" in defective


@pytest.mark.parametrize("contents", [[], ["_SUCCESS"], ["_SUCCESS", "images/"]])
def test_an_empty_batch_folder_is_a_clear_error(tmp_path, contents):
    batch = tmp_path / "batch_empty"
    batch.mkdir()
    for name in contents:
        (batch / name).mkdir() if name.endswith("/") else (batch / name).touch()
    with pytest.raises(COCOFormatError, match=r"batch_empty/annotations.json: annotation file not found"):
        COCOProcessor(spark=None).ingest_batch(batch)
