"""GPU check (< 5 minutes): train the classifier on the synthetic shapes crops on CUDA and on the
CPU for the same number of steps, and report GPU throughput against the CPU baseline.

    python benchmarks/gpu_check.py [--quick]

Needs no Spark or Java: the data comes from `cv_pipeline.data.synthetic` into a temp folder and
crops are built straight from its COCO file. Ends with
`RESULT gpu_check train_images_per_s=<gpu> baseline=<cpu> ratio=<gpu/cpu> goal=10`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cv_pipeline.data.synthetic import generate_batch
from cv_pipeline.models.lightning_classifier import ClassificationModule
from cv_pipeline.training.crops import CropDataset, load_crops, train_transform


def crop_rows(batch_dir: Path) -> tuple[list[dict], int]:
    document = json.loads((batch_dir / "annotations.json").read_text())
    images = {image["id"]: image for image in document["images"]}
    index = {c["id"]: i for i, c in enumerate(sorted(document["categories"], key=lambda c: c["id"]))}
    rows = []
    for a in document["annotations"]:
        if a.get("iscrowd", 0) == 0:
            x, y, w, h = a["bbox"]
            rows.append({"file_path": str(batch_dir / "images" / images[a["image_id"]]["file_name"]),
                         "bbox_x": x, "bbox_y": y, "bbox_w": w, "bbox_h": h, "label": index[a["category_id"]]})
    return rows, len(index)


def images_per_second(device: str, data: CropDataset, num_classes: int, steps: int, batch_size: int) -> float:
    module = ClassificationModule("resnet18", num_classes).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=2 if device == "cuda" else 0)
    done, start = 0, None
    while done < steps + 3:
        for images, labels in loader:
            if done == 3:  # warm-up steps excluded
                if device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = torch.nn.functional.cross_entropy(module(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done >= steps + 3:
                break
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU machine", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        batch_dir = Path(tmp) / "batch_gpu"
        generate_batch(batch_dir, num_images=60 if args.quick else 200, seed=3, first_image_id=1, first_annotation_id=1)
        rows, num_classes = crop_rows(batch_dir)
        data = CropDataset(*load_crops(rows, 64), transform=train_transform(64))
        steps = 10 if args.quick else 30
        cpu = images_per_second("cpu", data, num_classes, steps=5 if args.quick else 10, batch_size=64)
        gpu = images_per_second("cuda", data, num_classes, steps=steps, batch_size=64)
    print(f"device {torch.cuda.get_device_name(0)}; {len(rows)} crops; cpu {cpu:.1f} img/s; gpu {gpu:.1f} img/s")
    print(f"RESULT gpu_check train_images_per_s={gpu:.1f} baseline={cpu:.1f} ratio={gpu / cpu:.2f} goal=10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
