"""Torch datasets over the Delta COCO tables, pinned to the versions a `training_dataset` manifest recorded.

No JVM: `load_image_records` reads `coco_images` and `coco_annotations` with delta-rs at
`manifest.source_versions`, picks the images of one split by the manifest's own rule
(`assign_split` of the image's sha256, so images without objects get a split too), and groups the
annotations per image with Arrow/numpy (no per-row dicts), in (batch_id, image_id) order.

Targets follow torchvision's detection and segmentation conventions, so the models and the v2
transforms take them as they are:

- `detection_target`: `boxes` (`tv_tensors.BoundingBoxes`, XYXY), `labels` (label index + 1; 0 is
  the background of torchvision's detectors), `area`, `iscrowd`, `image_id`, and with
  `with_masks=True` `masks` (`tv_tensors.Mask`, N x H x W uint8) for instance segmentation.
  Crowd annotations are left out (torchvision's detectors do not train on them).
- `semantic_target`: `mask` (`tv_tensors.Mask`, H x W int64): 0 background, label index + 1 on
  object pixels (larger objects painted first, so small ones stay visible), `ignore_index` on
  crowd regions.
- `classification_target`: `label` = label index of the largest non-crowd object; images without
  one are dropped by `CocoDeltaDataset` (the builder's `record_filter`).

`CocoDeltaDataset` decodes with `torchvision.io.decode_image` (no PIL) and applies v2 transforms to
`(image, target)` so boxes and masks move with the pixels. `ShardedDataset` makes an iterable
dataset whose ranks (Ray Train, else torch.distributed) all yield the same number of samples, split
again across DataLoader workers. Batching: `collate_detection` for detection and instance
segmentation (images differ in size, targets in length); semantic segmentation and classification
use the DataLoader's default collation (fixed-size images after their transforms, stacked).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset, IterableDataset

from cv_pipeline.data.coco import decode_rle_counts
from cv_pipeline.data.delta_io import read_table
from cv_pipeline.training.dataset import SPLITS, DatasetManifest, assign_split

IMAGE_COLUMNS = ["batch_id", "image_id", "file_path", "width", "height", "sha256"]
ANNOTATION_COLUMNS = ["batch_id", "annotation_id", "image_id", "category_id", "bbox_x", "bbox_y", "bbox_w",
                      "bbox_h", "area", "iscrowd", "segmentation"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(eq=False)
class ImageRecord:
    """One image of a split and its annotations (arrays in annotation_id order)."""

    batch_id: str
    image_id: int
    file_path: str | None
    width: int
    height: int
    annotation_ids: np.ndarray  # (N,) int64
    boxes_xywh: np.ndarray  # (N, 4) float32, COCO bbox
    labels: np.ndarray  # (N,) int64, 0-based label index (manifest.labels)
    iscrowd: np.ndarray  # (N,) int64
    area: np.ndarray  # (N,) float32
    segmentations: list[str | None] = field(default_factory=list)  # JSON text of each `segmentation`
    image_bytes: bytes | None = None
    sha256: str | None = None
    split: str | None = None

    @property
    def name(self) -> str:
        return f"{self.batch_id}:{self.image_id} ({self.file_path})"

    def has_objects(self) -> bool:
        return bool((self.iscrowd == 0).any())


def _table_schema_names(path: Path, version: int) -> list[str]:
    from deltalake import DeltaTable

    return [f.name for f in DeltaTable(str(path), version=version).schema().fields]


def load_image_records(manifest: DatasetManifest, split: str) -> list[ImageRecord]:
    """Every image of `split` (the manifest's split rule) with its annotations, read at the source
    versions the manifest pinned; annotations of categories outside `manifest.labels` are skipped."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    lake_dir = Path(manifest.table_path).parent
    images_path, annotations_path = lake_dir / "coco_images", lake_dir / "coco_annotations"
    images_version = int(manifest.source_versions["coco_images"])
    annotations_version = int(manifest.source_versions["coco_annotations"])

    columns = list(IMAGE_COLUMNS)
    if "image_bytes" in _table_schema_names(images_path, images_version):
        columns.append("image_bytes")
    # only the batches the quality gate let into the manifest (None: a manifest from before the gate)
    gated = [("batch_id", "in", list(manifest.batches))] if manifest.batches is not None else None
    images = read_table(images_path, images_version, columns=columns, filters=gated)
    # The manifest's rule: one split per distinct content hash (a null hash is keyed as None there too).
    sha = images.column("sha256").to_pylist()
    split_of = {key: assign_split(key, manifest.seed, manifest.fractions) for key in set(sha)}
    images = images.append_column("_split", pa.array([split_of[key] for key in sha], pa.string()))
    images = images.filter(pc.equal(images["_split"], split))
    images = images.sort_by([("batch_id", "ascending"), ("image_id", "ascending")])
    images = images.append_column("_row", pa.array(np.arange(images.num_rows, dtype=np.int64)))

    label_ids = np.array(sorted(int(label["category_id"]) for label in manifest.labels), dtype=np.int64)
    index_of = {int(label["category_id"]): int(label["index"]) for label in manifest.labels}
    label_index = np.array([index_of[cid] for cid in label_ids], dtype=np.int64)

    annotations = read_table(annotations_path, annotations_version, columns=ANNOTATION_COLUMNS, filters=gated)
    annotations = annotations.filter(pc.is_in(annotations["category_id"], value_set=pa.array(label_ids)))
    annotations = annotations.join(images.select(["batch_id", "image_id", "_row"]), keys=["batch_id", "image_id"],
                                   join_type="inner")
    annotations = annotations.sort_by([("_row", "ascending"), ("annotation_id", "ascending")])

    rows = _numpy(annotations, "_row", np.int64)
    starts = np.searchsorted(rows, np.arange(images.num_rows + 1), side="left")
    annotation_ids = _numpy(annotations, "annotation_id", np.int64)
    boxes = np.stack([_numpy(annotations, f"bbox_{k}", np.float32) for k in "xywh"], axis=1) if len(rows) \
        else np.zeros((0, 4), np.float32)
    labels = label_index[np.searchsorted(label_ids, _numpy(annotations, "category_id", np.int64))]
    iscrowd = _numpy(annotations, "iscrowd", np.int64)
    area = _numpy(annotations, "area", np.float32)
    segmentations = annotations.column("segmentation").to_pylist()

    batch_ids = images.column("batch_id").to_pylist()
    image_ids = images.column("image_id").to_pylist()
    paths = images.column("file_path").to_pylist()
    widths = images.column("width").to_pylist()
    heights = images.column("height").to_pylist()
    shas = images.column("sha256").to_pylist()
    blobs = images.column("image_bytes").to_pylist() if "image_bytes" in columns else [None] * images.num_rows
    records = []
    for i in range(images.num_rows):
        a, b = starts[i], starts[i + 1]
        records.append(ImageRecord(
            batch_id=batch_ids[i], image_id=int(image_ids[i]), file_path=paths[i], width=int(widths[i]),
            height=int(heights[i]), annotation_ids=annotation_ids[a:b], boxes_xywh=boxes[a:b], labels=labels[a:b],
            iscrowd=iscrowd[a:b], area=area[a:b], segmentations=segmentations[a:b], image_bytes=blobs[i],
            sha256=shas[i], split=split,
        ))
    return records


def _numpy(table: pa.Table, name: str, dtype) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        column = pc.fill_null(column, 0)
    return column.to_numpy().astype(dtype, copy=False)


# --------------------------------------------------------------------------------------- masks


def _to_rle(segmentation: Any, height: int, width: int) -> dict:
    """One merged RLE (pycocotools) of a polygon list, uncompressed or compressed RLE; ValueError if invalid."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, (str, bytes)):
        segmentation = json.loads(segmentation)
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, (list, tuple))]
        if len(polygons) != len(segmentation):
            raise ValueError("a polygon segmentation must be a list of coordinate lists")
        polygons = [[float(v) for v in p] for p in polygons if len(p) >= 6]  # < 3 points has no area
        if not polygons:
            raise ValueError("no polygon with 3 or more points")
        return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = [int(v) for v in segmentation["size"]]
        if size != [height, width]:
            raise ValueError(f"RLE size {size} is not the image's [height, width] [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            if any((not isinstance(c, int)) or c < 0 for c in counts) or sum(counts) != height * width:
                raise ValueError(f"uncompressed RLE counts must be non-negative and sum to {height * width}")
            return mask_utils.frPyObjects(segmentation, height, width)
        if isinstance(counts, (str, bytes)):
            text = counts.decode("ascii") if isinstance(counts, bytes) else counts
            runs = decode_rle_counts(text)  # ingestion's decoder: None when the string is malformed
            if runs is None:
                raise ValueError("compressed RLE counts are not a valid run string in COCO's RLE alphabet "
                                 "(bad character, truncated, or a negative run)")
            if sum(runs) != height * width:
                raise ValueError(f"compressed RLE runs must be non-negative and sum to {height * width}")
            return {"size": size, "counts": text.encode("ascii")}
    raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")


def segmentation_to_mask(segmentation: Any, height: int, width: int, *, name: str = "annotation") -> np.ndarray:
    """(H, W) uint8 mask of a COCO segmentation (JSON text or parsed): polygons, uncompressed RLE
    (`counts` list) or compressed RLE (`counts` string). ValueError naming `name` if it cannot be decoded."""
    from pycocotools import mask as mask_utils

    try:
        rle = _to_rle(segmentation, height, width)
        return mask_utils.decode(rle)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise ValueError(f"{name}: segmentation cannot be decoded: {error}") from error
    except (TypeError, KeyError, IndexError, OverflowError) as error:
        raise ValueError(f"{name}: segmentation cannot be decoded: {type(error).__name__}: {error}") from error


def record_masks(record: ImageRecord, indices: np.ndarray, height: int, width: int) -> np.ndarray:
    """(len(indices), H, W) uint8 masks of the record's annotations at `indices`, decoded in one call."""
    from pycocotools import mask as mask_utils

    if len(indices) == 0:
        return np.zeros((0, height, width), np.uint8)
    rles = []
    for i in indices:
        name = f"annotation {record.batch_id}:{int(record.annotation_ids[i])} (image {record.image_id})"
        try:
            rles.append(_to_rle(record.segmentations[i], height, width))
        except ValueError as error:
            raise ValueError(f"{name}: segmentation cannot be decoded: {error}") from error
        except (TypeError, KeyError, IndexError, OverflowError) as error:
            raise ValueError(f"{name}: segmentation cannot be decoded: {type(error).__name__}: {error}") from error
    decoded = mask_utils.decode(rles)  # (H, W, N), Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1))


# ------------------------------------------------------------------------------------- targets


def _xyxy(boxes_xywh: np.ndarray) -> torch.Tensor:
    boxes = torch.as_tensor(np.asarray(boxes_xywh, np.float32)).reshape(-1, 4).clone()
    boxes[:, 2:] += boxes[:, :2]
    return boxes


def detection_target(record: ImageRecord, height: int, width: int, with_masks: bool = False) -> dict:
    """torchvision detection target of the non-crowd annotations (labels are index + 1; 0 is background)."""
    from torchvision import tv_tensors

    keep = np.flatnonzero(record.iscrowd == 0)
    target = {
        "boxes": tv_tensors.BoundingBoxes(_xyxy(record.boxes_xywh[keep]), format="XYXY", canvas_size=(height, width)),
        "labels": torch.as_tensor(record.labels[keep] + 1, dtype=torch.int64),
        "area": torch.as_tensor(record.area[keep], dtype=torch.float32),
        "iscrowd": torch.as_tensor(record.iscrowd[keep], dtype=torch.int64),
        "image_id": torch.tensor(record.image_id, dtype=torch.int64),
    }
    if with_masks:
        target["masks"] = tv_tensors.Mask(torch.from_numpy(record_masks(record, keep, height, width)))
    return target


instance_segmentation_target = partial(detection_target, with_masks=True)


def semantic_target(record: ImageRecord, height: int, width: int, ignore_index: int = 255) -> dict:
    """{"mask": (H, W) int64}: 0 background, label index + 1 per object pixel, `ignore_index` on crowd regions."""
    from torchvision import tv_tensors

    out = np.zeros((height, width), np.int64)
    objects = np.flatnonzero(record.iscrowd == 0)
    objects = objects[np.argsort(-record.area[objects], kind="stable")]  # small objects painted last, on top
    crowd = np.flatnonzero(record.iscrowd != 0)
    order = np.concatenate([objects, crowd])
    if len(order):
        masks = record_masks(record, order, height, width).astype(bool)
        values = np.concatenate([record.labels[objects] + 1, np.full(len(crowd), ignore_index, np.int64)])
        for mask, value in zip(masks, values):
            out[mask] = value
    return {"mask": tv_tensors.Mask(torch.from_numpy(out))}


def classification_target(record: ImageRecord, height: int, width: int) -> dict:
    """{"label": int64}: label index of the largest-area non-crowd object (records need `has_objects`)."""
    objects = np.flatnonzero(record.iscrowd == 0)
    if not len(objects):
        raise ValueError(f"image {record.name} has no object to classify; filter records with has_objects")
    largest = objects[int(np.argmax(record.area[objects]))]
    return {"label": torch.tensor(int(record.labels[largest]), dtype=torch.int64)}


def has_objects(record: ImageRecord) -> bool:
    """Predicate: the record has at least one non-crowd annotation of a known label."""
    return record.has_objects()


classification_target.record_filter = has_objects  # CocoDeltaDataset drops records the builder cannot use


# ------------------------------------------------------------------------------------ datasets


def decode_record_image(record: ImageRecord) -> torch.Tensor:
    """(3, H, W) uint8 RGB of a record, from its stored bytes or its file; sizes are checked."""
    from torchvision.io import ImageReadMode, decode_image, read_file

    try:
        if record.image_bytes is not None:
            data = torch.frombuffer(bytearray(record.image_bytes), dtype=torch.uint8)
        elif record.file_path:
            data = read_file(record.file_path)
        else:
            raise FileNotFoundError(f"image {record.name} has neither stored bytes nor a file_path")
        image = decode_image(data, mode=ImageReadMode.RGB)
    except (RuntimeError, OSError) as error:
        raise type(error)(f"image {record.name}: cannot read or decode: {error}") from error
    if image.shape[-2:] != (record.height, record.width):
        raise ValueError(
            f"image {record.name}: decoded size {image.shape[-1]}x{image.shape[-2]} (width x height) differs from "
            f"the table's {record.width}x{record.height}"
        )
    return image


def record_pil_image(record: ImageRecord):
    """A record's image as a PIL RGB image (what a served model is given), decoded as training decodes it."""
    from PIL import Image

    return Image.fromarray(decode_record_image(record).permute(1, 2, 0).contiguous().numpy(), "RGB")


class CocoDeltaDataset(Dataset):
    """Map-style dataset of `(tv_tensors.Image uint8, target)` over `ImageRecord`s.

    `target_builder(record, height, width) -> dict`; if it has a `record_filter` attribute (as
    `classification_target` does), records it rejects are dropped. `transforms(image, target)` is
    a torchvision v2 transform applied jointly.
    """

    def __init__(self, records: list[ImageRecord], target_builder: Callable = detection_target,
                 transforms: Callable | None = None):
        keep = getattr(target_builder, "record_filter", None)
        self.records = [r for r in records if keep(r)] if keep else list(records)
        self.target_builder = target_builder
        self.transforms = transforms

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        record = self.records[index]
        image = decode_record_image(record)
        target = self.target_builder(record, record.height, record.width)
        image = tv_tensors.Image(image)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def distributed_rank_and_world_size() -> tuple[int, int]:
    """(rank, world_size): Ray Train's context inside a Ray Train worker, else torch.distributed when
    initialised, else (0, 1)."""
    train = sys.modules.get("ray.train")  # loaded in every Ray Train worker; importing it is slow (seconds)
    if train is not None:
        try:
            context = train.get_context()
            rank, world = context.get_world_rank(), context.get_world_size()
            if rank is not None and world:
                return int(rank), int(world)
        except Exception:  # noqa: BLE001 - not inside a Ray Train worker
            pass
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ShardedDataset(IterableDataset):
    """A map-style dataset split over ranks and, within a rank, over DataLoader workers.

    Like `DistributedSampler`: a permutation seeded by `seed + epoch` (the same on every rank), padded
    by wrap-around to a multiple of `world_size` (or truncated with `drop_last`), and rank `r` takes
    every `world_size`-th index from `r`; each rank then yields exactly `len(self)` samples, which DDP
    needs. The rank's share is split round-robin across `get_worker_info()` workers.

    Rank and world size default to Ray Train's context, else torch.distributed, resolved when the
    dataset is first used in this process (build it in the training worker, or call `set_epoch`
    before iterating). Call `set_epoch(epoch)` before each epoch; with `persistent_workers=True` the
    workers keep the epoch they started with.
    """

    def __init__(self, dataset: Dataset, *, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 rank: int | None = None, world_size: int | None = None):
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        if world_size is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._rank, self._world_size = rank, world_size

    def _resolve(self) -> tuple[int, int]:
        if self._rank is None:
            self._rank, self._world_size = distributed_rank_and_world_size()
        return self._rank, self._world_size

    @property
    def rank(self) -> int:
        return self._resolve()[0]

    @property
    def world_size(self) -> int:
        return self._resolve()[1]

    def set_epoch(self, epoch: int) -> None:
        self._resolve()
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n, world = len(self.dataset), self.world_size
        return n // world if self.drop_last else -(-n // world)

    def rank_indices(self) -> list[int]:
        """Indices this rank yields this epoch, before the split across DataLoader workers."""
        rank, world = self._resolve()
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            indices = torch.randperm(n, generator=generator).tolist()
        else:
            indices = list(range(n))
        per_rank = len(self)
        total = per_rank * world
        if total > n:
            if n == 0:
                return []
            indices += (indices * (-(-(total - n) // n)))[: total - n]
        else:
            indices = indices[:total]
        return indices[rank:total:world]

    def __iter__(self):
        indices = self.rank_indices()
        info = torch.utils.data.get_worker_info()
        if info is not None:
            indices = indices[info.id::info.num_workers]
        for index in indices:
            yield self.dataset[index]


# ---------------------------------------------------------------------------------- transforms


def _sanitize_labels_getter(inputs) -> tuple:
    """The per-box tensors SanitizeBoundingBoxes must filter with the boxes (masks it finds itself)."""
    target = next((x for x in (inputs if isinstance(inputs, (tuple, list)) else (inputs,))
                   if isinstance(x, dict) and "boxes" in x), None)
    if target is None:
        return ()
    return tuple(target[key] for key in ("labels", "area", "iscrowd") if key in target)


def detection_transforms(train: bool):
    """v2 transforms for detection / instance segmentation: torchvision's detectors resize and
    normalise inside the model, so only augmentation, float conversion and box sanitising here."""
    from torchvision.transforms import v2

    steps = [v2.ToImage()]
    if train:
        steps += [v2.RandomHorizontalFlip(p=0.5), v2.RandomPhotometricDistort(p=0.5)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes(labels_getter=_sanitize_labels_getter)]
    return v2.Compose(steps)


def semantic_transforms(train: bool, size: int, augment: str = "dihedral"):
    """v2 transforms for semantic segmentation: (size, size) for image and mask (NEAREST for the
    `tv_tensors.Mask`), float in [0, 1], ImageNet normalisation of the image.

    Training augmentation `"dihedral"` (default): crops of 50-100% of the image, the eight flips and
    quarter turns, and photometric distortion (channel permutation included). Rotations and colours
    are symmetries of data whose objects are drawn at any angle in any colour, and segmentation
    from scratch on a few hundred images over-fits without them (test mIoU 0.42 with flips only).
    `"flip"` keeps horizontal flips only; `"none"` none."""
    from torchvision.transforms import v2

    if augment not in ("dihedral", "flip", "none"):
        raise ValueError(f"unknown semantic augmentation {augment!r}; choose one of 'dihedral', 'flip', 'none'")
    steps = [v2.ToImage()]
    if train and augment == "dihedral":
        quarter_turns = [v2.RandomRotation((angle, angle)) for angle in (90, 180, 270)]
        steps += [v2.RandomResizedCrop((size, size), scale=(0.5, 1.0), ratio=(0.75, 1.33), antialias=True),
                  v2.RandomHorizontalFlip(p=0.5), v2.RandomApply([v2.RandomChoice(quarter_turns)], p=0.75),
                  v2.RandomPhotometricDistort(p=0.5)]
    else:
        steps += [v2.Resize((size, size), antialias=True)]
        if train and augment == "flip":
            steps += [v2.RandomHorizontalFlip(p=0.5)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


def classification_transforms(train: bool, size: int):
    """v2 transforms for whole-image classification: random resized crop and flip when training,
    else resize and centre crop; float in [0, 1], ImageNet normalisation."""
    from torchvision.transforms import v2

    steps = [v2.ToImage()]
    if train:
        steps += [v2.RandomResizedCrop((size, size), scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(p=0.5)]
    else:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    return v2.Compose(steps)


BY_VALUE_BYTES = 1 << 20


class DetectionBatch(tuple):
    """`(images, targets)` as `collate_detection` makes it; a tuple, unpickled as a plain one.

    A DataLoader worker pickles each batch to the main process, and by default every tensor goes
    through its own shared-memory segment: an shm file, an fd passed over a socket, an mmap and
    fresh page faults on both sides, ~0.2 ms of CPU however small the tensor. A detection sample
    carries 5-7 tensors, most of a few bytes (labels, area, iscrowd, image_id), so that cost was
    larger than the mask decoding. Here tensors under `BY_VALUE_BYTES` travel inside the pickle
    instead (one copy through the pipe), larger ones still through shared memory.
    """

    __slots__ = ()

    def __reduce__(self):
        return _rebuild_detection_batch, (_to_wire(tuple(self)),)


def _to_wire(value):
    if isinstance(value, torch.Tensor):
        if value.numel() * value.element_size() > BY_VALUE_BYTES or value.requires_grad or value.is_cuda:
            return value
        try:
            array = value.detach().as_subclass(torch.Tensor).numpy()
        except TypeError:  # a dtype numpy lacks (bfloat16): shared memory as usual
            return value
        return _WireTensor(type(value), array, dict(value.__dict__))
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    if type(value) is tuple:
        return tuple(_to_wire(v) for v in value)
    return value


def _from_wire(value):
    if isinstance(value, _WireTensor):
        tensor = torch.from_numpy(value.array)
        if value.cls is not torch.Tensor:
            tensor = tensor.as_subclass(value.cls)
            tensor.__dict__.update(value.state)
        return tensor
    if isinstance(value, dict):
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    if type(value) is tuple:
        return tuple(_from_wire(v) for v in value)
    return value


class _WireTensor:
    __slots__ = ("cls", "array", "state")

    def __init__(self, cls, array, state):
        self.cls, self.array, self.state = cls, array, state

    def __reduce__(self):
        return _WireTensor, (self.cls, self.array, self.state)


def _rebuild_detection_batch(wire):
    return _from_wire(wire)


def collate_detection(batch) -> DetectionBatch:
    """(list of images, list of targets): what torchvision's detection models take. Small tensors
    leave DataLoader workers by value, not one shared-memory segment each (see `DetectionBatch`).
    Semantic segmentation and classification batches use the DataLoader's default collation
    (images of one size after their transforms, stacked)."""
    images, targets = zip(*batch) if batch else ((), ())
    return DetectionBatch((list(images), list(targets)))
