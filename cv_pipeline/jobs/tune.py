"""Hyperparameter study of any registered task out of process: launched through Dagster Pipes
(`PipesSubprocessClient` locally, a Databricks job there: see `cv_pipeline.jobs.runtime`), Ray Tune
with ASHA over RayTrainer (`cv_pipeline.training.tuning.run_study`), results reported through Pipes.

Extras: task, dataset_path, dataset_version, arch, training (base RayTrainer config every trial
starts from), search_space (JSON description, see `search_space_from_config`), num_samples,
max_epochs, grace_period, reduction_factor, max_concurrent_trials, num_workers, use_gpu,
mlflow_tracking_uri, experiment_name, artifact_root, ray_storage_path, study_name, lineage (tags
recorded on the study's MLflow run: code revision, Dagster run id).
"""

from __future__ import annotations

import time

from cv_pipeline.deployment.training_runs import ensure_experiment, lineage_tags


def run_tuning(params: dict, log=print) -> dict:
    """Run the study (Ray must be up); returns what the asset reports."""
    from cv_pipeline.models.tasks import get_task
    from cv_pipeline.training.dataset import load_manifest
    from cv_pipeline.training.ray_trainer import RayTrainer
    from cv_pipeline.training.tuning import run_study, search_space_from_config, trials_markdown

    spec = get_task(params.get("task", "classification"))
    training = dict(params.get("training") or {})
    arch = params.get("arch") or training.pop("arch", None) or spec.default_model
    training.pop("arch", None)
    search_space = search_space_from_config(params.get("search_space") or {})
    manifest = load_manifest(params["dataset_path"], params.get("dataset_version"))
    trainer = RayTrainer(arch, num_workers=int(params.get("num_workers", 1)), use_gpu=bool(params.get("use_gpu", False)),
                         task=spec.name, storage_path=params.get("ray_storage_path"))
    study_name = params.get("study_name") or f"hpo-{spec.name}-{manifest.content_hash[:8]}-{int(time.time())}"

    tracking_uri = params.get("mlflow_tracking_uri")
    experiment_id = None
    if tracking_uri:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri)
        experiment_id = ensure_experiment(params.get("experiment_name") or "cv_pipeline", params.get("artifact_root"))
    log(f"HPO study {study_name}: {spec.name}/{arch} on {manifest.table_path}@v{manifest.version}, "
        f"{params.get('num_samples', 4)} samples x <= {params.get('max_epochs', 3)} epochs, ASHA on {spec.val_monitor}")

    study = run_study(
        trainer,
        {**training, "dataset_path": manifest.table_path, "dataset_version": manifest.version},
        search_space,
        num_samples=int(params.get("num_samples", 4)),
        max_epochs=int(params.get("max_epochs", 3)),
        grace_period=int(params.get("grace_period", 1)),
        reduction_factor=float(params.get("reduction_factor", 2)),
        max_concurrent_trials=int(params.get("max_concurrent_trials", 1)),
        study_name=study_name,
        mlflow_tracking_uri=tracking_uri,
        experiment_id=experiment_id,
        mlflow_tags={"task": spec.name, "arch": arch, **lineage_tags(manifest, params.get("lineage"))},
    )
    log(f"HPO study {study_name}: best {study.monitor}={study.best_metric:.4f} with {study.best_config} "
        f"({len(study.trials)} trials, {study.num_stopped_early} stopped early by ASHA)")
    return {
        "task": spec.name,
        "arch": arch,
        "study_name": study_name,
        "monitor": study.monitor,
        "mode": study.mode,
        "best_config": study.best_config,
        "best_metric": study.best_metric,
        "best_trial_id": study.best_trial_id,
        "trials": study.trials,
        "trials_markdown": trials_markdown(study),
        "num_trials": len(study.trials),
        "stopped_early": study.num_stopped_early,
        "storage_path": study.storage_path,
        "mlflow_run_id": study.mlflow_run_id,
        "dataset_path": manifest.table_path,
        "dataset_version": manifest.version,
    }


def report_metadata(outcome: dict) -> dict:
    """Pipes metadata of a study (raw values with types, as Pipes carries them)."""
    metadata = {
        "task": outcome["task"],
        "arch": outcome["arch"],
        "study_name": outcome["study_name"],
        "monitor": outcome["monitor"],
        "mode": outcome["mode"],
        "trials": {"raw_value": outcome["trials_markdown"], "type": "md"},
        "best_config": {"raw_value": outcome["best_config"], "type": "json"},
        f"best_{outcome['monitor']}": {"raw_value": float(outcome["best_metric"]), "type": "float"},
        "best_trial_id": outcome["best_trial_id"],
        "num_trials": {"raw_value": int(outcome["num_trials"]), "type": "int"},
        "stopped_early": {"raw_value": int(outcome["stopped_early"]), "type": "int"},
        "storage_path": {"raw_value": outcome["storage_path"], "type": "path"},
        "dataset_version": {"raw_value": int(outcome["dataset_version"]), "type": "int"},
    }
    if outcome.get("mlflow_run_id"):
        metadata["mlflow_run_id"] = outcome["mlflow_run_id"]
    return metadata


def main() -> None:
    from cv_pipeline.jobs.runtime import run_pipes_job

    run_pipes_job(run_tuning, report_metadata)


if __name__ == "__main__":
    main()
