"""COCOProcessor: one landing batch to Spark DataFrames shaped like the Delta table contracts.

Structural validation runs in `coco.parse_coco`; image files are read by Spark tasks; every
rejected record becomes a quarantine row carrying its reason, so for each record type
accepted + quarantined = read.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from cv_pipeline.data.coco import ParsedCOCO, RejectedRecord, parse_coco
from cv_pipeline.data.delta_io import validate_batch_id
from cv_pipeline.data.images import IMAGE_CHECK_COLUMNS, inspect_image_partitions

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
SUCCESS_MARKER = "_SUCCESS"

IMAGES_SCHEMA = (
    "batch_id string, image_id long, file_name string, file_path string, width int, height int, "
    "license long, date_captured string, flickr_url string, coco_url string, extra_json string, "
    "actual_width int, actual_height int, image_format string, color_mode string, channels int, "
    "byte_size long, sha256 string, ingested_at timestamp"
)
ANNOTATIONS_SCHEMA = (
    "batch_id string, annotation_id long, image_id long, category_id long, bbox_x double, bbox_y double, "
    "bbox_w double, bbox_h double, area double, iscrowd int, segmentation string, segmentation_type string, "
    "extra_json string, ingested_at timestamp"
)
CATEGORIES_SCHEMA = "batch_id string, category_id long, name string, supercategory string, extra_json string, ingested_at timestamp"
QUARANTINE_SCHEMA = (
    "batch_id string, source_file string, record_type string, record_id string, record_json string, "
    "reason_code string, message string, quarantined_at timestamp"
)
_INSPECT_INPUT_SCHEMA = "image_id long, file_path string"
_INSPECT_OUTPUT_SCHEMA = _INSPECT_INPUT_SCHEMA + ", " + ", ".join(f"{k} {v}" for k, v in IMAGE_CHECK_COLUMNS.items())


@dataclass
class BatchIngestion:
    """The four DataFrames of one batch plus what was read, accepted and quarantined."""

    batch_id: str
    source_file: str
    images: object
    annotations: object
    categories: object
    quarantine: object
    counts: dict = field(default_factory=dict)


def batch_record(batch_id: str, source_file: str, message: str, reason_code: str = "batch_unreadable") -> dict:
    """A quarantine row for a batch that could not be read at all."""
    return {
        "batch_id": batch_id,
        "source_file": source_file,
        "record_type": "batch",
        "record_id": batch_id,
        "record_json": json.dumps({"batch_id": batch_id}),
        "reason_code": reason_code,
        "message": message,
        "quarantined_at": datetime.now(timezone.utc),
    }


class COCOProcessor:
    """Reads COCO landing batches into Spark DataFrames (the seed's quick-start API)."""

    def __init__(self, spark, image_partitions: int | None = None):
        self.spark = spark
        self.image_partitions = image_partitions

    def load_coco_annotations(self, path: str | Path, batch_id: str | None = None):
        """Structurally valid annotations of one COCO file as a Spark DataFrame."""
        path = Path(path)
        parsed = parse_coco(path)
        batch_id = validate_batch_id(batch_id or path.parent.name)
        now = datetime.now(timezone.utc)
        return self._frame([dict(a, batch_id=batch_id, ingested_at=now) for a in parsed.annotations], ANNOTATIONS_SCHEMA)

    def process_images(self, images_dir: str | Path, image_records: list[dict] | None = None):
        """Inspect image files in Spark tasks: existence, full decode, size, format, channels, sha256.

        With no records, every file under `images_dir` is inspected (image_id is then null).
        """
        images_dir = Path(images_dir).resolve()
        if image_records is None:
            files = sorted(p for p in images_dir.rglob("*") if p.is_file())
            rows = [{"image_id": None, "file_path": str(p)} for p in files]
        else:
            rows = [{"image_id": r["image_id"], "file_path": str(images_dir / r["file_name"])} for r in image_records]
        frame = self._frame(rows, _INSPECT_INPUT_SCHEMA)
        partitions = self.image_partitions or max(1, min(len(rows), self.spark.sparkContext.defaultParallelism * 2))
        return frame.repartition(partitions).mapInPandas(inspect_image_partitions, _INSPECT_OUTPUT_SCHEMA)

    def ingest_batch(self, batch_dir: str | Path, batch_id: str | None = None) -> BatchIngestion:
        """Parse, validate and inspect a landing batch; raises COCOFormatError if it is unreadable."""
        batch_dir = Path(batch_dir).resolve()
        batch_id = validate_batch_id(batch_id or batch_dir.name)
        annotations_path = batch_dir / ANNOTATIONS_FILE
        parsed = parse_coco(annotations_path)
        now = datetime.now(timezone.utc)
        images_dir = batch_dir / IMAGES_DIR

        inspected = self.process_images(images_dir, parsed.images).toPandas() if parsed.images else pd.DataFrame()
        facts_by_id: dict[int, dict] = {}
        for row in inspected.to_dict("records"):
            facts_by_id.setdefault(int(row["image_id"]), row)  # duplicate ids share one file

        accepted_images, rejected_image_ids = [], set()
        for image in parsed.images:
            facts = facts_by_id[image["image_id"]]
            problem = _image_problem(image, facts)
            if problem:
                code, message = problem
                parsed.reject("image", _source_image_record(image), code,
                              f"{annotations_path}: image id={image['image_id']} field 'file_name' "
                              f"({image['file_name']}): {message}")
                rejected_image_ids.add(image["image_id"])
                continue
            accepted_images.append({
                **image,
                "batch_id": batch_id,
                "file_path": facts["file_path"],
                "actual_width": int(facts["actual_width"]),
                "actual_height": int(facts["actual_height"]),
                "channels": int(facts["channels"]),
                "byte_size": int(facts["byte_size"]),
                "image_format": facts["image_format"],
                "color_mode": facts["color_mode"],
                "sha256": facts["sha256"],
                "ingested_at": now,
            })

        accepted_annotations = []
        for annotation in parsed.annotations:
            if annotation["image_id"] in rejected_image_ids:
                parsed.rejected.append(RejectedRecord(
                    "annotation", str(annotation["annotation_id"]), _source_annotation_record(annotation),
                    "image_rejected",
                    f"{annotations_path}: annotation id={annotation['annotation_id']} field 'image_id': "
                    f"image {annotation['image_id']} was rejected",
                ))
                continue
            accepted_annotations.append({**annotation, "batch_id": batch_id, "ingested_at": now})

        categories = [{**c, "batch_id": batch_id, "ingested_at": now} for c in parsed.categories]
        quarantine = [_quarantine_row(batch_id, parsed.source_file, r, now) for r in parsed.rejected]
        counts = _counts(parsed, accepted_images, accepted_annotations, categories)
        return BatchIngestion(
            batch_id=batch_id,
            source_file=parsed.source_file,
            images=self._frame(accepted_images, IMAGES_SCHEMA),
            annotations=self._frame(accepted_annotations, ANNOTATIONS_SCHEMA),
            categories=self._frame(categories, CATEGORIES_SCHEMA),
            quarantine=self._frame(quarantine, QUARANTINE_SCHEMA),
            counts=counts,
        )

    def quarantine_frame(self, rows: list[dict]):
        return self._frame(rows, QUARANTINE_SCHEMA)

    def _frame(self, rows: list[dict], schema: str):
        from pyspark.sql.types import _parse_datatype_string

        struct = _parse_datatype_string(schema)
        names = [f.name for f in struct.fields]
        return self.spark.createDataFrame([tuple(row.get(n) for n in names) for row in rows], struct)


def _image_problem(image: dict, facts: dict) -> tuple[str, str] | None:
    if not facts["file_exists"]:
        return "image_missing", facts["image_error"]
    if not facts["decodable"]:
        return "image_undecodable", facts["image_error"]
    if (int(facts["actual_width"]), int(facts["actual_height"])) != (image["width"], image["height"]):
        return "image_size_mismatch", (
            f"declared {image['width']}x{image['height']} but the file is "
            f"{int(facts['actual_width'])}x{int(facts['actual_height'])}"
        )
    return None


def _source_image_record(image: dict) -> dict:
    record = {"id": image["image_id"], "file_name": image["file_name"], "width": image["width"], "height": image["height"]}
    for key in ("license", "date_captured", "flickr_url", "coco_url"):
        if image.get(key) is not None:
            record[key] = image[key]
    if image.get("extra_json"):
        record.update(json.loads(image["extra_json"]))
    return record


def _source_annotation_record(annotation: dict) -> dict:
    record = {
        "id": annotation["annotation_id"],
        "image_id": annotation["image_id"],
        "category_id": annotation["category_id"],
        "bbox": [annotation["bbox_x"], annotation["bbox_y"], annotation["bbox_w"], annotation["bbox_h"]],
        "area": annotation["area"],
        "iscrowd": annotation["iscrowd"],
        "segmentation": json.loads(annotation["segmentation"]) if annotation["segmentation"] else None,
    }
    if annotation.get("extra_json"):
        record.update(json.loads(annotation["extra_json"]))
    return record


def _quarantine_row(batch_id: str, source_file: str, rejected: RejectedRecord, now: datetime) -> dict:
    return {
        "batch_id": batch_id,
        "source_file": source_file,
        "record_type": rejected.record_type,
        "record_id": rejected.record_id,
        "record_json": json.dumps(rejected.record, default=str),
        "reason_code": rejected.reason_code,
        "message": rejected.message,
        "quarantined_at": now,
    }


def _counts(parsed: ParsedCOCO, images: list, annotations: list, categories: list) -> dict:
    quarantined = Counter(r.record_type for r in parsed.rejected)
    return {
        "read": dict(parsed.counts_read),
        "accepted": {"images": len(images), "annotations": len(annotations), "categories": len(categories)},
        "quarantined": {"images": quarantined["image"], "annotations": quarantined["annotation"],
                        "categories": quarantined["category"]},
        "quarantined_by_reason": dict(sorted(Counter(r.reason_code for r in parsed.rejected).items())),
    }


def is_complete_batch(batch_dir: Path) -> bool:
    """A batch folder is complete once the copier has written `_SUCCESS` (last)."""
    return (batch_dir / SUCCESS_MARKER).is_file()


def find_complete_batches(landing_dir: str | Path) -> list[str]:
    """Sorted ids of complete batches under the landing zone; incomplete ones are left for later."""
    landing = Path(landing_dir)
    if not landing.is_dir():
        return []
    return sorted(p.name for p in landing.iterdir() if p.is_dir() and is_complete_batch(p))
