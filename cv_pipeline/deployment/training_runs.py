"""Train a task's model on Ray and track it in MLflow: the run with its lineage tags, the checkpoint,
and the model logged as the task's pyfunc (`VisionModel`), which evaluation and serving load.

`run_training(params)` is what the training job script runs out of process (Dagster Pipes) and
what `DeploymentPipeline` runs in a notebook. Params: task, dataset_path, dataset_version, training
(RayTrainer config; `arch` picks the model), num_workers, use_gpu, mlflow_tracking_uri,
experiment_name, artifact_root, ray_storage_path, run_name, lineage (tags recorded on the MLflow
run: code revision, Dagster run id).
"""

from __future__ import annotations

from pathlib import Path


def ensure_experiment(name: str, artifact_root: str | None) -> str:
    """The id of an MLflow experiment, created with our artifact root if it does not exist."""
    import mlflow

    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = Path(artifact_root, name).as_uri() if artifact_root and "://" not in artifact_root else artifact_root
    return mlflow.create_experiment(name, artifact_location=location)


def lineage_tags(manifest, extra: dict | None = None) -> dict:
    """What a model version was trained on: Delta versions, dataset hash, code revision."""
    return {
        "dataset_path": manifest.table_path,
        "dataset_version": str(manifest.version),
        "dataset_hash": manifest.content_hash,
        **{f"delta_version.{k}": str(v) for k, v in manifest.source_versions.items()},
        **{k: str(v) for k, v in (extra or {}).items()},
    }


MLFLOW_URI_SCHEMES = ("runs:/", "models:/", "mlflow-artifacts:/", "dbfs:/")


def resolve_pretrained(uri: str | None, storage_path: str | None) -> str | None:
    """`pretrained_weights` as a path the Ray workers can read: an MLflow artifact URI (for example
    another model asset's `runs:/<id>/model/model.pt`) is downloaded under the Ray storage path
    (shared by every node: a local folder here, a volume on Databricks); a path stays as it is."""
    if not uri or not uri.startswith(MLFLOW_URI_SCHEMES):
        return uri
    import hashlib
    import tempfile

    import mlflow

    root = Path(storage_path) if storage_path else Path(tempfile.gettempdir())
    destination = root / "pretrained" / hashlib.sha256(uri.encode()).hexdigest()[:16]
    destination.mkdir(parents=True, exist_ok=True)
    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(destination))


def log_task_model(spec, manifest, model_path: Path, run_id: str, log=print) -> str:
    """Log a trained model into the active run as the task's pyfunc model (every task the same way,
    with a validation image as the input example); returns its URI. A task without `predict` and
    evaluation is logged as its artifact file only, and cannot be evaluated or served."""
    import mlflow

    if not spec.servable:
        log(f"task {spec.name!r} has no predict/evaluation_samples/evaluate: its model is logged as a file only")
        mlflow.log_artifact(str(model_path), artifact_path="model")
        return f"runs:/{run_id}/model/{model_path.name}"
    from cv_pipeline.models.pyfunc import log_vision_model

    example = spec.evaluation_samples(manifest, "val", 1).images[0]
    return log_vision_model(model_path, example).model_uri


def run_training(params: dict, log=print, progress=None) -> dict:
    """Create the MLflow run, train on Ray, log checkpoint and model; returns what the asset reports.

    `progress(history_path, epochs, log)`, a context manager, runs around the training (the job
    script follows the epoch history there)."""
    from contextlib import nullcontext

    import mlflow

    from cv_pipeline.models.tasks import get_task
    from cv_pipeline.training.dataset import load_manifest
    from cv_pipeline.training.ray_trainer import RayTrainer

    spec = get_task(params.get("task", "classification"))
    mlflow.set_tracking_uri(params["mlflow_tracking_uri"])
    experiment_id = ensure_experiment(params["experiment_name"], params.get("artifact_root"))
    manifest = load_manifest(params["dataset_path"], params.get("dataset_version"))
    training = dict(params.get("training") or {})
    arch = training.pop("arch", None) or spec.default_model
    pretrained_source = training.get("pretrained_weights")
    if pretrained_source:
        training["pretrained_weights"] = resolve_pretrained(pretrained_source, params.get("ray_storage_path"))
    num_workers = int(params.get("num_workers", 1))
    trainer = RayTrainer(arch, num_workers=num_workers, use_gpu=bool(params.get("use_gpu", False)), task=spec.name,
                         storage_path=params.get("ray_storage_path"))
    with mlflow.start_run(experiment_id=experiment_id, run_name=params.get("run_name")) as run:
        mlflow.set_tags({"task": spec.name, "arch": arch, **lineage_tags(manifest, params.get("lineage")),
                         **({"pretrained_weights": pretrained_source} if pretrained_source else {})})
        # params carry the resolved local path (Lightning's logger logs the same hyperparameters
        # again, and MLflow refuses a changed value); the tag keeps the source URI
        mlflow.log_params({"task": spec.name, "arch": arch, "num_workers": num_workers,
                           "use_gpu": bool(params.get("use_gpu", False)), **{**spec.defaults, **training}})
        mlflow.log_dict({"labels": manifest.labels, "split_counts": manifest.split_counts}, "dataset/manifest.json")
        run_id = run.info.run_id
    log(f"MLflow run {run_id}: training {spec.name}/{arch} on {manifest.table_path}@v{manifest.version}")

    epochs = int(training.get("epochs") or spec.defaults.get("epochs") or 0)
    history = trainer.storage_path / str(params.get("run_name")) / "history.jsonl"
    with progress(history, epochs, log) if progress else nullcontext():
        result = trainer.train({
            **training,
            "dataset_path": manifest.table_path,
            "dataset_version": manifest.version,
            "mlflow_tracking_uri": params["mlflow_tracking_uri"],
            "mlflow_run_id": run_id,
            "run_name": params.get("run_name"),
        })

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics({f"best_{k}": v for k, v in result.metrics.items() if k.startswith(("val_", "train_"))})
        mlflow.log_artifacts(result.checkpoint_path, artifact_path="checkpoint")
        mlflow.set_tag("restarts", str(max(0, len(result.attempts) - 1)))
        model_uri = log_task_model(spec, manifest, Path(result.model_path), run_id, log)
    return {
        "task": spec.name,
        "profile": params.get("profile", "full"),
        "arch": arch,
        "mlflow_run_id": run_id,
        "model_uri": model_uri,
        "model_path": result.model_path,
        "checkpoint_path": result.checkpoint_path,
        "storage_path": result.storage_path,
        "metrics": result.metrics,
        "monitor": spec.val_monitor,
        "history": result.history,
        "restarts": max(0, len(result.attempts) - 1),
        "dataset_path": manifest.table_path,
        "dataset_version": manifest.version,
        "labels": manifest.labels,
        "pretrained_weights": pretrained_source,
    }
