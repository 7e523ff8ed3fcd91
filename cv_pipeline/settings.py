"""Where local state lives: one place reads the environment for paths (see DESIGN.md, Environments)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def cv_pipeline_home() -> Path:
    """Root of all local state (`CV_PIPELINE_HOME`, default `./.cv_pipeline`), created if missing."""
    home = Path(os.environ.get("CV_PIPELINE_HOME", ".cv_pipeline")).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


def landing_dir() -> Path:
    """The landing zone (`CV_PIPELINE_LANDING_DIR`): one sub-folder per batch.

    The default `data_samples/landing` is taken relative to the working directory, falling back to
    the repository's bundled samples so the console script works from any directory of a checkout.
    """
    configured = os.environ.get("CV_PIPELINE_LANDING_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    relative = Path("data_samples/landing")
    if relative.is_dir():
        return relative.resolve()
    return REPO_ROOT / "data_samples" / "landing"


def lake_dir() -> Path:
    return cv_pipeline_home() / "lake"


def table_path(table_name: str) -> str:
    """Location of a Delta table: `$CV_PIPELINE_HOME/lake/<table_name>`."""
    return str(lake_dir() / table_name)


def mlflow_tracking_uri() -> str:
    """MLflow tracking and registry store: `MLFLOW_TRACKING_URI`, else SQLite under the home."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{cv_pipeline_home() / 'mlflow.db'}"


def mlflow_artifact_root() -> Path:
    return cv_pipeline_home() / "mlartifacts"


def ray_storage_dir() -> Path:
    return cv_pipeline_home() / "ray_results"


def reports_dir() -> Path:
    """Where evaluation reports (self-contained HTML) are written."""
    path = cv_pipeline_home() / "reports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def serving_dir() -> Path:
    path = cv_pipeline_home() / "serving"
    path.mkdir(parents=True, exist_ok=True)
    return path


def dagster_home() -> Path:
    return cv_pipeline_home() / "dagster_home"


def logs_dir() -> Path:
    """Where `cv-pipeline` writes the full log of each run (Dagster, Spark, Ray, jobs)."""
    path = cv_pipeline_home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def monitoring_dir() -> Path:
    """Monitoring state: the champions' references (`references/<model>-v<version>.npz`)."""
    path = cv_pipeline_home() / "monitoring"
    path.mkdir(parents=True, exist_ok=True)
    return path
