"""Training throughput through Ray Train + Lightning against a plain PyTorch loop, on the CPU.

    python benchmarks/training_overhead.py [--quick] [--epochs 4] [--image-size 64] [--batch-size 32]

Both sides train the same model (the classification task's resnet18 from random weights) on the
same data (the object crops of the bundled samples' train split, from a Delta lake built by
`benchmarks/sample_lake.py`), with the same optimiser (AdamW), batch size, augmentation, torch
threads, and one validation pass over the val crops per epoch:

- baseline: a plain loop, `for images, labels in DataLoader(...)`: forward, loss, backward, step;
- ours: `RayTrainer("resnet18", num_workers=1, task="classification").train(...)`: Lightning inside
  Ray Train's TorchTrainer with RayDDPStrategy (one worker: no DDP wrapper), the sharded dataset, a
  checkpoint (model and optimiser state) saved and reported to Ray every epoch, validation loss and
  metrics through torchmetrics.

Throughput is train samples per second of epoch wall time (training + validation, and for ours the
checkpoint and report too), first epoch excluded as warm-up on both sides; the mean epoch is also
shown split into training, validation and (ours) checkpoint + report. Ray and worker start-up are reported
separately (they are paid once per run). Ends with
`RESULT training_overhead samples_per_s=<ours> baseline=<plain loop> ratio=<ours/plain> goal=0.9`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]


def plain_loop(manifest, config: dict) -> tuple[list[dict], int]:
    """Per-epoch wall times (`epoch_s`, split into `train_s` and `val_s`) of a plain PyTorch loop over
    the same crops and model, and the samples it trains on per epoch."""
    import torch
    from torch.nn import functional as F
    from torch.utils.data import DataLoader

    from cv_pipeline.models.tasks import get_task
    from cv_pipeline.training.crops import CropDataset, load_crops, train_transform
    from cv_pipeline.training.dataset import load_split

    torch.manual_seed(config["seed"])
    torch.set_num_threads(config["torch_threads"])
    size = config["image_size"]
    train = CropDataset(*load_crops(load_split(manifest.table_path, manifest.version, "train"), size),
                        transform=train_transform(size))
    val = CropDataset(*load_crops(load_split(manifest.table_path, manifest.version, "val"), size))
    model = get_task("classification").build_model("resnet18", len(manifest.labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])
    times = []
    for _ in range(config["epochs"]):
        started = time.perf_counter()
        model.train()
        for images, labels in DataLoader(train, batch_size=config["batch_size"], shuffle=True, drop_last=True):
            loss = F.cross_entropy(model(images), labels, label_smoothing=config["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        trained = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in DataLoader(val, batch_size=config["batch_size"]):
                correct += int((model(images).argmax(1) == labels).sum())
        ended = time.perf_counter()
        times.append({"epoch_s": ended - started, "train_s": trained - started, "val_s": ended - trained})
    return times, len(train) // config["batch_size"] * config["batch_size"]


def steady(rows: list[dict], key: str) -> float:
    """Mean of `key` over the epochs after the first (warm-up)."""
    values = [row[key] for row in rows[1:]]
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 epochs")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    epochs = 3 if args.quick else max(2, args.epochs)
    threads = os.cpu_count() or 1
    config = {"epochs": epochs, "image_size": args.image_size, "batch_size": args.batch_size, "lr": 2e-3,
              "weight_decay": 1e-4, "label_smoothing": 0.05, "seed": 17, "torch_threads": threads}
    with tempfile.TemporaryDirectory(prefix="cv_pipeline_overhead_") as tmp:
        os.environ.setdefault("CV_PIPELINE_HOME", str(Path(tmp) / "home"))
        from sample_lake import build_lake

        from cv_pipeline.training.ray_cluster import ray_cluster
        from cv_pipeline.training.ray_trainer import RayTrainer

        batches = sorted(p for p in (REPO / "data_samples" / "landing").iterdir() if (p / "_SUCCESS").exists())
        manifest = build_lake(batches, Path(tmp) / "lake")
        plain_times, plain_samples = plain_loop(manifest, config)
        plain = plain_samples / steady(plain_times, "epoch_s")

        started = time.perf_counter()
        with ray_cluster(num_workers=1, use_gpu=False):
            ray_up = time.perf_counter() - started
            trainer = RayTrainer("resnet18", num_workers=1, task="classification", storage_path=Path(tmp) / "ray")
            result = trainer.train({**config, "dataset_path": manifest.table_path, "run_name": "overhead",
                                    "checkpoints_to_keep": 1})
        total = time.perf_counter() - started
        ours_times = result.history
        ours_samples = result.history[-1]["train_samples"] // args.batch_size * args.batch_size
        ours = ours_samples / steady(ours_times, "epoch_s")
    print(f"plain loop: epochs {[round(row['epoch_s'], 2) for row in plain_times]} s, {plain_samples} samples/epoch")
    print(f"Ray + Lightning: epochs {[round(row['epoch_s'], 2) for row in ours_times]} s, {ours_samples} samples/epoch; "
          f"Ray start {ray_up:.1f} s, whole run {total:.1f} s (start-up, data load, {epochs} epochs, export)")
    split = ("train_s", "val_s", "checkpoint_s")
    print("mean epoch after the first, s:  " + "  ".join(f"{key[:-2]:>10}" for key in ("epoch_s", *split)))
    print("  plain loop                    " + "  ".join(f"{steady(plain_times, key):10.3f}" for key in ("epoch_s", *split[:2])))
    print("  Ray + Lightning               " + "  ".join(f"{steady(ours_times, key):10.3f}" for key in ("epoch_s", *split)
                                                  if key in ours_times[-1]))
    print(f"RESULT training_overhead samples_per_s={ours:.1f} baseline={plain:.1f} ratio={ours / plain:.3f} goal=0.9")
    return 0


if __name__ == "__main__":
    sys.exit(main())
