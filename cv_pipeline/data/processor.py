"""COCOProcessor: one landing batch to Spark DataFrames shaped like the Delta table contracts.

Parsing and record validation run in `coco.parse_coco` (columnar, Arrow); image files are read
by a thread per core in this process for batches of up to `IN_PROCESS_MAX_IMAGES` images, by
Spark tasks for larger ones; every rejected record becomes a quarantine row carrying its reason and
the source record, so for each record type accepted + quarantined = read.

Keys: ids are the source's own and unique only within one export, so every table is keyed by
(`batch_id`, id), and carries that key as one string too (`image_uid`, `annotation_uid`,
`category_uid`: "<batch_id>:<id>") for joins across batches.

Taxonomy: the batches of one landing zone share one set of categories. A category that conflicts
with the categories of the batches already ingested (same id with another name, or the same name
with another id) is not merged: it is quarantined (`taxonomy_conflict`), and so are its
annotations (`category_rejected`). The first batch to define an id or name wins; fix the export
(or the earlier batch) and re-ingest to resolve it.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cv_pipeline.data.coco import ParsedCOCO, RejectedRecord, parse_coco
from cv_pipeline.data.delta_io import validate_batch_id
from cv_pipeline.data.images import image_check_columns, inspect_image_files, inspect_image_partitions_fn
from cv_pipeline.data.quality import PENDING, PENDING_MESSAGE

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
SUCCESS_MARKER = "_SUCCESS"

# `status` is 'pending' until the quality checks have run on the rows written, then 'validated' or
# 'held_back' (cv_pipeline.data.quality.record_batch_status); only validated batches reach training.
BATCHES_COLUMNS = pa.schema([(name, pa.string()) for name in (
    "batch_id", "source_file", "info_json", "licenses_json", "extra_json", "records_read", "accepted",
    "quarantined", "quarantined_by_reason", "decoding")] + [("ingested_at", pa.timestamp("us", tz="UTC"))]
    + [(name, pa.string()) for name in ("status", "failed_checks", "status_message")]
    + [("checked_at", pa.timestamp("us", tz="UTC"))])
QUARANTINE_COLUMNS = pa.schema([(name, pa.string()) for name in (
    "batch_id", "source_file", "record_type", "record_id", "record_json", "reason_code", "message")]
    + [("quarantined_at", pa.timestamp("us", tz="UTC"))])
_INSPECT_INPUT_SCHEMA = "image_id long, file_path string"


def _inspect_output_schema(include_bytes: bool) -> str:
    columns = image_check_columns(include_bytes)
    return _INSPECT_INPUT_SCHEMA + ", " + ", ".join(f"{k} {v}" for k, v in columns.items())


_FILE_FACTS = {  # inspection columns kept in coco_images, with their Arrow types
    "file_path": pa.string(),
    "actual_width": pa.int32(),
    "actual_height": pa.int32(),
    "channels": pa.int32(),
    "byte_size": pa.int64(),
    "image_format": pa.string(),
    "color_mode": pa.string(),
    "sha256": pa.string(),
}


@dataclass
class BatchIngestion:
    """One batch's rows as Arrow tables (`tables`, by Delta table name), plus what was read, accepted
    and quarantined. `images`, `annotations`, ... are the same rows as Spark DataFrames."""

    batch_id: str
    source_file: str
    tables: dict[str, pa.Table]
    counts: dict = field(default_factory=dict)
    parsed: ParsedCOCO | None = None
    spark: object = None
    _frames: dict = field(default_factory=dict, repr=False)

    def frame(self, table: str):
        if table not in self._frames:
            rows = self.tables[table]
            self._frames[table] = (self.spark.createDataFrame(rows) if rows.num_rows
                                   else self.spark.createDataFrame([], _spark_schema(rows.schema)))
        return self._frames[table]

    images = property(lambda self: self.frame("coco_images"))
    annotations = property(lambda self: self.frame("coco_annotations"))
    categories = property(lambda self: self.frame("coco_categories"))
    quarantine = property(lambda self: self.frame("coco_quarantine"))
    batch = property(lambda self: self.frame("coco_batches"))

    def write(self, table_path) -> dict[str, int]:
        """Replace this batch's rows in every table (`table_path(name)` locates it); Delta versions."""
        from cv_pipeline.data.delta_io import replace_batch

        return {name: replace_batch(rows, table_path(name), self.batch_id) for name, rows in self.tables.items()}


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def batch_record(batch_id: str, source_file: str, message: str, reason_code: str = "batch_unreadable") -> pa.Table:
    """The quarantine row for a batch that could not be read at all."""
    rejected = RejectedRecord("batch", batch_id, {"batch_id": batch_id}, reason_code, message)
    return quarantine_table(batch_id, source_file, [rejected], _now())


# Batches up to this many images are validated in the driver process (a thread per core); larger
# ones in Spark tasks. A Spark job's fixed cost (~0.3-0.5 s and ~1 CPU-s of JVM on 2 cores) is as
# large as decoding a few hundred images; past ~1000 it is a small part, and a cluster's cores win.
IN_PROCESS_MAX_IMAGES = 1000


class COCOProcessor:
    """Reads COCO landing batches into Spark DataFrames (the seed's quick-start API).

    Image files are validated in this process by `os.cpu_count()` threads when a batch has at most
    `in_process_max_images` of them, else in Spark tasks (`image_partitions` of them, default one per
    core); both give the same rows. `in_process_max_images=0` always uses Spark.
    """

    def __init__(self, spark, image_partitions: int | None = None, store_image_bytes: bool = False,
                 in_process_max_images: int = IN_PROCESS_MAX_IMAGES):
        self.spark = spark
        self.image_partitions = image_partitions
        self.store_image_bytes = store_image_bytes
        self.in_process_max_images = in_process_max_images

    def load_coco_annotations(self, path: str | Path, batch_id: str | None = None):
        """Valid annotations of one COCO file as a Spark DataFrame (images are not inspected)."""
        path = Path(path)
        parsed = parse_coco(path)
        batch_id = validate_batch_id(batch_id or path.parent.name)
        return self.spark.createDataFrame(_with_keys(parsed.annotations, batch_id, "annotation", _now()))

    def process_images(self, images_dir: str | Path, image_records: pa.Table | list[dict] | None = None,
                       include_bytes: bool = False):
        """Inspect image files: existence, full decode, size, format, channels, sha256 (and the bytes
        themselves with `include_bytes`), as a Spark DataFrame of `image_id`, `file_path` and the
        inspection columns; each file is read once. A batch of at most `in_process_max_images` files
        is inspected in this process, a larger one in Spark tasks (by the executors).

        With no records, every file under `images_dir` is inspected (image_id is then null).
        """
        ids, paths = _image_paths(images_dir, image_records)
        if self.validates_in_process(len(paths)):
            return self.spark.createDataFrame(_inspected_in_process(ids, paths, include_bytes))
        return self._inspect_in_spark(ids, paths, include_bytes)

    def image_facts(self, images_dir: str | Path, image_records: pa.Table | list[dict] | None = None,
                    include_bytes: bool = False) -> pa.Table:
        """`process_images`' rows as a pyarrow Table in this process (what ingestion uses): a small
        batch never goes through Spark at all."""
        ids, paths = _image_paths(images_dir, image_records)
        if self.validates_in_process(len(paths)):
            return _inspected_in_process(ids, paths, include_bytes)
        return self._inspect_in_spark(ids, paths, include_bytes).toArrow()

    def validates_in_process(self, image_count: int) -> bool:
        """Whether a batch of `image_count` images is validated in this process rather than in Spark."""
        return image_count <= self.in_process_max_images

    def _inspect_in_spark(self, ids: list, paths: list[str], include_bytes: bool):
        from cv_pipeline.data.spark import task_slots

        # One Arrow record batch per task slot becomes one partition each: no shuffle to spread the
        # files over the cores (Spark's fixed cost per job is what bounds small batches).
        table = pa.table({"image_id": pa.array(ids, pa.int64()), "file_path": pa.array(paths, pa.string())})
        slices = max(1, min(len(paths), self.image_partitions or task_slots(self.spark)))
        step = max(1, -(-len(paths) // slices))
        table = pa.concat_tables([table.slice(i * step, step) for i in range(slices)])  # one chunk a slice
        frame = self.spark.createDataFrame(table)
        frame = frame.coalesce(slices)  # Spark spreads the batches over defaultParallelism slices, some empty
        return frame.mapInPandas(inspect_image_partitions_fn(include_bytes), _inspect_output_schema(include_bytes))

    def ingest_batch(self, batch_dir: str | Path, batch_id: str | None = None, *,
                     taxonomy: Mapping[int, str] | None = None, inspect_images: bool = True) -> BatchIngestion:
        """Parse, validate and inspect a landing batch; raises COCOFormatError if it is unreadable.

        `taxonomy` maps category id to name for the batches already ingested (see the module
        docstring). `inspect_images=False` takes image sizes as declared and reads no file (used to
        measure annotation ingestion alone); the file columns are then null.
        """
        batch_dir = Path(batch_dir).resolve()
        batch_id = validate_batch_id(batch_id or batch_dir.name)
        parsed = parse_coco(batch_dir / ANNOTATIONS_FILE)
        now = _now()
        if taxonomy:
            apply_taxonomy(parsed, taxonomy)
        images = parsed.images
        if inspect_images:
            images = self._inspect_and_reject(parsed, batch_dir / IMAGES_DIR)
        else:
            images = _append_null_facts(images, self.store_image_bytes)
        parsed.release_sources()  # every reject is made: free the decoded document before Spark
        images = _with_keys(images, batch_id, "image", now)
        annotations = _with_keys(parsed.annotations, batch_id, "annotation", now)
        categories = _with_keys(parsed.categories, batch_id, "category", now)
        quarantine = quarantine_table(batch_id, parsed.source_file, parsed.rejected, now)
        counts = _counts(parsed)
        batch = pa.Table.from_pylist([batch_row(batch_id, parsed, counts, now)], schema=BATCHES_COLUMNS)
        return BatchIngestion(
            batch_id=batch_id,
            source_file=parsed.source_file,
            # coco_batches first: `write` commits its 'pending' status before the batch's rows change, so
            # a reader never finds new rows under the previous ingestion's 'validated'.
            tables={"coco_batches": batch, "coco_images": images, "coco_annotations": annotations,
                    "coco_categories": categories, "coco_quarantine": quarantine},
            counts=counts,
            parsed=parsed,
            spark=self.spark,
        )

    def _inspect_and_reject(self, parsed: ParsedCOCO, images_dir: Path) -> pa.Table:
        """Inspect every accepted image's file; reject those missing, undecodable or of another size
        (and their annotations); returns the remaining images with their file facts."""
        if not parsed.images.num_rows:
            return _append_null_facts(parsed.images, self.store_image_bytes)
        images = parsed.images
        facts = self.image_facts(images_dir, images.select(["image_id", "file_name"]),
                                 include_bytes=self.store_image_bytes).to_pandas()
        facts = facts.drop_duplicates("image_id").set_index("image_id").reindex(images.column("image_id").to_numpy())
        problems = [_image_problem(w, h, f) for w, h, f in zip(
            images.column("width").to_pylist(), images.column("height").to_pylist(), facts.itertuples())]
        bad = np.array([p is not None for p in problems], dtype=bool)
        if bad.any():
            ids = images.column("image_id").to_numpy()
            names = images.column("file_name").to_pylist()
            rows = np.flatnonzero(bad)
            parsed.reject_rows("images", bad, [problems[i][0] for i in rows], [
                f"{parsed.source_file}: image id={ids[i]} field 'file_name' ({names[i]}): {problems[i][1]}"
                for i in rows])
            _reject_annotations_of(parsed, "image", ids[bad], "was rejected")
            facts = facts[~bad]
        images = parsed.images
        for name, type_ in _FILE_FACTS.items():
            values = facts[name].tolist()
            images = images.append_column(name, pa.array([None if v != v else v for v in values], type_))
        if self.store_image_bytes:
            images = images.append_column("image_bytes", pa.array(facts["image_bytes"].tolist(), pa.binary()))
        return images


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _image_paths(images_dir: str | Path, image_records: pa.Table | list[dict] | None) -> tuple[list, list[str]]:
    """(image ids, absolute file paths) of the records' files, or of every file under `images_dir`
    (ids None) when there are no records."""
    images_dir = Path(images_dir).resolve()
    if image_records is None:
        files = sorted(p for p in images_dir.rglob("*") if p.is_file())
        return [None] * len(files), [str(p) for p in files]
    records = image_records.to_pylist() if isinstance(image_records, pa.Table) else image_records
    return [r["image_id"] for r in records], [str(images_dir / r["file_name"]) for r in records]


def _inspected_in_process(ids: list, paths: list[str], include_bytes: bool) -> pa.Table:
    """The Spark path's rows (`image_id`, `file_path`, the inspection columns, same types), inspected here."""
    facts = inspect_image_files(paths, include_bytes)
    table = pa.table({"image_id": pa.array(ids, pa.int64()), "file_path": pa.array(paths, pa.string())})
    for name in facts.column_names:
        table = table.append_column(name, facts.column(name))
    return table


def _append_null_facts(images: pa.Table, include_bytes: bool = False) -> pa.Table:
    for name, type_ in _FILE_FACTS.items():
        images = images.append_column(name, pa.nulls(images.num_rows, type_))
    if include_bytes:
        images = images.append_column("image_bytes", pa.nulls(images.num_rows, pa.binary()))
    return images


def _with_keys(table: pa.Table, batch_id: str, kind: str, now: datetime) -> pa.Table:
    """Prepend batch_id and the cross-batch key "<batch_id>:<id>"; append ingested_at."""
    n = table.num_rows
    id_column = f"{kind}_id"
    uid = pc.binary_join_element_wise(pa.array([batch_id] * n, pa.string()),
                                      pc.cast(table.column(id_column), pa.string()), ":")
    columns = {"batch_id": pa.array([batch_id] * n, pa.string()), f"{kind}_uid": uid}
    if kind == "annotation":
        columns["image_uid"] = pc.binary_join_element_wise(
            columns["batch_id"], pc.cast(table.column("image_id"), pa.string()), ":")
    out = pa.table({**columns, **{name: table.column(name) for name in table.column_names}})
    return out.append_column("ingested_at", pa.array([now] * n, pa.timestamp("us", tz="UTC")))


def _image_problem(width: int, height: int, facts) -> tuple[str, str] | None:
    if not facts.file_exists:
        return "image_missing", facts.image_error
    if not facts.decodable:
        return "image_undecodable", facts.image_error
    if (int(facts.actual_width), int(facts.actual_height)) != (width, height):
        return "image_size_mismatch", (
            f"declared {width}x{height} but the file is {int(facts.actual_width)}x{int(facts.actual_height)}")
    return None


def apply_taxonomy(parsed: ParsedCOCO, taxonomy: Mapping[int, str]) -> list[int]:
    """Quarantine categories that conflict with the landing zone's taxonomy (id -> name of the batches
    already ingested), and their annotations; returns the conflicting category ids."""
    by_name = {name: category_id for category_id, name in taxonomy.items()}
    ids = parsed.categories.column("category_id").to_pylist()
    names = parsed.categories.column("name").to_pylist()
    messages, conflict = [], np.zeros(len(ids), dtype=bool)
    for row, (category_id, name) in enumerate(zip(ids, names)):
        known_name, known_id = taxonomy.get(category_id), by_name.get(name)
        if known_name is not None and known_name != name:
            why = f"id {category_id} is '{known_name}' in the batches already ingested"
        elif known_id is not None and known_id != category_id:
            why = f"name '{name}' has id {known_id} in the batches already ingested"
        else:
            continue
        conflict[row] = True
        messages.append(f"{parsed.source_file}: category id={category_id} field 'name' ('{name}'): "
                        f"conflicts with the landing zone's taxonomy: {why}")
    if not conflict.any():
        return []
    rejected = [i for i, bad in zip(ids, conflict) if bad]
    parsed.reject_rows("categories", conflict, "taxonomy_conflict", messages)
    _reject_annotations_of(parsed, "category", rejected, "was quarantined (taxonomy conflict)")
    return rejected


def _reject_annotations_of(parsed: ParsedCOCO, kind: str, rejected_ids, why: str) -> None:
    """Quarantine the accepted annotations whose `<kind>_id` is one of `rejected_ids` (`<kind>_rejected`)."""
    refs = parsed.annotations.column(f"{kind}_id").to_numpy()
    mask = np.isin(refs, rejected_ids)
    annotation_ids = parsed.annotations.column("annotation_id").to_numpy()[mask]
    parsed.reject_rows("annotations", mask, f"{kind}_rejected", [
        f"{parsed.source_file}: annotation id={a} field '{kind}_id': {kind} {i} {why}"
        for a, i in zip(annotation_ids, refs[mask])])


def quarantine_table(batch_id: str, source_file: str, rejected: list[RejectedRecord], now: datetime) -> pa.Table:
    """`coco_quarantine` rows: each rejected record with its source JSON, reason code and message."""
    return pa.Table.from_pylist([
        {"batch_id": batch_id, "source_file": source_file, "record_type": r.record_type, "record_id": r.record_id,
         "record_json": r.as_json(), "reason_code": r.reason_code, "message": r.message, "quarantined_at": now}
        for r in rejected
    ], schema=QUARANTINE_COLUMNS)


def batch_row(batch_id: str, parsed: ParsedCOCO, counts: dict, now: datetime) -> dict:
    """The `coco_batches` row: what a COCO writer needs besides the records, the counts, and the
    status 'pending' (the quality checks set it once they have run)."""
    dump = json.dumps
    return {"batch_id": batch_id, "source_file": parsed.source_file, "info_json": dump(parsed.info),
            "licenses_json": dump(parsed.licenses), "extra_json": dump(parsed.extra),
            "records_read": dump(counts["read"]), "accepted": dump(counts["accepted"]),
            "quarantined": dump(counts["quarantined"]),
            "quarantined_by_reason": dump(counts["quarantined_by_reason"]), "decoding": dump(parsed.decoding),
            "ingested_at": now, "status": PENDING, "failed_checks": None, "status_message": PENDING_MESSAGE,
            "checked_at": None}


def _counts(parsed: ParsedCOCO) -> dict:
    quarantined = Counter(r.record_type for r in parsed.rejected)
    return {
        "read": dict(parsed.counts_read),
        "accepted": {"images": parsed.images.num_rows, "annotations": parsed.annotations.num_rows,
                     "categories": parsed.categories.num_rows},
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
