"""Batch inference: every validated landing batch scored with each task's champion into the Delta
table `predictions` (one row per image and task, naming the model version that predicted)."""


import dagster as dg

from cv_pipeline.defs.partitions import landing_batches
from cv_pipeline.defs.registry import CHAMPION_ASSETS
from cv_pipeline.defs.resources import LakeResource, MLflowResource


class BatchPredictionsConfig(dg.Config):
    batch_size: int = 16
    tasks: list[str] | None = None  # only these tasks' champions (default: every task with a champion)


@dg.asset(
    deps=[dg.AssetKey("coco_images"), *(asset.key for asset in CHAMPION_ASSETS.values())],
    partitions_def=landing_batches,
    group_name="inference",
    kinds={"mlflow", "delta"},
    description="A landing batch's validated images scored with each task's champion (its pyfunc model), written to "
                "the Delta table predictions: image uid, task, model name and version, prediction (JSON), time. A "
                "rerun replaces that batch's rows of the same task.",
)
def batch_predictions(context: dg.AssetExecutionContext, config: BatchPredictionsConfig, lake: LakeResource,
                      mlflow: MLflowResource) -> dg.MaterializeResult:
    from cv_pipeline.deployment.batch_inference import champion_models, run_batch_inference

    models = champion_models(mlflow.tracking_uri, tasks=config.tasks)
    if not models:
        raise dg.Failure("no task has a champion yet: materialize the <task>_champion assets first")
    summary = run_batch_inference(lake.lake_dir, context.partition_key, models, batch_size=config.batch_size,
                                  tracking_uri=mlflow.tracking_uri, registry_uri=mlflow.registry_uri)
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(summary["path"]),
        "delta_version": summary["delta_version"],
        "dagster/row_count": summary["rows"],
        "images": summary["images"],
        "models": dg.MetadataValue.json({task: f"{entry['model_name']} v{entry['model_version']}"
                                         for task, entry in summary["tasks"].items()}),
    })
