"""Write a synthetic COCO instances file at MS COCO train2017 scale (a benchmark input).

118,287 images, 860,001 annotations over 80 categories with non-contiguous ids; about 1% are
crowd annotations with uncompressed RLE, the rest polygons of 6-50 points (two parts now and
then), coordinates with two decimals as in the real export: about 450 MB, like
instances_train2017.json. Deterministic for a seed; written in chunks, so memory stays small.

    python benchmarks/coco_scale.py OUT.json [--images N] [--annotations N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

TRAIN2017_IMAGES = 118_287
TRAIN2017_ANNOTATIONS = 860_001
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, points: int) -> np.ndarray:
    angles = np.sort(rng.uniform(0, 2 * math.pi, points))
    radii = radius * rng.uniform(0.55, 1.0, points)
    return np.round(np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1), 2)


def _shoelace(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _annotation(rng: np.random.Generator, ann_id: int, image_id: int, width: int, height: int) -> str:
    category = CATEGORY_IDS[int(rng.integers(len(CATEGORY_IDS)))]
    radius = float(rng.uniform(4, min(width, height) / 3))
    cx = float(rng.uniform(radius, width - radius))
    cy = float(rng.uniform(radius, height - radius))
    if rng.random() < 0.01:  # crowd region: uncompressed RLE over the whole image (column-major runs)
        x0, y0 = int(cx - radius), int(cy - radius)
        side = max(2, int(2 * radius))
        counts, position = [], 0
        for column in range(x0, min(width, x0 + side)):
            start = column * height + y0
            counts += [start - position, min(side, height - y0)]
            position = start + min(side, height - y0)
        counts.append(width * height - position)
        segmentation = json.dumps({"counts": counts, "size": [height, width]}, separators=(",", ":"))
        bbox = [float(x0), float(y0), float(min(side, width - x0)), float(min(side, height - y0))]
        area = float(sum(counts[1::2]))
        crowd = 1
    else:
        parts = [_polygon(rng, cx, cy, radius, int(rng.integers(6, 51)))]
        if rng.random() < 0.1:
            parts.append(_polygon(rng, cx, cy, radius / 3, int(rng.integers(6, 20))))
        xy = np.concatenate(parts)
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        bbox = [round(float(lo[0]), 2), round(float(lo[1]), 2), round(float(hi[0] - lo[0]), 2), round(float(hi[1] - lo[1]), 2)]
        area = round(sum(_shoelace(p) for p in parts), 4)
        segmentation = "[" + ",".join("[" + ",".join(f"{v:.2f}" for v in p.ravel().tolist()) + "]" for p in parts) + "]"
        crowd = 0
    return (
        f'{{"segmentation":{segmentation},"area":{area},"iscrowd":{crowd},"image_id":{image_id},'
        f'"bbox":[{bbox[0]},{bbox[1]},{bbox[2]},{bbox[3]}],"category_id":{category},"id":{ann_id}}}'
    )


def write_coco(path: str | Path, images: int = TRAIN2017_IMAGES, annotations: int = TRAIN2017_ANNOTATIONS, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_ids = np.sort(rng.choice(600_000, size=images, replace=False)) + 9
    widths = rng.choice([640, 500, 480, 427, 612], size=images)
    heights = rng.choice([480, 427, 640, 375, 333], size=images)
    # annotations per image: a skewed distribution with a few empty images, as in the real export
    per_image = rng.multinomial(annotations, rng.dirichlet(np.full(images, 2.0)))
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as out:
        out.write('{"info":{"description":"cv_pipeline synthetic COCO train2017-scale benchmark","version":"1.0",'
                  '"year":2017,"contributor":"cv_pipeline","date_created":"2017/09/01"},')
        out.write('"licenses":[' + ",".join(
            f'{{"url":"http://licenses.example/{i}","id":{i},"name":"License {i}"}}' for i in range(1, 9)) + "],")
        out.write('"images":[')
        for i, (image_id, w, h) in enumerate(zip(image_ids.tolist(), widths.tolist(), heights.tolist())):
            out.write(("," if i else "") + (
                f'{{"license":{1 + image_id % 8},"file_name":"{image_id:012d}.jpg",'
                f'"coco_url":"http://images.example/train2017/{image_id:012d}.jpg","height":{h},"width":{w},'
                f'"date_captured":"2013-11-14 11:18:45","flickr_url":"http://farm.example/{image_id}.jpg","id":{image_id}}}'
            ))
        out.write('],"annotations":[')
        ann_id, first = 1, True
        for image_id, w, h, n in zip(image_ids.tolist(), widths.tolist(), heights.tolist(), per_image.tolist()):
            if not n:
                continue
            chunk = ",".join(_annotation(rng, ann_id + k, image_id, w, h) for k in range(n))
            out.write(("" if first else ",") + chunk)
            first = False
            ann_id += n
        out.write('],"categories":[' + ",".join(
            f'{{"supercategory":"group{c // 10}","id":{c},"name":"category_{c}"}}' for c in CATEGORY_IDS) + "]}")
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--images", type=int, default=TRAIN2017_IMAGES)
    parser.add_argument("--annotations", type=int, default=TRAIN2017_ANNOTATIONS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_coco(args.out, args.images, args.annotations, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
