"""Registry, per task: the evaluated model becomes a version of `cv_pipeline_<task>` aliased
`challenger`; `<task>_comparison` scores it against the `champion` on the same pinned test set
(paired bootstrap over images); the blocking check `promotion_rule_holds` gates `<task>_champion`,
which moves the alias when the decision is to promote. A "keep" is a decision, not a failure: the
run succeeds and the metadata shows the decision and the interval."""

import json

import dagster as dg

from cv_pipeline.defs.evaluation import EVALUATION_ASSETS
from cv_pipeline.defs.metadata import latest_metadata, task_asset
from cv_pipeline.defs.resources import LakeResource, MLflowResource, PromotionPolicy

LINEAGE_TAG_PREFIXES = ("dataset_", "delta_version.", "code_revision", "dagster_run_id")


def registered_asset(task: str):
    @task_asset(task, "registered_model", "evaluation",
                f"The evaluated {task} model registered as a new version of cv_pipeline_{task} with the alias "
                "challenger, tagged with its MLflow run, the training_dataset version, the Delta versions and "
                "batches it was trained on, the code revision and its test metrics.")
    def _registered(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> dg.MaterializeResult:
        from cv_pipeline.deployment.registry import CHALLENGER

        evaluation = latest_metadata(context, f"{task}_evaluation")
        dataset = latest_metadata(context, "training_dataset")
        registry = mlflow.registry()
        name = mlflow.model_name_for(task)
        run = registry.client.get_run(evaluation["mlflow_run_id"])
        primary = evaluation["primary_metric"]
        tags = {
            "task": task,
            "mlflow_run_id": evaluation["mlflow_run_id"],
            **{k: v for k, v in run.data.tags.items() if k.startswith(LINEAGE_TAG_PREFIXES)},
            "dataset_version": str(evaluation["dataset_version"]),
            "dataset_hash": str(dataset["dataset_hash"]),
            "batches": json.dumps(dataset.get("batches") or []),
            "primary_metric": primary,
            **{f"test_{k}": f"{float(v):.4f}" for k, v in evaluation.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.endswith("_version")},
            "registered_by_dagster_run": context.run_id,
        }
        version = registry.register(evaluation["model_uri"], name, tags=tags)
        registry.set_alias(name, CHALLENGER, version)
        return dg.MaterializeResult(metadata={
            "task": task,
            "model_name": name,
            "version": version,
            "alias": CHALLENGER,
            "model_uri": registry.model_uri(name, version),
            "primary_metric": primary,
            primary: float(evaluation[primary]),
            "mlflow_run_id": evaluation["mlflow_run_id"],
        })

    return _registered


def comparison_asset(task: str):
    @task_asset(task, "comparison", "registered_model",
                f"The {task} challenger against the current champion on the same pinned test set: the task's "
                "primary metric of both, a paired bootstrap interval of the difference over images, and the "
                "decision (promote or keep) by the task's promotion rule.")
    def _comparison(context: dg.AssetExecutionContext, mlflow: MLflowResource, lake: LakeResource,
                    promotion: PromotionPolicy) -> dg.MaterializeResult:
        from cv_pipeline.deployment.promotion import compare_versions

        registered = latest_metadata(context, f"{task}_registered_model")
        evaluation = latest_metadata(context, f"{task}_evaluation")
        outcome = compare_versions(mlflow.registry(), registered["model_name"], str(registered["version"]),
                                   lake.table_path("training_dataset"), int(evaluation["dataset_version"]),
                                   promotion.comparison_policy(task))
        context.log.info(f"{task}_comparison: {outcome['decision']}: {outcome['reason']}")
        comparison = outcome.pop("comparison")
        return dg.MaterializeResult(metadata={"task": task, **outcome,
                                              "comparison": dg.MetadataValue.json(comparison)})

    return _comparison


def promotion_check(task: str):
    @dg.asset_check(asset=dg.AssetKey(f"{task}_comparison"), name="promotion_rule_holds", blocking=True,
                    description="The comparison is sound (finite figures on the same test images) and its decision "
                                "follows the promotion rule: promote only when the challenger clears the threshold "
                                "and the interval's lower bound beats the champion by more than the margin. Gates "
                                "the alias move; a keep passes (there is nothing to move).")
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        from cv_pipeline.deployment.promotion import rule_violations

        comparison = latest_metadata(context, f"{task}_comparison")
        problems = rule_violations(comparison)
        keys = ("decision", "metric", "challenger_version", "champion_version", "challenger_value", "champion_value",
                "threshold", "margin", "interval_low", "interval_high")
        return dg.AssetCheckResult(
            passed=not problems, severity=dg.AssetCheckSeverity.ERROR,
            metadata={k: comparison[k] for k in keys if k in comparison},
            description="; ".join(problems) or comparison["reason"])

    return _check


def champion_asset(task: str):
    @task_asset(task, "champion", "comparison",
                f"The champion alias of cv_pipeline_{task}: moved to the challenger when the comparison decided to "
                "promote (and promotion_rule_holds passed), else left where it was; the decision and the version "
                "it replaced are in the metadata.")
    def _champion(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> dg.MaterializeResult:
        from cv_pipeline.deployment.registry import CHAMPION

        registered = latest_metadata(context, f"{task}_registered_model")
        comparison = latest_metadata(context, f"{task}_comparison")
        registry = mlflow.registry()
        name = registered["model_name"]
        previous = registry.version_for_alias(name, CHAMPION)
        if comparison["decision"] == "promote":
            registry.promote(name, registered["version"])
        current = registry.version_for_alias(name, CHAMPION)
        context.log.info(f"{name}: champion {current or 'none'} ({comparison['decision']}: {comparison['reason']})")
        return dg.MaterializeResult(metadata={
            "task": task,
            "model_name": name,
            "decision": comparison["decision"],
            "version": current or "none",
            "previous_champion": previous or "none",
            "challenger_version": str(registered["version"]),
            "alias": CHAMPION,
            "model_uri": registry.model_uri(name, current) if current else "none",
        })

    return _champion


REGISTERED_ASSETS = {task: registered_asset(task) for task in EVALUATION_ASSETS}
COMPARISON_ASSETS = {task: comparison_asset(task) for task in EVALUATION_ASSETS}
PROMOTION_CHECKS = {task: promotion_check(task) for task in EVALUATION_ASSETS}
CHAMPION_ASSETS = {task: champion_asset(task) for task in EVALUATION_ASSETS}

