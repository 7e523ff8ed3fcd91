"""Registry: each trained model becomes an MLflow version aliased `challenger`; `model_comparison`
scores it against the `champion` on the same pinned test set, and the alias moves only when that
comparison's blocking check passes."""


import dagster as dg

from cv_pipeline.defs.evaluation import classifier_evaluation
from cv_pipeline.defs.metadata import latest_metadata
from cv_pipeline.defs.resources import MLflowResource, PromotionPolicy


@dg.asset(
    deps=[classifier_evaluation],
    group_name="deployment",
    kinds={"mlflow"},
    description="The evaluated classifier registered as a new version of the MLflow model with the alias "
                "challenger, tagged with its test accuracy, macro F1 and the Delta versions it was trained on.",
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


@dg.asset(
    deps=[registered_classifier],
    group_name="deployment",
    kinds={"mlflow"},
    description="The challenger against the current champion on the same pinned test set: the primary "
                "metric of both, a paired bootstrap interval of the difference over images, and the decision.",
)
def model_comparison(context: dg.AssetExecutionContext, mlflow: MLflowResource,
                     promotion: PromotionPolicy) -> dg.MaterializeResult:
    from cv_pipeline.deployment.registry import CHAMPION
    from cv_pipeline.evaluation.classification_report import evaluate_classifier
    from cv_pipeline.evaluation.model_comparison import compare, scored_classifier

    registered = latest_metadata(context, "registered_classifier")
    evaluation = latest_metadata(context, "classifier_evaluation")
    dataset = latest_metadata(context, "training_dataset")
    registry = mlflow.registry()
    policy = promotion.comparison_policy()
    dataset_version = int(evaluation["dataset_version"])
    challenger_version = str(registered["version"])
    champion_version = registry.version_for_alias(mlflow.model_name, CHAMPION)
    if champion_version == challenger_version:
        champion_version = None

    def scored(version: str):
        result = evaluate_classifier(registry.model_uri(mlflow.model_name, version), dataset["path"], dataset_version,
                                     tracking_uri=mlflow.tracking_uri)
        return scored_classifier(result.predictions, result.ground_truth, result.image_keys,
                                 len(result.class_names), policy.metric)

    comparison = compare(scored(challenger_version), scored(champion_version) if champion_version else None, policy)
    decision = comparison.decision
    metadata = {
        "decision": decision.action,
        "reason": decision.reason,
        "metric": policy.metric,
        "challenger_version": challenger_version,
        "champion_version": champion_version or "none",
        f"challenger_{policy.metric}": comparison.challenger_value,
        "threshold": policy.threshold,
        "margin": policy.margin,
        "dataset_version": dataset_version,
        "test_images": comparison.n_images,
    }
    if comparison.bootstrap is not None:
        bootstrap = comparison.bootstrap
        metadata.update({
            f"champion_{policy.metric}": comparison.champion_value,
            "difference": bootstrap.observed_difference,
            "interval_low": bootstrap.interval[0],
            "interval_high": bootstrap.interval[1],
            "confidence": bootstrap.confidence,
            "n_resamples": bootstrap.n_resamples,
        })
    context.log.info(f"model_comparison: {decision.action}: {decision.reason}")
    return dg.MaterializeResult(metadata={**metadata, "comparison": dg.MetadataValue.json(comparison.as_dict())})


@dg.asset_check(asset=model_comparison, blocking=True,
                description="The comparison decided to promote: the challenger clears the threshold and beats the "
                            "champion by more than the margin at the interval's lower bound. Gates the alias move.")
def challenger_beats_champion(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    comparison = latest_metadata(context, "model_comparison")
    passed = comparison["decision"] == "promote"
    keys = ("decision", "metric", "challenger_version", "champion_version", "threshold", "margin", "interval_low",
            "interval_high")
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={k: comparison[k] for k in keys if k in comparison},
        description=comparison["reason"],
    )


@dg.asset(
    deps=[model_comparison],
    group_name="deployment",
    kinds={"mlflow"},
    description="The MLflow alias champion, moved to the challenger once challenger_beats_champion passed; "
                "the version it replaced is in the metadata.",
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
