"""LightningModule for image classification over any architecture of the classifier factory."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.nn import functional as F

from cv_pipeline.models.classification import build_classifier


class ClassificationModule(pl.LightningModule):
    """Cross-entropy training with AdamW and a cosine schedule; logs loss and accuracy per epoch."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        max_epochs: int = 10,
        label_smoothing: float = 0.0,
        pretrained_weights: str | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model = build_classifier(arch, num_classes, pretrained_weights)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _step(self, batch, stage: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing if stage == "train" else 0.0)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{stage} loss is {loss.item()} at epoch {self.current_epoch}; stopping")
        acc = (logits.argmax(dim=1) == labels).float().mean()
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(labels))
        self.log(f"{stage}_acc", acc, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(labels))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.hparams.max_epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
