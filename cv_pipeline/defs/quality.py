"""Quality on fresh labels, per task: when a landed batch carries labels, the task's champion is
scored on it with the task's evaluation, the point is appended to the Delta table champion_quality,
and the check quality_on_fresh_labels fails when the metric falls below the promotion threshold or
drops by more than a margin from the previous fresh point."""


from typing import Optional

import dagster as dg

from cv_pipeline.defs.automation import fresh_labels_condition
from cv_pipeline.defs.metadata import markdown_table
from cv_pipeline.defs.partitions import landing_batches
from cv_pipeline.defs.registry import CHAMPION_ASSETS
from cv_pipeline.defs.resources import LakeResource, MLflowResource, PromotionPolicy

QUALITY_CHECK = "quality_on_fresh_labels"
HISTORY_ROWS = 20  # rows of the history table in the metadata (the plot shows them all)


class FreshLabelQualityConfig(dg.Config):
    max_drop: float = 0.1  # the most the metric may fall from the previous fresh point
    max_images: Optional[int] = None  # score only the batch's first N images (smoke runs)


def fresh_label_quality_asset(task: str):
    """`<task>_fresh_label_quality`, partitioned by landing batch, with its check `quality_on_fresh_labels`."""
    from cv_pipeline.models.tasks import get_task

    spec = get_task(task)
    name = f"{task}_fresh_label_quality"

    @dg.asset(
        name=name,
        deps=[dg.AssetKey("coco_images"), dg.AssetKey("coco_annotations"), CHAMPION_ASSETS[task].key],
        partitions_def=landing_batches,
        group_name="monitoring",
        tags={"task": task},
        automation_condition=fresh_labels_condition(),
        kinds={"mlflow", "delta"},
        check_specs=[dg.AssetCheckSpec(
            QUALITY_CHECK, asset=name, blocking=False,
            description=f"The {task} champion's {spec.test_metric} on the batch's labels is no worse than the "
                        "promotion threshold and has not dropped from the previous fresh point by more than max_drop. "
                        "Passes when there is no champion yet, or when the champion was trained on the batch.")],
        description=f"The {task} champion (registry alias champion) scored on a landed batch's labels with the task's "
                    f"evaluation ({spec.test_metric}); each point is appended to the Delta table champion_quality, "
                    "flagged not fresh when the champion was trained on that batch.",
    )
    def _quality(context: dg.AssetExecutionContext, config: FreshLabelQualityConfig, lake: LakeResource,
                 mlflow: MLflowResource, promotion: PromotionPolicy) -> dg.MaterializeResult:
        from cv_pipeline.deployment.registry import CHAMPION
        from cv_pipeline.evaluation.plots import png_data_uri_markdown
        from cv_pipeline.monitoring.quality import (CHAMPION_QUALITY, append_quality, evaluate_on_batch,
                                                    quality_over_time_png, quality_rows, quality_verdict,
                                                    read_quality)

        batch_id = context.partition_key
        registry = mlflow.registry()
        model_name = mlflow.model_name_for(task)
        version = registry.version_for_alias(model_name, CHAMPION)
        threshold = promotion.threshold_for(task)
        if version is None:
            message = f"no champion yet: {model_name} has no {CHAMPION} alias; nothing to evaluate on {batch_id}"
            context.log.info(message)
            return dg.MaterializeResult(
                metadata={"task": task, "batch_id": batch_id, "model_name": model_name, "status": "no champion yet",
                          "message": message},
                check_results=[dg.AssetCheckResult(check_name=QUALITY_CHECK, passed=True,
                                                    severity=dg.AssetCheckSeverity.ERROR, description=message,
                                                    metadata={"threshold": threshold, "figure": spec.test_metric,
                                                              "message": message})])
        try:
            point = evaluate_on_batch(lake.lake_dir, batch_id, task, registry.model_uri(model_name, version),
                                      tracking_uri=mlflow.tracking_uri, registry_uri=mlflow.registry_uri,
                                      max_images=config.max_images)
        except ValueError as error:  # a batch held back or not ingested: nothing sound to score
            raise dg.Failure(f"{name} [{batch_id}]: {error}") from error
        table_path = lake.table_path(CHAMPION_QUALITY)
        history = read_quality(table_path, task)
        verdict = quality_verdict(history, point, threshold=threshold, max_drop=config.max_drop,
                                  higher_is_better=spec.higher_is_better)
        delta_version = append_quality(point, table_path)
        history = history + quality_rows([point]).to_pylist()
        context.log.info(verdict.message)
        shown = [{**row, "evaluated_at": row["evaluated_at"].strftime("%Y-%m-%d %H:%M:%S")}
                 for row in history[-HISTORY_ROWS:]]
        plot = quality_over_time_png(history, threshold=threshold,
                                     title=f"{model_name}: {point.metric} on fresh labels")
        return dg.MaterializeResult(
            metadata={
                "task": task,
                "batch_id": batch_id,
                "model_name": model_name,
                "model_version": point.model_version,
                "metric": point.metric,
                "value": point.value,
                point.metric: point.value,
                "n_images": point.n_images,
                "fresh": point.fresh,
                "history": dg.MetadataValue.md(markdown_table(
                    shown, ["evaluated_at", "batch_id", "model_version", "value", "n_images", "fresh"])),
                "plot_quality_over_time": dg.MetadataValue.md(png_data_uri_markdown(plot, f"{point.metric} over time")),
                "table_path": dg.MetadataValue.path(table_path),
                "delta_version": delta_version,
            },
            check_results=[dg.AssetCheckResult(
                check_name=QUALITY_CHECK, passed=verdict.passed, severity=dg.AssetCheckSeverity.ERROR,
                description=verdict.message,
                metadata={"value": verdict.value, "threshold": verdict.threshold, "figure": point.metric,
                          "baseline": verdict.baseline, "drop": verdict.drop, "message": verdict.message,
                          "fresh": point.fresh, "model_version": point.model_version})],
        )

    return _quality


FRESH_LABEL_QUALITY_ASSETS = {task: fresh_label_quality_asset(task) for task in CHAMPION_ASSETS}
