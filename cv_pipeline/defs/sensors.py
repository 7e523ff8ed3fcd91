"""Sensors, where a sensor is the right tool: new complete landing batches (files outside Dagster)
become partitions and ingestion runs; a run that settled a champion scores the batches not scored yet
(batch_predictions). Retraining itself is declarative automation (cv_pipeline.defs.automation);
alerts are in cv_pipeline.defs.alerts."""


import json

import dagster as dg

from cv_pipeline.defs.jobs import batch_inference_job, ingest_job
from cv_pipeline.defs.partitions import landing_batches
from cv_pipeline.defs.resources import LandingZoneResource


@dg.sensor(job=ingest_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Finds landing batches with a _SUCCESS marker that have not been ingested yet.")
def landing_batch_sensor(context: dg.SensorEvaluationContext, landing: LandingZoneResource) -> dg.SensorResult:
    seen = set(json.loads(context.cursor)) if context.cursor else set()
    # Batches ingested outside this sensor (`cv-pipeline run`, the UI) count as seen too.
    seen |= set(context.instance.get_materialized_partitions(dg.AssetKey("coco_images")))
    new_batches = [batch for batch in landing.complete_batches() if batch not in seen]
    if not new_batches:
        return dg.SensorResult(skip_reason=f"No new complete batches in {landing.landing_dir}")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=batch, run_key=f"ingest-{batch}") for batch in new_batches],
        dynamic_partitions_requests=[landing_batches.build_add_request(new_batches)],
        cursor=json.dumps(sorted(seen | set(new_batches))),
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    request_job=batch_inference_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="After a run that settled a champion (promoted or kept: a retraining, by automation or by hand), "
                "scores every validated batch of the training set that has no batch_predictions yet.",
)
def score_batch_after_retraining(context: dg.RunStatusSensorContext):
    run = context.dagster_run
    records = context.instance.get_records_for_run(
        run_id=run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    if not any(record.asset_key.path[-1].endswith("_champion") for record in records if record.asset_key):
        return dg.SkipReason(f"run {run.run_id} settled no champion")
    event = context.instance.get_latest_materialization_event(dg.AssetKey("training_dataset"))
    trained = (event.asset_materialization.metadata.get("batches").value
               if event and event.asset_materialization and "batches" in event.asset_materialization.metadata else [])
    scored = set(context.instance.get_materialized_partitions(dg.AssetKey("batch_predictions")))
    waiting = [batch for batch in trained if batch not in scored]
    if not waiting:
        return dg.SkipReason(f"every batch of the training set ({len(trained)}) is scored already")
    return [dg.RunRequest(run_key=f"score-{batch}-after-{run.run_id}", partition_key=batch) for batch in waiting]
