"""RayTrainer: Lightning inside Ray Train's TorchTrainer (Ray Train V2 API), for any registered task.

`train_loop` runs on every Ray worker: it reads the pinned `training_dataset` from Delta (delta-rs,
no JVM), shards it by Ray rank and DataLoader worker, builds a `pl.Trainer` with `RayDDPStrategy`,
`RayLightningEnvironment` and `RayTrainReportCallback` (a checkpoint per epoch), and fits. Mixed
precision on GPU, gradient accumulation, early stopping and best-N checkpoints come from the
config; a restarted worker group (FailureConfig) or a re-run under the same name and storage path
resumes from the latest checkpoint. Only rank 0 talks to MLflow: per-epoch metrics through
Lightning's MLFlowLogger and system metrics (CPU, memory, GPU utilisation and memory) through
MLflow's monitor. The driver picks the best checkpoint by the task's validation metric and
exports the model artifact from it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cv_pipeline import settings

DEFAULT_CONFIG = {
    "seed": 17,
    "early_stopping_patience": 0,  # 0 disables early stopping
    "pretrained_weights": None,  # local file or an earlier run's checkpoint directory; never a download
    "accumulate_grad_batches": 1,
    "gradient_clip_val": None,
    "precision": "auto",  # auto: bf16/16-mixed on GPU, 32-true on CPU
    "checkpoints_to_keep": 2,  # best N by the task's validation metric
    "max_failures": 1,  # worker-group restarts from the last checkpoint before the run fails
    "loader_workers": 0,  # DataLoader worker processes per Ray worker
    "model_options": {},
}


@dataclass
class TrainingResult:
    metrics: dict
    checkpoint_path: str  # Ray checkpoint directory of the best epoch
    model_path: str  # model artifact exported from it
    mlflow_run_id: str | None
    storage_path: str  # the run's folder: re-running with the same name resumes from it
    task: str = "classification"
    arch: str = ""
    history: list[dict] = field(default_factory=list)  # per-epoch metrics, every attempt
    attempts: list[dict] = field(default_factory=list)  # one per start of the worker group

    def __getitem__(self, key):  # dict-style access for notebook users
        return getattr(self, key)


def _append_jsonl(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(record, default=float) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _precision(config: dict, use_gpu: bool) -> str:
    import torch

    precision = config.get("precision", "auto")
    if precision != "auto":
        return precision
    if not use_gpu:
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def make_datasets(spec, manifest, config: dict):
    """(train, val) map-style datasets of a task: its own builder, else the Delta image dataset."""
    built = spec.build_datasets(manifest, config) if spec.build_datasets else None
    if built is not None:
        return _limit(built, config)
    from cv_pipeline.training.coco_dataset import CocoDeltaDataset, load_image_records

    datasets = []
    for split, train in (("train", True), ("val", False)):
        records = load_image_records(manifest, split)
        if spec.keep_record is not None:
            records = [record for record in records if spec.keep_record(record)]
        if not records:
            raise ValueError(f"task {spec.name}: the {split} split of {manifest.table_path}@v{manifest.version} is empty")
        transforms = spec.transforms(train, config) if spec.transforms else None
        datasets.append(CocoDeltaDataset(records, spec.target_builder, transforms))
    return _limit(datasets, config)


def _limit(datasets, config: dict) -> tuple:
    """`max_train_samples` / `max_val_samples` (smoke runs): the first N of each split."""
    from torch.utils.data import Subset

    limited = []
    for dataset, key in zip(datasets, ("max_train_samples", "max_val_samples")):
        limit = config.get(key)
        limited.append(Subset(dataset, range(min(len(dataset), int(limit)))) if limit else dataset)
    return tuple(limited)


def train_loop(config: dict) -> None:
    """Per-worker training function (runs inside Ray Train workers)."""
    import lightning.pytorch as pl
    import ray.train
    import torch
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
    from torch.utils.data import DataLoader

    from cv_pipeline.models.lightning_task import TaskModule
    from cv_pipeline.training.coco_dataset import ShardedDataset
    from cv_pipeline.training.dataset import load_manifest

    spec = config["task_spec"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    pl.seed_everything(int(config["seed"]), workers=True)
    torch.set_num_threads(max(1, int(config.get("torch_threads") or os.cpu_count() or 1)))
    manifest = load_manifest(config["dataset_path"], config["dataset_version"])
    train_data, val_data = make_datasets(spec, manifest, config)
    batch_size = int(config["batch_size"])
    loader_workers = int(config.get("loader_workers") or 0)
    train_shards = ShardedDataset(train_data, shuffle=True, seed=int(config["seed"]), rank=rank, world_size=world)
    loader_options = {"num_workers": loader_workers, "collate_fn": spec.collate, "persistent_workers": False,
                      "pin_memory": bool(config.get("use_gpu"))}
    train_loader = DataLoader(train_shards, batch_size=batch_size, drop_last=len(train_shards) > batch_size,
                              **loader_options)
    val_loader = DataLoader(ShardedDataset(val_data, shuffle=False, rank=rank, world_size=world),
                            batch_size=int(config.get("val_batch_size") or batch_size), **loader_options)

    module = TaskModule(spec, config["arch"], config["num_classes"], {**config, "max_epochs": config["epochs"]})
    run_dir = Path(config["run_dir"])
    checkpoint = ray.train.get_checkpoint()
    ckpt_path = resumed_epoch = None
    if checkpoint is not None:
        local = Path(tempfile.mkdtemp(prefix="cv_pipeline_resume_"))
        with checkpoint.as_directory() as directory:
            shutil.copy(Path(directory) / RayTrainReportCallback.CHECKPOINT_NAME, local / "checkpoint.ckpt")
        ckpt_path = str(local / "checkpoint.ckpt")
        resumed_epoch = int(torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"])
    if rank == 0:
        _append_jsonl(run_dir / "attempts.jsonl", {"started_at": time.time(), "world_size": world,
                                                    "resumed_from_checkpoint": checkpoint.path if checkpoint else None,
                                                    "resumed_at_epoch": resumed_epoch})

    logger, mlflow_run = False, None
    if rank == 0 and config.get("mlflow_run_id"):
        import mlflow
        from lightning.pytorch.loggers import MLFlowLogger

        mlflow.set_tracking_uri(config["mlflow_tracking_uri"])
        mlflow.set_system_metrics_sampling_interval(float(config.get("system_metrics_interval_s", 5)))
        mlflow.set_system_metrics_samples_before_logging(1)
        mlflow_run = mlflow.start_run(run_id=config["mlflow_run_id"], log_system_metrics=True)
        logger = MLFlowLogger(tracking_uri=config["mlflow_tracking_uri"], run_id=config["mlflow_run_id"])

    callbacks = [RayTrainReportCallback(), _EpochHooks(train_shards, run_dir if rank == 0 else None, rank,
                                                       config.get("fault_injection"))]
    if config.get("early_stopping_patience"):
        callbacks.append(pl.callbacks.EarlyStopping(spec.val_monitor, mode=spec.mode,
                                                    patience=int(config["early_stopping_patience"])))
    use_gpu = torch.cuda.is_available() and bool(config.get("use_gpu"))
    trainer = pl.Trainer(
        max_epochs=int(config["epochs"]),
        accelerator="gpu" if use_gpu else "cpu",
        devices="auto",
        precision=_precision(config, use_gpu),
        accumulate_grad_batches=int(config.get("accumulate_grad_batches") or 1),
        gradient_clip_val=config.get("gradient_clip_val"),
        strategy=RayDDPStrategy(find_unused_parameters=bool(config.get("find_unused_parameters", False))),
        plugins=[RayLightningEnvironment()],
        callbacks=callbacks,
        logger=logger,
        log_every_n_steps=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=tempfile.mkdtemp(prefix="cv_pipeline_pl_"),
    )
    trainer = prepare_trainer(trainer)
    try:
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
    finally:
        if mlflow_run is not None:
            import mlflow

            mlflow.end_run()


def _make_epoch_hooks_class():
    import lightning.pytorch as pl

    class EpochHooks(pl.Callback):
        """Reshuffles the shards each epoch, records per-epoch metrics (rank 0), and, for fault
        tolerance tests (`fault_injection: {after_epoch, rank, marker}`), kills this worker with
        SIGKILL once, as the epoch after `after_epoch` starts (the marker file records it)."""

        def __init__(self, shards, run_dir: Path | None, rank: int, fault_injection: dict | None):
            self.shards, self.run_dir, self.rank, self.fault = shards, run_dir, rank, fault_injection or {}

        def on_train_epoch_start(self, trainer, pl_module):
            self.shards.set_epoch(trainer.current_epoch)
            fault = self.fault
            if fault and trainer.current_epoch == int(fault.get("after_epoch", 0)) + 1 \
                    and self.rank == int(fault.get("rank", 0)):
                marker = Path(fault["marker"])
                if not marker.exists():  # once: the restarted worker must get past this epoch
                    # Let Ray Train's controller collect every rank's report of the last epoch first
                    # (it polls the workers); a worker dying right after reporting loses that checkpoint.
                    time.sleep(float(fault.get("delay_s", 5.0)))
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            if self.run_dir is not None:  # epoch_s: this epoch's training and validation, wall seconds
                metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
                _append_jsonl(self.run_dir / "history.jsonl", {
                    "epoch": trainer.current_epoch, **metrics, "epoch_s": time.perf_counter() - self.started,
                    "train_samples": len(self.shards) * trainer.world_size})

    return EpochHooks


def _EpochHooks(*args, **kwargs):  # noqa: N802 - a class built lazily so this module imports without Lightning
    return _make_epoch_hooks_class()(*args, **kwargs)


class RayTrainer:
    """Train a model of a registered task with Lightning on Ray Train.

    `model` names an architecture of the task (e.g. "resnet18", "fasterrcnn_resnet18_fpn",
    "maskrcnn_resnet18_fpn", "lraspp_resnet18"); `task` is a registered task name or a TaskSpec.
    """

    def __init__(self, model: str | None = None, num_workers: int = 1, use_gpu: bool = False, *,
                 task: str = "classification", storage_path: str | Path | None = None,
                 cpus_per_worker: float | None = None):
        from cv_pipeline.models.tasks import get_task

        self.spec = get_task(task)
        model = model or self.spec.default_model
        if model not in self.spec.models:
            raise ValueError(f"Unknown model {model!r} for task {self.spec.name!r}; choose one of {sorted(self.spec.models)}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.model = model
        self.num_workers = num_workers
        self.use_gpu = use_gpu
        self.storage_path = Path(storage_path) if storage_path else settings.ray_storage_dir()
        self.cpus_per_worker = cpus_per_worker or 1

    def loop_config(self, config: dict):
        """The per-worker config: defaults < the task's defaults < `config`; pins the dataset version."""
        from cv_pipeline.training.dataset import load_manifest

        if "dataset_path" not in config:
            raise ValueError("RayTrainer.train config is missing ['dataset_path']")
        manifest = load_manifest(config["dataset_path"], config.get("dataset_version"))
        merged = {**DEFAULT_CONFIG, **self.spec.defaults, **{k: v for k, v in config.items() if v is not None}}
        merged.update(task=self.spec.name, task_spec=self.spec, arch=self.model, use_gpu=self.use_gpu,
                      dataset_path=manifest.table_path, dataset_version=manifest.version,
                      num_classes=len(manifest.labels))
        merged.setdefault("torch_threads", max(1, (os.cpu_count() or 1) // self.num_workers))
        return merged, manifest

    def torch_trainer(self, loop_config: dict, name: str, callbacks: list | None = None):
        """The TorchTrainer for one run (the tuning driver builds its trials with this too)."""
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        loop_config = {**loop_config, "run_dir": str(self.storage_path / name)}
        ship_task_code(self.spec)
        return TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu,
                                         resources_per_worker={"CPU": self.cpus_per_worker}),
            run_config=RunConfig(
                name=name,
                storage_path=str(self.storage_path),
                failure_config=FailureConfig(max_failures=int(loop_config.get("max_failures", 1))),
                checkpoint_config=CheckpointConfig(num_to_keep=int(loop_config.get("checkpoints_to_keep", 2)),
                                                   checkpoint_score_attribute=self.spec.val_monitor,
                                                   checkpoint_score_order=self.spec.mode),
                callbacks=callbacks,
            ),
        )

    def train(self, config: dict) -> TrainingResult:
        """Fit on `config["dataset_path"]` at `config["dataset_version"]`; returns metrics and checkpoint.

        `run_name` names the run's folder under the storage path; training again with the same name
        resumes from its latest checkpoint (an interrupted run continues where it stopped).
        """
        from cv_pipeline.jobs.runtime import start_ray

        loop_config, manifest = self.loop_config(config)
        start_ray(num_workers=self.num_workers, use_gpu=self.use_gpu, cpus_per_worker=self.cpus_per_worker)
        name = config.get("run_name") or f"{self.spec.name}-{manifest.content_hash[:8]}-{os.getpid()}-{int(time.time())}"
        from ray.train import TrainingFailedError

        try:
            result = self.torch_trainer(loop_config, name).fit()
        except TrainingFailedError as error:
            raise RuntimeError(f"Ray training run {name} failed (train again with run_name={name!r} and the "
                               f"same storage path to resume from its last checkpoint): {error}") from error
        if result.error:
            raise RuntimeError(f"Ray training run {name} failed: {result.error}") from result.error
        return self.finish(result, loop_config, manifest, name, config.get("mlflow_run_id"))

    def finish(self, result, loop_config: dict, manifest, name: str, mlflow_run_id: str | None = None) -> TrainingResult:
        best_checkpoint, best_metrics = best_checkpoint_of(result, self.spec)
        run_dir = self.storage_path / name
        model_path = run_dir / "model.pt"
        export_model(self.spec, best_checkpoint, manifest, loop_config, model_path)
        metrics = {k: float(v) for k, v in best_metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return TrainingResult(
            metrics=metrics, checkpoint_path=best_checkpoint.path, model_path=str(model_path),
            mlflow_run_id=mlflow_run_id, storage_path=str(run_dir), task=self.spec.name, arch=self.model,
            history=_read_jsonl(run_dir / "history.jsonl"), attempts=_read_jsonl(run_dir / "attempts.jsonl"),
        )


def ship_task_code(spec) -> None:
    """Let Ray workers unpickle a user's task: its code is pickled by value when its module is not
    one the workers can import (a script, a notebook, a test file outside any package)."""
    import functools
    import sys
    import sysconfig

    from ray import cloudpickle

    installed = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]})
    objects = [*spec.models.values(), spec.loss, spec.metrics, spec.update_metrics, spec.target_builder,
               spec.transforms, spec.collate, spec.keep_record, spec.build_datasets, spec.model_classes]
    for obj in objects:
        while isinstance(obj, functools.partial):
            obj = obj.func
        name = getattr(obj, "__module__", None)
        module = sys.modules.get(name or "")
        if module is None or name == "__main__" or name.split(".")[0] == "cv_pipeline":
            continue
        file = str(Path(getattr(module, "__file__", "") or "").resolve())
        if not file.startswith(installed):  # user code: by value is always safe, by reference may not be
            cloudpickle.register_pickle_by_value(module)


def best_checkpoint_of(result, spec):
    candidates = [pair for pair in (getattr(result, "best_checkpoints", None) or []) if spec.val_monitor in pair[1]]
    if candidates:
        pick = max if spec.mode == "max" else min
        return pick(candidates, key=lambda pair: pair[1][spec.val_monitor])
    if result.checkpoint is None:
        raise RuntimeError("Ray training finished without a checkpoint")
    return result.checkpoint, dict(result.metrics or {})


def checkpoint_state(checkpoint) -> dict:
    """The LightningModule state dict of a checkpoint reported by RayTrainReportCallback."""
    import torch
    from ray.train.lightning import RayTrainReportCallback

    with checkpoint.as_directory() as directory:
        ckpt_file = Path(directory) / RayTrainReportCallback.CHECKPOINT_NAME
        return torch.load(ckpt_file, map_location="cpu", weights_only=False)["state_dict"]


def export_model(spec, checkpoint, manifest, config: dict, model_path: Path) -> None:
    """Write the model artifact of the best checkpoint: the classifier's serving format for
    classification, the generic task artifact otherwise."""
    state = {k.removeprefix("model."): v for k, v in checkpoint_state(checkpoint).items() if k.startswith("model.")}
    lineage = {"dataset_path": manifest.table_path, "dataset_version": manifest.version,
               "source_versions": manifest.source_versions, "dataset_hash": manifest.content_hash}
    labels = [{k: label[k] for k in ("index", "category_id", "name")} for label in manifest.labels]
    if spec.name == "classification":
        from cv_pipeline.models.classification import ClassifierSpec, build_classifier, save_classifier_artifact

        model = build_classifier(config["arch"], len(manifest.labels))
        model.load_state_dict(state)
        save_classifier_artifact(model_path, model, ClassifierSpec(
            arch=config["arch"], labels=labels, image_size=int(config["image_size"]), extra=lineage))
        return
    from cv_pipeline.models.tasks import save_model_artifact

    options = spec.model_options(config)
    model = spec.build_model(config["arch"], len(manifest.labels), **options)
    model.load_state_dict(state)
    save_model_artifact(model_path, model, task=spec.name, arch=config["arch"], labels=labels, options=options,
                        extra=lineage)

