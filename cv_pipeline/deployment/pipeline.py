"""DeploymentPipeline: train, register, promote and serve in one call (the seed's quick start).

With `workspace_url=None` everything runs against the local MLflow store under CV_PIPELINE_HOME
and the pinned `training_dataset` already in the lake; the same steps the Dagster graph runs.
"""

from __future__ import annotations

from pathlib import Path

from cv_pipeline import settings


class DeploymentPipeline:
    def __init__(self, workspace_url: str | None = None, token: str | None = None,
                 model_name: str = "cv_pipeline_classifier", experiment_name: str = "cv_pipeline",
                 training: dict | None = None, dataset_path: str | None = None):
        if workspace_url is not None:
            raise ValueError(
                f"workspace_url={workspace_url!r}: deploying to a Databricks workspace is not available in this "
                "version; pass workspace_url=None to train, register and serve against local MLflow"
            )
        self.token = token
        self.model_name = model_name
        self.experiment_name = experiment_name
        self.training = dict(training or {})
        self.dataset_path = dataset_path or settings.table_path("training_dataset")

    def run_pipeline(self, metrics_threshold: float = 0.6) -> dict:
        """Train on the latest training_dataset, evaluate on its test split, register the model as
        `challenger`, and if test accuracy >= `metrics_threshold` promote it to `champion` and serve it."""
        from cv_pipeline.deployment.registry import CHALLENGER, ModelRegistry
        from cv_pipeline.deployment.serving import LocalModelServer
        from cv_pipeline.evaluation.classification_report import evaluate_classifier
        from cv_pipeline.jobs.train import run_training

        if not (Path(self.dataset_path) / "_delta_log").is_dir():
            raise FileNotFoundError(f"no training_dataset at {self.dataset_path}; run `cv-pipeline run` or build it first")
        tracking_uri = settings.mlflow_tracking_uri()
        trained = run_training({
            "dataset_path": self.dataset_path,
            "training": self.training,
            "mlflow_tracking_uri": tracking_uri,
            "experiment_name": self.experiment_name,
            "artifact_root": str(settings.mlflow_artifact_root()),
            "ray_storage_path": str(settings.ray_storage_dir()),
            "run_name": "deployment-pipeline",
        })
        evaluation = evaluate_classifier(trained["model_uri"], self.dataset_path, trained["dataset_version"],
                                         tracking_uri=tracking_uri)
        accuracy = float(evaluation.metrics["accuracy"])
        registry = ModelRegistry(tracking_uri)
        version = registry.register(trained["model_uri"], self.model_name,
                                    tags={"mlflow_run_id": trained["mlflow_run_id"], "test_accuracy": f"{accuracy:.4f}"})
        registry.set_alias(self.model_name, CHALLENGER, version)
        outcome = {"mlflow_run_id": trained["mlflow_run_id"], "version": version, "metrics": evaluation.metrics,
                   "promoted": False, "serving_url": None}
        if accuracy >= metrics_threshold:
            registry.promote(self.model_name, version)
            server = LocalModelServer(settings.serving_dir()).ensure(registry.model_uri(self.model_name, version), tracking_uri)
            outcome.update(promoted=True, serving_url=server.url)
        return outcome
