"""Train the classifier out of process: launched through Dagster Pipes (`PipesSubprocessClient`
locally, a Databricks job there), parameters from Pipes extras, results reported back through Pipes.

Extras: dataset_path, dataset_version, training (RayTrainer config), num_workers, use_gpu,
mlflow_tracking_uri, experiment_name, artifact_root, lineage (tags recorded on the MLflow run).
"""

from __future__ import annotations

import os
from pathlib import Path


def ensure_experiment(name: str, artifact_root: str | None) -> str:
    """The id of an MLflow experiment, created with our artifact root if it does not exist."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_root, name).as_uri() if artifact_root else None
    return mlflow.create_experiment(name, artifact_location=location)


def run_training(params: dict, log=print) -> dict:
    """Create the MLflow run, train on Ray, log the model; returns what the asset reports."""
    import mlflow

    from cv_pipeline.deployment.pyfunc import log_classifier_model
    from cv_pipeline.training.crops import crop_row
    from cv_pipeline.training.dataset import load_manifest, load_split
    from cv_pipeline.training.ray_trainer import RayTrainer

    mlflow.set_tracking_uri(params["mlflow_tracking_uri"])
    experiment_id = ensure_experiment(params["experiment_name"], params.get("artifact_root"))
    manifest = load_manifest(params["dataset_path"], params.get("dataset_version"))
    training = dict(params.get("training") or {})
    lineage = {
        "dataset_path": manifest.table_path,
        "dataset_version": str(manifest.version),
        "dataset_hash": manifest.content_hash,
        **{f"delta_version.{k}": str(v) for k, v in manifest.source_versions.items()},
        **{k: str(v) for k, v in (params.get("lineage") or {}).items()},
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=params.get("run_name")) as run:
        mlflow.set_tags(lineage)
        mlflow.log_params({"arch": training.get("arch", "resnet18"), "num_workers": params.get("num_workers", 1),
                           **{k: v for k, v in training.items() if k != "arch"}})
        mlflow.log_dict({"labels": manifest.labels, "split_counts": manifest.split_counts}, "dataset/manifest.json")
        run_id = run.info.run_id
    log(f"MLflow run {run_id}: training {training.get('arch', 'resnet18')} on {manifest.table_path}@v{manifest.version}")

    trainer = RayTrainer(training.pop("arch", "resnet18"), num_workers=int(params.get("num_workers", 1)),
                         use_gpu=bool(params.get("use_gpu", False)), storage_path=params.get("ray_storage_path"))
    result = trainer.train({
        **training,
        "dataset_path": manifest.table_path,
        "dataset_version": manifest.version,
        "mlflow_tracking_uri": params["mlflow_tracking_uri"],
        "mlflow_run_id": run_id,
    })

    example = crop_row(load_split(manifest.table_path, manifest.version, "val")[0])
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"best_{k}": v for k, v in result.metrics.items() if k.startswith(("val_", "train_"))})
        mlflow.log_artifact(result.model_path, artifact_path="classifier")
        model_info = log_classifier_model(Path(result.model_path), example)
    return {
        "mlflow_run_id": run_id,
        "model_uri": model_info.model_uri,
        "model_path": result.model_path,
        "checkpoint_path": result.checkpoint_path,
        "metrics": result.metrics,
        "dataset_path": manifest.table_path,
        "dataset_version": manifest.version,
        "labels": manifest.labels,
    }


def main() -> None:
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        params = dict(pipes.extras)
        params.setdefault("ray_storage_path", os.environ.get("CV_PIPELINE_RAY_STORAGE"))
        outcome = run_training(params, log=pipes.log.info)
        metrics = outcome["metrics"]
        pipes.report_asset_materialization(
            metadata={
                "mlflow_run_id": outcome["mlflow_run_id"],
                "model_uri": outcome["model_uri"],
                "model_path": outcome["model_path"],
                "checkpoint_path": outcome["checkpoint_path"],
                "dataset_version": {"raw_value": outcome["dataset_version"], "type": "int"},
                "val_acc": {"raw_value": metrics.get("val_acc", float("nan")), "type": "float"},
                "val_loss": {"raw_value": metrics.get("val_loss", float("nan")), "type": "float"},
                "best_epoch": {"raw_value": int(metrics.get("epoch", -1)), "type": "int"},
                "labels": {"raw_value": outcome["labels"], "type": "json"},
            },
        )


if __name__ == "__main__":
    main()
