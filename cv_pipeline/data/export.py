"""Write an ingested batch back out as a COCO document (the inverse of `coco.parse_coco`).

Every accepted record comes back with every field it had: the modelled columns, the verbatim
segmentation JSON, keypoints, and `extra_json` (fields we don't model, and optional fields whose
value our columns can't hold). Two documented differences from the source: numbers in `bbox` and
`area` come back as floats of the same value (`[1, 2, 3, 4]` as `[1.0, 2.0, 3.0, 4.0]`), and a
missing `iscrowd` comes back as `0`, the value ingestion gave it. Quarantined records are not in
the tables; they are in `coco_quarantine` with their source JSON.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

_IMAGE_OPTIONAL = ("license", "date_captured", "flickr_url", "coco_url")


def document_from_tables(images: pa.Table, annotations: pa.Table, categories: pa.Table,
                         batch: dict | None = None) -> dict:
    """A COCO document from one batch's rows of the image, annotation and category tables (and its
    `coco_batches` row, which holds `info`, `licenses` and other top-level keys)."""
    document: dict[str, Any] = {}
    if batch:
        for key in ("info", "licenses"):
            value = json.loads(batch[f"{key}_json"]) if batch.get(f"{key}_json") else None
            if value is not None:
                document[key] = value
        document.update(json.loads(batch["extra_json"]) if batch.get("extra_json") else {})
    document["images"] = [_image(r) for r in _in_source_order(images)]
    document["annotations"] = [_annotation(r) for r in _in_source_order(annotations)]
    document["categories"] = [_category(r) for r in _in_source_order(categories)]
    return document


def _in_source_order(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: r["source_index"]) if rows and "source_index" in rows[0] else rows


def _extra(row: dict) -> dict:
    return json.loads(row["extra_json"]) if row.get("extra_json") else {}


def _image(row: dict) -> dict:
    record = {"id": row["image_id"], "file_name": row["file_name"], "width": row["width"], "height": row["height"]}
    record.update({k: row[k] for k in _IMAGE_OPTIONAL if row.get(k) is not None})
    record.update(_extra(row))
    return record


def _annotation(row: dict) -> dict:
    record = {
        "id": row["annotation_id"],
        "image_id": row["image_id"],
        "category_id": row["category_id"],
        "bbox": [row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"]],
        "area": row["area"],
        "iscrowd": row["iscrowd"],
    }
    if row.get("segmentation") is not None:
        record["segmentation"] = json.loads(row["segmentation"])
    if row.get("keypoints") is not None:
        record["keypoints"] = json.loads(row["keypoints"])
    if row.get("num_keypoints") is not None:
        record["num_keypoints"] = row["num_keypoints"]
    record.update(_extra(row))
    return record


def _category(row: dict) -> dict:
    record = {"id": row["category_id"], "name": row["name"]}
    if row.get("supercategory") is not None:
        record["supercategory"] = row["supercategory"]
    for key in ("keypoints", "skeleton"):
        if row.get(key) is not None:
            record[key] = json.loads(row[key])
    record.update(_extra(row))
    return record


def read_batch_document(table_path, batch_id: str, versions: dict[str, int] | None = None) -> dict:
    """The COCO document of one ingested batch, read from the Delta tables (optionally at pinned
    versions, by time travel). `table_path(name)` gives each table's location."""
    from cv_pipeline.data.delta_io import read_table

    versions = versions or {}
    flt = [("batch_id", "=", batch_id)]
    tables = {name: read_table(table_path(name), version=versions.get(name), filters=flt)
              for name in ("coco_images", "coco_annotations", "coco_categories", "coco_batches")}
    batches = tables["coco_batches"].to_pylist()
    if not batches:
        raise KeyError(f"batch {batch_id!r} is not in coco_batches")
    return document_from_tables(tables["coco_images"], tables["coco_annotations"], tables["coco_categories"],
                                batches[0])
