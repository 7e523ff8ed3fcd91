"""DeploymentPipeline: train, evaluate, register, compare, promote and serve in one call (the seed's
quick start), for any task, by the same road as the Dagster graph: the task's evaluation of the
pyfunc model, the paired-bootstrap comparison against the champion, one promotion rule.

With `workspace_url=None` everything runs against the local MLflow store under CV_PIPELINE_HOME
and the pinned `training_dataset` already in the lake.
"""

from __future__ import annotations

from pathlib import Path

from cv_pipeline import settings


class DeploymentPipeline:
    def __init__(self, workspace_url: str | None = None, token: str | None = None,
                 model_name: str | None = None, experiment_name: str = "cv_pipeline",
                 training: dict | None = None, dataset_path: str | None = None, task: str = "classification"):
        if workspace_url is not None:
            raise ValueError(
                f"workspace_url={workspace_url!r}: deploying to a Databricks workspace is not available in this "
                "version; pass workspace_url=None to train, register and serve against local MLflow"
            )
        from cv_pipeline.deployment.registry import registered_model_name
        from cv_pipeline.models.tasks import get_task

        self.token = token
        self.task = get_task(task).name
        self.model_name = model_name or registered_model_name(self.task)
        self.experiment_name = experiment_name
        self.training = dict(training or {})
        self.dataset_path = dataset_path or settings.table_path("training_dataset")

    def run_pipeline(self, metrics_threshold: float | None = None, margin: float = 0.0) -> dict:
        """Train on the latest training_dataset, register the model as `challenger`, compare it with
        the champion on the test split (the task's primary metric, paired bootstrap), and if the rule
        says promote (at least `metrics_threshold`, default the task's own, and better than the
        champion by more than `margin`), move `champion` and serve it."""
        from cv_pipeline.deployment.promotion import compare_versions
        from cv_pipeline.deployment.registry import CHALLENGER, ModelRegistry
        from cv_pipeline.evaluation.model_comparison import ComparisonPolicy
        from cv_pipeline.deployment.training_runs import run_training
        from cv_pipeline.models.tasks import get_task

        if not (Path(self.dataset_path) / "_delta_log").is_dir():
            raise FileNotFoundError(f"no training_dataset at {self.dataset_path}; run `cv-pipeline run` or build it first")
        spec = get_task(self.task)
        tracking_uri = settings.mlflow_tracking_uri()
        trained = run_training({
            "task": self.task,
            "dataset_path": self.dataset_path,
            "training": self.training,
            "mlflow_tracking_uri": tracking_uri,
            "experiment_name": self.experiment_name,
            "artifact_root": str(settings.mlflow_artifact_root()),
            "ray_storage_path": str(settings.ray_storage_dir()),
            "run_name": f"deployment-pipeline-{self.task}",
        })
        registry = ModelRegistry(tracking_uri)
        version = registry.register(trained["model_uri"], self.model_name, tags={
            "task": self.task, "mlflow_run_id": trained["mlflow_run_id"],
            "dataset_version": str(trained["dataset_version"])})
        registry.set_alias(self.model_name, CHALLENGER, version)
        threshold = spec.promotion_threshold if metrics_threshold is None else float(metrics_threshold)
        outcome = compare_versions(registry, self.model_name, version, self.dataset_path,
                                   int(trained["dataset_version"]),
                                   ComparisonPolicy(metric=spec.test_metric, threshold=threshold, margin=margin,
                                                    higher_is_better=spec.higher_is_better))
        comparison = outcome.pop("comparison")
        result = {"mlflow_run_id": trained["mlflow_run_id"], "version": version, "decision": outcome["decision"],
                  "reason": outcome["reason"], "metrics": {spec.test_metric: outcome["challenger_value"]},
                  "comparison": comparison, "promoted": False, "serving_url": None}
        if outcome["decision"] == "promote":
            registry.promote(self.model_name, version)
            result.update(promoted=True, serving_url=self._serve(registry))
        return result

    def _serve(self, registry) -> str:
        """Point the task's local endpoint at the new champion (starting the server if needed);
        returns the endpoint's invocations URL."""
        from cv_pipeline.deployment.promotion import serve_champion

        return serve_champion(settings.serving_dir(), registry, self.task, self.model_name)["url"]
