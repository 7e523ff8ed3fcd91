"""Registry: each trained model becomes an MLflow version aliased `challenger`; it moves to
`champion` only once the blocking metrics check has passed."""


import dagster as dg

from cv_pipeline.defs.evaluation import classifier_evaluation
from cv_pipeline.defs.metadata import latest_metadata
from cv_pipeline.defs.resources import MLflowResource, PromotionPolicy


@dg.asset(
    deps=[classifier_evaluation],
    group_name="deployment",
    kinds={"mlflow"},
    description="The evaluated model registered as a new MLflow version with alias `challenger`.",
)
def registered_classifier(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> dg.MaterializeResult:
    from cv_pipeline.deployment.registry import CHALLENGER

    evaluation = latest_metadata(context, "classifier_evaluation")
    trained = latest_metadata(context, "classifier_model")
    dataset = latest_metadata(context, "training_dataset")
    registry = mlflow.registry()
    tags = {
        "mlflow_run_id": evaluation["mlflow_run_id"],
        "dataset_version": str(evaluation["dataset_version"]),
        "dataset_hash": str(dataset["dataset_hash"]),
        "test_accuracy": f"{evaluation['accuracy']:.4f}",
        "test_macro_f1": f"{evaluation['macro_f1']:.4f}",
        **{f"delta_version.{k}": str(v) for k, v in dataset["source_versions"].items()},
        "dagster_run_id": context.run_id,
    }
    version = registry.register(evaluation["model_uri"], mlflow.model_name, tags=tags)
    registry.set_alias(mlflow.model_name, CHALLENGER, version)
    return dg.MaterializeResult(metadata={
        "model_name": mlflow.model_name,
        "version": version,
        "alias": CHALLENGER,
        "model_uri": registry.model_uri(mlflow.model_name, version),
        "accuracy": float(evaluation["accuracy"]),
        "macro_f1": float(evaluation["macro_f1"]),
        "mlflow_run_id": evaluation["mlflow_run_id"],
        "checkpoint_path": str(trained.get("checkpoint_path", "")),
    })


@dg.asset_check(asset=registered_classifier, blocking=True,
                description="The challenger clears the promotion policy's accuracy and macro-F1 thresholds.")
def challenger_meets_threshold(context: dg.AssetCheckExecutionContext,
                               promotion: PromotionPolicy) -> dg.AssetCheckResult:
    registered = latest_metadata(context, "registered_classifier")
    accuracy, macro_f1 = float(registered["accuracy"]), float(registered["macro_f1"])
    passed = accuracy >= promotion.min_accuracy and macro_f1 >= promotion.min_macro_f1
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"version": registered["version"], "accuracy": accuracy, "macro_f1": macro_f1,
                  "min_accuracy": promotion.min_accuracy, "min_macro_f1": promotion.min_macro_f1},
        description=None if passed else (
            f"version {registered['version']}: accuracy {accuracy:.3f} (needs {promotion.min_accuracy}) and "
            f"macro F1 {macro_f1:.3f} (needs {promotion.min_macro_f1})"),
    )


@dg.asset(
    deps=[registered_classifier],
    group_name="deployment",
    kinds={"mlflow"},
    description="The registered model's `champion` alias, moved to the challenger that passed its check.",
)
def champion_classifier(context: dg.AssetExecutionContext, mlflow: MLflowResource) -> dg.MaterializeResult:
    from cv_pipeline.deployment.registry import CHAMPION

    registered = latest_metadata(context, "registered_classifier")
    registry = mlflow.registry()
    previous = registry.version_for_alias(mlflow.model_name, CHAMPION)
    registry.promote(mlflow.model_name, registered["version"])
    return dg.MaterializeResult(metadata={
        "model_name": mlflow.model_name,
        "version": registered["version"],
        "previous_champion": previous or "none",
        "alias": CHAMPION,
        "model_uri": registry.model_uri(mlflow.model_name, registered["version"]),
        "accuracy": float(registered["accuracy"]),
    })
