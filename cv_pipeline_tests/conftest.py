"""Test-wide state: every test session gets its own CV_PIPELINE_HOME and DAGSTER_HOME.

Set at import time, before any test module imports `cv_pipeline.definitions` (which binds paths).
Test modules take shared constants from `cv_pipeline_tests.samples`, never from here.
"""

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pytest

from cv_pipeline_tests.samples import INGESTED_TABLES, SAMPLES

if TYPE_CHECKING:
    from cv_pipeline.training.dataset import DatasetManifest

_HOME = Path(tempfile.mkdtemp(prefix="cv_pipeline_test_home_"))
os.environ["CV_PIPELINE_HOME"] = str(_HOME)
os.environ["DAGSTER_HOME"] = str(_HOME / "dagster_home")
os.environ.setdefault("CV_PIPELINE_LANDING_DIR", str(SAMPLES / "landing"))
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
(_HOME / "dagster_home").mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def spark():
    from cv_pipeline.data.spark import get_spark

    return get_spark("cv_pipeline_tests")


@pytest.fixture(scope="session")
def test_home() -> Path:
    return _HOME



class IngestedLake(NamedTuple):
    lake_dir: Path
    manifest: "DatasetManifest"


@pytest.fixture(scope="session")
def ingested_lake(spark, tmp_path_factory) -> IngestedLake:
    """Both sample batches ingested (Arrow tables written through delta-rs: each table at version 1)
    and a `training_dataset` manifest built on them. Session-scoped: treat it as read-only; a test
    that writes to the lake should copy `lake_dir` first."""
    from cv_pipeline.data.delta_io import replace_batch
    from cv_pipeline.data.processor import COCOProcessor
    from cv_pipeline.training.dataset import build_training_dataset

    lake_dir = tmp_path_factory.mktemp("ingested_lake")
    processor = COCOProcessor(spark)
    for batch_id in ("batch_0001", "batch_0002"):
        batch = processor.ingest_batch(SAMPLES / "landing" / batch_id)
        for name in INGESTED_TABLES:
            replace_batch(batch.tables[name], lake_dir / name, batch_id)
    return IngestedLake(lake_dir, build_training_dataset(lake_dir))


def pytest_sessionfinish(session, exitstatus):
    try:  # best-effort: a server or Ray session a failed test left behind
        with contextlib.suppress(Exception):
            from cv_pipeline.deployment.serving import LocalModelServer

            LocalModelServer(_HOME / "serving").stop()
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
    finally:  # the session's home goes whatever the shutdowns raised
        shutil.rmtree(_HOME, ignore_errors=True)
