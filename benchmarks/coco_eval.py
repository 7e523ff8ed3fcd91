"""COCO evaluation: `DetectionMetrics` against pycocotools' `COCOeval` on a val2017-sized synthetic set.

    python benchmarks/coco_eval.py [--quick] [--images N] [--seed 0] [--iou-types bbox,segm]
                                   [--also faster-coco-eval,hotcoco]

The data (deterministic, `numpy.random.default_rng(seed)`): 5000 images (`--quick`: 500) of
360-640 px, 80 categories with a long-tailed frequency, ~7.3 objects an image (~36k ground truths;
COCO's mix of ~40% small, ~35% medium, ~25% large), each a 8-16 vertex polygon inside its box, 1% of
them crowd regions stored as uncompressed RLE. Detections (~36k): ~80% of objects found with
jittered boxes and masks (10% with a confused category, some duplicates), plus background false
positives; scores have 3 decimals, so ties across and within images are common. bbox results carry
`bbox`; segm results carry only a compressed-RLE `segmentation` (as detectron2 writes them, so mask
areas decide the area ranges).

Each (iou type, implementation) runs in its own subprocess that first reads the JSON files (not
timed), then times everything from the in-memory ground-truth dict and results list to the twelve
statistics: for pycocotools `COCO()` + `dataset =` + `createIndex()`, `loadRes`, `evaluate`,
`accumulate`, `summarize` (its printing sent to a buffer); for ours `compute_metrics`. Inputs are
deep-copied before timing (pycocotools mutates them). Peak memory is the subprocess's peak resident
set size (`resource.getrusage(...).ru_maxrss`) and, in brackets, its growth over the resident size
just before the timed part. The twelve statistics of every implementation must equal pycocotools'
to 1e-6, else the run fails. `--also` times other packages the same way, when installed.

The last lines are, per iou type and then for both together,
`RESULT coco_eval_<type> wall_s=<ours> baseline=<pycocotools s> ratio=<pycocotools/ours> goal=10`
and `RESULT coco_eval wall_s=<ours> baseline=<pycocotools s> ratio=<pycocotools/ours> goal=10`.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

STAT_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
GOAL = 10.0


def _ellipse_polygon(rng, x, y, w, h, vertices):
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radius = rng.uniform(0.75, 1.0, vertices)
    xs = x + w / 2 + np.cos(angles) * radius * w / 2
    ys = y + h / 2 + np.sin(angles) * radius * h / 2
    return np.round(np.stack([xs, ys], axis=1).ravel(), 2).tolist()


def _polygon_area(polygon):
    xs, ys = np.asarray(polygon[0::2]), np.asarray(polygon[1::2])
    return float(abs(np.dot(xs, np.roll(ys, -1)) - np.dot(ys, np.roll(xs, -1))) / 2)


def _uncompressed_rle(mask_utils, polygon, height, width):
    binary = mask_utils.decode(mask_utils.frPyObjects([polygon], height, width)[0]).ravel(order="F")
    changes = np.flatnonzero(np.diff(binary)) + 1
    bounds = np.r_[0, changes, binary.size]
    counts = np.diff(bounds).tolist()
    if binary[0] == 1:
        counts = [0] + counts
    return {"size": [height, width], "counts": counts}


def make_dataset(num_images: int, seed: int = 0, num_categories: int = 80):
    """(ground-truth document, bbox results, segm results), deterministic in `seed`."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    frequency = 1.0 / np.arange(1, num_categories + 1) ** 0.9
    frequency /= frequency.sum()
    category_ids = (np.arange(num_categories) * 1 + 1).tolist()
    images, annotations, bbox_results, segm_results = [], [], [], []
    next_ann = 1
    for index in range(num_images):
        image_id = 100 + 3 * index
        width, height = int(rng.integers(360, 641)), int(rng.integers(360, 641))
        images.append({"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"})
        objects = rng.poisson(7.3)
        dets = []  # (category, x, y, w, h, score, polygon)
        for _ in range(objects):
            kind = rng.random()
            side = (rng.uniform(6, 32) if kind < 0.41 else rng.uniform(32, 96) if kind < 0.76
                    else rng.uniform(96, 0.95 * min(width, height)))
            aspect = np.exp(rng.normal(0, 0.45))
            w = float(min(side * np.sqrt(aspect), width - 1))
            h = float(min(side / np.sqrt(aspect), height - 1))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            category = int(category_ids[rng.choice(num_categories, p=frequency)])
            polygon = _ellipse_polygon(rng, x, y, w, h, int(rng.integers(8, 17)))
            crowd = rng.random() < 0.01
            annotation = {"id": next_ann, "image_id": image_id, "category_id": category,
                          "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)],
                          "area": round(_polygon_area(polygon), 2), "iscrowd": int(crowd),
                          "segmentation": (_uncompressed_rle(mask_utils, polygon, height, width) if crowd
                                           else [polygon])}
            annotations.append(annotation)
            next_ann += 1
            if crowd or rng.random() > 0.8:
                continue
            found = [category if rng.random() > 0.1 else int(rng.choice(category_ids))]
            if rng.random() < 0.08:
                found.append(found[0])
            for found_category in found:
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                dw, dh = max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)
                score = float(np.clip(rng.beta(5, 2), 0.01, 1.0))
                shape = np.asarray(polygon).reshape(-1, 2)
                moved = (shape - [x, y]) * [dw / w, dh / h] + [x + jitter[0], y + jitter[1]]
                moved += rng.normal(0, 0.02 * min(w, h), moved.shape)
                dets.append((found_category, x + jitter[0], y + jitter[1], dw, dh, score,
                             np.round(moved.ravel(), 2).tolist()))
        for _ in range(rng.poisson(1.3)):
            side = float(rng.uniform(8, 0.6 * min(width, height)))
            w, h = side * rng.uniform(0.6, 1.4), side * rng.uniform(0.6, 1.4)
            x, y = float(rng.uniform(0, max(width - w, 1))), float(rng.uniform(0, max(height - h, 1)))
            dets.append((int(rng.choice(category_ids)), x, y, w, h, float(np.clip(rng.beta(2, 5), 0.01, 1.0)),
                         _ellipse_polygon(rng, x, y, w, h, 12)))
        for category, x, y, w, h, score, _ in dets:
            box = [round(float(x), 2), round(float(y), 2), round(float(w), 2), round(float(h), 2)]
            bbox_results.append({"image_id": image_id, "category_id": category, "bbox": box,
                                 "score": round(score, 3)})
        if dets:
            rles = mask_utils.frPyObjects([det[-1] for det in dets], height, width)
            for (category, *_, score, _), rle in zip(dets, rles):
                segm_results.append({"image_id": image_id, "category_id": category,
                                     "segmentation": {"size": rle["size"],
                                                      "counts": rle["counts"].decode("ascii")},
                                     "score": round(score, 3)})
    categories = [{"id": c, "name": f"class_{c}", "supercategory": "shape"} for c in category_ids]
    document = {"info": {"description": "synthetic val2017-sized benchmark"}, "images": images,
                "annotations": annotations, "categories": categories}
    return document, bbox_results, segm_results


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _run_pycocotools(module_coco, module_eval, truth, results, iou_type):
    coco_gt = module_coco()
    coco_gt.dataset = truth
    coco_gt.createIndex()
    coco_dt = coco_gt.loadRes(results)
    evaluator = module_eval(coco_gt, coco_dt, iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return [float(v) for v in evaluator.stats]


def worker(backend: str, iou_type: str, folder: Path) -> None:
    """Time one implementation on the files in `folder`; print one JSON line."""
    truth = json.loads((folder / "ground_truth.json").read_bytes())
    results = json.loads((folder / f"{iou_type}_results.json").read_bytes())
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        def run(t, r):
            return _run_pycocotools(COCO, COCOeval, t, r, iou_type)
    elif backend == "faster-coco-eval":
        from faster_coco_eval import COCO, COCOeval_faster

        def run(t, r):
            return _run_pycocotools(COCO, COCOeval_faster, t, r, iou_type)
    elif backend == "hotcoco":
        from hotcoco import COCO, COCOeval

        def run(t, r):
            return _run_pycocotools(COCO, COCOeval, t, r, iou_type)
    elif backend == "ours":
        import pycocotools.mask  # noqa: F401  (imported before timing, as the other backends are)

        from cv_pipeline.evaluation.coco_eval import DetectionMetrics

        metrics = DetectionMetrics(iou_type)

        def run(t, r):
            values = metrics.compute_metrics(r, t)
            return [values[name] for name in STAT_NAMES]
    else:
        raise ValueError(f"unknown backend {backend!r}")
    truth, results = copy.deepcopy(truth), copy.deepcopy(results)
    before = _rss_mb()
    with contextlib.redirect_stdout(io.StringIO()):
        start, cpu_start = time.perf_counter(), time.process_time()
        stats = run(truth, results)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"backend": backend, "iou_type": iou_type, "seconds": seconds,
                      "cpu_seconds": cpu_seconds, "stats": stats,
                      "peak_rss_mb": peak, "added_mb": peak - before}))


def _measure(backend: str, iou_type: str, folder: Path) -> dict | None:
    completed = subprocess.run([sys.executable, __file__, "--worker", backend, iou_type, str(folder)],
                               capture_output=True, text=True)
    if completed.returncode != 0:
        print(f"  {backend} {iou_type} failed:\n{completed.stderr[-2000:]}")
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 images instead of 5000")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iou-types", default="bbox,segm")
    parser.add_argument("--also", default="",
                        help="comma-separated extra backends: faster-coco-eval, hotcoco")
    parser.add_argument("--worker", nargs=3, metavar=("BACKEND", "IOU_TYPE", "FOLDER"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], args.worker[1], Path(args.worker[2]))
        return 0

    num_images = args.images or (500 if args.quick else 5000)
    start = time.perf_counter()
    truth, bbox_results, segm_results = make_dataset(num_images, args.seed)
    crowd = sum(a["iscrowd"] for a in truth["annotations"])
    print(f"data: {num_images} images, {len(truth['categories'])} categories, {len(truth['annotations'])} "
          f"ground truths ({crowd} crowd), {len(bbox_results)} detections; generated in "
          f"{time.perf_counter() - start:.1f} s (seed {args.seed})")
    iou_types = [t for t in args.iou_types.split(",") if t]
    backends = ["pycocotools", "ours"] + [b for b in args.also.split(",") if b]
    failed = False
    totals = {"ours": 0.0, "pycocotools": 0.0}
    lines = []
    with tempfile.TemporaryDirectory(prefix="coco_eval_bench_") as tmp:
        folder = Path(tmp)
        (folder / "ground_truth.json").write_text(json.dumps(truth))
        (folder / "bbox_results.json").write_text(json.dumps(bbox_results))
        (folder / "segm_results.json").write_text(json.dumps(segm_results))
        del truth, bbox_results, segm_results
        for iou_type in iou_types:
            print(f"{iou_type}:")
            measured = {}
            for backend in backends:
                result = _measure(backend, iou_type, folder)
                if result is None:
                    failed = failed or backend in ("pycocotools", "ours")
                    continue
                measured[backend] = result
            reference = measured.get("pycocotools")
            for backend, result in measured.items():
                difference = (max(abs(a - b) for a, b in zip(result["stats"], reference["stats"]))
                              if reference else float("nan"))
                equal = difference <= 1e-6
                if backend == "ours" and not equal:
                    failed = True
                print(f"  {backend:<17} {result['seconds']:8.3f} s (CPU {result['cpu_seconds']:7.3f} s)   "
                      f"peak RSS {result['peak_rss_mb']:7.0f} MB "
                      f"(+{result['added_mb']:.0f} MB)   max |stat - pycocotools| = {difference:.2e}"
                      f"{'' if equal else '  DIFFERENT'}")
            if reference:
                print("  pycocotools stats: " + ", ".join(
                    f"{name}={value:.4f}" for name, value in zip(STAT_NAMES, reference["stats"])))
            if "ours" in measured and reference:
                ours, base = measured["ours"]["seconds"], reference["seconds"]
                totals["ours"] += ours
                totals["pycocotools"] += base
                lines.append(f"RESULT coco_eval_{iou_type} wall_s={ours:.3f} baseline={base:.3f} "
                             f"ratio={base / ours:.1f} goal={GOAL:g}")
    for line in lines:
        print(line)
    if totals["ours"] > 0:
        print(f"RESULT coco_eval wall_s={totals['ours']:.3f} baseline={totals['pycocotools']:.3f} "
              f"ratio={totals['pycocotools'] / totals['ours']:.1f} goal={GOAL:g}")
    if failed:
        print("FAILED: an implementation errored or its statistics differ from pycocotools'")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
