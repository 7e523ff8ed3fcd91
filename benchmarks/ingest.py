"""Ingest a COCO train2017-sized annotation file against pycocotools merely loading it.

    python benchmarks/ingest.py [--quick] [--dir DIR]

The input (118,287 images, 860,001 annotations with polygons, ~490 MB; `--quick`: 5,000 images and
36,000 annotations) is generated once by `benchmarks/coco_scale.py` and cached under DIR (default
$CV_PIPELINE_HOME/benchmarks). Each side runs in its own process, measured the same way:

- baseline: `pycocotools.coco.COCO(path)`: json.load plus its index, nothing validated or written;
- ours: `COCOProcessor.ingest_batch(..., inspect_images=False)` (parse, flatten, validate every
  record and segmentation, quarantine) and `BatchIngestion.write`: the five Delta tables
  committed from Arrow, as the ingestion asset writes them. Image files are not read here
  (`benchmarks/image_validation.py` measures that), nor are the GX checks run (they read the
  written tables with Spark; `--checks` times them too, apart).

Peak memory is the largest total resident memory of the process and all its children (the Spark
JVM included), sampled every 50 ms from /proc. The last line is
`RESULT ingest wall_s=<ours> baseline=<pycocotools s> ratio=<ours / pycocotools> goal=1.0`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        total += rss.get(current, 0)
        stack.extend(children.get(current, []))
    return total


def run_measured(args: list[str]) -> tuple[dict, int]:
    """Run a child python process; returns its JSON report (last stdout line) and its peak tree RSS."""
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(process.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = process.communicate()
    done.set()
    sampler.join()
    if process.returncode:
        raise SystemExit(f"{args[0]} failed with exit code {process.returncode}")
    return json.loads(out.strip().splitlines()[-1]), peak


def baseline(path: str) -> dict:
    from pycocotools.coco import COCO

    started = time.perf_counter()
    coco = COCO(path)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "annotations": len(coco.anns)}


def ours(path: str, workdir: str, checks: bool = False) -> dict:
    import pandas  # noqa: F401  (imported before the clock, as pycocotools' numpy is)

    from cv_pipeline.data.processor import COCOProcessor

    batch_dir = Path(workdir) / "landing" / "bench"
    batch_dir.mkdir(parents=True, exist_ok=True)
    target = batch_dir / "annotations.json"
    if not target.exists():
        os.symlink(path, target)
    lake = Path(workdir) / "lake"
    shutil.rmtree(lake, ignore_errors=True)

    started = time.perf_counter()
    # No Spark session is needed here: without image files to read, the batch is parsed, validated
    # and written from Arrow by delta-rs, exactly as the ingestion asset writes it.
    batch = COCOProcessor(spark=None).ingest_batch(batch_dir, "bench", inspect_images=False)
    parsed_at = time.perf_counter() - started
    versions = batch.write(lambda name: str(lake / name))
    seconds = time.perf_counter() - started
    report = {"seconds": seconds, "parse_validate_s": parsed_at, "accepted": batch.counts["accepted"],
              "quarantined": batch.counts["quarantined"], "decoding": batch.parsed.decoding, "versions": versions}
    if checks:
        del batch
        from cv_pipeline.data.quality import run_quality_suites
        from cv_pipeline.data.spark import get_spark

        spark = get_spark("cv_pipeline_benchmark")
        started = time.perf_counter()
        frames = [spark.read.format("delta").load(str(lake / name)) for name in
                  ("coco_images", "coco_annotations", "coco_categories")]
        results = run_quality_suites(*frames)
        report["checks_s"] = time.perf_counter() - started
        report["checks_failed"] = [r.name for r in results if not r.passed]
        spark.stop()
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 images and 36,000 annotations")
    parser.add_argument("--dir", default=None, help="cache folder for the generated file")
    parser.add_argument("--checks", action="store_true",
                        help="also time the GX checks on the written tables (Spark; not in the ratio)")
    parser.add_argument("--side", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "baseline":
        print(json.dumps(baseline(args.path)))
        return
    if args.side == "ours":
        print(json.dumps(ours(args.path, args.workdir, args.checks)))
        return

    from coco_scale import TRAIN2017_ANNOTATIONS, TRAIN2017_IMAGES, write_coco

    home = Path(os.environ.get("CV_PIPELINE_HOME", ".cv_pipeline")).resolve()
    cache = Path(args.dir) if args.dir else home / "benchmarks"
    images, annotations = (5_000, 36_000) if args.quick else (TRAIN2017_IMAGES, TRAIN2017_ANNOTATIONS)
    path = cache / f"coco_{images}_{annotations}.json"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        write_coco(path, images, annotations)
    size_mb = path.stat().st_size / 1e6
    print(f"input: {path} ({size_mb:.0f} MB, {images} images, {annotations} annotations)")

    base, base_peak = run_measured([__file__, "--side", "baseline", "--path", str(path)])
    print(f"pycocotools COCO(path): {base['seconds']:.2f} s, peak {base_peak / 2**30:.2f} GiB")
    with tempfile.TemporaryDirectory(dir=cache) as workdir:
        mine, peak = run_measured([__file__, "--side", "ours", "--path", str(path), "--workdir", workdir]
                                  + (["--checks"] if args.checks else []))
    print(f"cv_pipeline ingest: {mine['seconds']:.2f} s (parse + validate {mine['parse_validate_s']:.2f} s, "
          f"Delta writes the rest), peak {peak / 2**30:.2f} GiB")
    print(f"  accepted {mine['accepted']} quarantined {mine['quarantined']} decoding {mine['decoding']}")
    print(f"  throughput {size_mb / mine['seconds']:.0f} MB/s vs {size_mb / base['seconds']:.0f} MB/s")
    if "checks_s" in mine:
        print(f"  GX checks on the written tables (Spark, after the clock): {mine['checks_s']:.1f} s, "
              f"failed: {mine['checks_failed'] or 'none'} (peak above includes the Spark JVM)")
    print(f"RESULT ingest wall_s={mine['seconds']:.2f} baseline={base['seconds']:.2f} "
          f"ratio={mine['seconds'] / base['seconds']:.3f} goal=1.0 peak_gib={peak / 2**30:.2f} "
          f"baseline_peak_gib={base_peak / 2**30:.2f} memory_goal_gib=4.0")


if __name__ == "__main__":
    main()
