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

from cv_pipeline_tests.samples import E2E_MONITORING_ENV, INGESTED_TABLES, SAMPLES

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


@pytest.fixture(scope="session")
def shared_ray():
    """One local Ray cluster for the whole test session, started in this process on first use: the
    tests' RayTrainer calls use it directly, and every Pipes job subprocess (and `cv-pipeline run`
    subprocess) attaches to it through $CV_PIPELINE_RAY_ADDRESS instead of starting its own."""
    from cv_pipeline.training.ray_cluster import shared_local_ray

    with shared_local_ray() as address:
        yield address


class EndToEndRun(NamedTuple):
    home: Path  # its CV_PIPELINE_HOME
    dagster_home: Path
    landing: Path
    held_back_batch: str
    output: str  # what the console showed
    returncode: int
    seconds: float


E2E_HELD_BACK_BATCH = "batch_defective"  # fails the blocking check annotations_bbox_inside_image


@pytest.fixture(scope="session")
def end_to_end_run(shared_ray, tmp_path_factory) -> EndToEndRun:
    """`cv-pipeline run` as a user runs it (a subprocess, quick profile, the vision models trained
    briefly), once per test session, on a landing zone with the two sample batches and one batch
    that fails a blocking check. Its state (lake, MLflow, Dagster instance, the model server it
    leaves running) is shared by the end-to-end and UI tests: treat it as read-only."""
    import subprocess
    import sys
    import time

    home = _HOME / "end_to_end"
    landing = tmp_path_factory.mktemp("end_to_end_landing")
    for batch in ("batch_0001", "batch_0002"):
        shutil.copytree(SAMPLES / "landing" / batch, landing / batch)
    shutil.copytree(SAMPLES / "defective" / E2E_HELD_BACK_BATCH, landing / E2E_HELD_BACK_BATCH)
    env = {**os.environ, "CV_PIPELINE_HOME": str(home), "DAGSTER_HOME": str(home / "dagster_home"),
           "CV_PIPELINE_LANDING_DIR": str(landing),
           # the classifier trains the quick profile's few epochs: the promotion bar matches them; the
           # others train one epoch on six images, so anything is promoted and served
           "CV_PIPELINE_PROMOTION_THRESHOLD": "classification=0.4,detection=0,instance_segmentation=0,"
                                              "semantic_segmentation=0",
           **E2E_MONITORING_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    vision = "detection={n},instance_segmentation={n},semantic_segmentation={n}"
    process = subprocess.run([sys.executable, "-m", "cv_pipeline.cli", "run", "--epochs", vision.format(n=1),
                              "--max-samples", vision.format(n=6)], env=env, capture_output=True, text=True,
                             timeout=1800)
    return EndToEndRun(home, home / "dagster_home", landing, E2E_HELD_BACK_BATCH, process.stdout + process.stderr,
                       process.returncode, time.perf_counter() - started)


def pytest_sessionfinish(session, exitstatus):
    try:  # best-effort: a server or Ray session a failed test left behind
        with contextlib.suppress(Exception):
            from cv_pipeline.deployment.endpoints import EndpointServer

            for home in (_HOME, _HOME / "end_to_end"):
                if (home / "serving").is_dir():
                    EndpointServer(home / "serving").stop()
        with contextlib.suppress(Exception):
            import ray

            if ray.is_initialized():
                ray.shutdown()
    finally:  # the session's home goes whatever the shutdowns raised
        shutil.rmtree(_HOME, ignore_errors=True)
