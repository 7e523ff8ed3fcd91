"""Benchmarks' lake builder: landing batches -> Delta tables -> a pinned training_dataset, without a JVM.

The batches are parsed and validated by `COCOProcessor.ingest_batch(..., inspect_images=False)` and
written through delta-rs exactly as ingestion writes them; only the image inspection Spark would
run is replaced by computing `file_path` and `sha256` here, so benchmark scripts also run on
machines without Java (the GPU machine).
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def build_lake(batch_dirs: list[Path], lake_dir: Path, **dataset_options):
    """Ingest `batch_dirs` into `lake_dir` and build the training_dataset; returns its manifest."""
    import pyarrow as pa

    from cv_pipeline.data.delta_io import replace_batch
    from cv_pipeline.data.processor import COCOProcessor
    from cv_pipeline.training.dataset import build_training_dataset

    processor = COCOProcessor(None)
    for batch_dir in batch_dirs:
        batch = processor.ingest_batch(batch_dir, inspect_images=False)
        images = batch.tables["coco_images"]
        paths = [str(Path(batch_dir) / "images" / name) for name in images.column("file_name").to_pylist()]
        shas = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths]
        for name, values in (("file_path", paths), ("sha256", shas)):
            images = images.set_column(images.schema.get_field_index(name), name, pa.array(values, pa.string()))
        for name, table in (("coco_images", images), ("coco_annotations", batch.tables["coco_annotations"]),
                            ("coco_categories", batch.tables["coco_categories"])):
            replace_batch(table, Path(lake_dir) / name, batch.batch_id)
    return build_training_dataset(lake_dir, **dataset_options)
