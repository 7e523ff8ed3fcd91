"""cv_pipeline: COCO data to validated Delta tables, trained and served models, orchestrated by Dagster.

The public API is imported lazily so `import cv_pipeline` stays fast (no torch, Spark or Dagster).
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "COCOProcessor": "cv_pipeline.data.processor",
    "RayTrainer": "cv_pipeline.training.ray_trainer",
    "ClassificationMetrics": "cv_pipeline.evaluation.metrics",
    "DetectionMetrics": "cv_pipeline.evaluation.coco_eval",
    "SegmentationMetrics": "cv_pipeline.evaluation.segmentation_metrics",
    "DeploymentPipeline": "cv_pipeline.deployment.pipeline",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cv_pipeline' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
