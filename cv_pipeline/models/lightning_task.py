"""One LightningModule for every registered task: the task supplies model, loss and metrics."""

from __future__ import annotations

import contextlib
import math

import lightning.pytorch as pl
import torch

from cv_pipeline.models.tasks import TaskSpec, get_task

OPTIMIZER_KEYS = ("lr", "weight_decay", "optimizer", "momentum", "warmup_epochs", "max_epochs")


def _scalar_hparams(config: dict) -> dict:
    return {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool)) or v is None}


@contextlib.contextmanager
def _forward_once(model: torch.nn.Module):
    """Within the block, calling `model` again with the very same arguments (the same objects)
    returns the outputs of the first call instead of running the model again: a task's loss and its
    metrics each call `model(images)` on a validation batch, and were two forward passes for one.
    Calls with other arguments run the model as usual. The outputs must not be changed in place."""
    own = vars(model).get("forward")  # an instance attribute of its own, if it has one
    forward = model.forward
    last: dict = {}

    def cached(*args, **kwargs):
        if last and len(args) == len(last["args"]) and kwargs.keys() == last["kwargs"].keys() \
                and all(a is b for a, b in zip(args, last["args"])) \
                and all(kwargs[k] is last["kwargs"][k] for k in kwargs):
            return last["out"]
        out = forward(*args, **kwargs)
        last.update(args=args, kwargs=kwargs, out=out)
        return out

    model.forward = cached
    try:
        yield model
    finally:
        if own is None:
            del model.forward  # the class's forward again
        else:
            model.forward = own
        last.clear()


def batch_size_of(batch) -> int:
    images = batch[0]
    return len(images)


class TaskModule(pl.LightningModule):
    """Trains `arch` of `task` on `num_classes` labels.

    `config` keys used here: lr, weight_decay, optimizer (`adamw` | `sgd`), momentum, warmup_epochs
    (linear warm-up, then cosine decay per step), max_epochs, pretrained_weights, model_options,
    and whatever the task's loss reads (e.g. label_smoothing).
    """

    def __init__(self, task: str | TaskSpec, arch: str | None, num_classes: int, config: dict | None = None):
        super().__init__()
        self.spec = get_task(task)
        self.config = dict(config or {})
        self.arch = arch or self.spec.default_model
        self.num_classes = int(num_classes)
        self.save_hyperparameters({"task": self.spec.name, "arch": self.arch, "num_classes": self.num_classes,
                                   **_scalar_hparams(self.config)})
        self.model = self.spec.build_model(self.arch, self.num_classes, self.config.get("pretrained_weights"),
                                           **self.spec.model_options(self.config))
        self.val_metrics = self.spec.metrics(self.spec.model_classes(self.num_classes))

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def _log_losses(self, losses: dict, stage: str, batch) -> torch.Tensor:
        total = losses["loss"]
        if not torch.isfinite(total):
            raise FloatingPointError(f"{stage} loss is {total.item()} at epoch {self.current_epoch}; stopping")
        size = batch_size_of(batch)
        for key, value in losses.items():
            name = f"{stage}_loss" if key == "loss" else f"{stage}_{key}"
            self.log(name, value.detach(), on_step=False, on_epoch=True, sync_dist=True, batch_size=size)
        return total

    def training_step(self, batch, batch_idx):
        return self._log_losses(self.spec.loss(self.model, batch, self.config), "train", batch)

    def validation_step(self, batch, batch_idx):
        if not self.spec.loss_in_eval:
            self.spec.update_metrics(self.val_metrics, self.model, batch)
            return
        with _forward_once(self.model):  # the loss and the metrics read the same outputs: one forward pass
            self._log_losses(self.spec.loss(self.model, batch, self.config), "val", batch)
            self.spec.update_metrics(self.val_metrics, self.model, batch)

    def on_validation_epoch_end(self):
        values = self.val_metrics.compute()  # torchmetrics gathers over all ranks here
        self.val_metrics.reset()
        values = values if isinstance(values, dict) else {self.spec.monitor: values}
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                self.log(f"val_{key}", value.float().item(), sync_dist=False)

    def configure_optimizers(self):
        lr = float(self.config.get("lr", 1e-3))
        weight_decay = float(self.config.get("weight_decay", 1e-4))
        params = [p for p in self.parameters() if p.requires_grad]
        name = self.config.get("optimizer", "adamw")
        if name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        elif name == "sgd":
            optimizer = torch.optim.SGD(params, lr=lr, momentum=float(self.config.get("momentum", 0.9)),
                                        weight_decay=weight_decay)
        else:
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")
        total = max(1, int(self.trainer.estimated_stepping_batches))
        epochs = max(1, int(self.config.get("max_epochs") or self.trainer.max_epochs or 1))
        warmup = min(total - 1, int(total * float(self.config.get("warmup_epochs", 0.0)) / epochs))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
