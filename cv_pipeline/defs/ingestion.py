"""Ingestion: one landing batch into the COCO Delta tables, validated by GX asset checks.

A batch failing a blocking (ERROR) check keeps its rows in the tables and is marked 'held_back' in
`coco_batches`; `training_dataset` takes validated batches only (cv_pipeline.data.quality.batch_gate).
The failed blocking checks also fail the batch's run, so the retraining sensor (run success) is not
triggered by it; the other batches train as before."""


import dagster as dg
from dagster_pyspark import PySparkResource

from cv_pipeline.data.quality import CHECK_DEFINITIONS, ERROR, QUALITY_METRICS, results_as_metadata
from cv_pipeline.defs.partitions import landing_batches
from cv_pipeline.defs.resources import IngestionPolicy, LakeResource, LandingZoneResource

COCO_TABLES = ("coco_images", "coco_annotations", "coco_categories", "coco_quarantine", "coco_batches")
QUALITY_TABLE = QUALITY_METRICS

CHECK_SPECS = [
    dg.AssetCheckSpec(
        name=definition.name,
        asset=definition.table,
        description=f"Great Expectations: {definition.description}",
        blocking=definition.severity == ERROR,
    )
    for definition in CHECK_DEFINITIONS
]

_DESCRIPTIONS = {
    "coco_images": "Accepted images of each landing batch, with file facts and sha256 (bytes too, if configured).",
    "coco_annotations": "Accepted annotations: boxes, area, segmentation JSON with its measured geometry, keypoints.",
    "coco_categories": "Categories of each batch (one taxonomy per landing zone; conflicts are quarantined).",
    "coco_quarantine": "Every rejected record with its source JSON, reason code and message; nothing is lost.",
    "coco_batches": "One row per batch: info, licenses and other top-level keys, records read/accepted/quarantined, "
                    "and its quality status (validated: it may reach training; held_back: a blocking check failed).",
    QUALITY_TABLE: "Quality check results per batch over time (appended on every ingestion), for monitoring.",
}


def _spec(name: str) -> dg.AssetSpec:
    return dg.AssetSpec(name, description=_DESCRIPTIONS[name], group_name="ingestion",
                        partitions_def=landing_batches, kinds={"spark", "delta"})


def existing_taxonomy(categories_path: str, batch_id: str) -> dict[int, str]:
    """category id -> name over the batches already ingested (other than `batch_id`)."""
    from cv_pipeline.data.delta_io import is_delta_table, read_table

    if not is_delta_table(categories_path):
        return {}
    table = read_table(categories_path, columns=["batch_id", "category_id", "name"],
                       filters=[("batch_id", "!=", batch_id)])
    taxonomy: dict[int, str] = {}
    for row in sorted(table.to_pylist(), key=lambda r: r["batch_id"]):
        taxonomy.setdefault(row["category_id"], row["name"])
    return taxonomy


@dg.multi_asset(
    specs=[_spec(name) for name in COCO_TABLES + (QUALITY_TABLE,)],
    check_specs=CHECK_SPECS,
    can_subset=False,
)
def coco_tables(context: dg.AssetExecutionContext, spark: PySparkResource, lake: LakeResource,
                landing: LandingZoneResource, ingestion: IngestionPolicy):
    """Parse, validate and write one batch; replaces that batch's rows, so re-runs are idempotent."""
    from cv_pipeline.data.coco import COCOFormatError
    from cv_pipeline.data.delta_io import append_rows
    from cv_pipeline.data.processor import COCOProcessor, batch_record
    from cv_pipeline.data.quality import validate_ingested_batch

    batch_id = context.partition_key
    batch_dir = landing.batch_dir(batch_id)
    session = spark.spark_session
    processor = COCOProcessor(session, store_image_bytes=ingestion.store_image_bytes)
    taxonomy = existing_taxonomy(lake.table_path("coco_categories"), batch_id)
    try:
        batch = processor.ingest_batch(batch_dir, batch_id, taxonomy=taxonomy)
    except COCOFormatError as exc:
        # Keep a record of the unreadable batch; the other tables stay at their previous version.
        append_rows(batch_record(batch_id, str(batch_dir / "annotations.json"), str(exc)),
                    lake.table_path("coco_quarantine"))
        raise dg.Failure(description=f"Batch {batch_id} could not be ingested: {exc}",
                         metadata={"batch_id": batch_id, "error": str(exc)}) from exc

    # Each table's batch is replaced by one atomic commit, straight from Arrow (delta-rs); coco_batches
    # first, with status 'pending': the batch is held back until its checks have passed.
    versions = batch.write(lake.table_path)
    row_counts = {name: rows.num_rows for name, rows in batch.tables.items()}

    def table_metadata(name: str, version: int) -> dict:
        return {"batch_id": batch_id, "dagster/row_count": row_counts[name], "delta_version": version,
                "delta_versions": dg.MetadataValue.json(versions),
                "path": dg.MetadataValue.path(lake.table_path(name)), "source_file": batch.source_file}

    for name in COCO_TABLES:
        if name == "coco_batches":
            continue  # materialized once its status is recorded, below
        extra = {}
        if name == "coco_quarantine":
            extra = {"quarantined_by_reason": dg.MetadataValue.json(batch.counts["quarantined_by_reason"])}
        if name == "coco_images":
            extra = {"records_read": dg.MetadataValue.json(batch.counts["read"]),
                     "accepted": dg.MetadataValue.json(batch.counts["accepted"]),
                     "quarantined": dg.MetadataValue.json(batch.counts["quarantined"]),
                     "image_storage": "bytes + sha256" if ingestion.store_image_bytes else "path + sha256"}
        if name == "coco_categories":
            extra = {"taxonomy_conflicts": batch.counts["quarantined_by_reason"].get("taxonomy_conflict", 0)}
        yield dg.MaterializeResult(asset_key=name, metadata={**table_metadata(name, versions[name]), **extra})

    # The checks read back what was written, with Spark (so they scale out on a cluster); their results
    # go to coco_quality_metrics and decide the batch's status in coco_batches (validated / held_back).
    validation = validate_ingested_batch(session, lake.table_path, batch_id, run_id=context.run_id,
                                         **ingestion.check_options())
    results = validation.results
    failed = [r for r in results if not r.passed]
    yield dg.MaterializeResult(asset_key="coco_batches", metadata={
        **table_metadata("coco_batches", validation.batches_version),
        "status": validation.status,
        "status_message": validation.status_message,
        "failed_checks": dg.MetadataValue.json(validation.failed_checks),
    })
    yield dg.MaterializeResult(
        asset_key=QUALITY_TABLE,
        metadata={
            "batch_id": batch_id,
            "dagster/row_count": validation.metrics_rows,
            "delta_version": validation.metrics_version,
            "path": dg.MetadataValue.path(lake.table_path(QUALITY_TABLE)),
            "checks_passed": len(results) - len(failed),
            "checks_failed": dg.MetadataValue.json([f"{r.name} ({r.severity})" for r in failed]),
        },
    )
    if validation.held_back:
        # The batch's rows stay in the tables for inspection; training_dataset leaves it out. The failed
        # blocking checks below also fail this run, so no retraining is requested for it.
        context.log.warning(f"Batch {batch_id}: {validation.status_message}")
    for result in results:
        yield dg.AssetCheckResult(
            asset_key=result.table,
            check_name=result.name,
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR if result.severity == ERROR else dg.AssetCheckSeverity.WARN,
            metadata={"batch_id": batch_id, **{k: dg.MetadataValue.json(v) if isinstance(v, list) else v
                                               for k, v in results_as_metadata(result).items()}},
        )
