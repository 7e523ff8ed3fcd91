"""Retraining by declarative automation, evaluated on the code location's own definitions: a failed
drift or quality check retrains its task's model once; a passing one does nothing; a burst of
triggers gives one request; none within the cool-down; new training data retrains every model."""

from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from cv_pipeline.defs.automation import retraining_check_keys

TASKS = ("classification", "detection", "instance_segmentation", "semantic_segmentation")
ROAD = ("model", "evaluation", "registered_model", "comparison", "champion", "endpoint")
LATER = timedelta(hours=2)  # past the default 60-minute cool-down


@pytest.fixture(scope="module")
def defs():
    from cv_pipeline.definitions import defs

    return defs


@pytest.fixture
def trained():
    """An instance where every task's road and training_dataset have been materialized (now)."""
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "training_dataset", tags={"dagster/data_version": "hash-1"}))
    for task in TASKS:
        for stage in ROAD:
            instance.report_runless_asset_event(dg.AssetMaterialization(f"{task}_{stage}"))
    return instance


def check(instance, task: str, name: str, passed: bool, asset_suffix: str = "endpoint_monitoring"):
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(f"{task}_{asset_suffix}"), check_name=name, passed=passed,
        metadata={"value": 0.0001 if not passed else 0.4, "threshold": 0.05 / 3}))


def tick(defs, instance, cursor=None, at=None):
    return dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor,
                                             evaluation_time=at or datetime.now(timezone.utc) + LATER)


def retrained(result) -> dict[str, int]:
    return {task: result.get_num_requested(dg.AssetKey(f"{task}_model")) for task in TASKS
            if result.get_num_requested(dg.AssetKey(f"{task}_model"))}


def test_the_checks_that_retrain_are_the_monitoring_and_quality_checks(defs):
    checks = defs.resolve_asset_graph().asset_check_keys
    for task in TASKS:
        assert set(retraining_check_keys(task)) <= checks


def test_a_failing_drift_check_requests_exactly_one_retraining_with_its_road(defs, trained):
    first = tick(defs, trained)
    assert retrained(first) == {}
    check(trained, "classification", "no_input_drift", passed=False)
    second = tick(defs, trained, first.cursor)
    assert retrained(second) == {"classification": 1}
    for stage in ROAD[1:]:  # the rest of the road follows in the same evaluation
        assert second.get_num_requested(dg.AssetKey(f"classification_{stage}")) == 1
    assert retrained(tick(defs, trained, second.cursor)) == {}  # requested once, not again


def test_a_passing_check_requests_nothing(defs, trained):
    first = tick(defs, trained)
    check(trained, "detection", "no_input_drift", passed=True)
    check(trained, "detection", "no_prediction_drift", passed=True)
    assert retrained(tick(defs, trained, first.cursor)) == {}


def test_two_triggers_in_a_row_request_one_retraining(defs, trained):
    first = tick(defs, trained)
    check(trained, "semantic_segmentation", "no_input_drift", passed=False)
    check(trained, "semantic_segmentation", "no_prediction_drift", passed=False)
    second = tick(defs, trained, first.cursor)
    check(trained, "semantic_segmentation", "no_prediction_drift", passed=False)  # the next window fails too
    third = tick(defs, trained, second.cursor)
    assert retrained(second) == {"semantic_segmentation": 1} and retrained(third) == {}


def test_a_failed_quality_check_on_fresh_labels_retrains(defs, trained):
    first = tick(defs, trained)
    check(trained, "detection", "quality_on_fresh_labels", passed=False, asset_suffix="fresh_label_quality")
    assert retrained(tick(defs, trained, first.cursor)) == {"detection": 1}


def test_no_retraining_within_the_cooldown_then_one(defs, trained):
    now = datetime.now(timezone.utc)
    first = tick(defs, trained, at=now + timedelta(minutes=1))
    check(trained, "classification", "no_input_drift", passed=False)
    during = tick(defs, trained, first.cursor, at=now + timedelta(minutes=10))
    assert retrained(during) == {}  # the model was retrained minutes ago: the trigger waits
    after = tick(defs, trained, during.cursor, at=now + LATER)
    assert retrained(after) == {"classification": 1}


def test_new_training_data_retrains_every_model_once(defs, trained):
    first = tick(defs, trained)
    trained.report_runless_asset_event(dg.AssetMaterialization(
        "training_dataset", tags={"dagster/data_version": "hash-2"}))
    second = tick(defs, trained, first.cursor)
    assert retrained(second) == {task: 1 for task in TASKS}
    assert retrained(tick(defs, trained, second.cursor)) == {}


def test_a_held_back_batch_leaves_the_models_alone(defs, trained):
    """Its ingestion rewrites the tables, training_dataset is rebuilt with the same content (the
    held-back batch is not read): same data version, no retraining."""
    first = tick(defs, trained)
    trained.report_runless_asset_event(dg.AssetMaterialization(
        "training_dataset", tags={"dagster/data_version": "hash-1"}))
    assert retrained(tick(defs, trained, first.cursor)) == {}


def test_a_landed_batch_is_scored_on_its_fresh_labels_by_every_champion(defs, trained):
    from cv_pipeline.defs.partitions import landing_batches

    trained.add_dynamic_partitions(landing_batches.name, ["batch_0001", "batch_0003"])
    first = tick(defs, trained)
    trained.report_runless_asset_event(dg.AssetMaterialization("coco_annotations", partition="batch_0003"))
    second = tick(defs, trained, first.cursor)
    for task in TASKS:
        assert second.get_requested_partitions(dg.AssetKey(f"{task}_fresh_label_quality")) == {"batch_0003"}
    assert retrained(second) == {}  # the same labels reach the models through training_dataset
