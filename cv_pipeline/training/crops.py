"""Object-crop classification data from a pinned `training_dataset` version.

Each image file is opened once and all its objects are cropped, resized and kept as uint8
tensors, so epochs run at tensor speed; augmentation (transforms v2) runs per sample.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import Dataset

from cv_pipeline.models.classification import IMAGENET_MEAN, IMAGENET_STD, crop_object


def row_bbox(row: dict) -> tuple[float, float, float, float]:
    """The COCO `[x, y, w, h]` box of a training_dataset row."""
    return row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]


def crop_row(row: dict) -> Image.Image:
    """The object crop of one training_dataset row, as RGB."""
    with Image.open(row["file_path"]) as opened:
        return crop_object(opened.convert("RGB"), row_bbox(row))


def iter_row_crops(rows: list[dict]) -> Iterator[tuple[int, Image.Image]]:
    """`(index, crop)` for every row, opening each image file once however many objects it holds."""
    by_file: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_file[row["file_path"]].append(index)
    for file_path, indices in by_file.items():
        with Image.open(file_path) as opened:
            image = opened.convert("RGB")
        for index in indices:
            yield index, crop_object(image, row_bbox(rows[index]))


def load_crops(rows: list[dict], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 crops `N x 3 x S x S` and int64 labels for manifest rows (order preserved)."""
    crops = torch.empty((len(rows), 3, image_size, image_size), dtype=torch.uint8)
    for index, crop in iter_row_crops(rows):
        crop = crop.resize((image_size, image_size), Image.BILINEAR)
        crops[index] = torch.frombuffer(bytearray(crop.tobytes()), dtype=torch.uint8).view(image_size, image_size, 3).permute(2, 0, 1)
    labels = torch.tensor([int(row["label"]) for row in rows], dtype=torch.int64)
    return crops, labels


def train_transform(image_size: int):
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomApply([v2.ColorJitter(0.3, 0.3, 0.3, 0.05)], p=0.5),
        v2.RandomResizedCrop(size=image_size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
    ])


class CropDataset(Dataset):
    """Normalised float crops and labels; `transform` (if any) sees uint8 images."""

    def __init__(self, crops: torch.Tensor, labels: torch.Tensor, transform=None):
        if len(crops) != len(labels):
            raise ValueError(f"{len(crops)} crops but {len(labels)} labels")
        self.crops, self.labels, self.transform = crops, labels, transform
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.crops[index]
        if self.transform is not None:
            image = self.transform(image)
        image = image.float().div(255.0)
        return (image - self.mean) / self.std, self.labels[index]
