"""The Dagster code location: wiring only. `CV_PIPELINE_ENV` picks the resource set."""

import os

import dagster as dg

from cv_pipeline.defs.evaluation import VISION_EVALUATION_ASSETS, classifier_evaluation
from cv_pipeline.defs.ingestion import coco_tables
from cv_pipeline.defs.jobs import ingest_job, training_job, tuning_job
from cv_pipeline.defs.registry import (challenger_beats_champion, champion_classifier, model_comparison,
                                      registered_classifier)
from cv_pipeline.defs.resources import local_resources
from cv_pipeline.defs.sensors import landing_batch_sensor, retrain_on_new_data
from cv_pipeline.defs.serving import serving_endpoint
from cv_pipeline.defs.training import VISION_MODEL_ASSETS, classifier_model, training_dataset
from cv_pipeline.defs.tuning import hpo_study

RESOURCES_BY_ENVIRONMENT = {"local": local_resources}


def resources_for(environment: str) -> dict:
    if environment not in RESOURCES_BY_ENVIRONMENT:
        raise ValueError(
            f"CV_PIPELINE_ENV={environment!r} is not available; choose one of {sorted(RESOURCES_BY_ENVIRONMENT)} "
            "(the databricks resource set is not built yet)"
        )
    return RESOURCES_BY_ENVIRONMENT[environment]()


defs = dg.Definitions(
    assets=[coco_tables, training_dataset, classifier_model, *VISION_MODEL_ASSETS, hpo_study, classifier_evaluation,
            *VISION_EVALUATION_ASSETS, registered_classifier, model_comparison, champion_classifier, serving_endpoint],
    asset_checks=[challenger_beats_champion],
    jobs=[ingest_job, training_job, tuning_job],
    sensors=[landing_batch_sensor, retrain_on_new_data],
    resources=resources_for(os.environ.get("CV_PIPELINE_ENV", "local")),
)
