"""Resources: each external system behind a typed, configurable resource."""


import os
from pathlib import Path

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
    model_name: str = "cv_pipeline_classifier"

    def registry(self):
        from cv_pipeline.deployment.registry import ModelRegistry

        return ModelRegistry(self.tracking_uri, self.registry_uri)


class PromotionPolicy(dg.ConfigurableResource):
    """The rule a challenger must pass to become champion: its `metric` on the test set at least
    `threshold`, and the paired-bootstrap interval of challenger - champion above `margin` at its
    lower bound (with no champion yet, the threshold alone)."""

    metric: str = "accuracy"
    threshold: float = 0.6
    margin: float = 0.0
    n_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def comparison_policy(self):
        from cv_pipeline.evaluation.model_comparison import ComparisonPolicy

        return ComparisonPolicy(metric=self.metric, threshold=self.threshold, margin=self.margin,
                                n_resamples=self.n_resamples, confidence=self.confidence, seed=self.seed)


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
    """The local HTTP model server for the champion (`mlflow models serve`)."""

    state_dir: str
    host: str = "127.0.0.1"
    port: int | None = None

    def server(self):
        from cv_pipeline.deployment.serving import LocalModelServer

        return LocalModelServer(Path(self.state_dir), host=self.host)


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
        "promotion": PromotionPolicy(
            metric=os.environ.get("CV_PIPELINE_PROMOTION_METRIC", "accuracy"),
            threshold=float(os.environ.get("CV_PIPELINE_PROMOTION_THRESHOLD", 0.6)),
            margin=float(os.environ.get("CV_PIPELINE_PROMOTION_MARGIN", 0.0)),
        ),
        "serving": ServingResource(state_dir=str(settings.serving_dir())),
        "ingestion": IngestionPolicy(
            store_image_bytes=os.environ.get("CV_PIPELINE_STORE_IMAGE_BYTES", "0").lower() in ("1", "true", "yes"),
        ),
        "job_launcher": LocalJobLauncher(),
    }
