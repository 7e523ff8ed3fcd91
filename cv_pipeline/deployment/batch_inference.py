"""Batch inference: every validated image of one batch scored by registered models, into Delta `predictions`.

`score_batch` reads the batch's rows of `coco_images` (only a batch the quality gate lets through:
`cv_pipeline.data.quality.batch_gate`, the same rule training follows), decodes each image once
(stored bytes or file, as training does: `decode_record_image`), and runs every model on the same
decoded images, `batch_size` at a time, through the pyfunc's `predict_images`. `write_predictions`
replaces that batch's rows of those tasks in one commit, so a rerun replaces instead of duplicating.

`predictions` (partitioned by `batch_id`), one row per image and model:

| column | what |
|---|---|
| `image_uid` | `<batch_id>/<image_id>`: the image across batches |
| `batch_id`, `image_id`, `sha256` | the `coco_images` row scored (sha256 of the file's bytes) |
| `task`, `model_name`, `model_version` | the registered model version that predicted |
| `prediction` | the model's prediction for the image, JSON text (the task's serving schema) |
| `predicted_at` | when the prediction was made (UTC) |
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from cv_pipeline.data.delta_io import append_rows, is_delta_table, read_table, table_version, validate_batch_id

PREDICTIONS = "predictions"

PREDICTIONS_SCHEMA = pa.schema([
    ("image_uid", pa.string()), ("batch_id", pa.string()), ("image_id", pa.int64()), ("sha256", pa.string()),
    ("task", pa.string()), ("model_name", pa.string()), ("model_version", pa.string()),
    ("prediction", pa.string()), ("predicted_at", pa.timestamp("us", tz="UTC")),
])


class ScoringModel(NamedTuple):
    """One registered model version to score with; `model_uri` defaults to `models:/<name>/<version>`.
    A plain `(task, model_name, model_version, model_uri)` tuple works the same."""

    task: str
    model_name: str
    model_version: str
    model_uri: str | None = None


def image_uid(batch_id: str, image_id: int) -> str:
    return f"{batch_id}/{image_id}"


def champion_models(tracking_uri: str, alias: str = "champion", tasks: Iterable[str] | None = None) -> list[ScoringModel]:
    """The `alias` version of every registered `cv_pipeline_<task>` model (or only `tasks`), task
    read from the version's `task` tag. Models without that alias are skipped."""
    from cv_pipeline.deployment.registry import MODEL_NAME_PREFIX, ModelRegistry

    registry = ModelRegistry(tracking_uri)
    wanted = set(tasks) if tasks is not None else None
    found = []
    for registered in registry.client.search_registered_models(filter_string=f"name LIKE '{MODEL_NAME_PREFIX}%'"):
        version = (registered.aliases or {}).get(alias)
        if version is None:
            continue
        model_version = registry.client.get_model_version(registered.name, str(version))
        task = model_version.tags.get("task") or registered.name[len(MODEL_NAME_PREFIX):]
        if wanted is None or task in wanted:
            found.append(ScoringModel(task, registered.name, str(version), registry.model_uri(registered.name, str(version))))
    return sorted(found)


def batch_images(lake_dir: str | Path, batch_id: str) -> tuple[pa.Table, int]:
    """The `coco_images` rows of `batch_id` (with `image_bytes` when the table stores them) and the
    table version read; the batch must be one the quality gate lets through (no `coco_batches`
    table: no gate, as for training)."""
    from cv_pipeline.data.quality import batch_gate

    validate_batch_id(batch_id)
    lake_dir = Path(lake_dir)
    images_path = lake_dir / "coco_images"
    version = table_version(images_path)
    if version is None:
        raise FileNotFoundError(f"no coco_images table under {lake_dir}; ingest batch {batch_id!r} first")
    gate = batch_gate(lake_dir)
    if gate.eligible is not None and batch_id not in gate.eligible:
        held = {b.batch_id: b for b in gate.held_back}
        why = held[batch_id].message if batch_id in held else (
            f"it has no coco_batches row (validated batches: {', '.join(gate.eligible) or 'none'})")
        raise ValueError(f"batch {batch_id!r} is not validated (coco_batches v{gate.version}): {why}; "
                         "only validated batches are scored")
    from deltalake import DeltaTable

    names = {f.name for f in DeltaTable(str(images_path), version=version).schema().fields}
    columns = ["batch_id", "image_id", "file_path", "width", "height", "sha256"]
    columns += ["image_bytes"] if "image_bytes" in names else []
    images = read_table(images_path, version, columns=columns, filters=[("batch_id", "=", batch_id)])
    if images.num_rows == 0:
        raise LookupError(f"batch {batch_id!r} has no rows in {images_path} (version {version})")
    return images.sort_by([("image_id", "ascending")]), version


def load_scoring_model(model: ScoringModel, tracking_uri: str | None, download_dir: str | Path,
                       registry_uri: str | None = None):
    """The pyfunc's Python model (`predict_images`), its artifacts downloaded from the given tracking
    server and registry (default: the tracking URI) into `download_dir`; with a tracking URI given,
    MLflow's process-wide URIs are neither read nor changed."""
    from cv_pipeline.models.pyfunc import load_vision_model

    uri = model.model_uri or f"models:/{model.model_name}/{model.model_version}"
    python_model = load_vision_model(uri, tracking_uri=tracking_uri, registry_uri=registry_uri,
                                     download_dir=Path(download_dir) / f"{model.model_name}-{model.model_version}")
    name = f"{model.model_name} version {model.model_version} ({uri})"
    if not callable(getattr(python_model, "predict_images", None)):
        raise TypeError(f"{name} has no predict_images(list[PIL.Image]); it cannot score images")
    declared = getattr(python_model, "task", None)
    if declared is not None and declared != model.task:
        raise ValueError(f"{name} is a {declared!r} model, asked to score as task {model.task!r}")
    return python_model


def _decode(row: dict):
    """PIL RGB image of one coco_images row, read and size-checked as training reads it."""
    import numpy as np

    from cv_pipeline.training.coco_dataset import ImageRecord, record_pil_image

    empty = np.zeros(0, np.int64)
    record = ImageRecord(row["batch_id"], row["image_id"], row.get("file_path"), row["width"], row["height"],
                         empty, np.zeros((0, 4), np.float32), empty, empty, np.zeros(0, np.float32),
                         image_bytes=row.get("image_bytes"), sha256=row.get("sha256"))
    return record_pil_image(record)


def _json_default(value):
    if hasattr(value, "tolist"):  # numpy arrays and scalars, torch tensors
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def score_batch(lake_dir: str | Path, batch_id: str, models: Iterable[ScoringModel | tuple], *,
                batch_size: int = 16, tracking_uri: str | None = None, registry_uri: str | None = None) -> pa.Table:
    """Predictions of every model for every image of validated batch `batch_id`: images x models
    rows (`PREDICTIONS_SCHEMA`). Each image is decoded once per `batch_size` chunk and given to every
    model; a model returning the wrong number of predictions is an error naming it."""
    models = [ScoringModel(*m) for m in models]
    if not models:
        raise ValueError("score_batch: no models given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    duplicate = [t for t, n in Counter(m.task for m in models).items() if n > 1]
    if duplicate:
        raise ValueError(f"score_batch: one model per task, got several for {duplicate}")
    images, _ = batch_images(lake_dir, batch_id)
    rows = images.to_pylist()
    out = {name: [] for name in PREDICTIONS_SCHEMA.names}
    with tempfile.TemporaryDirectory(prefix="cv_pipeline_batch_inference_") as download_dir:
        loaded = [(m, load_scoring_model(m, tracking_uri, download_dir, registry_uri)) for m in models]
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            pictures = [_decode(row) for row in chunk]
            for model, python_model in loaded:
                predictions = list(python_model.predict_images(pictures))
                predicted_at = datetime.now(timezone.utc)
                if len(predictions) != len(chunk):
                    raise RuntimeError(f"{model.model_name} version {model.model_version} returned "
                                       f"{len(predictions)} predictions for {len(chunk)} images")
                for row, prediction in zip(chunk, predictions):
                    for name, value in (
                        ("image_uid", image_uid(batch_id, row["image_id"])), ("batch_id", batch_id),
                        ("image_id", row["image_id"]), ("sha256", row["sha256"]), ("task", model.task),
                        ("model_name", model.model_name), ("model_version", str(model.model_version)),
                        ("prediction", json.dumps(prediction, sort_keys=True, default=_json_default)),
                        ("predicted_at", predicted_at),
                    ):
                        out[name].append(value)
    table = pa.table(out, schema=PREDICTIONS_SCHEMA)
    return table.sort_by([("task", "ascending"), ("image_id", "ascending")])


def _sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def write_predictions(predictions: pa.Table, path: str | Path) -> int:
    """Replace the rows of each (batch, task) in `predictions` with these, in one commit to the Delta
    table at `path` (created partitioned by `batch_id`); other batches and tasks are untouched.
    Returns the new table version."""
    if predictions.num_rows == 0:
        raise ValueError("write_predictions: no rows to write")
    predictions = predictions.select(PREDICTIONS_SCHEMA.names).cast(PREDICTIONS_SCHEMA)
    path = str(path)
    if not is_delta_table(path):
        return append_rows(predictions, path, partition_by=("batch_id",))
    from deltalake import write_deltalake

    pairs = sorted(set(zip(predictions["batch_id"].to_pylist(), predictions["task"].to_pylist())))
    batches = sorted({b for b, _ in pairs})
    clauses = []
    for batch_id in batches:
        tasks = ", ".join(_sql_string(t) for b, t in pairs if b == batch_id)
        clauses.append(f"(batch_id = {_sql_string(validate_batch_id(batch_id))} AND task IN ({tasks}))")
    # every (batch, task) pair's rows are in `predictions`, so the written rows all match the predicate
    write_deltalake(path, predictions, mode="overwrite", predicate=" OR ".join(clauses), schema_mode="merge")
    return table_version(path)


def predictions_summary(predictions: pa.Table, version: int | None = None) -> dict:
    """Asset metadata: rows and images in all, and per task the model version and its rows."""
    tasks = {}
    for task in sorted(set(predictions["task"].to_pylist())):
        rows = predictions.filter(pc.equal(predictions["task"], task))
        tasks[task] = {"model_name": rows["model_name"][0].as_py(), "model_version": rows["model_version"][0].as_py(),
                       "rows": rows.num_rows}
    return {"rows": predictions.num_rows, "images": len(set(predictions["image_uid"].to_pylist())),
            "batches": sorted(set(predictions["batch_id"].to_pylist())), "tasks": tasks,
            **({"delta_version": version} if version is not None else {})}


def run_batch_inference(lake_dir: str | Path, batch_id: str, models: Iterable[ScoringModel | tuple], *,
                        batch_size: int = 16, tracking_uri: str | None = None, registry_uri: str | None = None,
                        table_path: str | Path | None = None) -> dict:
    """`score_batch` then `write_predictions` into `<lake_dir>/predictions` (or `table_path`);
    returns `predictions_summary` with the Delta version written and the table's path."""
    predictions = score_batch(lake_dir, batch_id, models, batch_size=batch_size, tracking_uri=tracking_uri,
                              registry_uri=registry_uri)
    path = Path(table_path) if table_path is not None else Path(lake_dir) / PREDICTIONS
    version = write_predictions(predictions, path)
    return {**predictions_summary(predictions, version), "path": str(path)}
