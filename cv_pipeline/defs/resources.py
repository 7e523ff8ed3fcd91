"""Resources: each external system behind a typed, configurable resource."""


import os
from pathlib import Path
from typing import Optional

import dagster as dg

from cv_pipeline import settings
from cv_pipeline.defs.launchers import LocalJobLauncher


class LakeResource(dg.ConfigurableResource):
    """Where the Delta tables live (`$CV_PIPELINE_HOME/lake` locally)."""

    lake_dir: str

    def table_path(self, table_name: str) -> str:
        return str(Path(self.lake_dir) / table_name)


class LandingZoneResource(dg.ConfigurableResource):
    """The folder of landing batches, one sub-folder per batch id."""

    landing_dir: str

    def batch_dir(self, batch_id: str) -> Path:
        from cv_pipeline.data.delta_io import validate_batch_id

        return Path(self.landing_dir) / validate_batch_id(batch_id)

    def complete_batches(self) -> list[str]:
        from cv_pipeline.data.processor import find_complete_batches

        return find_complete_batches(self.landing_dir)


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry: experiment and registered model names, store URIs."""

    tracking_uri: str
    registry_uri: str | None = None
    artifact_root: str | None = None
    experiment_name: str = "cv_pipeline"
    model_name_prefix: str = "cv_pipeline_"  # a Unity Catalog `catalog.schema.` prefix there

    def model_name_for(self, task: str) -> str:
        """The registered model of a task: one per task (`cv_pipeline_<task>` locally)."""
        from cv_pipeline.deployment.registry import registered_model_name

        return registered_model_name(task, self.model_name_prefix)

    def registry(self):
        from cv_pipeline.deployment.registry import ModelRegistry

        return ModelRegistry(self.tracking_uri, self.registry_uri)


class PromotionPolicy(dg.ConfigurableResource):
    """The rule a challenger must pass to become champion, one per task: its primary test metric
    (the task's `test_metric`) at least the threshold, and the paired-bootstrap interval of
    challenger - champion above `margin` at its lower bound (with no champion yet, the threshold
    alone). Thresholds: `thresholds[task]`, else `threshold` when set, else the task's own
    `promotion_threshold`."""

    threshold: Optional[float] = None
    thresholds: dict[str, float] = {}
    margin: float = 0.0
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def threshold_for(self, task: str) -> float:
        from cv_pipeline.models.tasks import get_task

        if task in self.thresholds:
            return float(self.thresholds[task])
        return float(self.threshold) if self.threshold is not None else get_task(task).promotion_threshold

    def comparison_policy(self, task: str):
        from cv_pipeline.evaluation.model_comparison import ComparisonPolicy
        from cv_pipeline.models.tasks import get_task

        spec = get_task(task)
        return ComparisonPolicy(metric=spec.test_metric, threshold=self.threshold_for(task), margin=self.margin,
                                n_resamples=self.n_resamples, confidence=self.confidence, seed=self.seed,
                                higher_is_better=spec.higher_is_better)


class IngestionPolicy(dg.ConfigurableResource):
    """How batches are ingested and judged: image storage and the quality checks' tolerances."""

    store_image_bytes: bool = False  # True: image bytes in coco_images; False: path + sha256
    bbox_tolerance_px: float = 1.0
    min_annotations_per_category: int = 5
    area_rel_tolerance: float = 0.2
    area_abs_tolerance_px: float = 16.0
    max_imbalance_ratio: float = 10.0

    def check_options(self) -> dict:
        return {name: getattr(self, name) for name in (
            "bbox_tolerance_px", "min_annotations_per_category", "area_rel_tolerance", "area_abs_tolerance_px",
            "max_imbalance_ratio")}


class ServingResource(dg.ConfigurableResource):
    """The local endpoint server (one process, every task's endpoint) and the traffic the
    challenger gets beside the champion (0: the champion alone; 10: a 90/10 split)."""

    state_dir: str
    host: str = "127.0.0.1"
    port: Optional[int] = None
    challenger_traffic_percentage: int = 0


class MonitoringPolicy(dg.ConfigurableResource):
    """How endpoints are watched: the drift tests' false-alarm rate and sample floor, the SLOs, and
    the severity each kind of check fails with; references are kept in `reference_dir`."""

    reference_dir: str
    alpha: float = 0.05  # a window's false-alarm rate over its three drift tests
    min_samples: int = 30
    n_components: int = 32
    n_permutations: int = 500
    latency_p95_slo_ms: float = 2000.0
    error_rate_slo: float = 0.01  # share of requests answered 5xx
    drift_severity: str = "ERROR"  # ERROR or WARN
    slo_severity: str = "WARN"

    def config(self):
        from cv_pipeline.monitoring.endpoint_health import MonitoringConfig

        return MonitoringConfig(alpha=self.alpha, min_samples=self.min_samples, n_components=self.n_components,
                                n_permutations=self.n_permutations, latency_p95_slo_ms=self.latency_p95_slo_ms,
                                error_rate_slo=self.error_rate_slo)


def promotion_policy_from_env() -> PromotionPolicy:
    """`CV_PIPELINE_PROMOTION_THRESHOLD`: `0.5` for every task, or `classification=0.6,detection=0.3`
    per task (unnamed tasks keep their own); `CV_PIPELINE_PROMOTION_MARGIN`."""
    text = os.environ.get("CV_PIPELINE_PROMOTION_THRESHOLD", "").strip()
    threshold, thresholds = None, {}
    if "=" in text:
        for part in filter(None, (p.strip() for p in text.split(","))):
            task, _, value = part.partition("=")
            thresholds[task.strip()] = float(value)
    elif text:
        threshold = float(text)
    return PromotionPolicy(threshold=threshold, thresholds=thresholds,
                           margin=float(os.environ.get("CV_PIPELINE_PROMOTION_MARGIN", 0.0)))


def local_resources() -> dict:
    """The embedded defaults: everything under CV_PIPELINE_HOME on this machine."""
    from dagster_pyspark import PySparkResource

    from cv_pipeline.data.spark import delta_spark_config

    return {
        "spark": PySparkResource(spark_config=delta_spark_config()),
        "lake": LakeResource(lake_dir=str(settings.lake_dir())),
        "landing": LandingZoneResource(landing_dir=str(settings.landing_dir())),
        "mlflow": MLflowResource(tracking_uri=settings.mlflow_tracking_uri(),
                                 artifact_root=str(settings.mlflow_artifact_root())),
        "promotion": promotion_policy_from_env(),
        "serving": ServingResource(
            state_dir=str(settings.serving_dir()),
            challenger_traffic_percentage=int(os.environ.get("CV_PIPELINE_CHALLENGER_TRAFFIC", 0)),
        ),
        "ingestion": IngestionPolicy(
            store_image_bytes=os.environ.get("CV_PIPELINE_STORE_IMAGE_BYTES", "0").lower() in ("1", "true", "yes"),
        ),
        "job_launcher": LocalJobLauncher(),
        "monitoring": MonitoringPolicy(reference_dir=str(settings.monitoring_dir() / "references"),
                                       alpha=float(os.environ.get("CV_PIPELINE_DRIFT_ALPHA", 0.05))),
    }
