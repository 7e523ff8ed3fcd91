"""Test-wide state: every test session gets its own CV_PIPELINE_HOME and DAGSTER_HOME.

Set at import time, before any test module imports `cv_pipeline.definitions` (which binds paths).
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "data_samples"

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


def pytest_sessionfinish(session, exitstatus):
    try:
        from cv_pipeline.deployment.serving import LocalModelServer

        LocalModelServer(_HOME / "serving").stop()
    except Exception:  # noqa: BLE001 - best-effort cleanup of a server a failed test left behind
        pass
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001
        pass
    shutil.rmtree(_HOME, ignore_errors=True)
