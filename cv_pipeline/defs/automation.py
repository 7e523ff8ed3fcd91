"""Declarative automation: the pipeline retrains itself.

- `training_dataset` is rebuilt when a landing batch's tables change (an ingestion run); it records
  its content hash as its data version, so a held-back batch (whose rows never reach it) changes
  nothing downstream.
- `<task>_model` retrains when training_dataset's data version changes (new validated batches), or
  when a drift or fresh-label quality check of its task fails after the model's last
  materialization. A burst of triggers gives one request (a trigger waits, pending, until the model
  is requested), never one while the model or its upstream is in flight, and none within the
  cool-down after the last retraining (`CV_PIPELINE_RETRAIN_COOLDOWN_MINUTES`, default 60).
- Every later stage of the task's road (evaluation, registration, comparison, champion, endpoint)
  follows eagerly, in the same run (on a sensor's first tick, in the run after the model's).
- Each endpoint's monitoring runs every 15 minutes on its current window; a landing batch's
  fresh-label quality runs once its tables are written.

The checks that trigger retraining live on assets downstream of the model (monitoring reads the
endpoint the model serves), so no dependency can carry them back: `ChecksFailedSinceMaterialized`
is a condition in Python, evaluated on the code server (`retraining_automation`, the one automation
sensor of the code location).
"""

from __future__ import annotations

import os
import warnings
from datetime import timedelta
from typing import Sequence

import dagster as dg

COOLDOWN_ENV = "CV_PIPELINE_RETRAIN_COOLDOWN_MINUTES"
MONITORING_CRON = "*/15 * * * *"
# the checks of a task that retrain its model when they fail: asset suffix -> check names
RETRAINING_CHECKS = {
    "endpoint_monitoring": ("no_input_drift", "no_prediction_drift"),
    "fresh_label_quality": ("quality_on_fresh_labels",),
}


def retraining_check_keys(task: str) -> list[dg.AssetCheckKey]:
    return [dg.AssetCheckKey(dg.AssetKey(f"{task}_{suffix}"), name)
            for suffix, names in RETRAINING_CHECKS.items() for name in names]


def retrain_cooldown() -> timedelta:
    minutes = os.environ.get(COOLDOWN_ENV, "60").strip() or "60"
    try:
        value = float(minutes)
    except ValueError as error:
        raise ValueError(f"${COOLDOWN_ENV} must be a number of minutes, got {minutes!r}") from error
    if value < 0:
        raise ValueError(f"${COOLDOWN_ENV} must be >= 0, got {value}")
    return timedelta(minutes=value)


class ChecksFailedSinceMaterialized(dg.AutomationCondition):
    """True when the latest evaluation of one of `check_keys` failed after this asset's latest
    materialization (or the asset was never materialized)."""

    def __init__(self, check_keys: Sequence[dg.AssetCheckKey]):
        self.check_keys = tuple(check_keys)

    @property
    def name(self) -> str:
        return "checks_failed_since_materialized(" + ", ".join(key.to_user_string() for key in self.check_keys) + ")"

    @property
    def description(self) -> str:
        return "a watched check failed after the latest materialization"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

        instance = context.asset_graph_view.instance
        latest = instance.get_latest_materialization_event(context.key)
        since = latest.timestamp if latest is not None else 0.0
        failed = []
        for key in self.check_keys:
            record = instance.get_latest_asset_check_evaluation_record(key)
            if record is None or record.status != AssetCheckExecutionRecordStatus.FAILED:
                continue
            # the event's own time (the record's create time is stored to the second)
            evaluated = record.event.timestamp if record.event is not None else record.create_timestamp
            if evaluated > since:
                failed.append(key.to_user_string())
        true_subset = context.candidate_subset if failed else context.get_empty_subset()
        return dg.AutomationResult(context, true_subset=true_subset,
                                   metadata={"failed_checks": dg.MetadataValue.json(failed)})


class MaterializedWithin(dg.AutomationCondition):
    """True when the asset's latest materialization is less than `window` old (a cool-down)."""

    def __init__(self, window: timedelta):
        self.window = window

    @property
    def name(self) -> str:
        return f"materialized_within({self.window})"

    @property
    def description(self) -> str:
        return f"materialized less than {self.window} ago"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        latest = context.asset_graph_view.instance.get_latest_materialization_event(context.key)
        recent = latest is not None and (context.evaluation_time.timestamp() - latest.timestamp
                                         < self.window.total_seconds())
        return dg.AutomationResult(context, true_subset=context.candidate_subset if recent
                                   else context.get_empty_subset())


def training_dataset_condition() -> dg.AutomationCondition:
    """Rebuild the split when any landing batch's tables were written (the split only reads validated
    batches; its data version says whether anything it reads changed)."""
    return (dg.AutomationCondition.any_deps_updated().since_last_handled()
            & ~dg.AutomationCondition.any_deps_in_progress() & ~dg.AutomationCondition.in_progress()
            ).with_label("a landing batch was ingested")


def retraining_condition(task: str, cooldown: timedelta | None = None) -> dg.AutomationCondition:
    """When `<task>_model` retrains (see the module doc)."""
    cooldown = retrain_cooldown() if cooldown is None else cooldown
    new_data = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.data_version_changed()).allow(
        dg.AssetSelection.assets("training_dataset")).with_label("training_dataset has new content")
    checks_failed = ChecksFailedSinceMaterialized(retraining_check_keys(task)).newly_true().with_label(
        "a drift or quality check failed")
    pending = (new_data | checks_failed).since(
        dg.AutomationCondition.newly_requested() | dg.AutomationCondition.newly_updated()
    ).with_label("a trigger since the last request")
    return (pending & ~dg.AutomationCondition.in_progress() & ~dg.AutomationCondition.any_deps_in_progress()
            & ~MaterializedWithin(cooldown)).with_label(f"retrain {task}")


def fresh_labels_condition() -> dg.AutomationCondition:
    """A landing batch's fresh-label quality: once its tables are written, scored by the champion of
    the moment (before a retraining on that batch replaces it)."""
    return (dg.AutomationCondition.any_deps_match(dg.AutomationCondition.newly_updated()).allow(
                dg.AssetSelection.assets("coco_annotations")).since_last_handled()
            & ~dg.AutomationCondition.any_deps_in_progress() & ~dg.AutomationCondition.in_progress()
            ).with_label("the batch's labels were written")


def follows_upstream() -> dg.AutomationCondition:
    """The later stages of a task's road: eagerly after their upstream."""
    return dg.AutomationCondition.eager()


def monitoring_condition() -> dg.AutomationCondition:
    return dg.AutomationCondition.on_cron(MONITORING_CRON)


with warnings.catch_warnings():  # use_user_code_server is beta in Dagster 1.13
    warnings.simplefilter("ignore", dg.BetaWarning)
    retraining_automation = dg.AutomationConditionSensorDefinition(
        "retraining_automation",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        use_user_code_server=True,  # ChecksFailedSinceMaterialized is Python of this code location
        minimum_interval_seconds=30,
        description="Evaluates every automation condition of the code location: retraining on new data or a failed "
                    "drift/quality check, the road after a retraining, monitoring every 15 minutes.",
    )
