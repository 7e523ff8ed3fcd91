"""One promotion road for every task, used by the Dagster assets and `DeploymentPipeline` alike:
score the challenger and the champion versions (their pyfunc models, exactly what is served) on
the same pinned test split with the task's evaluation, compare them by a paired bootstrap over
images, decide by the task's rule; and re-check a recorded decision against that rule."""

from __future__ import annotations

import math

from cv_pipeline.deployment.registry import CHAMPION, ModelRegistry
from cv_pipeline.evaluation.model_comparison import ComparisonPolicy


def compare_versions(registry: ModelRegistry, name: str, challenger_version: str, dataset_path: str,
                     dataset_version: int, policy: ComparisonPolicy) -> dict:
    """The comparison of `challenger_version` of `name` against its champion (none, or the same
    version: the threshold alone decides), as plain values for metadata; `comparison` holds the
    full record."""
    from cv_pipeline.evaluation.model_comparison import compare, scored
    from cv_pipeline.evaluation.predictions import evaluate
    from cv_pipeline.training.dataset import load_manifest

    manifest = load_manifest(dataset_path, dataset_version)
    champion_version = registry.version_for_alias(name, CHAMPION)
    if champion_version == str(challenger_version):
        champion_version = None

    def score(version: str):
        evaluation = evaluate(registry.model_uri(name, version), manifest, "test",
                              options={"overlays": 0, "metric": policy.metric}, tracking_uri=registry.tracking_uri)
        return scored(evaluation)

    comparison = compare(score(str(challenger_version)), score(champion_version) if champion_version else None,
                         policy)
    outcome = {
        "decision": comparison.decision.action,
        "reason": comparison.decision.reason,
        "metric": policy.metric,
        "higher_is_better": policy.higher_is_better,
        "model_name": name,
        "challenger_version": str(challenger_version),
        "champion_version": champion_version or "none",
        "challenger_value": comparison.challenger_value,
        "threshold": policy.threshold,
        "margin": policy.margin,
        "dataset_version": int(dataset_version),
        "test_images": comparison.n_images,
    }
    if comparison.bootstrap is not None:
        bootstrap = comparison.bootstrap
        outcome.update({"champion_value": comparison.champion_value, "difference": bootstrap.observed_difference,
                        "interval_low": bootstrap.interval[0], "interval_high": bootstrap.interval[1],
                        "confidence": bootstrap.confidence, "n_resamples": bootstrap.n_resamples})
    outcome["comparison"] = comparison.as_dict()
    return outcome


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def rule_violations(outcome: dict) -> list[str]:
    """What is wrong with a recorded comparison (`compare_versions`' values): unknown decision,
    figures that are not finite, or a promotion the rule does not allow. Empty when sound."""
    higher_is_better = bool(outcome.get("higher_is_better", True))
    problems = []
    decision = outcome.get("decision")
    if decision not in ("promote", "keep"):
        problems.append(f"unknown decision {decision!r}")
    for key in ("challenger_value", "threshold", "margin", *(("champion_value", "interval_low", "interval_high")
                                                            if outcome.get("champion_version") not in (None, "none")
                                                            else ())):
        if not _finite(outcome.get(key)):
            problems.append(f"{key} is {outcome.get(key)!r}, not a finite number")
    if problems or decision != "promote":
        return problems
    sign = 1 if higher_is_better else -1
    if sign * (outcome["challenger_value"] - outcome["threshold"]) < 0:
        problems.append(f"promote with {outcome['metric']} {outcome['challenger_value']:.4f} below the threshold "
                        f"{outcome['threshold']}")
    pessimistic = outcome.get("interval_low") if higher_is_better else -outcome.get("interval_high", 0.0)
    if outcome.get("champion_version") not in (None, "none") and not pessimistic > outcome["margin"]:
        problems.append(f"promote with the interval's pessimistic end {pessimistic:.4f} not above the margin "
                        f"{outcome['margin']}")
    return problems


def serve_champion(state_dir, registry: ModelRegistry, task: str, model_name: str, *, tracking_uri: str | None = None,
                   challenger_percentage: int = 0, host: str = "127.0.0.1", port: int | None = None) -> dict:
    """Point the task's endpoint at the registry's aliases (the champion, and the challenger at
    `challenger_percentage` when one differs) and make sure the endpoint server runs; waits until
    the server serves that config. Returns the endpoint as `list_endpoints` describes it, plus the
    server's `pid`. Raises LookupError when the model has no champion."""
    from pathlib import Path

    from cv_pipeline.deployment.endpoints import (EndpointServer, build_endpoint_config, invocations_url,
                                                  update_endpoint, wait_for_config)

    config = build_endpoint_config(registry, task, model_name=model_name, challenger_percentage=challenger_percentage)
    server = EndpointServer(Path(state_dir), host=host)
    info = server.ensure(tracking_uri or registry.tracking_uri, port=port)
    written = update_endpoint(Path(state_dir), config)
    wait_for_config(info.url, written.name, written.config_version)
    routes = {route.served_entity_name: route.traffic_percentage for route in written.routes}
    return {"name": written.name, "task": task, "url": invocations_url(info.url, written.name), "pid": info.pid,
            "reused_running_server": info.reused, "config_version": written.config_version,
            "served_entities": [{"name": e.name, "model_name": e.entity_name, "model_version": e.entity_version,
                                 "traffic_percentage": routes.get(e.name, 0)} for e in written.served_entities]}
