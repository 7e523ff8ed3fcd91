"""Image classification: model factory, crop preprocessing, LightningModule, and the saved artifact.

The artifact (`model.pt`) is what training writes, MLflow stores and the server loads: the
architecture name, the label map and the weights, so a model is rebuilt without the training code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


CLASSIFIERS = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
               "efficientnet_b1", "convnext_tiny")


def torchvision_classifier(name: str, num_classes: int, **options) -> torch.nn.Module:
    """A torchvision classification model by name, random weights (`weights=None`: no download)."""
    import torchvision.models

    return getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **options)


CLASSIFIER_ARCHITECTURES: dict[str, Callable[..., torch.nn.Module]] = {
    name: partial(torchvision_classifier, name) for name in CLASSIFIERS}


@dataclass(frozen=True)
class ClassifierSpec:
    """Everything needed to rebuild and feed a trained classifier."""

    arch: str
    labels: list[dict]  # [{"index": 0, "category_id": 1, "name": "circle"}, ...] in index order
    image_size: int = 64
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    extra: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def names(self) -> list[str]:
        return [label["name"] for label in self.labels]


def build_classifier(arch: str, num_classes: int, pretrained_weights: str | Path | None = None) -> torch.nn.Module:
    """A torchvision classifier from random weights, or from a local state-dict file.

    Raises ValueError naming the choices for an unknown architecture; never downloads weights.
    """
    if arch not in CLASSIFIER_ARCHITECTURES:
        raise ValueError(f"Unknown classifier architecture {arch!r}; choose one of {sorted(CLASSIFIER_ARCHITECTURES)}")
    if num_classes < 2:
        raise ValueError(f"A classifier needs at least 2 classes, got num_classes={num_classes}")
    model = CLASSIFIER_ARCHITECTURES[arch](num_classes)
    if pretrained_weights is not None:
        path = Path(pretrained_weights)
        if not path.is_file():
            raise FileNotFoundError(f"pretrained_weights file not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"pretrained_weights {path} does not fit {arch}: unexpected keys {unexpected[:5]}")
    return model


def crop_object(image: Image.Image, bbox: Sequence[float], pad_fraction: float = 0.15) -> Image.Image:
    """The square region around a COCO `[x, y, w, h]` box, padded by a fraction of its longer side
    and clipped to the image; objects keep their aspect ratio, so shape is not distorted."""
    x, y, w, h = (float(v) for v in bbox)
    side = max(w, h) * (1.0 + 2.0 * pad_fraction)
    cx, cy = x + w / 2.0, y + h / 2.0
    left, top = cx - side / 2.0, cy - side / 2.0
    box = (
        int(np.floor(max(0.0, left))),
        int(np.floor(max(0.0, top))),
        int(np.ceil(min(float(image.width), left + side))),
        int(np.ceil(min(float(image.height), top + side))),
    )
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"bbox {list(bbox)} lies outside the {image.width}x{image.height} image")
    return image.crop(box)


def preprocess(images: Sequence[Image.Image], spec_or_size: ClassifierSpec | int) -> torch.Tensor:
    """A normalised float batch `N x 3 x S x S` from PIL images (any mode, any size)."""
    if isinstance(spec_or_size, ClassifierSpec):
        size, mean, std = spec_or_size.image_size, spec_or_size.mean, spec_or_size.std
    else:
        size, mean, std = int(spec_or_size), IMAGENET_MEAN, IMAGENET_STD
    batch = np.stack(
        [np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8) for img in images]
    )
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t


def save_classifier_artifact(path: str | Path, model: torch.nn.Module, spec: ClassifierSpec) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": "cv_pipeline.classifier/1", "spec": asdict(spec), "state_dict": state}, path)
    return path


def load_classifier_artifact(path: str | Path) -> tuple[torch.nn.Module, ClassifierSpec]:
    """Rebuild a classifier written by `save_classifier_artifact`, in eval mode on the CPU."""
    path = Path(path)
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or payload.get("format") != "cv_pipeline.classifier/1":
        raise ValueError(f"{path} is not a cv_pipeline classifier artifact")
    raw = payload["spec"]
    spec = ClassifierSpec(
        arch=raw["arch"],
        labels=list(raw["labels"]),
        image_size=int(raw["image_size"]),
        mean=tuple(raw["mean"]),
        std=tuple(raw["std"]),
        extra=dict(raw.get("extra", {})),
    )
    model = build_classifier(spec.arch, spec.num_classes)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, spec


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, batch: torch.Tensor, chunk_size: int = 256) -> np.ndarray:
    """Softmax probabilities `N x C` for a preprocessed batch."""
    model.eval()
    outputs = [torch.softmax(model(batch[i : i + chunk_size]), dim=1) for i in range(0, len(batch), chunk_size)]
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(outputs).cpu().numpy()
