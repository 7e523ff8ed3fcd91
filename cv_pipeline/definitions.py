"""The Dagster code location: wiring only. `CV_PIPELINE_ENV` picks the resource set; every task
(the built-in ones and those registered by `$CV_PIPELINE_TASK_MODULES`) gets the same road of
assets: `<task>_model -> _evaluation -> _registered_model -> _comparison -> _champion -> _endpoint`,
watched by `<task>_endpoint_monitoring` and `<task>_fresh_label_quality`, whose failed checks retrain
the model (declarative automation, `cv_pipeline.defs.automation`)."""

import os

import dagster as dg

from cv_pipeline.defs.alerts import ALERT_SENSORS
from cv_pipeline.defs.automation import retraining_automation
from cv_pipeline.defs.batch import batch_predictions
from cv_pipeline.defs.evaluation import EVALUATION_ASSETS
from cv_pipeline.defs.ingestion import coco_tables
from cv_pipeline.defs.jobs import batch_inference_job, ingest_job, training_job, tuning_job
from cv_pipeline.defs.monitoring import MONITORING_ASSETS, monitoring_job
from cv_pipeline.defs.quality import FRESH_LABEL_QUALITY_ASSETS
from cv_pipeline.defs.registry import CHAMPION_ASSETS, COMPARISON_ASSETS, PROMOTION_CHECKS, REGISTERED_ASSETS
from cv_pipeline.defs.resources import local_resources
from cv_pipeline.defs.sensors import landing_batch_sensor, score_batch_after_retraining
from cv_pipeline.defs.serving import ENDPOINT_ASSETS
from cv_pipeline.defs.training import MODEL_ASSETS, training_dataset
from cv_pipeline.defs.tuning import hpo_study

RESOURCES_BY_ENVIRONMENT = {"local": local_resources}


def resources_for(environment: str) -> dict:
    if environment not in RESOURCES_BY_ENVIRONMENT:
        raise ValueError(
            f"CV_PIPELINE_ENV={environment!r} is not available; choose one of {sorted(RESOURCES_BY_ENVIRONMENT)} "
            "(the databricks resource set is not built yet)"
        )
    return RESOURCES_BY_ENVIRONMENT[environment]()


TASK_ROAD = (MODEL_ASSETS, EVALUATION_ASSETS, REGISTERED_ASSETS, COMPARISON_ASSETS, CHAMPION_ASSETS, ENDPOINT_ASSETS,
             MONITORING_ASSETS, FRESH_LABEL_QUALITY_ASSETS)

defs = dg.Definitions(
    assets=[coco_tables, training_dataset, hpo_study, *(asset for stage in TASK_ROAD for asset in stage.values()),
            batch_predictions],
    asset_checks=list(PROMOTION_CHECKS.values()),
    jobs=[ingest_job, training_job, tuning_job, batch_inference_job, monitoring_job],
    sensors=[landing_batch_sensor, score_batch_after_retraining, retraining_automation, *ALERT_SENSORS],
    resources=resources_for(os.environ.get("CV_PIPELINE_ENV", "local")),
)
