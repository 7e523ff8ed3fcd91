"""The champion's quality on fresh labels, over time.

When a landed batch carries labels the champion has not been trained on, `evaluate_on_batch` scores
the champion (its pyfunc, what is served) on every sample of that batch with the task's own
evaluation, `append_quality` records the point in the Delta table `champion_quality` (partitioned by
task), and `quality_verdict` judges it: below the promotion threshold, or worse than the previous
fresh point by more than a margin, fails. A point on a batch the version was trained on (its
`batches` tag lists it) is recorded with `fresh` false and never judged.

`champion_quality`, one row per evaluation:

| column | what |
|---|---|
| `evaluated_at` | when (UTC) |
| `task`, `batch_id` | the task and the landing batch evaluated on |
| `model_name`, `model_version` | the registered version evaluated |
| `metric`, `value` | the task's primary test metric and its value |
| `n_images` | distinct images evaluated (a classifier is asked each object's crop) |
| `fresh` | false when the version was trained on the batch (its labels are not fresh to it) |
| `metrics_json` | every metric of the evaluation, JSON |
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa

CHAMPION_QUALITY = "champion_quality"

QUALITY_SCHEMA = pa.schema([
    ("evaluated_at", pa.timestamp("us", tz="UTC")), ("task", pa.string()), ("batch_id", pa.string()),
    ("model_name", pa.string()), ("model_version", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
    ("n_images", pa.int64()), ("fresh", pa.bool_()), ("metrics_json", pa.string()),
])

# Every image of the batch goes to one split: one evaluation of the task's own, over all of it.
_ALL_IN_TEST = {"train": 0.0, "val": 0.0, "test": 1.0}


@dataclass
class QualityPoint:
    """One evaluation of a registered model version on one landed batch."""

    task: str
    batch_id: str
    model_name: str
    model_version: str
    metric: str
    value: float
    n_images: int
    evaluated_at: datetime  # UTC
    metrics: dict[str, float] = field(default_factory=dict)
    trained_on_batch: bool = False  # the version's `batches` tag lists this batch: its labels are not fresh

    @property
    def fresh(self) -> bool:
        return not self.trained_on_batch


@dataclass
class QualityVerdict:
    """Whether a point passes: `baseline` is the previous fresh value (None for the first), `drop`
    how much worse the point is than it (positive: worse, in the metric's own direction)."""

    passed: bool
    value: float
    threshold: float
    baseline: float | None
    drop: float | None
    message: str


def registered_version(model_uri: str, *, tracking_uri: str, registry_uri: str | None = None):
    """The MLflow `ModelVersion` a `models:/<name>/<version>` or `models:/<name>@<alias>` URI names."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import _parse_model_uri
    from mlflow.utils.uri import is_models_uri

    parsed = _parse_model_uri(model_uri) if is_models_uri(model_uri) else None
    if parsed is None or parsed.name is None or (parsed.version is None and parsed.alias is None):
        raise ValueError(f"model_uri {model_uri!r} must name a registered version: models:/<name>/<version> or "
                         "models:/<name>@<alias>")
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)
    if parsed.alias is not None:
        return client.get_model_version_by_alias(parsed.name, parsed.alias)
    return client.get_model_version(parsed.name, str(parsed.version))


def trained_batches(model_version) -> list[str]:
    """The batches a registered version was trained on (its `batches` tag, JSON); [] when untagged."""
    text = (model_version.tags or {}).get("batches")
    return list(json.loads(text)) if text else []


def evaluate_on_batch(lake_dir: str | Path, batch_id: str, task: str, model_uri: str, *, tracking_uri: str,
                      registry_uri: str | None = None, max_images: int | None = None) -> QualityPoint:
    """The registered model `model_uri` scored on every sample of `batch_id` by the task's evaluation.

    The batch's samples come from a manifest of that batch alone with every image in the test split
    (`build_training_dataset(batches=[batch_id])`, labels of every validated batch), so each image
    counts once. The batch must be validated (ValueError naming it and its status otherwise). The
    manifest is a transient table in `lake_dir` (the task's samples are read from the manifest's
    folder), removed when the evaluation is done. `max_images` keeps the batch's first N images.
    """
    from cv_pipeline.data.delta_io import validate_batch_id
    from cv_pipeline.evaluation.predictions import predict_split
    from cv_pipeline.models.tasks import get_task
    from cv_pipeline.training.dataset import build_training_dataset

    validate_batch_id(batch_id)
    spec = get_task(task)
    version = registered_version(model_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    scratch = Path(lake_dir) / f"_champion_quality_{task}_{batch_id}_{uuid.uuid4().hex[:8]}"
    try:
        manifest = build_training_dataset(lake_dir, fractions=_ALL_IN_TEST, batches=[batch_id], output_path=scratch)
        predictions = predict_split(model_uri, manifest, "test", max_images=max_images, tracking_uri=tracking_uri,
                                    registry_uri=registry_uri)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if predictions.task != spec.name:
        raise ValueError(f"{model_uri} is a {predictions.task!r} model, asked to evaluate as task {task!r}")
    evaluation = spec.evaluate(predictions, {"overlays": 0})
    return QualityPoint(task=task, batch_id=batch_id, model_name=version.name, model_version=str(version.version),
                        metric=evaluation.primary_metric, value=evaluation.primary_value,
                        n_images=len(set(predictions.image_keys)), evaluated_at=datetime.now(timezone.utc),
                        metrics={k: float(v) for k, v in evaluation.metrics.items() if v is not None},
                        trained_on_batch=batch_id in trained_batches(version))


def quality_rows(points: list[QualityPoint]) -> pa.Table:
    return pa.Table.from_pylist([{
        "evaluated_at": p.evaluated_at, "task": p.task, "batch_id": p.batch_id, "model_name": p.model_name,
        "model_version": p.model_version, "metric": p.metric, "value": float(p.value), "n_images": int(p.n_images),
        "fresh": p.fresh, "metrics_json": json.dumps(p.metrics, sort_keys=True, allow_nan=True),
    } for p in points], schema=QUALITY_SCHEMA)


def append_quality(point: QualityPoint, table_path: str | Path) -> int:
    """One row for `point` in `champion_quality` (created partitioned by task); the new Delta version."""
    from cv_pipeline.data.delta_io import append_rows

    return append_rows(quality_rows([point]), table_path, partition_by=("task",))


def read_quality(table_path: str | Path, task: str) -> list[dict]:
    """The task's rows of `champion_quality`, oldest first; [] when the table does not exist yet."""
    from cv_pipeline.data.delta_io import is_delta_table, read_table

    if not is_delta_table(table_path):
        return []
    rows = read_table(table_path, filters=[("task", "=", task)]).to_pylist()
    return sorted(rows, key=lambda row: row["evaluated_at"])


def quality_verdict(history: list[dict], point: QualityPoint, *, threshold: float, max_drop: float,
                    higher_is_better: bool) -> QualityVerdict:
    """Judge `point` against the threshold and the previous fresh point of `history` (rows of
    `read_quality`; the point's own row, if there, is skipped). Fails when the value is not finite,
    worse than `threshold` (below it; above it when lower is better), or worse than the previous fresh
    value of the same metric by more than `max_drop`. A point that is not fresh passes: it is recorded
    but says nothing about fresh labels."""
    if not math.isfinite(max_drop) or max_drop < 0:
        raise ValueError(f"max_drop must be a finite number >= 0, got {max_drop}")
    value = float(point.value)
    earlier = [row for row in history if row.get("fresh") and row.get("metric") == point.metric
               and not _same_point(row, point)
               and (row.get("evaluated_at") is None or row["evaluated_at"] <= point.evaluated_at)]
    baseline = float(earlier[-1]["value"]) if earlier else None
    drop = None
    if baseline is not None and math.isfinite(baseline) and math.isfinite(value):
        drop = baseline - value if higher_is_better else value - baseline
    where = f"{point.model_name} v{point.model_version} on batch {point.batch_id}"
    figure = f"{point.metric} {value:.4f}"
    if point.trained_on_batch:
        return QualityVerdict(True, value, threshold, baseline, drop,
                              f"{figure} ({where}): not fresh labels, the version was trained on this batch; "
                              "recorded, not judged")
    if not math.isfinite(value):
        return QualityVerdict(False, value, threshold, baseline, drop, f"{point.metric} is {value} ({where}): "
                              "the evaluation gave no finite figure")
    problems = []
    if (value < threshold) if higher_is_better else (value > threshold):
        problems.append(f"{'below' if higher_is_better else 'above'} the threshold {threshold:.4f}")
    if drop is not None and drop > max_drop:
        problems.append(f"{drop:.4f} worse than the previous fresh point ({baseline:.4f}), more than the margin "
                        f"{max_drop:.4f}")
    if problems:
        return QualityVerdict(False, value, threshold, baseline, drop, f"{figure} ({where}): " + "; ".join(problems))
    against = "first fresh point" if baseline is None else f"previous fresh point {baseline:.4f}"
    return QualityVerdict(True, value, threshold, baseline, drop,
                          f"{figure} ({where}): within the threshold {threshold:.4f} and the margin {max_drop:.4f} "
                          f"({against})")


def _same_point(row: dict, point: QualityPoint) -> bool:
    return (row.get("evaluated_at") == point.evaluated_at and row.get("batch_id") == point.batch_id
            and str(row.get("model_version")) == point.model_version)


def quality_over_time_png(history: list[dict], *, threshold: float | None = None,
                          title: str = "Champion quality on fresh labels") -> bytes:
    """The metric at each evaluation (filled: fresh labels; hollow: labels the version trained on),
    each point named by its batch and version, with the threshold as a line."""
    from cv_pipeline.evaluation.plots import figure_png, new_figure

    figure = new_figure(6.0, 3.0)
    axes = figure.add_subplot(1, 1, 1)
    metrics = sorted({row["metric"] for row in history})
    for fresh, style in ((True, {"color": "#4a78b5"}), (False, {"facecolors": "none", "edgecolors": "#7f7f7f"})):
        rows = [row for row in history if bool(row["fresh"]) == fresh]
        if rows:
            axes.scatter([row["evaluated_at"] for row in rows], [row["value"] for row in rows], s=28, zorder=3,
                         label="fresh labels" if fresh else "trained on the batch", **style)
    fresh_rows = [row for row in history if row["fresh"]]
    if fresh_rows:  # the series the check judges
        axes.plot([row["evaluated_at"] for row in fresh_rows], [row["value"] for row in fresh_rows],
                  color="#4a78b5", linewidth=0.8, alpha=0.5)
    if history:
        for row in history[-12:]:
            axes.annotate(f"{row['batch_id']} v{row['model_version']}", (row["evaluated_at"], row["value"]),
                          textcoords="offset points", xytext=(3, 4), fontsize=6)
        figure.autofmt_xdate()
    if threshold is not None:
        axes.axhline(threshold, color="#c53030", linestyle="--", linewidth=1, label=f"threshold {threshold:g}")
    axes.set_ylabel(", ".join(metrics) or "metric")
    axes.set_title(title, fontsize=10)
    if history or threshold is not None:
        axes.legend(fontsize=7)
    figure.tight_layout()
    return figure_png(figure)
