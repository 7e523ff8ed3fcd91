"""Data-quality suites for the COCO Delta tables, run by Great Expectations 1.x over Spark DataFrames.

`run_quality_suites` evaluates every check of `CHECK_DEFINITIONS` on the three tables of one or more
landing batches and returns one `QualityCheckResult` per check. Pass/fail always comes from GX's
validation result. Cross-table rules (references, bbox inside its image, annotations per category)
are Spark joins that add a derived column, on which a plain GX expectation then runs.

Spark work is kept to a few jobs per table: the expectations of all checks on one frame run as one
suite with BOOLEAN_ONLY (GX bundles their aggregates), and only the failed ones run a second time,
with SUMMARY, for their counts and offending ids.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

IMAGES = "coco_images"
ANNOTATIONS = "coco_annotations"
CATEGORIES = "coco_categories"

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
        "bbox_x", "bbox_y", "bbox_w", "bbox_h", "area", "iscrowd",
    ),
    CATEGORIES: ("batch_id", "category_id", "name"),
}

ID_COLUMNS = {IMAGES: "image_id", ANNOTATIONS: "annotation_id", CATEGORIES: "category_id"}

# Columns added by the joins; the prefix keeps them apart from table columns.
_IMAGE_FOUND = "_qc_image_exists"
_CATEGORY_FOUND = "_qc_category_exists"
_BBOX_INSIDE = "_qc_bbox_inside_image"
_IMAGE_WIDTH = "_qc_image_width"
_IMAGE_HEIGHT = "_qc_image_height"
_NON_CROWD_COUNT = "_qc_non_crowd_annotations"


@dataclass(frozen=True)
class QualityCheckDefinition:
    """What a check is, known before any data is read (for declaring Dagster asset checks)."""

    name: str
    table: str
    severity: str
    description: str


_SCHEMA = "Required columns exist with the contract types; no nulls in {}."

CHECK_DEFINITIONS: tuple[QualityCheckDefinition, ...] = (
    QualityCheckDefinition("images_schema", IMAGES, ERROR, _SCHEMA.format("key and size columns")),
    QualityCheckDefinition(
        "annotations_schema", ANNOTATIONS, ERROR, _SCHEMA.format("key, bbox and value columns")
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
        "annotations_reference_existing_images", ANNOTATIONS, ERROR,
        "Every annotation's (batch_id, image_id) exists in coco_images.",
    ),
    QualityCheckDefinition(
        "annotations_reference_existing_categories", ANNOTATIONS, ERROR,
        "Every annotation's (batch_id, category_id) exists in coco_categories.",
    ),
    QualityCheckDefinition(
        "annotations_bbox_inside_image", ANNOTATIONS, ERROR,
        "bbox_w > 0, bbox_h > 0 and the box lies inside its image, within the tolerance.",
    ),
    QualityCheckDefinition("annotations_valid_values", ANNOTATIONS, ERROR, "iscrowd in {0, 1} and area > 0."),
    QualityCheckDefinition(
        "categories_min_annotations", CATEGORIES, WARN,
        "Each category has at least the minimum number of non-crowd annotations in its batch.",
    ),
)


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


def run_quality_suites(
    images_df: DataFrame,
    annotations_df: DataFrame,
    categories_df: DataFrame,
    *,
    bbox_tolerance_px: float = 1.0,
    min_annotations_per_category: int = 5,
) -> list[QualityCheckResult]:
    """Run every check of `CHECK_DEFINITIONS` on the three tables; one result per check, in that order.

    Ids are unique only within a landing batch, so every key and every join is on (batch_id, id).
    A check whose columns are missing fails (GX: the column does not exist) and says it was not
    evaluated.
    """
    from pyspark.sql import DataFrame as SparkDataFrame

    arguments = {"images_df": images_df, "annotations_df": annotations_df, "categories_df": categories_df}
    for name, df in arguments.items():
        if not isinstance(df, SparkDataFrame):
            raise TypeError(f"run_quality_suites: {name} must be a Spark DataFrame, got {type(df).__name__}")
    if bbox_tolerance_px < 0:
        raise ValueError(f"run_quality_suites: bbox_tolerance_px must be >= 0, got {bbox_tolerance_px}")
    if min_annotations_per_category < 0:
        raise ValueError(
            "run_quality_suites: min_annotations_per_category must be >= 0, "
            f"got {min_annotations_per_category}"
        )

    inputs = {IMAGES: images_df, ANNOTATIONS: annotations_df, CATEGORIES: categories_df}
    columns = {table: set(df.columns) for table, df in inputs.items()}
    frames, owned = _build_frames(inputs, columns, bbox_tolerance_px)
    try:
        rows = _count_rows(frames)
        with _GX_LOCK:
            plan = _plan_expectations(columns, min_annotations_per_category)
            outcomes = _validate_frames(frames, plan)
        return _assemble_results(plan, outcomes, rows, bbox_tolerance_px, min_annotations_per_category)
    finally:
        for frame in owned:
            frame.unpersist()


# --------------------------------------------------------------------------- frames


def _build_frames(inputs: dict, columns: dict, tol: float) -> tuple[dict, list]:
    """One frame per table: images as given, annotations with the join-derived columns, categories
    with their non-crowd annotation count. Returns the frames and those this call cached."""
    from pyspark.sql import functions as F

    images, annotations, categories = inputs[IMAGES], inputs[ANNOTATIONS], inputs[CATEGORIES]
    owned = []
    if not images.is_cached:  # read by its own suite and by the annotation join
        images = images.cache()
        owned.append(images)

    if _has(columns, ANNOTATIONS, "batch_id", "image_id") and _has(columns, IMAGES, "batch_id", "image_id"):
        with_size = _has(columns, IMAGES, "width", "height")
        size = [F.col("width").alias(_IMAGE_WIDTH), F.col("height").alias(_IMAGE_HEIGHT)] if with_size else []
        # One row per key, so a duplicated image (flagged by images_unique_ids) cannot multiply annotations.
        image_keys = images.dropDuplicates(["batch_id", "image_id"]).select(
            "batch_id", "image_id", F.lit(True).alias(_IMAGE_FOUND), *size
        )
        annotations = annotations.join(image_keys, on=["batch_id", "image_id"], how="left").withColumn(
            _IMAGE_FOUND, F.coalesce(F.col(_IMAGE_FOUND), F.lit(False))
        )
        if with_size and _has(columns, ANNOTATIONS, "bbox_x", "bbox_y", "bbox_w", "bbox_h"):
            x, y, w, h = F.col("bbox_x"), F.col("bbox_y"), F.col("bbox_w"), F.col("bbox_h")
            inside = (
                (x >= -tol) & (y >= -tol) & (w > 0) & (h > 0)
                & (x + w <= F.col(_IMAGE_WIDTH) + tol) & (y + h <= F.col(_IMAGE_HEIGHT) + tol)
            )
            # Null where the image is missing: GX skips nulls, and that case is the reference check's.
            annotations = annotations.withColumn(_BBOX_INSIDE, F.when(F.col(_IMAGE_FOUND), inside))

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

    frames = {IMAGES: images, ANNOTATIONS: annotations, CATEGORIES: categories}
    for table in (ANNOTATIONS, CATEGORIES):
        if not frames[table].is_cached:
            frames[table] = frames[table].cache()
            owned.append(frames[table])
    return frames, owned


def _has(columns: dict, table: str, *names: str) -> bool:
    return all(n in columns[table] for n in names)


def _count_rows(frames: dict) -> dict[str, int]:
    """Rows per frame, plus the annotations whose bbox can be judged (image found), for element counts.
    The same job fills the frame's cache, which the GX suites then read."""
    from pyspark.sql import functions as F

    rows = {}
    for table, frame in frames.items():
        judged = _BBOX_INSIDE in frame.columns
        aggregates = [F.count(F.lit(1))] + ([F.count(F.col(_BBOX_INSIDE))] if judged else [])
        counts = frame.agg(*aggregates).first()
        rows[table] = int(counts[0])
        if judged:
            rows[_BBOX_INSIDE] = int(counts[1])
    return rows


# --------------------------------------------------------------------------- expectations


@dataclass
class _Planned:
    """One GX expectation to evaluate on `frame` (a table name), on behalf of `check`."""

    check: str
    frame: str
    expectation: Any
    sample_ids: bool  # when it fails, report offending row ids (else the column name)


def _plan_expectations(columns: dict, min_annotations: int) -> list[_Planned]:
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
        positive = gxe.ExpectColumnValuesToBeBetween(column="area", min_value=0, strict_min=True)
        add(check, ANNOTATIONS, positive)
    check = "categories_min_annotations"
    if needs(check, {
        CATEGORIES: ("batch_id", "category_id"),
        ANNOTATIONS: ("batch_id", "category_id", "iscrowd"),
    }):
        enough = gxe.ExpectColumnValuesToBeBetween(column=_NON_CROWD_COUNT, min_value=min_annotations)
        add(check, CATEGORIES, enough)
    return plan


# --------------------------------------------------------------------------- GX


_GX_LOCK = threading.Lock()
_GX_STATE: dict[str, Any] = {}


def _batch_definition(table: str):
    """The whole-dataframe batch definition of `table`'s asset in the process-wide ephemeral context.

    Context, data source and assets are made once per process and reused: each validation passes its
    DataFrame as the batch parameter, and `_GX_LOCK` keeps threads from sharing the engine's batch.
    """
    if not _GX_STATE:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        # persist=False: GX would otherwise persist every batch's DataFrame and never release it;
        # run_quality_suites caches the frames worth caching itself, and releases them.
        source = context.data_sources.add_spark(name="cv_pipeline_quality", persist=False)
        definitions = {}
        for name in (IMAGES, ANNOTATIONS, CATEGORIES):
            asset = source.add_dataframe_asset(name=name)
            definitions[name] = asset.add_batch_definition_whole_dataframe(f"{name}_whole")
        _GX_STATE.update(context=context, definitions=definitions)
    return _GX_STATE["definitions"][table]


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
    plan: list[_Planned], outcomes: dict, rows: dict, tol: float, min_annotations: int
) -> list[QualityCheckResult]:
    results = []
    for definition in CHECK_DEFINITIONS:
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

        description = _describe(definition, tol, min_annotations)
        if not_evaluated:
            description += " Not evaluated: missing column(s) " + ", ".join(not_evaluated) + "."
            element_count = 0
        elif definition.name == "annotations_bbox_inside_image":
            element_count = rows.get(_BBOX_INSIDE, 0)
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


def _describe(definition: QualityCheckDefinition, tol: float, min_annotations: int) -> str:
    if definition.name == "annotations_bbox_inside_image":
        return (
            f"bbox_w > 0, bbox_h > 0, bbox_x >= -{tol:g}, bbox_y >= -{tol:g}, "
            f"bbox_x + bbox_w <= width + {tol:g}, bbox_y + bbox_h <= height + {tol:g}; "
            "annotations whose image is missing are left to annotations_reference_existing_images."
        )
    if definition.name == "categories_min_annotations":
        return f"Each category has at least {min_annotations} non-crowd annotations in its batch."
    return definition.description


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
