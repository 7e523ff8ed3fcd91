"""Deterministic synthetic COCO "shapes" dataset generator.

Writes landing-zone batches in the layout the pipeline ingests::

    <out>/<batch_id>/annotations.json   a COCO instances document
    <out>/<batch_id>/images/...         the images, at the ``file_name`` paths the JSON gives
    <out>/<batch_id>/_SUCCESS           empty marker, written last

Every image is drawn from solid-filled geometric shapes (six categories with
non-contiguous ids) on a solid, gradient or smooth-noise background.  Shapes
are rasterised with pycocotools from exactly the polygon stored in the
annotation, so segmentation, ``bbox`` and ``area`` agree with what is drawn.
A few ``iscrowd: 1`` annotations cover clusters of tiny shapes and carry an
uncompressed RLE mask.

The same arguments always produce byte-identical files: all randomness comes
from ``numpy.random.default_rng(seed)``, the JSON is serialised the same way
every time and no clock time is recorded.

It also writes deliberately broken batches for tests (``write_defective_batch``,
``write_bad_json_batch``, ``write_incomplete_batch``).

Command line::

    python -m cv_pipeline.data.synthetic --out data_samples/landing --batches 2 \
        --images-per-batch 110 --seed 7 --defective data_samples/defective

This module does not import Dagster or Spark.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

__all__ = [
    "CATEGORIES",
    "LICENSES",
    "INFO",
    "SUCCESS_MARKER",
    "batch_name",
    "batch_seed",
    "batch_id_offsets",
    "generate_batch",
    "write_defective_batch",
    "write_bad_json_batch",
    "write_incomplete_batch",
    "write_defective_samples",
    "generate_landing",
    "polygon_area",
    "rle_uncompressed",
    "main",
]

#: Categories shared by every batch. Ids are deliberately not contiguous.
CATEGORIES: list[dict[str, Any]] = [
    {"id": 1, "name": "circle", "supercategory": "round"},
    {"id": 2, "name": "square", "supercategory": "polygon"},
    {"id": 4, "name": "triangle", "supercategory": "polygon"},
    {"id": 5, "name": "hexagon", "supercategory": "polygon"},
    {"id": 7, "name": "star", "supercategory": "symbol"},
    {"id": 9, "name": "cross", "supercategory": "symbol"},
]

LICENSES: list[dict[str, Any]] = [
    {"id": 1, "name": "Creative Commons Attribution 4.0", "url": "https://creativecommons.org/licenses/by/4.0/"},
    {"id": 2, "name": "CC0 1.0 Public Domain Dedication", "url": "https://creativecommons.org/publicdomain/zero/1.0/"},
]

INFO: dict[str, Any] = {
    "description": "cv_pipeline synthetic shapes dataset",
    "version": "1.0",
    "year": 2024,
    "contributor": "cv_pipeline.data.synthetic",
    "url": "",
    "date_created": "2024-01-01T00:00:00",
}

SUCCESS_MARKER = "_SUCCESS"
ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 6

# Image geometry.
MIN_SIDE, MAX_SIDE = 160, 320
EDGE_MARGIN = 2.0  # keep polygons this far inside the image
OBJECT_MARGIN = 4.0  # minimum gap between two objects' bounding boxes

# Target polygon areas (pixels) per COCO size class, kept away from the
# class boundaries (32**2 = 1024 and 96**2 = 9216).
SIZE_CLASS_AREAS = {"small": (220.0, 850.0), "medium": (1300.0, 8000.0), "large": (10500.0, 15500.0)}
SIZE_CLASS_PROBS = (("small", 0.15), ("medium", 0.70), ("large", 0.15))

# Tiny shapes making up crowd clusters.
CROWD_SHAPE_AREA = (30.0, 70.0)

# Batch-level proportions.
EMPTY_FRACTION = 0.08
JPEG_FRACTION = 0.75
SUBFOLDER_FRACTION = 0.05

_CATEGORY_BY_NAME = {c["name"]: c for c in CATEGORIES}
_JSON_SEPARATORS = (",", ":")


# ---------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------


def _regular(n: int, start: float) -> np.ndarray:
    angles = start + 2.0 * math.pi * np.arange(n) / n
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star(points: int = 5, inner: float = 0.42) -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(a: float = 0.32) -> np.ndarray:
    return np.array(
        [
            (-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a),
            (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a),
        ],
        dtype=float,
    )


def polygon_area(points: np.ndarray) -> float:
    """Shoelace area of a closed polygon given as an ``(n, 2)`` array."""
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


# Unit shapes centred on the origin; "rotates" is False for the circle.
_UNIT_SHAPES: dict[str, tuple[np.ndarray, bool]] = {
    "circle": (_regular(32, 0.0), False),
    "square": (_regular(4, math.pi / 4), True),
    "triangle": (_regular(3, -math.pi / 2), True),
    "hexagon": (_regular(6, 0.0), True),
    "star": (_star(), True),
    "cross": (_cross(), True),
}
_UNIT_AREAS = {name: polygon_area(pts) for name, (pts, _) in _UNIT_SHAPES.items()}


def _shape_points(name: str, area: float, angle: float) -> np.ndarray:
    """Polygon (centred on the origin) of shape ``name`` with the given area and rotation."""
    unit, rotates = _UNIT_SHAPES[name]
    scale = math.sqrt(area / _UNIT_AREAS[name])
    pts = unit * scale
    if rotates:
        c, s = math.cos(angle), math.sin(angle)
        pts = pts @ np.array([[c, s], [-s, c]])
    return pts


# ---------------------------------------------------------------------------
# Masks, RLE
# ---------------------------------------------------------------------------


def _polygon_mask(flat: list[float], height: int, width: int) -> np.ndarray:
    """Boolean mask of one flat polygon ``[x1, y1, ...]`` rasterised by pycocotools."""
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    return mask_utils.decode(rle).astype(bool)


def _polygon_coco_area(flat: list[float], height: int, width: int) -> float:
    rle = mask_utils.merge(mask_utils.frPyObjects([flat], height, width))
    return float(mask_utils.area(rle))


def rle_uncompressed(mask: np.ndarray) -> dict[str, Any]:
    """Encode a binary ``(h, w)`` mask as COCO uncompressed RLE.

    ``counts`` are run lengths over the column-major (Fortran-order) flattened
    mask, starting with a run of zeros (possibly of length 0), exactly as
    ``pycocotools.mask.frPyObjects`` expects. The result is verified to
    round-trip through pycocotools.
    """
    mask = np.asarray(mask).astype(bool)
    height, width = mask.shape
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    rle = {"counts": [int(c) for c in counts], "size": [int(height), int(width)]}
    decoded = mask_utils.decode(mask_utils.frPyObjects(rle, height, width)).astype(bool)
    if not np.array_equal(decoded, mask):  # pragma: no cover - guards the encoder
        raise AssertionError("uncompressed RLE does not round-trip through pycocotools")
    return rle


# ---------------------------------------------------------------------------
# Backgrounds, colours
# ---------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Bilinearly upsampled Gaussian noise in roughly [-1, 1], shape (h, w)."""
    gh, gw = height // cell + 2, width // cell + 2
    low = rng.standard_normal((gh, gw))
    ys = np.linspace(0.0, gh - 1.0, height)
    xs = np.linspace(0.0, gw - 1.0, width)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    y1 = np.minimum(y0 + 1, gh - 1)
    x1 = np.minimum(x0 + 1, gw - 1)
    wy = (ys - y0)[:, None]
    wx = (xs - x0)[None, :]
    top = low[y0][:, x0] * (1 - wx) + low[y0][:, x1] * wx
    bottom = low[y1][:, x0] * (1 - wx) + low[y1][:, x1] * wx
    return np.clip((top * (1 - wy) + bottom * wy) / 2.0, -1.0, 1.0)


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    """A float (h, w, 3) background: solid colour, linear gradient or smooth noise."""
    kind_roll = rng.random()
    if kind_roll < 0.3:
        colour = rng.integers(0, 256, 3).astype(float)
        return np.broadcast_to(colour, (height, width, 3)).copy(), "solid"
    if kind_roll < 0.65:
        c1 = rng.integers(0, 256, 3).astype(float)
        c2 = rng.integers(0, 256, 3).astype(float)
        theta = rng.uniform(0.0, 2.0 * math.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(float)
        proj = xx * math.cos(theta) + yy * math.sin(theta)
        t = (proj - proj.min()) / max(proj.max() - proj.min(), 1e-9)
        return c1 + t[..., None] * (c2 - c1), "gradient"
    base = rng.integers(40, 216, 3).astype(float)
    amplitude = rng.uniform(12.0, 28.0)
    cell = int(rng.integers(6, 16))
    noise = _smooth_noise(rng, height, width, cell)
    tint = rng.uniform(0.6, 1.0, 3)
    return base + amplitude * noise[..., None] * tint, "noise"


def _luma(colour: np.ndarray) -> float:
    return float(0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2])


def _contrasting_colour(rng: np.random.Generator, local_mean: np.ndarray) -> np.ndarray:
    """A random RGB colour that clearly contrasts with ``local_mean``."""
    for _ in range(64):
        colour = rng.integers(0, 256, 3).astype(float)
        if np.linalg.norm(colour - local_mean) >= 140.0 and abs(_luma(colour) - _luma(local_mean)) >= 60.0:
            return colour
    return np.zeros(3) if _luma(local_mean) >= 128 else np.full(3, 255.0)


# ---------------------------------------------------------------------------
# Placement
# ---------------------------------------------------------------------------


def _overlaps(box: tuple[float, float, float, float], placed: list[tuple[float, float, float, float]]) -> bool:
    x0, y0, x1, y1 = box
    for a0, b0, a1, b1 in placed:
        if x0 < a1 + OBJECT_MARGIN and a0 < x1 + OBJECT_MARGIN and y0 < b1 + OBJECT_MARGIN and b0 < y1 + OBJECT_MARGIN:
            return True
    return False


def _place(
    rng: np.random.Generator,
    pts: np.ndarray,
    height: int,
    width: int,
    placed: list[tuple[float, float, float, float]],
    attempts: int = 25,
) -> np.ndarray | None:
    """Translate ``pts`` to a random spot fully inside the image, clear of ``placed``."""
    min_x, min_y = pts.min(axis=0)
    max_x, max_y = pts.max(axis=0)
    lo_x, hi_x = EDGE_MARGIN - min_x, width - EDGE_MARGIN - max_x
    lo_y, hi_y = EDGE_MARGIN - min_y, height - EDGE_MARGIN - max_y
    if hi_x < lo_x or hi_y < lo_y:
        return None
    for _ in range(attempts):
        cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        box = (cx + min_x, cy + min_y, cx + max_x, cy + max_y)
        if not _overlaps(box, placed):
            return np.round(pts + np.array([cx, cy]), 2)
    return None


def _flat(points: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in points.reshape(-1)]


def _bbox_of_points(points: np.ndarray) -> list[float]:
    min_x, min_y = points.min(axis=0)
    max_x, max_y = points.max(axis=0)
    return [round(float(min_x), 2), round(float(min_y), 2), round(float(max_x - min_x), 2), round(float(max_y - min_y), 2)]


def _choose_size_class(rng: np.random.Generator) -> str:
    roll = rng.random()
    acc = 0.0
    for name, p in SIZE_CLASS_PROBS:
        acc += p
        if roll < acc:
            return name
    return SIZE_CLASS_PROBS[-1][0]


def _draw_objects(
    rng: np.random.Generator,
    canvas: np.ndarray,
    background: np.ndarray,
    num_objects: int,
    with_crowd: bool,
) -> list[dict[str, Any]]:
    """Draw shapes onto ``canvas`` in place; return annotation bodies (no ids)."""
    height, width = canvas.shape[:2]
    placed: list[tuple[float, float, float, float]] = []
    anns: list[dict[str, Any]] = []

    crowd_ann = None
    if with_crowd:
        crowd_ann = _draw_crowd(rng, canvas, background, placed)

    plans = []
    for _ in range(num_objects):
        cat = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
        size_class = _choose_size_class(rng)
        lo, hi = SIZE_CLASS_AREAS[size_class]
        plans.append((cat, size_class, float(rng.uniform(lo, hi))))
    plans.sort(key=lambda p: -p[2])  # biggest first: they are the hardest to fit

    for cat, size_class, area in plans:
        for attempt in range(16):
            if attempt and attempt % 3 == 0:
                # Crowded image: shrink the object within (or, for large, down to) the medium range.
                if size_class == "large":
                    size_class, area = "medium", float(rng.uniform(*SIZE_CLASS_AREAS["medium"]))
                elif size_class == "medium":
                    area = max(SIZE_CLASS_AREAS["medium"][0], area * 0.7)
            angle = float(rng.uniform(0.0, 2.0 * math.pi))
            pts = _place(rng, _shape_points(cat["name"], area, angle), height, width, placed)
            if pts is not None:
                break
        else:
            continue  # no room left: skip this object
        flat = _flat(pts)
        mask = _polygon_mask(flat, height, width)
        bbox = _bbox_of_points(pts)
        x0, y0, w, h = bbox
        placed.append((x0, y0, x0 + w, y0 + h))
        local = background[int(y0): int(math.ceil(y0 + h)) + 1, int(x0): int(math.ceil(x0 + w)) + 1].reshape(-1, 3).mean(axis=0)
        canvas[mask] = _contrasting_colour(rng, local)
        anns.append(
            {
                "category_id": cat["id"],
                "segmentation": [flat],
                "area": float(mask_utils.area(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))),
                "bbox": bbox,
                "iscrowd": 0,
            }
        )
    if crowd_ann is not None:
        anns.append(crowd_ann)
    return anns


def _draw_crowd(
    rng: np.random.Generator,
    canvas: np.ndarray,
    background: np.ndarray,
    placed: list[tuple[float, float, float, float]],
) -> dict[str, Any] | None:
    """Draw a cluster of 3-4 tiny same-category shapes; return its crowd annotation."""
    height, width = canvas.shape[:2]
    cat = CATEGORIES[int(rng.integers(0, len(CATEGORIES)))]
    count = int(rng.integers(3, 5))
    region = 40.0
    for _ in range(20):
        ox = rng.uniform(EDGE_MARGIN, width - EDGE_MARGIN - region)
        oy = rng.uniform(EDGE_MARGIN, height - EDGE_MARGIN - region)
        if _overlaps((ox, oy, ox + region, oy + region), placed):
            continue
        polys: list[np.ndarray] = []
        local_boxes: list[tuple[float, float, float, float]] = []
        for _ in range(count):
            pts = _shape_points(cat["name"], float(rng.uniform(*CROWD_SHAPE_AREA)), float(rng.uniform(0.0, 2.0 * math.pi)))
            sub = _place(rng, pts, int(region), int(region), local_boxes, attempts=30)
            if sub is None:
                break
            min_x, min_y = sub.min(axis=0)
            max_x, max_y = sub.max(axis=0)
            local_boxes.append((float(min_x), float(min_y), float(max_x), float(max_y)))
            polys.append(np.round(sub + np.array([ox, oy]), 2))
        if len(polys) != count:
            continue
        mask = np.zeros((height, width), dtype=bool)
        for poly in polys:
            mask |= _polygon_mask(_flat(poly), height, width)
        rows = np.flatnonzero(mask.any(axis=1))
        cols = np.flatnonzero(mask.any(axis=0))
        x0, y0 = int(cols[0]), int(rows[0])
        w, h = int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1
        local = background[y0: y0 + h, x0: x0 + w].reshape(-1, 3).mean(axis=0)
        canvas[mask] = _contrasting_colour(rng, local)
        placed.append((ox, oy, ox + region, oy + region))
        return {
            "category_id": cat["id"],
            "segmentation": rle_uncompressed(mask),
            "area": float(mask.sum()),
            "bbox": [float(x0), float(y0), float(w), float(h)],
            "iscrowd": 1,
        }
    return None


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------


def _prepare_dir(batch_dir: Path, overwrite: bool) -> None:
    if batch_dir.exists():
        if not overwrite:
            raise FileExistsError(f"batch folder already exists: {batch_dir} (pass --overwrite / overwrite=True to replace it)")
        shutil.rmtree(batch_dir)
    batch_dir.mkdir(parents=True)


def _write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, separators=_JSON_SEPARATORS) + "\n", encoding="utf-8")


def _save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(pixels)
    if path.suffix == ".jpg":
        img.save(path, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False, subsampling=2)
    else:
        img.save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL, optimize=False)


def _write_success(batch_dir: Path) -> None:
    (batch_dir / SUCCESS_MARKER).write_bytes(b"")


def generate_batch(
    batch_dir: Path,
    *,
    num_images: int,
    seed: int,
    first_image_id: int,
    first_annotation_id: int,
    overwrite: bool = False,
    write_success: bool = True,
) -> dict[str, Any]:
    """Generate one COCO batch folder deterministically.

    Writes ``batch_dir/images/...``, ``batch_dir/annotations.json`` and, last,
    ``batch_dir/_SUCCESS`` (unless ``write_success`` is False, which leaves the
    batch looking incomplete).

    Image ids run from ``first_image_id`` and annotation ids from
    ``first_annotation_id``, consecutively. About 8% of the images are empty
    (batches of 10+ images have at least one), about 75% are JPEG, the rest
    PNG, and about 5% live under ``images/sub/``. Batches of 20+ images get 2-3
    crowd annotations, smaller ones (5+ images) one.

    Raises ``FileExistsError`` naming the folder if it exists and ``overwrite``
    is False; with ``overwrite`` the folder is replaced.

    Returns a JSON-serialisable summary: ``batch_dir``, ``images``,
    ``annotations``, ``crowd``, ``empty_images``, ``jpeg``, ``png``,
    ``size_classes`` (COCO small/medium/large counts of non-crowd objects),
    ``image_ids`` and ``annotation_ids`` (first, last).
    """
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    batch_dir = Path(batch_dir)
    _prepare_dir(batch_dir, overwrite)
    rng = np.random.default_rng(seed)

    n_empty = max(1, int(round(EMPTY_FRACTION * num_images))) if num_images >= 10 else 0
    empty = set(rng.choice(num_images, size=n_empty, replace=False).tolist()) if n_empty else set()
    non_empty = [i for i in range(num_images) if i not in empty]
    if num_images >= 20:
        n_crowd = int(rng.integers(2, 4))
    elif num_images >= 5:
        n_crowd = 1
    else:
        n_crowd = 0
    n_crowd = min(n_crowd, len(non_empty))
    crowd_images = set(rng.choice(non_empty, size=n_crowd, replace=False).tolist()) if n_crowd else set()
    n_sub = max(1, int(round(SUBFOLDER_FRACTION * num_images))) if num_images >= 5 else 0
    sub_images = set(rng.choice(num_images, size=n_sub, replace=False).tolist()) if n_sub else set()

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    next_ann_id = first_annotation_id
    jpeg_count = 0
    for index in range(num_images):
        image_id = first_image_id + index
        width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        height = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        ext = ".jpg" if rng.random() < JPEG_FRACTION else ".png"
        jpeg_count += ext == ".jpg"
        license_id = int(rng.integers(1, len(LICENSES) + 1))
        background, _ = _background(rng, height, width)
        canvas = np.clip(np.rint(background), 0, 255).astype(np.uint8)
        background = canvas.astype(float)
        bodies: list[dict[str, Any]] = []
        if index not in empty:
            bodies = _draw_objects(rng, canvas, background, int(rng.integers(1, 6)), index in crowd_images)
        file_name = f"img_{image_id:06d}{ext}"
        if index in sub_images:
            file_name = f"sub/{file_name}"
        _save_image(batch_dir / IMAGES_DIR / file_name, canvas)
        images.append(
            {
                "id": image_id,
                "width": width,
                "height": height,
                "file_name": file_name,
                "license": license_id,
                "date_captured": f"2024-01-{1 + index % 28:02d} 12:00:00",
            }
        )
        for body in bodies:
            annotations.append({"id": next_ann_id, "image_id": image_id, **body})
            next_ann_id += 1

    doc = {
        "info": dict(INFO),
        "licenses": [dict(lic) for lic in LICENSES],
        "images": images,
        "annotations": annotations,
        "categories": [dict(cat) for cat in CATEGORIES],
    }
    _write_json(batch_dir / ANNOTATIONS_FILE, doc)
    if write_success:
        _write_success(batch_dir)

    sizes = {"small": 0, "medium": 0, "large": 0}
    for ann in annotations:
        if ann["iscrowd"]:
            continue
        a = ann["area"]
        sizes["small" if a < 32**2 else "large" if a > 96**2 else "medium"] += 1
    annotated = {a["image_id"] for a in annotations}
    return {
        "batch_dir": str(batch_dir),
        "images": len(images),
        "annotations": len(annotations),
        "crowd": sum(1 for a in annotations if a["iscrowd"]),
        "empty_images": sum(1 for im in images if im["id"] not in annotated),
        "jpeg": jpeg_count,
        "png": num_images - jpeg_count,
        "size_classes": sizes,
        "image_ids": [first_image_id, first_image_id + num_images - 1],
        "annotation_ids": [first_annotation_id, next_ann_id - 1] if annotations else [],
    }


# ---------------------------------------------------------------------------
# Defective batches
# ---------------------------------------------------------------------------

DEFECTIVE_BATCH = "batch_defective"
BAD_JSON_BATCH = "batch_bad_json"
INCOMPLETE_BATCH = "batch_incomplete"

DEFECTIVE_FIRST_IMAGE_ID = 900001
DEFECTIVE_FIRST_ANNOTATION_ID = 9000001
UNKNOWN_CATEGORY_ID = 99
BBOX_OVERHANG_PX = 25.0


def write_defective_batch(batch_dir: Path, *, seed: int, num_images: int = 12, overwrite: bool = False) -> dict[str, Any]:
    """Write a complete batch (``_SUCCESS`` present) with deliberate defects.

    A valid batch of ``num_images`` images (ids from 900001, annotation ids from
    9000001) is generated, then these defects are applied, each to a distinct
    record, and listed in ``DEFECTS.md`` and ``defects.json`` (a list of
    ``{"defect", "record_type", "id", "description"}``):

    - ``unknown_category``: one annotation gets category_id 99;
    - ``unknown_image``: one annotation points at an image id not in ``images``;
    - ``image_missing``: one image's file is deleted (its annotations are fine);
    - ``image_undecodable``: one JPEG truncated to its first 100 bytes and one
      image file emptied to zero bytes (two entries);
    - ``bbox_outside_image``: one annotation's bbox reaches 25 px past the
      image's right edge (segmentation unchanged);
    - ``duplicate_annotation_id``: two annotations share one id (one entry).

    Returns a summary with the generation counts and ``defects`` (the list).
    """
    batch_dir = Path(batch_dir)
    summary = generate_batch(
        batch_dir,
        num_images=num_images,
        seed=seed,
        first_image_id=DEFECTIVE_FIRST_IMAGE_ID,
        first_annotation_id=DEFECTIVE_FIRST_ANNOTATION_ID,
        overwrite=overwrite,
    )
    (batch_dir / SUCCESS_MARKER).unlink()
    doc = json.loads((batch_dir / ANNOTATIONS_FILE).read_text(encoding="utf-8"))
    images = doc["images"]
    annotations = doc["annotations"]
    by_image: dict[int, list[dict[str, Any]]] = {}
    for ann in annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images_dir = batch_dir / IMAGES_DIR
    defects: list[dict[str, Any]] = []
    used_images: set[int] = set()

    def pick_image(pred) -> dict[str, Any]:
        for im in images:
            if im["id"] not in used_images and pred(im):
                used_images.add(im["id"])
                return im
        raise RuntimeError(f"no image left for a defect in {batch_dir}; use more images or another seed")

    truncated = pick_image(lambda im: im["file_name"].endswith(".jpg"))
    path = images_dir / truncated["file_name"]
    path.write_bytes(path.read_bytes()[:100])
    defects.append(
        {
            "defect": "image_undecodable",
            "record_type": "image",
            "id": truncated["id"],
            "description": f"image file {truncated['file_name']} truncated to its first 100 bytes (JPEG)",
        }
    )
    zero = pick_image(lambda im: True)
    (images_dir / zero["file_name"]).write_bytes(b"")
    defects.append(
        {
            "defect": "image_undecodable",
            "record_type": "image",
            "id": zero["id"],
            "description": f"image file {zero['file_name']} is zero bytes",
        }
    )
    missing = pick_image(lambda im: any(not a["iscrowd"] for a in by_image.get(im["id"], [])))
    (images_dir / missing["file_name"]).unlink()
    defects.append(
        {
            "defect": "image_missing",
            "record_type": "image",
            "id": missing["id"],
            "description": f"image file {missing['file_name']} does not exist (its {len(by_image[missing['id']])} annotation(s) are otherwise valid)",
        }
    )

    # Annotation defects only touch plain annotations on healthy images, spread
    # round-robin over those images (one per image while images last).
    per_image: dict[int, list[dict[str, Any]]] = {}
    for ann in annotations:
        if not ann["iscrowd"] and ann["image_id"] not in used_images:
            per_image.setdefault(ann["image_id"], []).append(ann)
    healthy = []
    for rank in range(max((len(v) for v in per_image.values()), default=0)):
        healthy += [anns[rank] for anns in per_image.values() if rank < len(anns)]
    if len(healthy) < 5:
        raise RuntimeError(f"not enough annotations for the defects in {batch_dir}; use more images or another seed")
    image_by_id = {im["id"]: im for im in images}

    a_cat, a_img, a_bbox, a_dup_keep, a_dup = healthy[:5]
    a_cat["category_id"] = UNKNOWN_CATEGORY_ID
    defects.append(
        {
            "defect": "unknown_category",
            "record_type": "annotation",
            "id": a_cat["id"],
            "description": f"annotation {a_cat['id']} has category_id {UNKNOWN_CATEGORY_ID}, which is not in categories",
        }
    )
    unknown_image_id = max(im["id"] for im in images) + 1000
    original_image = a_img["image_id"]
    a_img["image_id"] = unknown_image_id
    defects.append(
        {
            "defect": "unknown_image",
            "record_type": "annotation",
            "id": a_img["id"],
            "description": f"annotation {a_img['id']} has image_id {unknown_image_id}, which is not in images (was {original_image})",
        }
    )
    image = image_by_id[a_bbox["image_id"]]
    x, y, _, h = a_bbox["bbox"]
    a_bbox["bbox"] = [x, y, round(image["width"] - x + BBOX_OVERHANG_PX, 2), h]
    defects.append(
        {
            "defect": "bbox_outside_image",
            "record_type": "annotation",
            "id": a_bbox["id"],
            "description": (
                f"annotation {a_bbox['id']} bbox ends at x={round(x + a_bbox['bbox'][2], 2)}, "
                f"{BBOX_OVERHANG_PX:g} px past the right edge of image {image['id']} (width {image['width']})"
            ),
        }
    )
    old_id = a_dup["id"]
    a_dup["id"] = a_dup_keep["id"]
    defects.append(
        {
            "defect": "duplicate_annotation_id",
            "record_type": "annotation",
            "id": a_dup_keep["id"],
            "description": (
                f"two annotations share id {a_dup_keep['id']}: one on image {a_dup_keep['image_id']}, "
                f"one on image {a_dup['image_id']} (originally id {old_id})"
            ),
        }
    )

    _write_json(batch_dir / ANNOTATIONS_FILE, doc)
    (batch_dir / "defects.json").write_text(json.dumps(defects, indent=2) + "\n", encoding="utf-8")
    (batch_dir / "DEFECTS.md").write_text(_defects_markdown(defects), encoding="utf-8")
    _write_success(batch_dir)
    summary["defects"] = defects
    return summary


def _defects_markdown(defects: list[dict[str, Any]]) -> str:
    lines = [
        "# Deliberate defects in this batch",
        "",
        "Written by `cv_pipeline.data.synthetic.write_defective_batch`. The batch is complete",
        "(`_SUCCESS` is present); everything not listed here is valid. The same list, machine",
        "readable, is in `defects.json`.",
        "",
        "| defect | record type | id | description |",
        "|---|---|---|---|",
    ]
    for d in defects:
        lines.append(f"| `{d['defect']}` | {d['record_type']} | {d['id']} | {d['description']} |")
    return "\n".join(lines) + "\n"


def write_bad_json_batch(batch_dir: Path, *, seed: int, overwrite: bool = False) -> dict[str, Any]:
    """Write a complete batch whose ``annotations.json`` is invalid JSON.

    A valid one-image batch is generated, then ``annotations.json`` is cut to
    its first 60% of bytes; ``images/`` holds the one valid image and
    ``_SUCCESS`` is present.
    """
    batch_dir = Path(batch_dir)
    summary = generate_batch(
        batch_dir, num_images=1, seed=seed, first_image_id=910001, first_annotation_id=9100001, overwrite=overwrite
    )
    (batch_dir / SUCCESS_MARKER).unlink()
    path = batch_dir / ANNOTATIONS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    _write_success(batch_dir)
    summary["truncated_bytes"] = [int(len(data) * 0.6), len(data)]
    return summary


def write_incomplete_batch(batch_dir: Path, *, seed: int, overwrite: bool = False) -> dict[str, Any]:
    """Write a valid two-image batch without ``_SUCCESS`` (as if still being copied)."""
    return generate_batch(
        Path(batch_dir),
        num_images=2,
        seed=seed,
        first_image_id=920001,
        first_annotation_id=9200001,
        overwrite=overwrite,
        write_success=False,
    )


# ---------------------------------------------------------------------------
# Whole landing zones, CLI
# ---------------------------------------------------------------------------


def batch_name(index: int) -> str:
    """Folder name of the ``index``-th (1-based) batch: ``batch_0001``."""
    return f"batch_{index:04d}"


def batch_seed(seed: int, index: int) -> int:
    """Seed of the ``index``-th batch derived from the run seed (stable across numpy versions)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def batch_id_offsets(index: int) -> tuple[int, int]:
    """``(first_image_id, first_annotation_id)`` of the ``index``-th batch."""
    return index * 100_000 + 1, index * 1_000_000 + 1


def _defective_targets(out_dir: Path) -> list[Path]:
    return [out_dir / DEFECTIVE_BATCH, out_dir / BAD_JSON_BATCH, out_dir / INCOMPLETE_BATCH]


def write_defective_samples(out_dir: Path, *, seed: int, overwrite: bool = False) -> dict[str, Any]:
    """Write ``batch_defective``, ``batch_bad_json`` and ``batch_incomplete`` under ``out_dir``.

    Seeds are derived from ``seed`` (indices 901, 902, 903). Existing folders
    raise ``FileExistsError`` (checked before anything is written) unless
    ``overwrite``.
    """
    out_dir = Path(out_dir)
    if not overwrite:
        _check_absent(_defective_targets(out_dir))
    return {
        DEFECTIVE_BATCH: write_defective_batch(out_dir / DEFECTIVE_BATCH, seed=batch_seed(seed, 901), overwrite=overwrite),
        BAD_JSON_BATCH: write_bad_json_batch(out_dir / BAD_JSON_BATCH, seed=batch_seed(seed, 902), overwrite=overwrite),
        INCOMPLETE_BATCH: write_incomplete_batch(out_dir / INCOMPLETE_BATCH, seed=batch_seed(seed, 903), overwrite=overwrite),
    }


def _check_absent(paths: Sequence[Path]) -> None:
    for path in paths:
        if path.exists():
            raise FileExistsError(f"batch folder already exists: {path} (pass --overwrite / overwrite=True to replace it)")


def generate_landing(
    out_dir: Path, *, batches: int, images_per_batch: int, seed: int, overwrite: bool = False
) -> list[dict[str, Any]]:
    """Write ``batches`` batches ``batch_0001``... under ``out_dir``.

    Batch ``k`` uses seed ``batch_seed(seed, k)``, image ids from
    ``k * 100000 + 1`` and annotation ids from ``k * 1000000 + 1``. Existing
    folders raise ``FileExistsError`` (checked before anything is written)
    unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    targets = [out_dir / batch_name(k) for k in range(1, batches + 1)]
    if not overwrite:
        _check_absent(targets)
    summaries = []
    for k, target in enumerate(targets, start=1):
        first_image_id, first_annotation_id = batch_id_offsets(k)
        summaries.append(
            generate_batch(
                target,
                num_images=images_per_batch,
                seed=batch_seed(seed, k),
                first_image_id=first_image_id,
                first_annotation_id=first_annotation_id,
                overwrite=overwrite,
            )
        )
    return summaries


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cv_pipeline.data.synthetic",
        description="Generate deterministic synthetic COCO 'shapes' batches (landing-zone layout).",
    )
    parser.add_argument("--out", type=Path, required=True, help="landing folder; batches go to OUT/batch_0001, ...")
    parser.add_argument("--batches", type=int, default=2, help="number of batches (default 2)")
    parser.add_argument("--images-per-batch", type=int, default=110, help="images per batch (default 110)")
    parser.add_argument("--seed", type=int, default=7, help="run seed; batch seeds are derived from it (default 7)")
    parser.add_argument(
        "--defective", type=Path, default=None,
        help="also write batch_defective, batch_bad_json and batch_incomplete into this folder",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing batch folders")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 2 on bad arguments or existing folders)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.batches < 1 or args.images_per_batch < 1:
        parser.error("--batches and --images-per-batch must be >= 1")
    if not args.overwrite:
        targets = [args.out / batch_name(k) for k in range(1, args.batches + 1)]
        if args.defective is not None:
            targets += _defective_targets(args.defective)
        try:
            _check_absent(targets)
        except FileExistsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    for s in generate_landing(
        args.out, batches=args.batches, images_per_batch=args.images_per_batch, seed=args.seed, overwrite=args.overwrite
    ):
        print(
            f"{s['batch_dir']}: {s['images']} images ({s['empty_images']} empty, {s['jpeg']} jpeg, {s['png']} png), "
            f"{s['annotations']} annotations ({s['crowd']} crowd), sizes {s['size_classes']}"
        )
    if args.defective is not None:
        for name, s in write_defective_samples(args.defective, seed=args.seed, overwrite=args.overwrite).items():
            extra = f", {len(s['defects'])} defects" if "defects" in s else ""
            print(f"{s['batch_dir']}: {s['images']} images, {s['annotations']} annotations{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
