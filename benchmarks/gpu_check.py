"""GPU check (< 5 minutes on one H100): mixed-precision detection training throughput, GPU
utilisation and memory, and DDP over every visible GPU, with our task registry, LightningModule,
dataset and transforms.

    python benchmarks/gpu_check.py [--quick] [--arch fasterrcnn_resnet50_fpn] [--image-size 512]

Runs with the torch stack alone (no Ray, Delta or Java: the GPU machine has none of them): a
synthetic COCO batch is generated (`cv_pipeline.data.synthetic`), its records are built straight
from the JSON, and `TaskModule("detection", arch)` trains through Lightning with
`precision="bf16-mixed"` (16-mixed where bf16 is missing), `strategy="ddp"` over all visible GPUs
(`devices="auto"`), 4 DataLoader workers per GPU. Throughput counts training images per second
over the timed steps (the first ones are warm-up); a thread samples NVML's GPU utilisation and
memory meanwhile. The baseline is the same model and batch on this machine's CPU in fp32, a few
steps. Ends with
`RESULT gpu_check train_images_per_s=<gpu> baseline=<cpu> ratio=<gpu/cpu> goal=10 gpu_util=<mean %>`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch


def records_from_coco(batch_dir: Path):
    from cv_pipeline.training.coco_dataset import ImageRecord

    document = json.loads((batch_dir / "annotations.json").read_text())
    index = {c["id"]: i for i, c in enumerate(sorted(document["categories"], key=lambda c: c["id"]))}
    by_image: dict[int, list[dict]] = {}
    for annotation in document["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    records = []
    for image in document["images"]:
        annotations = sorted(by_image.get(image["id"], []), key=lambda a: a["id"])
        records.append(ImageRecord(
            batch_id="gpu", image_id=image["id"], file_path=str(batch_dir / "images" / image["file_name"]),
            width=image["width"], height=image["height"],
            annotation_ids=np.array([a["id"] for a in annotations], np.int64),
            boxes_xywh=np.array([a["bbox"] for a in annotations], np.float32).reshape(-1, 4),
            labels=np.array([index[a["category_id"]] for a in annotations], np.int64),
            iscrowd=np.array([a.get("iscrowd", 0) for a in annotations], np.int64),
            area=np.array([a["area"] for a in annotations], np.float32),
            segmentations=[json.dumps(a["segmentation"]) for a in annotations]))
    return [r for r in records if r.has_objects()], len(index)


class Probe:
    """Times training batches after warm-up and samples NVML utilisation/memory in a thread."""

    def __init__(self, warmup: int, steps: int, batch_size: int, gpu: bool):
        import lightning.pytorch as pl

        outer = self

        class Callback(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if trainer.global_step == warmup:
                    if gpu:
                        torch.cuda.synchronize()
                    outer.start = time.perf_counter()
                    outer.sampling = True

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if trainer.global_step == warmup + steps:
                    if gpu:
                        torch.cuda.synchronize()
                    outer.seconds = time.perf_counter() - outer.start
                    outer.sampling = False
                    trainer.should_stop = True

        self.callback = Callback()
        self.start = self.seconds = None
        self.sampling = False
        self.util: list[float] = []
        self.memory: list[float] = []
        self.images = steps * batch_size

    def sample(self, stop: threading.Event):
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as error:  # noqa: BLE001 - utilisation is reported as unavailable
            print(f"NVML unavailable: {error}")
            return
        while not stop.wait(0.2):
            if self.sampling:
                self.util.append(float(np.mean([pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles])))
                self.memory.append(max(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles) / 2**30)


def train_throughput(records, num_classes, args, device: str, steps: int, warmup: int, batch_size: int):
    import lightning.pytorch as pl
    from torch.utils.data import DataLoader

    from cv_pipeline.models.lightning_task import TaskModule
    from cv_pipeline.training.coco_dataset import CocoDeltaDataset, collate_detection, detection_target, detection_transforms

    data = CocoDeltaDataset(records * 50, detection_target, detection_transforms(True))
    module = TaskModule("detection", args.arch, num_classes, {"image_size": args.image_size, "lr": 1e-3,
                                                               "optimizer": "sgd", "warmup_epochs": 0.0})
    gpu = device == "cuda"
    probe = Probe(warmup, steps, batch_size, gpu)
    trainer = pl.Trainer(
        accelerator="gpu" if gpu else "cpu", devices="auto" if gpu else 1,
        strategy="ddp" if gpu and torch.cuda.device_count() > 1 else "auto",
        precision=("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true",
        max_epochs=1, max_steps=warmup + steps + 1, callbacks=[probe.callback], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, num_workers=args.loader_workers if gpu else 2,
                        collate_fn=collate_detection, pin_memory=gpu, persistent_workers=False, drop_last=True)
    stop = threading.Event()
    sampler = threading.Thread(target=probe.sample, args=(stop,), daemon=True)
    if gpu:
        sampler.start()
    trainer.fit(module, loader)
    stop.set()
    if probe.seconds is None:
        raise RuntimeError(f"{device}: training ended before {warmup + steps} steps")
    world = trainer.world_size
    return probe.images * world / probe.seconds, probe, world


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--arch", default="fasterrcnn_resnet50_fpn")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--loader-workers", type=int, default=6)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: this check needs a GPU machine", file=sys.stderr)
        return 2
    from cv_pipeline.data.synthetic import generate_batch

    print(f"torch {torch.__version__}, {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}")
    with tempfile.TemporaryDirectory() as tmp:
        batch_dir = Path(tmp) / "batch_gpu"
        generate_batch(batch_dir, num_images=60 if args.quick else 200, seed=3, first_image_id=1, first_annotation_id=1)
        records, num_classes = records_from_coco(batch_dir)
        steps = 10 if args.quick else 40
        gpu, probe, world = train_throughput(records, num_classes, args, "cuda", steps=steps, warmup=5,
                                             batch_size=args.batch_size)
        cpu, _, _ = train_throughput(records, num_classes, args, "cpu", steps=2, warmup=1, batch_size=4)
    util = float(np.mean(probe.util)) if probe.util else float("nan")
    memory = max(probe.memory) if probe.memory else float("nan")
    print(f"{args.arch} at {args.image_size}px, batch {args.batch_size} per GPU, DDP world size {world}: "
          f"{gpu:.1f} train img/s on GPU (bf16 autocast), {cpu:.2f} img/s on the CPU (fp32, {torch.get_num_threads()} threads)")
    print(f"GPU utilisation mean {util:.0f}% (samples {len(probe.util)}), GPU memory used max {memory:.1f} GiB")
    print(f"RESULT gpu_check train_images_per_s={gpu:.1f} baseline={cpu:.2f} ratio={gpu / cpu:.1f} goal=10 "
          f"gpu_util={util:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
