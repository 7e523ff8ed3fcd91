"""Parse and structurally validate one COCO instances document (no Spark, no Dagster).

Every record is either accepted or rejected with a reason; nothing is dropped and nothing is
repaired. The one documented default: a missing `iscrowd` means 0, as pycocotools assumes.
Ids are the source's own: they are unique within one export, so tables key records by
(`batch_id`, id).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

REQUIRED_TOP_LEVEL = ("images", "annotations", "categories")


class COCOFormatError(ValueError):
    """The document cannot be read as COCO at all; the message names the file and position or key."""


@dataclass
class RejectedRecord:
    record_type: str  # image | annotation | category | batch
    record_id: str | None
    record: Any
    reason_code: str
    message: str


@dataclass
class ParsedCOCO:
    source_file: str
    info: dict
    licenses: list
    images: list[dict] = field(default_factory=list)
    annotations: list[dict] = field(default_factory=list)
    categories: list[dict] = field(default_factory=list)
    rejected: list[RejectedRecord] = field(default_factory=list)
    counts_read: dict[str, int] = field(default_factory=dict)

    def reject(self, record_type: str, record: Any, reason_code: str, message: str) -> None:
        record_id = record.get("id") if isinstance(record, dict) else None
        self.rejected.append(
            RejectedRecord(record_type, None if record_id is None else str(record_id), record, reason_code, message)
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _field_error(source: str, section: str, index: int, record: Any, name: str, expected: str) -> str:
    record_id = record.get("id") if isinstance(record, dict) else None
    got = record.get(name, "<missing>") if isinstance(record, dict) else record
    return f"{source}: {section}[{index}] (id={record_id}) field '{name}': expected {expected}, got {got!r}"


def safe_relative_path(file_name: str) -> PurePosixPath | None:
    """The file name as a path inside the batch's images folder, or None if it could escape it."""
    if not file_name or "\\" in file_name or "\x00" in file_name:
        return None
    path = PurePosixPath(file_name)
    if path.is_absolute() or any(part in ("..", "") for part in path.parts):
        return None
    return path


def load_coco_json(path: str | Path) -> dict:
    """Read a COCO document; invalid JSON raises COCOFormatError naming file, line, column and offset."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise COCOFormatError(f"{path}: annotation file not found") from exc
    try:
        document = json.loads(raw, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise COCOFormatError(
            f"{path}: invalid JSON at line {exc.lineno} column {exc.colno} (char {exc.pos}): {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise COCOFormatError(f"{path}: not UTF-8 text at byte {exc.start}: {exc.reason}") from exc
    except _NonFiniteNumber as exc:
        raise COCOFormatError(f"{path}: {exc} is not a valid JSON number") from exc
    if not isinstance(document, dict):
        raise COCOFormatError(f"{path}: top level must be a JSON object, got {type(document).__name__}")
    for key in REQUIRED_TOP_LEVEL:
        if key not in document:
            raise COCOFormatError(f"{path}: missing top-level key '{key}'")
        if not isinstance(document[key], list):
            raise COCOFormatError(f"{path}: top-level key '{key}' must be a list, got {type(document[key]).__name__}")
    return document


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str):
    raise _NonFiniteNumber(name)


def parse_coco(path: str | Path, document: dict | None = None) -> ParsedCOCO:
    """Validate every record of a COCO document: accepted records are normalised, the rest rejected."""
    path = Path(path)
    document = load_coco_json(path) if document is None else document
    source = str(path)
    parsed = ParsedCOCO(
        source_file=source,
        info=document.get("info") if isinstance(document.get("info"), dict) else {},
        licenses=document.get("licenses") if isinstance(document.get("licenses"), list) else [],
        counts_read={key: len(document[key]) for key in REQUIRED_TOP_LEVEL},
    )
    _parse_categories(parsed, document["categories"], source)
    _parse_images(parsed, document["images"], source)
    _parse_annotations(parsed, document["annotations"], source)
    return parsed


def _extra(record: dict, known: tuple[str, ...]) -> str | None:
    extra = {k: v for k, v in record.items() if k not in known}
    return json.dumps(extra, sort_keys=True) if extra else None


CATEGORY_FIELDS = ("id", "name", "supercategory")
IMAGE_FIELDS = ("id", "file_name", "width", "height", "license", "date_captured", "flickr_url", "coco_url")
ANNOTATION_FIELDS = ("id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation")


def _parse_categories(parsed: ParsedCOCO, records: list, source: str) -> None:
    seen: set[int] = set()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            parsed.reject("category", record, "invalid_record", f"{source}: categories[{index}] is not an object")
            continue
        if not _is_int(record.get("id")) or record["id"] < 0:
            parsed.reject("category", record, "invalid_field",
                          _field_error(source, "categories", index, record, "id", "a non-negative integer"))
            continue
        if not isinstance(record.get("name"), str) or not record["name"].strip():
            parsed.reject("category", record, "invalid_field",
                          _field_error(source, "categories", index, record, "name", "a non-empty string"))
            continue
        if record["id"] in seen:
            parsed.reject("category", record, "duplicate_id",
                          f"{source}: categories[{index}] field 'id': id {record['id']} appears more than once")
            continue
        seen.add(record["id"])
        supercategory = record.get("supercategory")
        parsed.categories.append({
            "category_id": record["id"],
            "name": record["name"],
            "supercategory": supercategory if isinstance(supercategory, str) else None,
            "extra_json": _extra(record, CATEGORY_FIELDS),
        })


def _parse_images(parsed: ParsedCOCO, records: list, source: str) -> None:
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            parsed.reject("image", record, "invalid_record", f"{source}: images[{index}] is not an object")
            continue
        problem = None
        if not _is_int(record.get("id")) or record["id"] < 0:
            problem = ("invalid_field", _field_error(source, "images", index, record, "id", "a non-negative integer"))
        elif not isinstance(record.get("file_name"), str):
            problem = ("invalid_field", _field_error(source, "images", index, record, "file_name", "a string"))
        elif safe_relative_path(record["file_name"]) is None:
            problem = ("unsafe_path", _field_error(source, "images", index, record, "file_name",
                                                   "a relative path inside the batch's images folder"))
        else:
            for name in ("width", "height"):
                if not _is_int(record.get(name)) or record[name] <= 0:
                    problem = ("invalid_field", _field_error(source, "images", index, record, name, "a positive integer"))
                    break
        if problem:
            parsed.reject("image", record, *problem)
            continue
        license_id = record.get("license")
        parsed.images.append({
            "image_id": record["id"],
            "file_name": record["file_name"],
            "width": record["width"],
            "height": record["height"],
            "license": license_id if _is_int(license_id) else None,
            "date_captured": record.get("date_captured") if isinstance(record.get("date_captured"), str) else None,
            "flickr_url": record.get("flickr_url") if isinstance(record.get("flickr_url"), str) else None,
            "coco_url": record.get("coco_url") if isinstance(record.get("coco_url"), str) else None,
            "extra_json": _extra(record, IMAGE_FIELDS),
        })


def segmentation_type(segmentation: Any) -> str | None:
    """`polygon`, `rle` (compressed counts string), `rle_uncompressed` (counts list), `none`, or None if malformed."""
    if segmentation is None or segmentation == []:
        return "none"
    if isinstance(segmentation, list):
        ok = all(
            isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and all(_is_number(v) for v in poly)
            for poly in segmentation
        )
        return "polygon" if ok else None
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v >= 0 for v in size)):
            return None
        if isinstance(counts, str):
            return "rle"
        if isinstance(counts, list) and all(_is_int(v) and v >= 0 for v in counts):
            return "rle_uncompressed"
    return None


def _parse_annotations(parsed: ParsedCOCO, records: list, source: str) -> None:
    image_ids = {image["image_id"] for image in parsed.images}
    rejected_image_ids = {
        r.record.get("id") for r in parsed.rejected if r.record_type == "image" and isinstance(r.record, dict)
    }
    category_ids = {category["category_id"] for category in parsed.categories}
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            parsed.reject("annotation", record, "invalid_record", f"{source}: annotations[{index}] is not an object")
            continue

        def bad(name: str, expected: str, code: str = "invalid_field") -> None:
            parsed.reject("annotation", record, code, _field_error(source, "annotations", index, record, name, expected))

        if not _is_int(record.get("id")) or record["id"] < 0:
            bad("id", "a non-negative integer")
            continue
        if not _is_int(record.get("image_id")):
            bad("image_id", "an integer")
            continue
        if not _is_int(record.get("category_id")):
            bad("category_id", "an integer")
            continue
        bbox = record.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            bad("bbox", "a list of 4 finite numbers [x, y, w, h]")
            continue
        area = record.get("area")
        if not _is_number(area):
            bad("area", "a finite number")
            continue
        iscrowd = record.get("iscrowd", 0)
        if not _is_int(iscrowd):
            bad("iscrowd", "0 or 1")
            continue
        seg_type = segmentation_type(record.get("segmentation"))
        if seg_type is None:
            bad("segmentation", "polygons (lists of >= 3 x,y pairs) or RLE {size, counts}")
            continue
        if record["image_id"] not in image_ids:
            if record["image_id"] in rejected_image_ids:
                parsed.reject("annotation", record, "image_rejected",
                              f"{source}: annotations[{index}] (id={record['id']}) field 'image_id': "
                              f"image {record['image_id']} was rejected")
            else:
                bad("image_id", "the id of an image in this file", "unknown_image")
            continue
        if record["category_id"] not in category_ids:
            bad("category_id", "the id of a category in this file", "unknown_category")
            continue
        segmentation = record.get("segmentation")
        parsed.annotations.append({
            "annotation_id": record["id"],
            "image_id": record["image_id"],
            "category_id": record["category_id"],
            "bbox_x": float(bbox[0]),
            "bbox_y": float(bbox[1]),
            "bbox_w": float(bbox[2]),
            "bbox_h": float(bbox[3]),
            "area": float(area),
            "iscrowd": iscrowd,
            "segmentation": json.dumps(segmentation) if segmentation is not None else None,
            "segmentation_type": seg_type,
            "extra_json": _extra(record, ANNOTATION_FIELDS),
        })
