"""RayTrainer: Lightning inside Ray Train's TorchTrainer (Ray Train V2 API), for any registered task.

`train_loop` runs on every Ray worker: it reads the pinned `training_dataset` from Delta (delta-rs,
no JVM), shards it by Ray rank and DataLoader worker, builds a `pl.Trainer` with `RayDDPStrategy`
(a single worker's model left unwrapped) and `RayLightningEnvironment`, and fits; every epoch a
checkpoint is reported to Ray Train, written once into the run's folder while the next epoch starts
(`_EpochHooks`: `RayTrainReportCallback` without its copy, off the training thread). Mixed
precision on GPU, gradient accumulation, early stopping and best-N checkpoints come from the
config; a restarted worker group (FailureConfig) or a re-run under the same name and storage path
resumes from the latest checkpoint. Only rank 0 talks to MLflow: per-epoch metrics through
Lightning's MLFlowLogger and system metrics (CPU, memory, GPU utilisation and memory) through
MLflow's monitor. The driver picks the best checkpoint by the task's validation metric and
exports the model artifact from it.
"""

from __future__ import annotations

import functools
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
    from ray.train.lightning import RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
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

    callbacks = [_EpochHooks(train_shards, run_dir if rank == 0 else None, rank, config.get("fault_injection"))]
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
        strategy=_ray_ddp_strategy_class()(find_unused_parameters=bool(config.get("find_unused_parameters", False))),
        plugins=[RayLightningEnvironment(), _FileCheckpointIO()],
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
    import threading

    import lightning.pytorch as pl
    import ray.train
    import torch
    from lightning.fabric.utilities.apply_func import apply_to_collection
    from ray.train import Checkpoint, CheckpointUploadMode
    from ray.train.lightning import RayTrainReportCallback

    class EpochHooks(pl.Callback):
        """Each epoch: reshuffles the shards; at its end reports the metrics and a checkpoint to Ray
        Train (what `RayTrainReportCallback` does, the checkpoint written once and off the training
        thread, see `_report_checkpoint`); rank 0 records the epoch in history.jsonl with its wall
        time split into training, validation and checkpoint + report. For fault tolerance tests
        (`fault_injection: {after_epoch, rank, marker}`) it kills this worker with SIGKILL once, as
        the epoch after `after_epoch` starts (the marker file records it)."""

        CHECKPOINT_NAME = RayTrainReportCallback.CHECKPOINT_NAME  # what checkpoint_state and resuming read

        def __init__(self, shards, run_dir: Path | None, rank: int, fault_injection: dict | None):
            self.shards, self.run_dir, self.rank, self.fault = shards, run_dir, rank, fault_injection or {}
            self.marks: dict[str, float] = {}
            self.writing: threading.Event | None = None  # set once the last checkpoint is on disk
            self.scratch: Path | None = None  # a local folder for checkpoints that Ray uploads

        def on_train_epoch_start(self, trainer, pl_module):
            self.shards.set_epoch(trainer.current_epoch)
            fault = self.fault
            if fault and trainer.current_epoch == int(fault.get("after_epoch", 0)) + 1 \
                    and self.rank == int(fault.get("rank", 0)):
                marker = Path(fault["marker"])
                if not marker.exists():  # once: the restarted worker must get past this epoch
                    # Let Ray Train's controller collect every rank's report of the last epoch first
                    # (it polls the workers); a worker dying right after reporting loses that checkpoint.
                    self._written()
                    time.sleep(float(fault.get("delay_s", 5.0)))
                    marker.parent.mkdir(parents=True, exist_ok=True)
                    marker.write_text(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)
            self.marks = {"start": time.perf_counter(), "checkpoint_wait": 0.0}

        def on_before_optimizer_step(self, trainer, pl_module, optimizer):
            if self.writing is not None:  # the step changes what the checkpoint being written holds
                waited = time.perf_counter()
                self._written()
                self.marks["checkpoint_wait"] += time.perf_counter() - waited

        def on_validation_start(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.marks["val_start"] = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                self.marks["val_end"] = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            reached = time.perf_counter()
            self._report_checkpoint(trainer, pl_module)
            if self.run_dir is None:
                return
            end, start = time.perf_counter(), self.marks["start"]
            val_start, val_end = self.marks.get("val_start", reached), self.marks.get("val_end", reached)
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
            _append_jsonl(self.run_dir / "history.jsonl", {
                "epoch": trainer.current_epoch, **metrics,
                "epoch_s": end - start,  # this epoch's training, validation, checkpoint and report, wall seconds
                "train_s": val_start - start, "val_s": val_end - val_start, "checkpoint_s": end - val_end,
                # part of train_s: the first optimiser step waiting for the last epoch's checkpoint write
                "checkpoint_wait_s": self.marks["checkpoint_wait"],
                "train_samples": len(self.shards) * trainer.world_size})

        def on_train_end(self, trainer, pl_module):
            self._written()

        def teardown(self, trainer, pl_module, stage):
            self._written()
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)
                self.scratch = None

        def _written(self) -> None:
            """Wait until the last checkpoint is on disk (a failed write fails the run from Ray's thread)."""
            if self.writing is not None:
                self.writing.wait()
                self.writing = None

        def _report_checkpoint(self, trainer, pl_module) -> None:
            """Report the epoch's metrics and checkpoint (model, optimiser, schedulers, loops: what
            resuming needs) to Ray Train.

            `RayTrainReportCallback` writes the checkpoint to a temporary folder, has Ray copy it into
            the run's storage folder and deletes the original, all on the training thread: for a
            resnet18 and its AdamW state, 128 MB written twice and deleted once every epoch. Here,
            where this node sees the storage as a file system (local or mounted), rank 0 writes it
            once, into a new checkpoint folder of the run, on Ray's checkpoint upload thread
            (`CheckpointUploadMode.ASYNC` with our own `checkpoint_upload_fn`); Ray registers it once
            it is on disk. The next epoch starts meanwhile, and its first optimiser step waits for the
            write: parameters and optimiser state change only there, so they are written as they are;
            every other tensor of the checkpoint (BatchNorm statistics, which the next forward pass
            updates) is copied first. Other ranks report no checkpoint (Ray keeps rank 0's). Storage
            this node cannot write in place (cloud storage) goes through Ray's own upload."""
            metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
            metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
            self._written()  # one checkpoint write at a time (the last one is normally long done)
            checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)  # on every rank
            if self.rank != 0:
                ray.train.report(metrics, checkpoint=None, checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
                return
            storage = ray.train.get_context().get_storage()
            checkpoint_io = trainer.strategy.checkpoint_io
            if self.scratch is None:
                self.scratch = Path(tempfile.mkdtemp(prefix="cv_pipeline_checkpoint_"))
            if not _writes_in_place(storage):
                folder = self.scratch / str(trainer.current_epoch)
                checkpoint_io.save_checkpoint(checkpoint, folder / self.CHECKPOINT_NAME)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(folder)),
                                 checkpoint_upload_mode=CheckpointUploadMode.SYNC)
                shutil.rmtree(folder, ignore_errors=True)
                return

            unchanged = {p.data_ptr() for p in pl_module.parameters()}  # until the next optimiser step
            for optimizer in trainer.optimizers:
                for state in optimizer.state.values():
                    unchanged.update(v.data_ptr() for v in state.values() if isinstance(v, torch.Tensor))
            checkpoint = apply_to_collection(
                checkpoint, torch.Tensor, lambda t: t if t.data_ptr() in unchanged else t.detach().clone())
            name = storage.make_default_checkpoint_dir_name()
            folder = storage.build_checkpoint_path_from_name(name)
            self.writing = written = threading.Event()

            def write(_placeholder, _name):  # on Ray's checkpoint upload thread
                try:
                    checkpoint_io.save_checkpoint(checkpoint, Path(folder) / self.CHECKPOINT_NAME)
                    return Checkpoint(folder, filesystem=storage.storage_filesystem)
                finally:
                    written.set()

            try:
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(self.scratch)),
                                 checkpoint_dir_name=name, checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                                 checkpoint_upload_fn=write, delete_local_checkpoint_after_upload=False)
            except BaseException:
                written.set()  # nothing was queued: no step may wait for it
                raise

    return EpochHooks


@functools.cache
def _ray_ddp_strategy_class():
    from ray.train.lightning import RayDDPStrategy

    class RayDDPStrategyOneWorkerUnwrapped(RayDDPStrategy):
        """`RayDDPStrategy` that leaves the model of a single worker unwrapped: DDP on one process
        still copies every gradient into its buckets and all-reduces them with itself each step.
        With two or more workers this is `RayDDPStrategy` as it is."""

        def configure_ddp(self) -> None:
            if self.world_size > 1:
                super().configure_ddp()

    return RayDDPStrategyOneWorkerUnwrapped


def _writes_in_place(storage) -> bool:
    """Whether this worker can write a checkpoint straight into the run's storage folder: a local
    file system path that this node sees (Ray's storage marker is there; on a multi-node cluster
    without shared storage it is not)."""
    import pyarrow.fs

    try:
        from ray.train.v2._internal.constants import VALIDATE_STORAGE_MARKER_FILENAME
    except ImportError:  # Ray moved it: take the upload path
        return False
    return isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem) and \
        (Path(storage.experiment_fs_path) / VALIDATE_STORAGE_MARKER_FILENAME).exists()


def _EpochHooks(*args, **kwargs):  # noqa: N802 - a class built lazily so this module imports without Lightning
    return _make_epoch_hooks_class()(*args, **kwargs)


def _file_checkpoint_io_class():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class FileCheckpointIO(TorchCheckpointIO):
        """Lightning's checkpoint writer, writing a local file directly: `TorchCheckpointIO` serialises
        into a growing in-memory buffer first and copies that into the file (for fsspec URLs), twice
        the memory traffic of `torch.save` for a checkpoint of 128 MB. Atomic all the same: written
        next to the target and renamed over it. URLs still go through Lightning's own writer."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            import torch

            if "://" in str(path) or storage_options is not None:
                return super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.partial")
            torch.save(checkpoint, partial)
            os.replace(partial, path)

    return FileCheckpointIO


def _FileCheckpointIO():  # noqa: N802
    return _file_checkpoint_io_class()()


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

        loop_config = {**loop_config, "run_dir": str(self.storage_path / name)}
        ship_task_code(self.spec)
        return _torch_trainer_class()(
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
        from cv_pipeline.training.ray_cluster import start_ray

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


@functools.cache
def _torch_trainer_class():
    from ray.train.torch import TorchTrainer

    class CvPipelineTorchTrainer(TorchTrainer):
        """Ray Train's TorchTrainer without its PlacementGroupCleaner where Ray's State API cannot answer.

        The cleaner is a detached actor that asks the State API every second whether the run's
        controller is still alive, to remove the placement group if it died. The State API is served
        by the Ray dashboard, which a local Ray from `start_ray` does not run: each question failed,
        logged "Failed to query Ray Train Controller actor state" (over a thousand times a run), cost
        a psutil scan and a failed HTTP request each time (CPU taken from training on a small
        machine), and the cleaner could never act. Ray removes a job's placement groups when the job
        (the driver) ends, and tuning removes its stopped trials' groups itself
        (`tuning._PlacementGroupJanitor`). With a dashboard (a cluster of the user's) the cleaner stays."""

        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if _state_api_answers():
                return callbacks
            return [callback for callback in callbacks if type(callback).__name__ != "PlacementGroupCleanerCallback"]

    return CvPipelineTorchTrainer


def _state_api_answers() -> bool:
    """Whether this Ray cluster serves the State API (it comes with the dashboard)."""
    try:
        from ray._private.worker import get_dashboard_url

        return bool(get_dashboard_url())
    except Exception:  # noqa: BLE001 - Ray moved it or is not connected: assume no State API
        return False


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
    """Write the task's model artifact (`save_model_artifact`, the same for every task) of the best
    checkpoint, with the training config and the dataset lineage it was trained on."""
    from cv_pipeline.models.tasks import save_model_artifact

    state = {k.removeprefix("model."): v for k, v in checkpoint_state(checkpoint).items() if k.startswith("model.")}
    lineage = {"dataset_path": manifest.table_path, "dataset_version": manifest.version,
               "source_versions": manifest.source_versions, "dataset_hash": manifest.content_hash}
    labels = [{k: label[k] for k in ("index", "category_id", "name")} for label in manifest.labels]
    options = spec.model_options(config)
    model = spec.build_model(config["arch"], len(manifest.labels), **options)
    model.load_state_dict(state)
    save_model_artifact(model_path, model, task=spec.name, arch=config["arch"], labels=labels, options=options,
                        config={**spec.defaults, **config}, extra=lineage)
