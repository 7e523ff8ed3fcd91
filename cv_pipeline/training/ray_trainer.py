"""RayTrainer: Lightning inside Ray Train's TorchTrainer (Ray Train V2 API).

`train_classifier_loop` runs on every Ray worker: it builds the data from the pinned
`training_dataset`, a `pl.Trainer` with `RayDDPStrategy`, `RayLightningEnvironment` and
`RayTrainReportCallback`, and fits. Only rank 0 logs to MLflow. The driver picks the best
checkpoint by validation accuracy and turns it into the serving artifact (`model.pt`).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cv_pipeline import settings

DEFAULT_CONFIG = {
    "arch": "resnet18",
    "image_size": 64,
    "epochs": 12,
    "batch_size": 32,
    "lr": 2e-3,
    "weight_decay": 1e-4,
    "label_smoothing": 0.05,
    "seed": 17,
    "early_stopping_patience": 0,  # 0 disables early stopping
    "pretrained_weights": None,
}


@dataclass
class TrainingResult:
    metrics: dict
    checkpoint_path: str  # Ray checkpoint directory of the best epoch
    model_path: str  # serving artifact written from it
    mlflow_run_id: str | None
    storage_path: str
    history: list[dict] = field(default_factory=list)

    def __getitem__(self, key):  # dict-style access for notebook users
        return getattr(self, key)


def train_classifier_loop(config: dict) -> None:
    """Per-worker training function (runs inside Ray Train workers)."""
    import lightning.pytorch as pl
    import ray.train
    import torch
    from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
    from torch.utils.data import DataLoader

    from cv_pipeline.models.lightning_classifier import ClassificationModule
    from cv_pipeline.training.crops import CropDataset, load_crops, train_transform
    from cv_pipeline.training.dataset import load_split

    pl.seed_everything(config["seed"], workers=True)
    torch.set_num_threads(max(1, int(config.get("torch_threads") or os.cpu_count() or 1)))
    image_size = config["image_size"]
    train_rows = load_split(config["dataset_path"], config["dataset_version"], "train")
    val_rows = load_split(config["dataset_path"], config["dataset_version"], "val")
    train_data = CropDataset(*load_crops(train_rows, image_size), transform=train_transform(image_size))
    val_data = CropDataset(*load_crops(val_rows, image_size))
    train_loader = DataLoader(train_data, batch_size=config["batch_size"], shuffle=True, drop_last=len(train_data) > config["batch_size"])
    val_loader = DataLoader(val_data, batch_size=config["batch_size"] * 2)

    module = ClassificationModule(
        arch=config["arch"], num_classes=config["num_classes"], lr=config["lr"],
        weight_decay=config["weight_decay"], max_epochs=config["epochs"],
        label_smoothing=config["label_smoothing"], pretrained_weights=config.get("pretrained_weights"),
    )
    logger = False
    if ray.train.get_context().get_world_rank() == 0 and config.get("mlflow_run_id"):
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(tracking_uri=config["mlflow_tracking_uri"], run_id=config["mlflow_run_id"])
    callbacks = [RayTrainReportCallback()]
    if config.get("early_stopping_patience"):
        callbacks.append(pl.callbacks.EarlyStopping("val_acc", mode="max", patience=config["early_stopping_patience"]))
    use_gpu = torch.cuda.is_available() and config.get("use_gpu", False)
    trainer = pl.Trainer(
        max_epochs=config["epochs"],
        accelerator="gpu" if use_gpu else "cpu",
        devices="auto",
        precision="16-mixed" if use_gpu else "32-true",
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        deterministic=False,
        default_root_dir=tempfile.mkdtemp(prefix="cv_pipeline_pl_"),
    )
    trainer = prepare_trainer(trainer)
    trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader)


class RayTrainer:
    """Train a classifier with Lightning on Ray Train.

    `model` is an architecture name from the classifier factory (e.g. "resnet18").
    """

    def __init__(self, model: str = "resnet18", num_workers: int = 1, use_gpu: bool = False,
                 storage_path: str | Path | None = None, cpus_per_worker: float | None = None):
        from cv_pipeline.models.classification import CLASSIFIER_ARCHITECTURES

        if model not in CLASSIFIER_ARCHITECTURES:
            raise ValueError(f"Unknown classifier architecture {model!r}; choose one of {sorted(CLASSIFIER_ARCHITECTURES)}")
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.model = model
        self.num_workers = num_workers
        self.use_gpu = use_gpu
        self.storage_path = Path(storage_path) if storage_path else settings.ray_storage_dir()
        self.cpus_per_worker = cpus_per_worker

    def train(self, config: dict) -> TrainingResult:
        """Fit on `config["dataset_path"]` at `config["dataset_version"]`; returns metrics and checkpoint."""
        import ray
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from cv_pipeline.training.dataset import load_manifest

        missing = [key for key in ("dataset_path",) if key not in config]
        if missing:
            raise ValueError(f"RayTrainer.train config is missing {missing}")
        manifest = load_manifest(config["dataset_path"], config.get("dataset_version"))
        loop_config = {**DEFAULT_CONFIG, **config, "arch": self.model, "use_gpu": self.use_gpu,
                       "dataset_version": manifest.version, "num_classes": len(manifest.labels)}
        # Workers reserve one logical CPU each and use the machine's cores through torch threads.
        cpus = self.cpus_per_worker or 1
        loop_config.setdefault("torch_threads", max(1, (os.cpu_count() or 1) // self.num_workers))
        if not ray.is_initialized():
            ray.init(
                # Ray Train's controller actors need a CPU slot beside the workers.
                num_cpus=max(os.cpu_count() or 1, int(cpus * self.num_workers) + 1),
                include_dashboard=False, log_to_driver=True, configure_logging=False,
                object_store_memory=int(os.environ.get("CV_PIPELINE_RAY_OBJECT_STORE", 256 * 1024**2)),
            )
        name = config.get("run_name") or f"classifier-{manifest.content_hash[:8]}-{os.getpid()}"
        trainer = TorchTrainer(
            train_classifier_loop,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=self.num_workers, use_gpu=self.use_gpu,
                                         resources_per_worker={"CPU": cpus}),
            run_config=RunConfig(
                name=name,
                storage_path=str(self.storage_path),
                failure_config=FailureConfig(max_failures=int(config.get("max_failures", 1))),
                checkpoint_config=CheckpointConfig(num_to_keep=2, checkpoint_score_attribute="val_acc",
                                                   checkpoint_score_order="max"),
            ),
        )
        result = trainer.fit()
        if result.error:
            raise RuntimeError(f"Ray training run {name} failed: {result.error}") from result.error
        best_checkpoint, best_metrics = _best_checkpoint(result)
        model_path = Path(self.storage_path) / name / "model.pt"
        _export_classifier(best_checkpoint, manifest, loop_config, model_path)
        metrics = {k: float(v) for k, v in best_metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        return TrainingResult(
            metrics=metrics,
            checkpoint_path=best_checkpoint.path,
            model_path=str(model_path),
            mlflow_run_id=config.get("mlflow_run_id"),
            storage_path=str(Path(self.storage_path) / name),
        )


def _best_checkpoint(result):
    candidates = list(getattr(result, "best_checkpoints", None) or [])
    if candidates:
        return max(candidates, key=lambda pair: pair[1].get("val_acc", float("-inf")))
    if result.checkpoint is None:
        raise RuntimeError("Ray training finished without a checkpoint")
    return result.checkpoint, dict(result.metrics or {})


def _export_classifier(checkpoint, manifest, config: dict, model_path: Path) -> None:
    """Write the serving artifact from a Lightning checkpoint reported by RayTrainReportCallback."""
    import torch

    from cv_pipeline.models.classification import ClassifierSpec, build_classifier, save_classifier_artifact

    with checkpoint.as_directory() as directory:
        ckpt_file = Path(directory) / "checkpoint.ckpt"
        state = torch.load(ckpt_file, map_location="cpu", weights_only=False)["state_dict"]
    model = build_classifier(config["arch"], len(manifest.labels))
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    spec = ClassifierSpec(
        arch=config["arch"],
        labels=[{k: label[k] for k in ("index", "category_id", "name")} for label in manifest.labels],
        image_size=int(config["image_size"]),
        extra={"dataset_path": manifest.table_path, "dataset_version": manifest.version,
               "source_versions": manifest.source_versions},
    )
    save_classifier_artifact(model_path, model, spec)
