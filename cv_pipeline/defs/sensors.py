"""Sensors: new complete landing batches become partitions and ingestion runs; a successful
ingestion (every blocking check passed) requests retraining; a successful retraining scores the
batch that triggered it with the new champions (batch_predictions)."""


import json

import dagster as dg

from cv_pipeline.defs.jobs import batch_inference_job, ingest_job, training_job
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
    monitored_jobs=[ingest_job],
    request_job=training_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Retrains when an ingestion run succeeded, i.e. every blocking quality check passed.",
)
def retrain_on_new_data(context: dg.RunStatusSensorContext):
    batch = context.dagster_run.tags.get("dagster/partition", "unknown")
    waiting = context.instance.get_runs(
        filters=dg.RunsFilter(job_name=training_job.name,
                              statuses=[dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED]),
        limit=1,
    )
    if waiting:  # a retraining run that has not started yet will read this batch too
        return dg.SkipReason(f"batch {batch}: retraining run {waiting[0].run_id} is already waiting to start")
    return dg.RunRequest(run_key=f"retrain-after-{context.dagster_run.run_id}", tags={"trigger_batch": batch})


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[training_job],
    request_job=batch_inference_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Scores the landing batch that triggered a successful retraining with every task's champion.",
)
def score_batch_after_retraining(context: dg.RunStatusSensorContext):
    batch = context.dagster_run.tags.get("trigger_batch")
    if not batch:
        return dg.SkipReason(f"run {context.dagster_run.run_id} was not triggered by a landing batch")
    return dg.RunRequest(run_key=f"score-{batch}-after-{context.dagster_run.run_id}", partition_key=batch)
