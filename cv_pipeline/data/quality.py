"""Data-quality suites for the COCO Delta tables, run by Great Expectations 1.x over Spark DataFrames.

`run_quality_suites` evaluates every check of `CHECK_DEFINITIONS` on the three tables of one or more
landing batches and returns one `QualityCheckResult` per check. Pass/fail always comes from GX's
validation result. Cross-table and conditional rules (references, bbox inside its image, geometry,
duplicate content, annotations per category) are Spark expressions or joins that add a derived
column to the frame before it is cached, on which a plain GX expectation then runs: the column is
null where the rule does not apply (GX map expectations skip nulls), so no check costs a Spark job
of its own.

`run_split_leakage_check` checks the training split manifest (`TRAINING_CHECK_DEFINITIONS`) with GX
on pandas; `quality_metrics_rows` turns results into rows of the `coco_quality_metrics` table.

The batch gate: `validate_ingested_batch` runs the checks on a batch as written and records its
status in `coco_batches` ('validated', or 'held_back' when an ERROR check failed); `batch_gate`,
`eligible_batches` and `held_back_batches` read it, and `build_training_dataset` takes validated
batches only (see the "batch gate" section below).

Spark work is kept to a few jobs per table: the expectations of all checks on one frame run as one
suite with BOOLEAN_ONLY (GX bundles their aggregates), and only the failed ones run a second time,
with SUMMARY, for their counts and offending ids.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

IMAGES = "coco_images"
ANNOTATIONS = "coco_annotations"
CATEGORIES = "coco_categories"
TRAINING_DATASET = "training_dataset"

ERROR = "ERROR"
WARN = "WARN"

SAMPLE_SIZE = 10

# Columns (and Spark types) the checks rely on; the tables carry more.
REQUIRED_COLUMNS: dict[str, dict[str, str]] = {
    IMAGES: {
        "batch_id": "StringType",
        "image_id": "LongType",
        "file_name": "StringType",
        "width": "IntegerType",
        "height": "IntegerType",
        "sha256": "StringType",
        "file_path": "StringType",
    },
    ANNOTATIONS: {
        "batch_id": "StringType",
        "annotation_id": "LongType",
        "image_id": "LongType",
        "category_id": "LongType",
        "bbox_x": "DoubleType",
        "bbox_y": "DoubleType",
        "bbox_w": "DoubleType",
        "bbox_h": "DoubleType",
        "area": "DoubleType",
        "iscrowd": "IntegerType",
        "segmentation": "StringType",
        # Geometry facts computed at ingestion; null where they do not apply (see the checks below).
        "segmentation_type": "StringType",
        "segmentation_area": "DoubleType",
        "polygon_count": "IntegerType",
        "min_polygon_coords": "IntegerType",
        "odd_polygon_parts": "IntegerType",
        "rle_height": "IntegerType",
        "rle_width": "IntegerType",
    },
    CATEGORIES: {
        "batch_id": "StringType",
        "category_id": "LongType",
        "name": "StringType",
        "supercategory": "StringType",
    },
}

# Keys, and the values the row-level checks read: GX map expectations skip nulls, so a null there
# would pass those checks silently; the schema check rejects it instead.
NOT_NULL_COLUMNS: dict[str, tuple[str, ...]] = {
    IMAGES: ("batch_id", "image_id", "file_name", "width", "height"),
    ANNOTATIONS: (
        "batch_id", "annotation_id", "image_id", "category_id",
        "bbox_x", "bbox_y", "bbox_w", "bbox_h", "area", "iscrowd", "segmentation_type",
    ),
    CATEGORIES: ("batch_id", "category_id", "name"),
}

ID_COLUMNS = {IMAGES: "image_id", ANNOTATIONS: "annotation_id", CATEGORIES: "category_id"}

# Columns added by the joins; the prefix keeps them apart from table columns.
_IMAGE_FOUND = "_qc_image_exists"
_CATEGORY_FOUND = "_qc_category_exists"
_BBOX_INSIDE = "_qc_bbox_inside_image"
_BBOX_POSITIVE = "_qc_bbox_positive_size"
_AREA_VALID = "_qc_area_not_negative"
_IMAGE_WIDTH = "_qc_image_width"
_IMAGE_HEIGHT = "_qc_image_height"
_NON_CROWD_COUNT = "_qc_non_crowd_annotations"
_POLYGON_OK = "_qc_polygon_well_formed"
_RLE_MATCHES = "_qc_rle_matches_image"
_AREA_OK = "_qc_area_consistent"
_CONTENT_UNIQUE = "_qc_content_unique"
_AS_DECLARED = "_qc_decoded_as_declared"
_BALANCED = "_qc_category_balanced"
_SPLIT_COUNT = "_qc_split_count"

POLYGON = "polygon"
RLE_TYPES = ("rle", "rle_uncompressed")

# Checks judged on the rows where their derived column is not null: their element count is those rows.
_JUDGED_COLUMN = {
    "annotations_bbox_inside_image": _BBOX_INSIDE,
    "annotations_bbox_positive_size": _BBOX_POSITIVE,
    "annotations_polygons_well_formed": _POLYGON_OK,
    "annotations_rle_matches_image": _RLE_MATCHES,
    "annotations_area_consistent": _AREA_OK,
    "images_duplicate_content": _CONTENT_UNIQUE,
    "categories_class_imbalance": _BALANCED,
}

# The columns the derived-column checks read; the frame builder and the planner both go by this, so a
# derived column exists exactly when its check is planned on it.
_NEEDS: dict[str, dict[str, tuple[str, ...]]] = {
    "annotations_polygons_well_formed": {
        ANNOTATIONS: ("segmentation_type", "polygon_count", "min_polygon_coords", "odd_polygon_parts"),
    },
    "annotations_rle_matches_image": {
        ANNOTATIONS: ("batch_id", "image_id", "segmentation_type", "rle_height", "rle_width"),
        IMAGES: ("batch_id", "image_id", "width", "height"),
    },
    "annotations_area_consistent": {ANNOTATIONS: ("area", "segmentation_area")},
    "annotations_bbox_positive_size": {ANNOTATIONS: ("bbox_w", "bbox_h")},
    "images_duplicate_content": {IMAGES: ("batch_id", "sha256")},
    "images_decoded_as_declared": {IMAGES: ("width", "height", "actual_width", "actual_height", "image_format")},
    "categories_class_imbalance": {
        CATEGORIES: ("batch_id", "category_id"),
        ANNOTATIONS: ("batch_id", "category_id", "iscrowd"),
    },
}


@dataclass(frozen=True)
class QualityCheckDefinition:
    """What a check is, known before any data is read (for declaring Dagster asset checks)."""

    name: str
    table: str
    severity: str
    description: str


_SCHEMA = "Required columns exist with the contract types; no nulls in {}."

# Severity rule: a check is ERROR (it holds its batch back from training) only where what it finds
# breaks training or evaluation: rows that can't be keyed or joined, an image whose file is not the
# declared one, a box that lies elsewhere than its object (past the image edge), a mask that can't be
# laid on its image, an iscrowd that is neither crowd nor object, a negative area (COCO evaluation
# drops such an object from every area range). What real exports carry and training copes with is
# WARN: zero-size boxes (COCO train2017 has two; the training transforms drop them), an `area` off
# its segmentation's (COCO's own crowd areas are not their RLE's pixel counts; `area` only picks an
# object's small/medium/large range in evaluation), area 0 on box-only annotations (CVAT, Roboflow).
# Crowd regions are never trained on and evaluation only ignores detections on them, so their box and
# area are not judged at all; their masks are (a crowd RLE of another size breaks the semantic target).

CHECK_DEFINITIONS: tuple[QualityCheckDefinition, ...] = (
    QualityCheckDefinition("images_schema", IMAGES, ERROR, _SCHEMA.format("key and size columns")),
    QualityCheckDefinition(
        "annotations_schema", ANNOTATIONS, ERROR,
        _SCHEMA.format("key, bbox and value columns, and segmentation_type"),
    ),
    QualityCheckDefinition("categories_schema", CATEGORIES, ERROR, _SCHEMA.format("key columns")),
    QualityCheckDefinition("images_unique_ids", IMAGES, ERROR, "(batch_id, image_id) is unique."),
    QualityCheckDefinition(
        "annotations_unique_ids", ANNOTATIONS, ERROR, "(batch_id, annotation_id) is unique."
    ),
    QualityCheckDefinition(
        "categories_unique_ids", CATEGORIES, ERROR, "(batch_id, category_id) and (batch_id, name) are unique."
    ),
    QualityCheckDefinition("images_valid_size", IMAGES, ERROR, "width > 0 and height > 0."),
    QualityCheckDefinition(
        "images_decoded_as_declared", IMAGES, ERROR,
        "The image file was decoded in full and its actual width and height are the declared ones.",
    ),
    QualityCheckDefinition(
        "annotations_reference_existing_images", ANNOTATIONS, ERROR,
        "Every annotation's (batch_id, image_id) exists in coco_images.",
    ),
    QualityCheckDefinition(
        "annotations_reference_existing_categories", ANNOTATIONS, ERROR,
        "Every annotation's (batch_id, category_id) exists in coco_categories.",
    ),
    QualityCheckDefinition(
        "annotations_bbox_inside_image", ANNOTATIONS, ERROR,
        "Every non-crowd box lies inside its image, within the tolerance.",
    ),
    QualityCheckDefinition(
        "annotations_valid_values", ANNOTATIONS, ERROR, "iscrowd in {0, 1}; area >= 0 on non-crowd annotations.",
    ),
    QualityCheckDefinition(
        "annotations_polygons_well_formed", ANNOTATIONS, ERROR,
        "Polygon segmentations have at least one part, every part at least 6 coordinates (3 points) "
        "and an even number of coordinates.",
    ),
    QualityCheckDefinition(
        "annotations_rle_matches_image", ANNOTATIONS, ERROR,
        "An RLE segmentation's size [height, width] equals its image's height and width.",
    ),
    QualityCheckDefinition(
        "annotations_bbox_positive_size", ANNOTATIONS, WARN,
        "Every non-crowd box has bbox_w > 0 and bbox_h > 0.",
    ),
    QualityCheckDefinition(
        "annotations_area_consistent", ANNOTATIONS, WARN,
        "Where a non-crowd annotation's segmentation area is known, its area agrees with it within the tolerance.",
    ),
    QualityCheckDefinition(
        "images_duplicate_content", IMAGES, WARN,
        "No image content (sha256) appears twice in its batch or in another batch.",
    ),
    QualityCheckDefinition(
        "categories_min_annotations", CATEGORIES, WARN,
        "Each category has at least the minimum number of non-crowd annotations in its batch.",
    ),
    QualityCheckDefinition(
        "categories_class_imbalance", CATEGORIES, WARN,
        "Each annotated category has at least 1/max_imbalance_ratio of the non-crowd annotations of "
        "its batch's largest category.",
    ),
)

# Checks of the training split manifest, run by `run_split_leakage_check` (not by the ingestion asset).
TRAINING_CHECK_DEFINITIONS: tuple[QualityCheckDefinition, ...] = (
    QualityCheckDefinition(
        "training_split_no_leakage", TRAINING_DATASET, ERROR,
        "No image content (sha256) is in more than one split.",
    ),
)

def quality_metrics_table(rows: list[dict]):
    """`quality_metrics_rows` as a pyarrow Table: the rows appended to the `coco_quality_metrics` Delta
    table on each ingestion, one per check and batch."""
    import pyarrow as pa

    schema = pa.schema([
        ("batch_id", pa.string()), ("check_name", pa.string()), ("table_name", pa.string()),
        ("severity", pa.string()), ("passed", pa.bool_()), ("element_count", pa.int64()),
        ("unexpected_count", pa.int64()), ("unexpected_fraction", pa.float64()),
        ("evaluated_at", pa.timestamp("us", tz="UTC")), ("run_id", pa.string()),
    ])
    return pa.Table.from_pylist(rows, schema=schema)


@dataclass(frozen=True)
class QualityCheckResult:
    """The outcome of one check.

    `unexpected_count` counts violations: a row once per rule it breaks, a missing or mistyped column
    once. `unexpected_sample` holds up to 10 offending ids (annotation_id / image_id / category_id),
    or column names for the schema checks and for checks that could not run for a missing column.
    """

    name: str
    table: str
    severity: str
    passed: bool
    description: str
    element_count: int
    unexpected_count: int
    unexpected_sample: list
    expectations: list[dict]


def failed_blocking(results: list[QualityCheckResult]) -> list[QualityCheckResult]:
    """The failed checks of severity ERROR: the ones that must stop downstream assets."""
    return [r for r in results if not r.passed and r.severity == ERROR]


def results_as_metadata(result: QualityCheckResult) -> dict:
    """A plain JSON-able dict of one result, for Dagster asset-check metadata."""
    return _jsonable(
        {
            "passed": result.passed,
            "severity": result.severity,
            "element_count": result.element_count,
            "unexpected_count": result.unexpected_count,
            "unexpected_sample": list(result.unexpected_sample),
            "description": result.description,
        }
    )


def quality_metrics_rows(
    batch_id: str,
    results: Iterable[QualityCheckResult],
    run_id: str | None = None,
    evaluated_at: datetime | None = None,
) -> list[dict]:
    """One row per result for the `coco_quality_metrics` table (typed by `quality_metrics_table`).

    `unexpected_fraction` is unexpected_count / element_count (violations per evaluated element; a row
    breaking two rules counts twice), null when nothing was evaluated. `evaluated_at` defaults to now
    (UTC) and is the same for every row.
    """
    evaluated_at = evaluated_at or datetime.now(timezone.utc)
    rows = []
    for result in results:
        element_count, unexpected_count = int(result.element_count), int(result.unexpected_count)
        rows.append({
            "batch_id": batch_id,
            "check_name": result.name,
            "table_name": result.table,
            "severity": result.severity,
            "passed": bool(result.passed),
            "element_count": element_count,
            "unexpected_count": unexpected_count,
            "unexpected_fraction": unexpected_count / element_count if element_count > 0 else None,
            "evaluated_at": evaluated_at,
            "run_id": run_id,
        })
    return rows


@dataclass(frozen=True)
class _Params:
    bbox_tolerance_px: float
    min_annotations: int
    area_rel_tolerance: float
    area_abs_tolerance_px: float
    max_imbalance_ratio: float
    has_existing_images: bool


def run_quality_suites(
    images_df: DataFrame,
    annotations_df: DataFrame,
    categories_df: DataFrame,
    *,
    bbox_tolerance_px: float = 1.0,
    min_annotations_per_category: int = 5,
    area_rel_tolerance: float = 0.2,
    area_abs_tolerance_px: float = 16.0,
    max_imbalance_ratio: float = 10.0,
    existing_images_df: DataFrame | None = None,
) -> list[QualityCheckResult]:
    """Run every check of `CHECK_DEFINITIONS` on the three tables; one result per check, in that order.

    Ids are unique only within a landing batch, so every key and every join is on (batch_id, id).
    A check whose columns are missing fails (GX: the column does not exist) and says it was not
    evaluated.

    `area_rel_tolerance` and `area_abs_tolerance_px` bound |area - segmentation_area| (COCO's area is
    the rasterised mask's pixel count, not the polygon's exact area). `max_imbalance_ratio` bounds the
    largest category's non-crowd annotation count over each other annotated category's, per batch.
    `existing_images_df` (batch_id, sha256, ...) holds the images already in the table: an image whose
    sha256 is there under another batch id is a duplicate (rows of the batches checked are ignored
    there, so passing the whole table on a re-run is fine), as is one whose sha256 is in another batch
    of `images_df`.
    """
    from pyspark.sql import DataFrame as SparkDataFrame

    arguments = {"images_df": images_df, "annotations_df": annotations_df, "categories_df": categories_df}
    if existing_images_df is not None:
        arguments["existing_images_df"] = existing_images_df
    for name, df in arguments.items():
        if not isinstance(df, SparkDataFrame):
            raise TypeError(f"run_quality_suites: {name} must be a Spark DataFrame, got {type(df).__name__}")
    if existing_images_df is not None:
        missing = [c for c in ("batch_id", "sha256") if c not in existing_images_df.columns]
        if missing:
            raise ValueError(f"run_quality_suites: existing_images_df lacks column(s) {', '.join(missing)}")
    for name, value, low in (
        ("bbox_tolerance_px", bbox_tolerance_px, 0),
        ("min_annotations_per_category", min_annotations_per_category, 0),
        ("area_rel_tolerance", area_rel_tolerance, 0),
        ("area_abs_tolerance_px", area_abs_tolerance_px, 0),
        ("max_imbalance_ratio", max_imbalance_ratio, 1),
    ):
        if not value >= low:  # also rejects NaN
            raise ValueError(f"run_quality_suites: {name} must be >= {low}, got {value}")

    params = _Params(
        bbox_tolerance_px=float(bbox_tolerance_px),
        min_annotations=min_annotations_per_category,
        area_rel_tolerance=float(area_rel_tolerance),
        area_abs_tolerance_px=float(area_abs_tolerance_px),
        max_imbalance_ratio=float(max_imbalance_ratio),
        has_existing_images=existing_images_df is not None,
    )
    inputs = {IMAGES: images_df, ANNOTATIONS: annotations_df, CATEGORIES: categories_df}
    columns = {table: set(df.columns) for table, df in inputs.items()}
    frames, owned = _build_frames(inputs, columns, params, existing_images_df)
    try:
        rows = _count_rows(frames)
        with _GX_LOCK:
            plan = _plan_expectations(columns, params)
            outcomes = _validate_frames(frames, plan)
        return _assemble_results(CHECK_DEFINITIONS, plan, outcomes, rows, params)
    finally:
        for frame in owned:
            frame.unpersist()


def run_split_leakage_check(frame) -> QualityCheckResult:
    """`training_split_no_leakage` on a split manifest (pandas DataFrame or pyarrow Table with columns
    `sha256` and `split`): fails when one image content is in more than one split.

    GX validates, on pandas, the number of distinct splits per sha256 (at most 1). Element count: the
    distinct hashes (rows without one cannot be judged); sample: the leaking hashes. Missing columns
    fail the check, which then says it was not evaluated.
    """
    import pandas as pd

    needed = ("sha256", "split")
    if isinstance(frame, pd.DataFrame):
        manifest = frame[[c for c in needed if c in frame.columns]]
    else:
        import pyarrow as pa

        if not isinstance(frame, pa.Table):
            raise TypeError(
                "run_split_leakage_check: frame must be a pandas DataFrame or a pyarrow Table, "
                f"got {type(frame).__name__}"
            )
        manifest = frame.select([c for c in needed if c in frame.column_names]).to_pandas()

    import great_expectations.expectations as gxe

    definition = TRAINING_CHECK_DEFINITIONS[0]
    plan: list[_Planned] = []
    missing = [c for c in needed if c not in manifest.columns]
    if missing:
        data = manifest
        for column in missing:
            plan.append(_Planned(definition.name, TRAINING_DATASET, gxe.ExpectColumnToExist(column=column), False))
    else:
        data = (
            manifest.dropna(subset=["sha256"])
            .groupby("sha256", sort=True, observed=True)["split"]
            .nunique()
            .rename(_SPLIT_COUNT)
            .reset_index()
        )
        one_split = gxe.ExpectColumnValuesToBeBetween(column=_SPLIT_COUNT, max_value=1)
        plan.append(_Planned(definition.name, TRAINING_DATASET, one_split, True))

    with _GX_LOCK:
        batch = _pandas_batch_definition(TRAINING_DATASET).get_batch(batch_parameters={"dataframe": data})
        result_format: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": SAMPLE_SIZE}
        if not missing:
            result_format["unexpected_index_column_names"] = ["sha256"]
        outcomes = {}
        for index, planned in enumerate(plan):
            result = batch.validate(planned.expectation, result_format=result_format)
            summary = None if result.success else result
            sample = _offending_ids(result, "sha256") if summary is not None else []
            outcomes[index] = {"result": result, "summary": summary, "sample": sample}
    rows = {TRAINING_DATASET: len(data)}
    return _assemble_results(TRAINING_CHECK_DEFINITIONS, plan, outcomes, rows, None)[0]


# --------------------------------------------------------------------------- batch gate
#
# One rule decides which batches reach training: a batch is eligible iff its `coco_batches` row says
# status 'validated'. Ingestion writes the row as 'pending' before the batch's rows change, and
# `record_batch_status` sets 'validated' or 'held_back' once the checks have run, so a batch whose
# checks failed, never ran, or were interrupted stays out. A held-back batch keeps its rows (and
# quarantine, and check history) in the tables, where it can be inspected; re-ingesting a fixed
# export writes 'pending' then 'validated'. `build_training_dataset` reads the rule through
# `batch_gate`; `held_back_batches` says which batches it leaves out, and why.

BATCHES = "coco_batches"
QUALITY_METRICS = "coco_quality_metrics"
PENDING, VALIDATED, HELD_BACK = "pending", "validated", "held_back"
PENDING_MESSAGE = "quality checks have not run on the rows written last (ingestion interrupted?); re-ingest the batch"
_NO_STATUS_MESSAGE = "no quality status recorded (ingested before batch statuses existed); re-ingest the batch"


class HeldBackBatch(NamedTuple):
    """A batch kept out of training: its failed blocking checks (empty when its checks have not run)
    and a message saying why and what to do."""

    batch_id: str
    failed_checks: list[str]
    message: str


@dataclass(frozen=True)
class BatchGate:
    """What `coco_batches` (at `version`) lets through. `eligible` is None when the lake has no
    `coco_batches` table at all (tables written by library code that ran no checks): there is no
    gate then, and every batch is taken."""

    eligible: list[str] | None
    held_back: list[HeldBackBatch]
    version: int | None


def batch_status(results: Iterable[QualityCheckResult]) -> dict:
    """The status columns of one batch's `coco_batches` row from its check results: `status`
    ('validated', or 'held_back' when a blocking check failed), `failed_checks` (JSON list of every
    failed check, ERROR and WARN, with counts and offending ids) and `status_message`."""
    results = list(results)
    failed = [r for r in results if not r.passed]
    blocking = failed_blocking(results)
    details = [{
        "check": r.name, "table": r.table, "severity": r.severity, "element_count": int(r.element_count),
        "unexpected_count": int(r.unexpected_count), "unexpected_sample": list(r.unexpected_sample),
    } for r in failed]
    if blocking:
        message = "held back: failed blocking checks " + "; ".join(
            f"{r.name} ({r.unexpected_count} of {r.element_count} {r.table} rows"
            + (f", e.g. {', '.join(str(v) for v in r.unexpected_sample[:3])}" if r.unexpected_sample else "") + ")"
            for r in blocking) + "; fix the export and re-ingest the batch"
    else:
        message = "every blocking check passed"
        if failed:
            message += "; warnings: " + ", ".join(r.name for r in failed)
    return {"status": HELD_BACK if blocking else VALIDATED, "failed_checks": json.dumps(_jsonable(details)),
            "status_message": message}


def record_batch_status(batches_path, batch_id: str, results: Iterable[QualityCheckResult], *,
                        checked_at: datetime | None = None) -> int:
    """Set `batch_id`'s status in the `coco_batches` table at `batches_path` from its check results
    (`batch_status`), in one commit replacing that batch's row; returns the new Delta version."""
    import pyarrow as pa

    from cv_pipeline.data.delta_io import read_table, replace_batch

    row = read_table(batches_path, filters=[("batch_id", "=", batch_id)])
    if row.num_rows != 1:
        raise ValueError(f"{batches_path}: expected one coco_batches row for batch {batch_id!r}, found {row.num_rows}")
    updates = {**batch_status(results), "checked_at": checked_at or datetime.now(timezone.utc)}
    for name, value in updates.items():
        type_ = pa.timestamp("us", tz="UTC") if name == "checked_at" else pa.string()
        column = pa.array([value], type_)
        if name in row.column_names:
            row = row.set_column(row.schema.get_field_index(name), name, column.cast(row.schema.field(name).type))
        else:
            row = row.append_column(name, column)
    return replace_batch(row, batches_path, batch_id)


def batch_gate(lake_dir, version: int | None = None) -> BatchGate:
    """The rule, read from `<lake_dir>/coco_batches` (at `version`; default latest): eligible batches
    are those whose status is 'validated'; every other row is held back (a failed blocking check,
    checks that have not run, or no status recorded)."""
    from pathlib import Path

    from cv_pipeline.data.delta_io import is_delta_table, read_table, table_version

    path = Path(lake_dir) / BATCHES
    if not is_delta_table(path):
        return BatchGate(None, [], None)
    version = table_version(path) if version is None else int(version)
    table = read_table(path, version)
    rows = table.to_pylist()
    eligible, held_back = [], []
    for row in sorted(rows, key=lambda r: r["batch_id"]):
        status = row.get("status")
        if status == VALIDATED:
            eligible.append(row["batch_id"])
            continue
        failed = [c["check"] for c in json.loads(row.get("failed_checks") or "[]") if c.get("severity") == ERROR]
        if status == HELD_BACK:
            message = row.get("status_message") or "held back: failed blocking checks " + ", ".join(failed)
        elif status == PENDING:
            message = PENDING_MESSAGE
        else:
            message = _NO_STATUS_MESSAGE
        held_back.append(HeldBackBatch(row["batch_id"], failed, message))
    return BatchGate(eligible, held_back, version)


def eligible_batches(lake_dir, version: int | None = None) -> list[str] | None:
    """Batches that may reach training (status 'validated'); None when the lake has no coco_batches
    table (no gate: every batch is taken). See `batch_gate`."""
    return batch_gate(lake_dir, version).eligible


def held_back_batches(lake_dir, version: int | None = None) -> list[HeldBackBatch]:
    """Batches kept out of training, sorted by id: (batch_id, failed blocking check names, message).
    Empty when every batch is validated or the lake has no coco_batches table."""
    return batch_gate(lake_dir, version).held_back


@dataclass(frozen=True)
class BatchValidation:
    """What `validate_ingested_batch` did: the check results, the status it recorded, and the Delta
    versions of `coco_quality_metrics` (rows appended) and `coco_batches` (status written)."""

    batch_id: str
    results: list[QualityCheckResult]
    status: str
    status_message: str
    failed_checks: list[dict]
    metrics_rows: int
    metrics_version: int
    batches_version: int

    @property
    def held_back(self) -> bool:
        return self.status == HELD_BACK


def validate_ingested_batch(spark, table_path, batch_id: str, *, run_id: str | None = None,
                            **check_options) -> BatchValidation:
    """Run every check on one batch as written (read back with Spark), append the results to
    `coco_quality_metrics` and record the batch's status in `coco_batches`. `table_path(name)` locates
    each table; `check_options` are `run_quality_suites`' tolerances."""
    from pyspark.sql import functions as F

    from cv_pipeline.data.delta_io import append_rows

    def load(name: str):
        return spark.read.format("delta").load(str(table_path(name)))

    def written(name: str):
        return load(name).where(F.col("batch_id") == batch_id)

    existing = load(IMAGES).where(F.col("batch_id") != batch_id).select("batch_id", "image_id", "sha256")
    results = run_quality_suites(written(IMAGES), written(ANNOTATIONS), written(CATEGORIES),
                                 existing_images_df=existing, **check_options)
    metrics = quality_metrics_rows(batch_id, results, run_id=run_id)
    metrics_version = append_rows(quality_metrics_table(metrics), str(table_path(QUALITY_METRICS)))
    batches_version = record_batch_status(str(table_path(BATCHES)), batch_id, results)
    status = batch_status(results)
    return BatchValidation(batch_id=batch_id, results=results, status=status["status"],
                           status_message=status["status_message"], failed_checks=json.loads(status["failed_checks"]),
                           metrics_rows=len(metrics), metrics_version=metrics_version,
                           batches_version=batches_version)


# --------------------------------------------------------------------------- frames


def _build_frames(inputs: dict, columns: dict, params: _Params, existing_images) -> tuple[dict, list]:
    """One frame per table, with the derived columns its checks read: images with their content
    duplication flag, annotations with the join-derived and geometry columns, categories with their
    non-crowd annotation count and balance flag. Returns the frames and those this call cached."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    images, annotations, categories = inputs[IMAGES], inputs[ANNOTATIONS], inputs[CATEGORIES]
    owned = []
    # Crowd regions (iscrowd 1) are exempt from the box and area rules; without the column, none is crowd.
    crowd = F.coalesce(F.col("iscrowd") == 1, F.lit(False)) if "iscrowd" in columns[ANNOTATIONS] else F.lit(False)
    if not images.is_cached:  # read by its own suite and by the annotation join
        images = images.cache()
        owned.append(images)
    base_images = images

    if _ready(columns, "images_duplicate_content"):
        images = _with_content_flag(images, existing_images)
    if _ready(columns, "images_decoded_as_declared"):
        decoded = ((F.col("actual_width") == F.col("width")) & (F.col("actual_height") == F.col("height"))
                   & F.col("image_format").isNotNull())
        images = images.withColumn(_AS_DECLARED, F.coalesce(decoded, F.lit(False)))

    if _has(columns, ANNOTATIONS, "batch_id", "image_id") and _has(columns, IMAGES, "batch_id", "image_id"):
        with_size = _has(columns, IMAGES, "width", "height")
        size = [F.col("width").alias(_IMAGE_WIDTH), F.col("height").alias(_IMAGE_HEIGHT)] if with_size else []
        # One row per key, so a duplicated image (flagged by images_unique_ids) cannot multiply annotations.
        image_keys = base_images.dropDuplicates(["batch_id", "image_id"]).select(
            "batch_id", "image_id", F.lit(True).alias(_IMAGE_FOUND), *size
        )
        annotations = annotations.join(image_keys, on=["batch_id", "image_id"], how="left").withColumn(
            _IMAGE_FOUND, F.coalesce(F.col(_IMAGE_FOUND), F.lit(False))
        )
        if with_size and _has(columns, ANNOTATIONS, "bbox_x", "bbox_y", "bbox_w", "bbox_h"):
            tol = params.bbox_tolerance_px
            x, y, w, h = F.col("bbox_x"), F.col("bbox_y"), F.col("bbox_w"), F.col("bbox_h")
            inside = (
                (x >= -tol) & (y >= -tol)
                & (x + w <= F.col(_IMAGE_WIDTH) + tol) & (y + h <= F.col(_IMAGE_HEIGHT) + tol)
            )
            # Null (not judged) on crowd regions, and where the image is missing: GX skips nulls, and
            # that case is the reference check's.
            annotations = annotations.withColumn(_BBOX_INSIDE, F.when(F.col(_IMAGE_FOUND) & ~crowd, inside))
        if _ready(columns, "annotations_rle_matches_image"):
            is_rle = F.col("segmentation_type").isin(*RLE_TYPES)
            same = (F.col("rle_height") == F.col(_IMAGE_HEIGHT)) & (F.col("rle_width") == F.col(_IMAGE_WIDTH))
            # Judged on RLE rows whose image exists; a missing size is a mismatch.
            annotations = annotations.withColumn(
                _RLE_MATCHES, F.when(F.col(_IMAGE_FOUND) & is_rle, F.coalesce(same, F.lit(False)))
            )

    if _ready(columns, "annotations_polygons_well_formed"):
        well_formed = (
            (F.col("polygon_count") >= 1) & (F.col("min_polygon_coords") >= 6) & (F.col("odd_polygon_parts") == 0)
        )
        annotations = annotations.withColumn(
            _POLYGON_OK,
            F.when(F.col("segmentation_type") == POLYGON, F.coalesce(well_formed, F.lit(False))),
        )
    if _ready(columns, "annotations_area_consistent"):
        area, mask_area = F.col("area"), F.col("segmentation_area")
        allowed = F.lit(params.area_rel_tolerance) * F.greatest(area, mask_area) + F.lit(params.area_abs_tolerance_px)
        # Null (not judged) on crowd regions and without a segmentation area; a null area is the schema check's.
        annotations = annotations.withColumn(
            _AREA_OK, F.when(mask_area.isNotNull() & ~crowd, F.abs(area - mask_area) <= allowed)
        )
    if _ready(columns, "annotations_bbox_positive_size"):
        annotations = annotations.withColumn(
            _BBOX_POSITIVE, F.when(~crowd, (F.col("bbox_w") > 0) & (F.col("bbox_h") > 0))
        )
    if "area" in columns[ANNOTATIONS]:
        annotations = annotations.withColumn(_AREA_VALID, F.when(~crowd, F.col("area") >= 0))

    keys = ("batch_id", "category_id")
    if _has(columns, ANNOTATIONS, *keys) and _has(columns, CATEGORIES, *keys):
        category_keys = categories.select(*keys).dropDuplicates().withColumn(_CATEGORY_FOUND, F.lit(True))
        annotations = annotations.join(category_keys, on=list(keys), how="left").withColumn(
            _CATEGORY_FOUND, F.coalesce(F.col(_CATEGORY_FOUND), F.lit(False))
        )
    if _has(columns, CATEGORIES, *keys) and _has(columns, ANNOTATIONS, *keys, "iscrowd"):
        counts = (
            inputs[ANNOTATIONS]
            .filter(F.col("iscrowd") == 0)
            .groupBy(*keys)
            .agg(F.count(F.lit(1)).alias(_NON_CROWD_COUNT))
        )
        categories = categories.join(counts, on=list(keys), how="left").withColumn(
            _NON_CROWD_COUNT, F.coalesce(F.col(_NON_CROWD_COUNT), F.lit(0))
        )
        # Judged only where the category has annotations (none at all is categories_min_annotations').
        count = F.col(_NON_CROWD_COUNT)
        largest = F.max(count).over(Window.partitionBy("batch_id"))
        categories = categories.withColumn(
            _BALANCED, F.when(count > 0, count * F.lit(params.max_imbalance_ratio) >= largest)
        )

    frames = {IMAGES: images, ANNOTATIONS: annotations, CATEGORIES: categories}
    for table in (IMAGES, ANNOTATIONS, CATEGORIES):
        if not frames[table].is_cached:
            frames[table] = frames[table].cache()
            owned.append(frames[table])
    return frames, owned


def _with_content_flag(images, existing_images):
    """`images` plus `_CONTENT_UNIQUE`: False where its sha256 is on another image of its batch, or in
    another batch (of `images` or of `existing_images`); null without a sha256.

    One window per hash over every holder (one shuffle, no join): the smallest and largest batch holding
    it, and how many rows of `images` have it. An image is unique iff its batch is the only holder and it
    is the only image there; rows of `existing_images` under the image's own batch (a re-run) don't count.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    sha, mine = "sha256", "_qc_mine"
    holders = images.withColumn(mine, F.lit(True))
    if existing_images is not None:
        holders = holders.unionByName(existing_images.select("batch_id", sha), allowMissingColumns=True)
    per_hash = Window.partitionBy(sha)
    batch = F.col("batch_id")
    unique = (
        (F.count(mine).over(per_hash) == 1)
        & (F.min(batch).over(per_hash) == batch)
        & (F.max(batch).over(per_hash) == batch)
    )
    return (
        holders.withColumn(_CONTENT_UNIQUE, F.when(F.col(sha).isNotNull(), unique))
        .filter(F.col(mine).isNotNull())
        .drop(mine)
    )


def _ready(columns: dict, check: str) -> bool:
    """Whether every column `check` reads is there (then its derived column is built)."""
    return all(_has(columns, table, *names) for table, names in _NEEDS[check].items())


def _has(columns: dict, table: str, *names: str) -> bool:
    return all(n in columns[table] for n in names)


def _count_rows(frames: dict) -> dict[str, int]:
    """Rows per frame, plus, per derived column of a conditional check, the rows it judges (not null),
    for element counts. One job per frame, which also fills the frame's cache the GX suites then read."""
    from pyspark.sql import functions as F

    rows = {}
    for table, frame in frames.items():
        judged = [c for c in _JUDGED_COLUMN.values() if c in frame.columns]
        counts = frame.agg(F.count(F.lit(1)), *[F.count(F.col(c)) for c in judged]).first()
        rows[table] = int(counts[0])
        for position, column in enumerate(judged, start=1):
            rows[column] = int(counts[position])
    return rows


# --------------------------------------------------------------------------- expectations


@dataclass
class _Planned:
    """One GX expectation to evaluate on `frame` (a table name), on behalf of `check`."""

    check: str
    frame: str
    expectation: Any
    sample_ids: bool  # when it fails, report offending row ids (else the column name)


def _plan_expectations(columns: dict, params: _Params) -> list[_Planned]:
    import great_expectations.expectations as gxe

    plan: list[_Planned] = []

    def add(check: str, frame: str, expectation, sample_ids: bool = True) -> None:
        plan.append(_Planned(check, frame, expectation, sample_ids))

    def needs(check: str, requirements: dict[str, tuple[str, ...]]) -> bool:
        """True when every column is there; otherwise the check gets the (failing) existence expectations."""
        missing = [(t, c) for t, cols in requirements.items() for c in cols if c not in columns[t]]
        for table, column in missing:
            add(check, table, gxe.ExpectColumnToExist(column=column), sample_ids=False)
        return not missing

    for table in (IMAGES, ANNOTATIONS, CATEGORIES):
        check = table.removeprefix("coco_") + "_schema"
        for column, type_name in REQUIRED_COLUMNS[table].items():
            add(check, table, gxe.ExpectColumnToExist(column=column), sample_ids=False)
            if column in columns[table]:
                add(check, table, gxe.ExpectColumnValuesToBeOfType(column=column, type_=type_name), False)
        for column in NOT_NULL_COLUMNS[table]:
            if column in columns[table]:
                add(check, table, gxe.ExpectColumnValuesToNotBeNull(column=column), sample_ids=False)

    for table, check in ((IMAGES, "images_unique_ids"), (ANNOTATIONS, "annotations_unique_ids")):
        key = ["batch_id", ID_COLUMNS[table]]
        if needs(check, {table: tuple(key)}):
            add(check, table, gxe.ExpectCompoundColumnsToBeUnique(column_list=key))
    if needs("categories_unique_ids", {CATEGORIES: ("batch_id", "category_id", "name")}):
        for key in (["batch_id", "category_id"], ["batch_id", "name"]):
            add("categories_unique_ids", CATEGORIES, gxe.ExpectCompoundColumnsToBeUnique(column_list=key))

    if needs("images_valid_size", {IMAGES: ("width", "height")}):
        for column in ("width", "height"):
            positive = gxe.ExpectColumnValuesToBeBetween(column=column, min_value=0, strict_min=True)
            add("images_valid_size", IMAGES, positive)

    check = "annotations_reference_existing_images"
    if needs(check, {ANNOTATIONS: ("batch_id", "image_id"), IMAGES: ("batch_id", "image_id")}):
        add(check, ANNOTATIONS, gxe.ExpectColumnValuesToBeInSet(column=_IMAGE_FOUND, value_set=[True]))
    check = "annotations_reference_existing_categories"
    if needs(check, {ANNOTATIONS: ("batch_id", "category_id"), CATEGORIES: ("batch_id", "category_id")}):
        found = gxe.ExpectColumnValuesToBeInSet(column=_CATEGORY_FOUND, value_set=[True])
        add(check, ANNOTATIONS, found)
    check = "annotations_bbox_inside_image"
    if needs(check, {
        ANNOTATIONS: ("batch_id", "image_id", "bbox_x", "bbox_y", "bbox_w", "bbox_h"),
        IMAGES: ("batch_id", "image_id", "width", "height"),
    }):
        add(check, ANNOTATIONS, gxe.ExpectColumnValuesToBeInSet(column=_BBOX_INSIDE, value_set=[True]))
    check = "annotations_valid_values"
    if needs(check, {ANNOTATIONS: ("iscrowd", "area")}):
        add(check, ANNOTATIONS, gxe.ExpectColumnValuesToBeInSet(column="iscrowd", value_set=[0, 1]))
        add(check, ANNOTATIONS, gxe.ExpectColumnValuesToBeInSet(column=_AREA_VALID, value_set=[True]))
    check = "categories_min_annotations"
    if needs(check, {
        CATEGORIES: ("batch_id", "category_id"),
        ANNOTATIONS: ("batch_id", "category_id", "iscrowd"),
    }):
        enough = gxe.ExpectColumnValuesToBeBetween(column=_NON_CROWD_COUNT, min_value=params.min_annotations)
        add(check, CATEGORIES, enough)

    # Conditional rules: one derived boolean column each, null where the rule does not apply.
    for check, frame, column in (
        ("annotations_polygons_well_formed", ANNOTATIONS, _POLYGON_OK),
        ("annotations_rle_matches_image", ANNOTATIONS, _RLE_MATCHES),
        ("annotations_area_consistent", ANNOTATIONS, _AREA_OK),
        ("annotations_bbox_positive_size", ANNOTATIONS, _BBOX_POSITIVE),
        ("images_duplicate_content", IMAGES, _CONTENT_UNIQUE),
        ("images_decoded_as_declared", IMAGES, _AS_DECLARED),
        ("categories_class_imbalance", CATEGORIES, _BALANCED),
    ):
        if needs(check, _NEEDS[check]):
            add(check, frame, gxe.ExpectColumnValuesToBeInSet(column=column, value_set=[True]))
    return plan


# --------------------------------------------------------------------------- GX


_GX_LOCK = threading.Lock()
_GX_STATE: dict[str, Any] = {}


def _context():
    """The process-wide ephemeral GX context (made once, under `_GX_LOCK`)."""
    if "context" not in _GX_STATE:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        _GX_STATE["context"] = context
    return _GX_STATE["context"]


def _batch_definition(table: str):
    """The whole-dataframe batch definition of `table`'s asset in the process-wide ephemeral context.

    Context, data source and assets are made once per process and reused: each validation passes its
    DataFrame as the batch parameter, and `_GX_LOCK` keeps threads from sharing the engine's batch.
    """
    if "definitions" not in _GX_STATE:
        # persist=False: GX would otherwise persist every batch's DataFrame and never release it;
        # run_quality_suites caches the frames worth caching itself, and releases them.
        source = _context().data_sources.add_spark(name="cv_pipeline_quality", persist=False)
        definitions = {}
        for name in (IMAGES, ANNOTATIONS, CATEGORIES):
            asset = source.add_dataframe_asset(name=name)
            definitions[name] = asset.add_batch_definition_whole_dataframe(f"{name}_whole")
        _GX_STATE["definitions"] = definitions
    return _GX_STATE["definitions"][table]


def _pandas_batch_definition(table: str):
    """Like `_batch_definition`, for the pandas frames of the training checks."""
    if "pandas_definitions" not in _GX_STATE:
        source = _context().data_sources.add_pandas(name="cv_pipeline_training_quality")
        definitions = {}
        for name in (TRAINING_DATASET,):
            asset = source.add_dataframe_asset(name=name)
            definitions[name] = asset.add_batch_definition_whole_dataframe(f"{name}_whole")
        _GX_STATE["pandas_definitions"] = definitions
    return _GX_STATE["pandas_definitions"][table]


def _suite(name: str, expectations: list):
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite


def _validate_frames(frames: dict, plan: list[_Planned]) -> dict[int, dict]:
    """Validate the plan frame by frame, in two passes.

    Pass 1 runs every expectation with BOOLEAN_ONLY: GX bundles their aggregates into a few Spark
    jobs and computes nothing else. Pass 2 runs only the failed ones again with SUMMARY and the
    table's id as unexpected index column, for their counts and up to SAMPLE_SIZE offending ids.
    Returns, per plan index: the pass-1 result, the pass-2 result (or None) and the offending ids.
    """
    outcomes: dict[int, dict] = {}
    for table, frame in frames.items():
        # A suite is a set: equal expectations (one column's existence asked for by two checks)
        # are added once, so each is keyed and its result shared.
        unique: dict[str, Any] = {}
        owners: dict[str, list[int]] = {}
        for index, planned in enumerate(plan):
            if planned.frame == table:
                key = _expectation_key(planned.expectation)
                if key not in unique:
                    planned.expectation.meta = {"qc_key": key}
                    unique[key] = planned.expectation
                owners.setdefault(key, []).append(index)
        if not unique:
            continue

        batch = _batch_definition(table).get_batch(batch_parameters={"dataframe": frame})
        suite = _suite(f"{table}_quality", list(unique.values()))
        first = {
            r.expectation_config.meta["qc_key"]: r
            for r in batch.validate(suite, result_format="BOOLEAN_ONLY").results
        }

        failed = [key for key, result in first.items() if not result.success]
        second: dict[str, Any] = {}
        if failed:
            result_format: dict[str, Any] = {
                "result_format": "SUMMARY",
                "partial_unexpected_count": SAMPLE_SIZE,
            }
            if ID_COLUMNS[table] in frame.columns:
                result_format["unexpected_index_column_names"] = [ID_COLUMNS[table]]
            suite = _suite(f"{table}_quality_failures", [unique[key] for key in failed])
            second = {
                r.expectation_config.meta["qc_key"]: r
                for r in batch.validate(suite, result_format=result_format).results
            }

        for key, indices in owners.items():
            summary = second.get(key)
            sample = _offending_ids(summary, ID_COLUMNS[table]) if summary is not None else []
            for index in indices:
                outcomes[index] = {"result": first[key], "summary": summary, "sample": sample}
    return outcomes


def _offending_ids(result, id_column: str) -> list:
    ids = []
    for row in (result.result or {}).get("partial_unexpected_index_list") or []:
        value = row.get(id_column) if isinstance(row, dict) else None
        if value is not None and value not in ids:
            ids.append(value)
    return ids[:SAMPLE_SIZE]


def _expectation_key(expectation) -> str:
    config = expectation.configuration
    return config.type + ":" + json.dumps(_kwargs_summary(config.kwargs), sort_keys=True, default=str)


def _kwargs_summary(kwargs: dict) -> dict:
    return {k: v for k, v in dict(kwargs).items() if k not in ("batch_id", "result_format") and v is not None}


def _is_row_level(expectation) -> bool:
    """Whether GX judges the expectation row by row (and so reports unexpected rows)."""
    from great_expectations.expectations.expectation import ColumnMapExpectation, MulticolumnMapExpectation

    # A map expectation by class, but on Spark it compares the schema's type only.
    schema_only = ("expect_column_values_to_be_of_type",)
    return isinstance(expectation, (ColumnMapExpectation, MulticolumnMapExpectation)) and (
        expectation.expectation_type not in schema_only
    )


# --------------------------------------------------------------------------- results


def _assemble_results(
    definitions: Iterable[QualityCheckDefinition], plan: list[_Planned], outcomes: dict, rows: dict,
    params: _Params | None,
) -> list[QualityCheckResult]:
    results = []
    for definition in definitions:
        indices = [i for i, p in enumerate(plan) if p.check == definition.name]
        passed = bool(indices)
        details, sample, not_evaluated = [], [], []
        unexpected_count = 0
        for index in indices:
            planned, outcome = plan[index], outcomes[index]
            config = outcome["result"].expectation_config
            success = bool(outcome["result"].success)
            passed = passed and success
            detail: dict[str, Any] = {
                "type": config.type,
                "kwargs": _kwargs_summary(config.kwargs),
                "table": planned.frame,
                "success": success,
            }
            if success:
                if _is_row_level(planned.expectation):
                    detail.update(element_count=rows[planned.frame], unexpected_count=0)
                details.append(detail)
                continue

            summary = outcome["summary"]
            body = dict(summary.result or {}) if summary is not None else {}
            info = (summary or outcome["result"]).exception_info or {}
            if info.get("raised_exception"):
                detail["exception"] = info.get("exception_message")
            if "unexpected_count" in body:
                detail.update(
                    element_count=int(body.get("element_count") or 0),
                    unexpected_count=int(body["unexpected_count"] or 0),
                    missing_count=int(body.get("missing_count") or 0),
                )
                unexpected_count += detail["unexpected_count"]
            else:
                unexpected_count += 1
            for field in ("observed_value", "details"):
                if field in body:
                    detail[field] = body[field]
            if planned.sample_ids:
                sample.extend(outcome["sample"])
            elif "column" in config.kwargs:
                sample.append(config.kwargs["column"])
            if config.type == "expect_column_to_exist" and not definition.name.endswith("_schema"):
                not_evaluated.append(f"{planned.frame}.{config.kwargs['column']}")
            details.append(detail)

        description = _describe(definition, params)
        if not_evaluated:
            description += " Not evaluated: missing column(s) " + ", ".join(not_evaluated) + "."
            element_count = 0
        elif definition.name in _JUDGED_COLUMN:
            element_count = rows.get(_JUDGED_COLUMN[definition.name], 0)
        else:
            element_count = rows[definition.table]
        results.append(
            QualityCheckResult(
                name=definition.name,
                table=definition.table,
                severity=definition.severity,
                passed=passed,
                description=description,
                element_count=element_count,
                unexpected_count=unexpected_count,
                unexpected_sample=_jsonable(list(dict.fromkeys(sample))[:SAMPLE_SIZE]),
                expectations=_jsonable(details),
            )
        )
    return results


def _describe(definition: QualityCheckDefinition, params: _Params | None) -> str:
    if params is None:
        return definition.description
    if definition.name == "annotations_bbox_inside_image":
        tol = params.bbox_tolerance_px
        return (
            f"Where iscrowd is not 1: bbox_x >= -{tol:g}, bbox_y >= -{tol:g}, "
            f"bbox_x + bbox_w <= width + {tol:g}, bbox_y + bbox_h <= height + {tol:g}; "
            "annotations whose image is missing are left to annotations_reference_existing_images."
        )
    if definition.name == "annotations_bbox_positive_size":
        return (
            "Where iscrowd is not 1: bbox_w > 0 and bbox_h > 0 (a zero-size box is dropped by the training "
            "transforms and can't be matched in evaluation)."
        )
    if definition.name == "categories_min_annotations":
        return f"Each category has at least {params.min_annotations} non-crowd annotations in its batch."
    if definition.name == "annotations_polygons_well_formed":
        return (
            "Where segmentation_type is 'polygon': polygon_count >= 1, min_polygon_coords >= 6 "
            "and odd_polygon_parts == 0."
        )
    if definition.name == "annotations_rle_matches_image":
        return (
            "Where segmentation_type is 'rle' or 'rle_uncompressed': (rle_height, rle_width) equals the "
            "image's (height, width); annotations whose image is missing are left to "
            "annotations_reference_existing_images."
        )
    if definition.name == "annotations_area_consistent":
        return (
            "Where iscrowd is not 1 and segmentation_area is not null: |area - segmentation_area| <= "
            f"{params.area_rel_tolerance:g} * max(area, segmentation_area) + {params.area_abs_tolerance_px:g} px."
        )
    if definition.name == "images_duplicate_content":
        scope = "another batch of this run or of the table" if params.has_existing_images else (
            "another batch of this run (the table's other batches were not given)"
        )
        return f"No sha256 appears on two images of one batch, nor in {scope}."
    if definition.name == "categories_class_imbalance":
        return (
            "Each category with non-crowd annotations has at least 1/"
            f"{params.max_imbalance_ratio:g} as many as its batch's largest category."
        )
    return definition.description


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
