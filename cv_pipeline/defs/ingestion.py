"""Ingestion: one landing batch into the four COCO Delta tables, validated by GX asset checks."""


import dagster as dg
from dagster_pyspark import PySparkResource

from cv_pipeline.data.quality import CHECK_DEFINITIONS, ERROR, failed_blocking, results_as_metadata
from cv_pipeline.defs.partitions import landing_batches
from cv_pipeline.defs.resources import LakeResource, LandingZoneResource

COCO_TABLES = ("coco_images", "coco_annotations", "coco_categories", "coco_quarantine")

CHECK_SPECS = [
    dg.AssetCheckSpec(
        name=definition.name,
        asset=definition.table,
        description=f"Great Expectations: {definition.description}",
        blocking=definition.severity == ERROR,
    )
    for definition in CHECK_DEFINITIONS
]


@dg.multi_asset(
    specs=[
        dg.AssetSpec("coco_images", description="Accepted images of each landing batch, with file facts and sha256.",
                     group_name="ingestion", partitions_def=landing_batches, kinds={"spark", "delta"}),
        dg.AssetSpec("coco_annotations", description="Accepted annotations (boxes, area, segmentation JSON).",
                     group_name="ingestion", partitions_def=landing_batches, kinds={"spark", "delta"}),
        dg.AssetSpec("coco_categories", description="Categories of each batch.",
                     group_name="ingestion", partitions_def=landing_batches, kinds={"spark", "delta"}),
        dg.AssetSpec("coco_quarantine", description="Every rejected record with its reason; nothing is lost.",
                     group_name="ingestion", partitions_def=landing_batches, kinds={"spark", "delta"}),
    ],
    check_specs=CHECK_SPECS,
    can_subset=False,
)
def coco_tables(context: dg.AssetExecutionContext, spark: PySparkResource, lake: LakeResource,
                landing: LandingZoneResource):
    """Parse, validate and write one batch; replaces that batch's rows, so re-runs are idempotent."""
    from cv_pipeline.data.coco import COCOFormatError
    from cv_pipeline.data.delta_io import append_rows, replace_batch
    from cv_pipeline.data.processor import COCOProcessor, batch_record
    from cv_pipeline.data.quality import run_quality_suites

    batch_id = context.partition_key
    batch_dir = landing.batch_dir(batch_id)
    processor = COCOProcessor(spark.spark_session)
    try:
        batch = processor.ingest_batch(batch_dir, batch_id)
    except COCOFormatError as exc:
        # Keep a record of the unreadable batch; the other tables stay at their previous version.
        row = batch_record(batch_id, str(batch_dir / "annotations.json"), str(exc))
        append_rows(processor.quarantine_frame([row]), lake.table_path("coco_quarantine"))
        raise dg.Failure(description=f"Batch {batch_id} could not be ingested: {exc}",
                         metadata={"batch_id": batch_id, "error": str(exc)}) from exc

    frames = {"coco_images": batch.images, "coco_annotations": batch.annotations,
              "coco_categories": batch.categories, "coco_quarantine": batch.quarantine}
    for frame in frames.values():
        frame.cache()
    row_counts = {name: frame.count() for name, frame in frames.items()}
    versions = {name: replace_batch(frame, lake.table_path(name), batch_id) for name, frame in frames.items()}

    for name in COCO_TABLES:
        extra = {}
        if name == "coco_quarantine":
            extra = {"quarantined_by_reason": dg.MetadataValue.json(batch.counts["quarantined_by_reason"])}
        if name == "coco_images":
            extra = {"records_read": dg.MetadataValue.json(batch.counts["read"]),
                     "accepted": dg.MetadataValue.json(batch.counts["accepted"]),
                     "quarantined": dg.MetadataValue.json(batch.counts["quarantined"])}
        yield dg.MaterializeResult(
            asset_key=name,
            metadata={
                "batch_id": batch_id,
                "dagster/row_count": row_counts[name],
                "delta_version": versions[name],
                "path": dg.MetadataValue.path(lake.table_path(name)),
                "source_file": batch.source_file,
                **extra,
            },
        )

    results = run_quality_suites(batch.images, batch.annotations, batch.categories)
    for frame in frames.values():
        frame.unpersist()
    for result in results:
        yield dg.AssetCheckResult(
            asset_key=result.table,
            check_name=result.name,
            passed=result.passed,
            severity=dg.AssetCheckSeverity.ERROR if result.severity == ERROR else dg.AssetCheckSeverity.WARN,
            metadata={"batch_id": batch_id, **{k: dg.MetadataValue.json(v) if isinstance(v, list) else v
                                               for k, v in results_as_metadata(result).items()}},
        )
    blocking = failed_blocking(results)
    if blocking:
        context.log.error(
            f"Batch {batch_id} failed blocking quality checks: "
            + ", ".join(f"{r.name} ({r.unexpected_count} bad, e.g. {r.unexpected_sample[:3]})" for r in blocking)
        )
