"""Champion against challenger: the library's paired comparison over the classification task's own
evaluation, then the `<task>_comparison` asset, its blocking check and the champion asset with real
registered MLflow models scored on the pinned test split."""

from __future__ import annotations

import dagster as dg
import mlflow
import numpy as np
import pytest
import torch

from cv_pipeline.defs.registry import CHAMPION_ASSETS, COMPARISON_ASSETS, PROMOTION_CHECKS
from cv_pipeline.defs.resources import LakeResource, MLflowResource, PromotionPolicy
from cv_pipeline.deployment.promotion import rule_violations
from cv_pipeline.models.pyfunc import log_vision_model
from cv_pipeline.deployment.registry import CHALLENGER, CHAMPION, ModelRegistry
from cv_pipeline.evaluation.model_comparison import ComparisonPolicy, compare, scored
from cv_pipeline.evaluation.predictions import SplitPredictions
from cv_pipeline.evaluation.task_evaluation import evaluate_classification
from cv_pipeline.models.tasks import get_task, save_model_artifact
from cv_pipeline.training.coco_dataset import IMAGENET_MEAN, IMAGENET_STD
from cv_pipeline.training.crops import crop_row, load_crops
from cv_pipeline.training.dataset import load_split
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store

TASK = "classification"
MODEL = "cv_pipeline_classification"
LABELS = [{"index": k, "category_id": 10 + k, "name": f"class{k}"} for k in range(4)]


def scored_classifier(predicted, truth, keys, num_classes, metric="accuracy"):
    """Per-object predictions scored by the classification task's own evaluation."""
    outputs = [{"category_id": 10 + int(p), "score": 1.0} for p in predicted]
    predictions = SplitPredictions(task=TASK, arch="test", split="test", labels=LABELS[:num_classes],
                                   image_keys=list(keys), file_paths=[None] * len(keys), outputs=outputs,
                                   ground_truth=[int(t) for t in truth])
    return scored(evaluate_classification(predictions, {"metric": metric}))


# ------------------------------------------------------------------------------------ library


def _objects(n_images=60, per_image=3, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, n_images * per_image)
    keys = [("batch", i // per_image) for i in range(len(truth))]
    return truth, keys, rng


def _noisy(truth, rng, accuracy):
    wrong = rng.random(len(truth)) > accuracy
    return np.where(wrong, (truth + 1) % 4, truth)


def test_a_clearly_better_challenger_is_promoted():
    truth, keys, rng = _objects()
    good, weak = _noisy(truth, rng, 0.95), _noisy(truth, rng, 0.6)
    comparison = compare(scored_classifier(good, truth, keys, 4), scored_classifier(weak, truth, keys, 4),
                         ComparisonPolicy(threshold=0.8, margin=0.05, n_resamples=500))
    assert comparison.promote, comparison.decision.reason
    low, high = comparison.bootstrap.interval
    assert 0.05 < low <= comparison.bootstrap.observed_difference <= high
    assert comparison.bootstrap.observed_difference == pytest.approx(
        np.mean(good == truth) - np.mean(weak == truth))


def test_the_same_model_is_kept_and_a_challenger_below_threshold_too():
    truth, keys, rng = _objects()
    predictions = _noisy(truth, rng, 0.9)
    same = compare(scored_classifier(predictions, truth, keys, 4), scored_classifier(predictions, truth, keys, 4),
                   ComparisonPolicy(threshold=0.5, margin=0.0, n_resamples=200))
    assert not same.promote and same.bootstrap.interval == (0.0, 0.0)
    better_but_low = compare(scored_classifier(_noisy(truth, rng, 0.7), truth, keys, 4),
                             scored_classifier(_noisy(truth, rng, 0.3), truth, keys, 4),
                             ComparisonPolicy(threshold=0.8, margin=0.0, n_resamples=200))
    assert not better_but_low.promote and not better_but_low.decision.passes_threshold
    assert better_but_low.decision.passes_margin


def test_without_a_champion_the_threshold_alone_decides():
    truth, keys, rng = _objects()
    challenger = scored_classifier(_noisy(truth, rng, 0.8), truth, keys, 4)
    assert compare(challenger, None, ComparisonPolicy(threshold=0.7)).promote
    kept = compare(challenger, None, ComparisonPolicy(threshold=0.9))
    assert not kept.promote and kept.bootstrap is None and kept.champion_value is None


def test_macro_f1_is_bootstrapped_through_sample_weights():
    truth, keys, rng = _objects(n_images=30)
    a, b = _noisy(truth, rng, 0.9), _noisy(truth, rng, 0.5)
    comparison = compare(scored_classifier(a, truth, keys, 4, "f1_macro"), scored_classifier(b, truth, keys, 4, "f1_macro"),
                         ComparisonPolicy(metric="f1_macro", threshold=0.5, n_resamples=100))
    assert comparison.promote and comparison.metric == "f1_macro"


def test_comparisons_refuse_unpaired_evaluations_and_unknown_metrics():
    truth, keys, rng = _objects()
    other_keys = [("other", k) for _, k in keys]
    with pytest.raises(ValueError, match="same test images"):
        compare(scored_classifier(truth, truth, keys, 4), scored_classifier(truth, truth, other_keys, 4),
                ComparisonPolicy())
    with pytest.raises(ValueError, match="unknown classification metric 'auc'"):
        scored_classifier(truth, truth, keys, 4, "auc")


# ------------------------------------------------------------------------------------ the asset


@pytest.fixture(scope="module")
def registry_setup(ingested_lake, tmp_path_factory):
    """A classifier trained for a few seconds on the train crops and an untrained one, both logged
    as pyfunc models in a throwaway MLflow store."""
    manifest = ingested_lake.manifest
    labels = [{k: label[k] for k in ("index", "category_id", "name")} for label in manifest.labels]
    size = 32
    images, targets = load_crops(load_split(manifest.table_path, manifest.version, "train"), size)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.manual_seed(0)
    trained = get_task(TASK).build_model("resnet18", len(labels))
    optimizer = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    for epoch in range(12):
        trained.train()
        order = torch.randperm(len(images))
        for start in range(0, len(images), 32):
            index = order[start:start + 32]
            batch = (images[index].float() / 255 - mean) / std
            loss = torch.nn.functional.cross_entropy(trained(batch.flip(3) if epoch % 2 else batch), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    root = tmp_path_factory.mktemp("comparison")
    example = crop_row(load_split(manifest.table_path, manifest.version, "test")[0])
    with temporary_mlflow_store(root, "comparison") as store:
        uris = {}
        for name, model in (("trained", trained), ("untrained", get_task(TASK).build_model("resnet18", len(labels)))):
            path = save_model_artifact(root / name / "model.pt", model, task=TASK, arch="resnet18", labels=labels,
                                       config={"image_size": size})
            with mlflow.start_run(experiment_id=store["experiment_id"]):
                uris[name] = log_vision_model(path, example).model_uri
        yield store, uris


def _materialize(store, ingested_lake, version: str, threshold: float):
    """classification_comparison, its check and classification_champion after registered `version`."""
    instance = dg.DagsterInstance.ephemeral()
    dataset_version = ingested_lake.manifest.version
    for key, metadata in (("classification_evaluation", {"dataset_version": dataset_version}),
                          ("classification_registered_model", {"version": version, "model_name": MODEL})):
        instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata=metadata))
    return dg.materialize(
        [COMPARISON_ASSETS[TASK], PROMOTION_CHECKS[TASK], CHAMPION_ASSETS[TASK]], instance=instance,
        raise_on_error=False,
        resources={"mlflow": MLflowResource(tracking_uri=store["uri"]),
                   "lake": LakeResource(lake_dir=str(ingested_lake.lake_dir)),
                   "promotion": PromotionPolicy(threshold=threshold, margin=0.0, n_resamples=300)})


def _comparison(result) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("classification_comparison")[0].metadata.items()}


def _champion(result) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node("classification_champion")[0].metadata.items()}


def test_model_comparison_no_champion_then_keep_then_promote(registry_setup, ingested_lake):
    store, uris = registry_setup
    registry = ModelRegistry(store["uri"])

    # no champion yet: the trained challenger is judged on the threshold alone and promoted
    first = registry.register(uris["trained"], MODEL)
    registry.set_alias(MODEL, CHALLENGER, first)
    result = _materialize(store, ingested_lake, first, threshold=0.4)
    comparison = _comparison(result)
    assert comparison["decision"] == "promote" and comparison["champion_version"] == "none", comparison
    assert comparison["metric"] == "accuracy" and comparison["challenger_value"] >= 0.4
    assert "interval_low" not in comparison
    assert result.success and registry.version_for_alias(MODEL, CHAMPION) == first
    assert _champion(result)["previous_champion"] == "none" and _champion(result)["version"] == first

    # an untrained challenger against it: kept (a decision: the run succeeds), the alias stays
    second = registry.register(uris["untrained"], MODEL)
    registry.set_alias(MODEL, CHALLENGER, second)
    result = _materialize(store, ingested_lake, second, threshold=0.0)
    comparison = _comparison(result)
    assert comparison["decision"] == "keep" and comparison["champion_version"] == first
    assert comparison["interval_high"] < 0 < comparison["champion_value"] - comparison["challenger_value"]
    [check] = result.get_asset_check_evaluations()
    assert check.check_name == "promotion_rule_holds" and check.passed
    assert result.success and _champion(result)["decision"] == "keep" and _champion(result)["version"] == first
    assert registry.version_for_alias(MODEL, CHAMPION) == first

    # the other way round (the untrained model is champion): the trained challenger is promoted
    registry.promote(MODEL, second)
    third = registry.register(uris["trained"], MODEL)
    registry.set_alias(MODEL, CHALLENGER, third)
    result = _materialize(store, ingested_lake, third, threshold=0.4)
    comparison = _comparison(result)
    assert comparison["decision"] == "promote" and comparison["interval_low"] > 0, comparison
    assert comparison["test_images"] == len({(r["batch_id"], r["image_id"]) for r in load_split(
        ingested_lake.manifest.table_path, ingested_lake.manifest.version, "test")})
    assert result.success and registry.version_for_alias(MODEL, CHAMPION) == third
    assert registry.version_for_alias(MODEL, CHALLENGER) is None


def test_the_gate_fails_a_promotion_the_rule_does_not_allow():
    sound = {"decision": "promote", "metric": "accuracy", "challenger_value": 0.9, "champion_version": "1",
             "champion_value": 0.8, "threshold": 0.6, "margin": 0.0, "interval_low": 0.02, "interval_high": 0.2}
    assert rule_violations(sound) == []
    assert rule_violations({**sound, "decision": "keep", "challenger_value": 0.1}) == []
    assert "below the threshold" in rule_violations({**sound, "challenger_value": 0.5})[0]
    assert "pessimistic end" in rule_violations({**sound, "interval_low": -0.01})[0]
    assert "not a finite number" in rule_violations({**sound, "challenger_value": float("nan")})[0]
    assert "unknown decision" in rule_violations({**sound, "decision": "maybe"})[0]
    no_champion = {k: v for k, v in sound.items() if not k.startswith(("interval", "champion_value"))}
    assert rule_violations({**no_champion, "champion_version": "none"}) == []
