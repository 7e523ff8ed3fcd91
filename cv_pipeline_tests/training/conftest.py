"""Fixtures shared by the training tests: a lake holding both sample batches and its manifest."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest

from cv_pipeline.data.delta_io import replace_batch
from cv_pipeline.data.processor import COCOProcessor
from cv_pipeline.training.dataset import DatasetManifest, build_training_dataset
from cv_pipeline_tests.conftest import SAMPLES

INGESTED_TABLES = ("coco_images", "coco_annotations", "coco_categories")


class IngestedLake(NamedTuple):
    lake_dir: Path
    manifest: DatasetManifest


@pytest.fixture(scope="session")
def ingested_lake(spark, tmp_path_factory) -> IngestedLake:
    """Both sample batches ingested (Arrow tables written through delta-rs: each table at version 1)
    and a `training_dataset` manifest built on them. Session-scoped: treat it as read-only; a test
    that writes to the lake should copy `lake_dir` first."""
    lake_dir = tmp_path_factory.mktemp("ingested_lake")
    processor = COCOProcessor(spark)
    for batch_id in ("batch_0001", "batch_0002"):
        batch = processor.ingest_batch(SAMPLES / "landing" / batch_id)
        for name in INGESTED_TABLES:
            replace_batch(batch.tables[name], lake_dir / name, batch_id)
    return IngestedLake(lake_dir, build_training_dataset(lake_dir))
