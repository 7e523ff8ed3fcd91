"""A throwaway SQLite MLflow store for one test module, set as the global tracking URI meanwhile."""

import contextlib
import os

import mlflow


@contextlib.contextmanager
def temporary_mlflow_store(root, experiment_name: str):
    uri = f"sqlite:///{root}/mlflow.db"
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        experiment_id = mlflow.create_experiment(experiment_name, artifact_location=str(root / "artifacts"))
        yield {"uri": uri, "root": root, "experiment_id": experiment_id}
    finally:
        mlflow.set_tracking_uri(None)  # also unsets MLFLOW_TRACKING_URI, which set_tracking_uri exported
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
