"""Train a model of any registered task out of process: launched through Dagster Pipes
(`PipesSubprocessClient` locally, a Databricks job there: see `cv_pipeline.jobs.runtime`),
parameters from Pipes extras, results reported back through Pipes.

Extras: task, dataset_path, dataset_version, training (RayTrainer config; `arch` picks the model),
num_workers, use_gpu, mlflow_tracking_uri, experiment_name, artifact_root, ray_storage_path,
run_name, lineage (tags recorded on the MLflow run: code revision, Dagster run id).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


@contextmanager
def epoch_progress(history_path: Path, epochs: int, log, interval_s: float = 1.0):
    """While the block runs, log one `cv_pipeline.console.epoch_message` per epoch that rank 0
    appends to `history_path` (the console turns them into a progress bar)."""
    import json
    import threading

    from cv_pipeline.console import epoch_message

    stop = threading.Event()

    def follow() -> None:
        reported = 0
        while True:
            finished = stop.wait(interval_s)
            text = history_path.read_text() if history_path.is_file() else ""
            lines = text[:text.rfind("\n") + 1].splitlines()  # complete lines only
            for line in lines[reported:]:
                record = json.loads(line)
                shown = {k: v for k, v in record.items() if k.startswith(("train_loss", "val_")) or k == "epoch_s"}
                log(epoch_message(int(record["epoch"]) + 1, epochs, shown))
            reported = max(reported, len(lines))
            if finished:
                return

    thread = threading.Thread(target=follow, name="epoch-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def run_training(params: dict, log=print) -> dict:
    """The training run, with one progress line per epoch in the job's log."""
    from cv_pipeline.deployment.training_runs import run_training as tracked_run

    return tracked_run(params, log, progress=epoch_progress)


def report_metadata(outcome: dict) -> dict:
    """Pipes metadata of a training outcome (raw values with types, as Pipes carries them)."""
    metrics = outcome["metrics"]
    metadata = {
        "task": outcome["task"],
        "profile": outcome["profile"],
        "arch": outcome["arch"],
        "mlflow_run_id": outcome["mlflow_run_id"],
        "model_uri": outcome["model_uri"],
        "model_path": outcome["model_path"],
        "checkpoint_path": outcome["checkpoint_path"],
        "storage_path": outcome["storage_path"],
        "dataset_version": {"raw_value": outcome["dataset_version"], "type": "int"},
        "monitor": outcome["monitor"],
        "best_epoch": {"raw_value": int(metrics.get("epoch", -1)), "type": "int"},
        "restarts": {"raw_value": int(outcome["restarts"]), "type": "int"},
        "labels": {"raw_value": outcome["labels"], "type": "json"},
        "history": {"raw_value": outcome["history"], "type": "json"},
    }
    if outcome.get("pretrained_weights"):
        metadata["pretrained_weights"] = outcome["pretrained_weights"]
    for key, value in metrics.items():
        if key.startswith(("val_", "train_")):
            metadata[key] = {"raw_value": float(value), "type": "float"}
    return metadata


def main() -> None:
    from cv_pipeline.jobs.runtime import run_pipes_job

    run_pipes_job(run_training, report_metadata)


if __name__ == "__main__":
    main()
