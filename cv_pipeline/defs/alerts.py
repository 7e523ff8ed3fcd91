"""Alerts: every failed run and every failed asset check of this code location becomes a message
to the webhook of `$CV_PIPELINE_ALERT_WEBHOOK_URL` (unset: alerts are off).

Sensors, not assets or automation conditions: a failure is an event to push outward, not data to
materialize, and nothing downstream waits for the message.
"""

import json
import time
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

from cv_pipeline.monitoring.alerts import (
    WEBHOOK_URL_ENV,
    Alert,
    WebhookNotifier,
    figure_from_metadata,
    run_url,
    utc_iso,
)

ALERTS_OFF = f"${WEBHOOK_URL_ENV} is not set: alerts are off"
MAX_ALERTS_PER_TICK = 20  # keeps a tick well inside the sensor timeout; the rest go next tick
_HISTORY_PAGE = 20


@dg.run_failure_sensor(
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Sends a run_failed alert (failed assets, root-cause error, link to the run) to "
                f"${WEBHOOK_URL_ENV} for every failed run of this code location.",
)
def alert_on_run_failure(context: dg.RunFailureSensorContext) -> None:
    # Returns None in every case: a returned value would end the tick after this run, and the
    # failures queued behind it would wait for later ticks.
    notifier = WebhookNotifier.from_env()
    if notifier is None:
        context.log.info(f"run {context.dagster_run.run_id}: {ALERTS_OFF}")
        return
    alert = run_failure_alert(context.instance, context.dagster_run, context.failure_event,
                              context.get_step_failure_events())
    if notifier.send(alert):
        context.log.info(f"alert sent: {alert.title}")
    else:
        context.log.warning(f"alert not delivered to {notifier.destination}: {alert.title}")


@dataclass
class _ChecksCursor:
    """`since`: when alerting started (older failures are history); `last`: per check
    (`asset:check`), the evaluation time of the last failure delivered."""

    since: float
    last: dict[str, float] = field(default_factory=dict)

    def after(self, key: dg.AssetCheckKey) -> float:
        return self.last.get(key.to_user_string(), self.since)

    def to_json(self) -> str:
        return json.dumps({"since": self.since, "last": self.last}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "_ChecksCursor":
        data = json.loads(text)
        return cls(since=float(data["since"]), last={k: float(v) for k, v in data.get("last", {}).items()})


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=f"Sends a check_failed alert (asset, check, failing figure, link to the run) to ${WEBHOOK_URL_ENV} "
                "for each failed evaluation of this code location's asset checks, once.",
)
def alert_on_failed_checks(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    """Reads the checks' execution records rather than the raw event log: on the default SQLite
    storage the event log is sharded per run and refuses a cross-run cursor. The cursor keeps,
    per check, the evaluation time of the last failure delivered; the first tick only starts the
    clock (no replay of history), and an undelivered alert is tried again next tick."""
    now = time.time()
    notifier = WebhookNotifier.from_env()
    if notifier is None:  # restart the clock, so turning alerts on later does not replay the gap
        return dg.SensorResult(skip_reason=ALERTS_OFF, cursor=_ChecksCursor(since=now).to_json())
    if not context.cursor:
        return dg.SensorResult(skip_reason="first tick: alerting on check failures evaluated from now on",
                               cursor=_ChecksCursor(since=now).to_json())
    if context.repository_def is None:
        raise dg.DagsterInvariantViolationError(
            "alert_on_failed_checks reads the code location's check keys: build its context with "
            "dg.build_sensor_context(definitions=...)")
    cursor = _ChecksCursor.from_json(context.cursor)
    pending = sorted(
        ((record.event.timestamp, key.to_user_string(), record)
         for key in context.repository_def.asset_graph.asset_check_keys
         for record in _failed_evaluations_after(context.instance, key, cursor.after(key))),
        key=lambda item: item[:2])
    sent = 0
    for timestamp, label, record in pending[:MAX_ALERTS_PER_TICK]:
        alert = check_failure_alert(record)
        if not notifier.send(alert):  # the webhook is down: stop here, retry from this one next tick
            context.log.warning(f"alert not delivered to {notifier.destination}: {alert.title}")
            break
        context.log.info(f"alert sent: {alert.title}")
        cursor.last[label] = timestamp
        sent += 1
    return dg.SensorResult(skip_reason=f"{sent} of {len(pending)} new check failure(s) alerted",
                           cursor=cursor.to_json())


def _failed_evaluations_after(instance: dg.DagsterInstance, key: dg.AssetCheckKey,
                              after: float) -> list[AssetCheckExecutionRecord]:
    """The failed evaluations of a check stored with an evaluation time after `after`."""
    found, page_cursor = [], None
    while True:
        records = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=_HISTORY_PAGE, cursor=page_cursor, status={AssetCheckExecutionRecordStatus.FAILED})
        newer = [r for r in records if r.event is not None and r.event.timestamp > after]
        found += newer
        if len(records) < _HISTORY_PAGE or not newer:  # newest first: an older page has nothing newer
            return found
        page_cursor = records[-1].id


def check_failure_alert(record: AssetCheckExecutionRecord) -> Alert:
    """The alert of one failed check evaluation: figure from its metadata (see `figure_from_metadata`)."""
    evaluation = record.event.dagster_event.event_specific_data
    asset = evaluation.asset_key.to_user_string()
    metadata = {name: value.value for name, value in evaluation.metadata.items()}
    where = f"{asset}[{evaluation.partition}]" if evaluation.partition else asset
    title = f"check {evaluation.check_name} on {where} failed"
    return Alert(
        kind="check_failed", title=title, asset=asset, check=evaluation.check_name,
        figure=figure_from_metadata(metadata), severity=evaluation.severity.value,
        run_id=record.run_id or None, run_url=run_url(record.run_id) if record.run_id else None,
        message=evaluation.description or title, time=utc_iso(record.event.timestamp), metadata=metadata,
    )


def run_failure_alert(instance: dg.DagsterInstance, run: dg.DagsterRun, failure_event: dg.DagsterEvent,
                      step_failures: list[dg.DagsterEvent]) -> Alert:
    """The alert of one failed run: the assets (and checks) of its failed steps, else its asset
    selection, else its job; the root-cause error of each failed step."""
    targets = _step_targets(instance, run, [event.step_key for event in step_failures])
    assets = sorted({(t.asset_key if isinstance(t, dg.AssetCheckKey) else t).to_user_string() for t in targets})
    checks = sorted({t.name for t in targets if isinstance(t, dg.AssetCheckKey)})
    if not assets:
        assets = sorted(key.to_user_string() for key in run.asset_selection or ())
    errors = [f"{event.step_key}: {_root_cause(event.step_failure_data)}" for event in step_failures]
    if not errors:  # the run failed outside any step (a crashed worker, a failed launch)
        job_error = getattr(failure_event.event_specific_data, "error", None)
        errors = [failure_event.message or "run failed"] + ([_root_error(job_error)] if job_error else [])
    return Alert(
        kind="run_failed", title=f"run {run.run_id[:8]} of {run.job_name} failed",
        asset=", ".join(assets) or run.job_name, check=", ".join(checks) or None, figure=None,
        severity="ERROR", run_id=run.run_id, run_url=run_url(run.run_id), message="\n".join(errors),
        time=utc_iso(), metadata={"job": run.job_name, **({"partition": run.tags["dagster/partition"]}
                                                           if "dagster/partition" in run.tags else {})},
    )


def _step_targets(instance: dg.DagsterInstance, run: dg.DagsterRun, step_keys: list[str]) -> list:
    """The asset and check keys the given steps of a run produce, from the run's execution plan."""
    if not step_keys or not run.execution_plan_snapshot_id:
        return []
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    return [target for step in plan.steps if step.key in step_keys for output in step.outputs
            if output.properties is not None
            for target in (output.properties.asset_key, output.properties.asset_check_key) if target is not None]


def _root_cause(failure) -> str:
    if failure.user_failure_data is not None and failure.user_failure_data.description:
        return failure.user_failure_data.description.strip()  # a dg.Failure: its own words
    return _root_error(failure.error) if failure.error is not None else "step failed"


def _root_error(error) -> str:
    while error.cause is not None:
        error = error.cause
    return error.message.strip()


ALERT_SENSORS = (alert_on_run_failure, alert_on_failed_checks)
