"""Image classification: torchvision classifiers by name, object crops and their preprocessing.

The task itself (loss, metrics, prediction, evaluation) is `CLASSIFICATION` in `builtin_tasks`;
its model is saved, logged and served like every other task's (`tasks.save_model_artifact`).
"""

from __future__ import annotations

from functools import partial
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


def preprocess(images: Sequence[Image.Image], size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """A normalised float batch `N x 3 x S x S` from PIL images (any mode, any size), resized as the
    training crops are (`training.crops.load_crops`: PIL bilinear)."""
    size = int(size)
    batch = np.stack(
        [np.asarray(img.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8) for img in images]
    )
    tensor = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    return (tensor - mean_t) / std_t
