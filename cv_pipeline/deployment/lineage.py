"""Lineage: from a served prediction or a model version back to the data and code it came from.

`trace(ref)` follows the chain the pipeline records:

    inference_log row (request id: time, endpoint, status, rows)
      -> registered model version (name, version, aliases, tags)       MLflow registry
      -> its MLflow run (name, status, params, metrics)                MLflow tracking
      -> the training_dataset version (path, content hash, split counts, seed, fractions)
      -> the COCO tables' Delta versions and the batches read          tags `delta_version.*`, `batches`
      -> the code revision (and the Dagster run)                       tags `code_revision`, `dagster_run_id`

`ref` is a request id (`databricks_request_id` or `client_request_id` of `inference_log`), a model
version `cv_pipeline_detection:3`, `models:/cv_pipeline_detection/3`, or an alias
(`cv_pipeline_detection@champion`, `models:/cv_pipeline_detection@champion`). `rebuild` rebuilds
the split by Delta time travel (the source tables at the recorded versions, the manifest's seed,
fractions and min_box_size) into another folder and says whether its content hash is the recorded
one. `lineage_command` is the `cv-pipeline lineage` command.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

INFERENCE_LOG = "inference_log"
TRAINING_DATASET = "training_dataset"
_VERSION_REF = re.compile(r"^(?:models:/)?(?P<name>[^/:@\s]+)(?:[:/](?P<version>\d+)|@(?P<alias>[\w.-]+))$")
_KEY_PARAMS = ("arch", "epochs", "batch_size", "lr", "learning_rate", "image_size", "profile", "num_workers")


@dataclass
class Lineage:
    """Everything `trace` found; each part is a plain dict (JSON-able), None where the chain stops."""

    ref: str
    request: dict | None = None  # the inference_log row (without the request/response bodies)
    model: dict | None = None  # name, version, aliases, tags, source, run_id, created
    run: dict | None = None  # run_id, run_name, status, experiment_id, start/end, params, metrics
    dataset: dict | None = None  # path, version, content_hash, recorded_hash, split counts, seed, ...
    source_versions: dict[str, int] = field(default_factory=dict)  # COCO table -> Delta version
    batches: list[str] | None = None
    code_revision: str | None = None
    dagster_run_id: str | None = None
    lake_dir: str | None = None  # where the source tables live (the dataset table's folder)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------ trace


def _jsonable(value):
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def find_request(lake_dir: str | Path, request_id: str) -> tuple[dict, int]:
    """The `inference_log` row whose `databricks_request_id` or `client_request_id` is `request_id`
    (the latest, when a client reused its id) and how many rows matched."""
    import pyarrow.compute as pc

    from cv_pipeline.data.delta_io import is_delta_table, read_table

    path = Path(lake_dir) / INFERENCE_LOG
    if not is_delta_table(path):
        raise LookupError(f"{request_id!r} is not a model version (name:version, models:/name/version or "
                          f"name@alias) and there is no {INFERENCE_LOG} table at {path} to look it up as a request id")
    match = (pc.field("databricks_request_id") == request_id) | (pc.field("client_request_id") == request_id)
    rows = read_table(path, filters=match).to_pylist()
    if not rows:
        raise LookupError(f"request id {request_id!r} not found in {path} (neither a databricks_request_id nor a "
                          "client_request_id); a model version is written name:version")
    rows.sort(key=lambda r: r["request_time"])
    return rows[-1], len(rows)


def _request_part(row: dict) -> dict:
    inputs = row.get("inputs") or []
    part = {k: _jsonable(v) for k, v in row.items() if k not in ("request", "response", "inputs")}
    part["rows"] = len(inputs)
    part["inputs"] = [{k: v for k, v in item.items() if k != "prediction"} for item in inputs]
    part["predictions"] = [item.get("prediction") for item in inputs]
    return part


def _not_found(error) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


def _model_version(client, name: str, version: str | None, alias: str | None, tracking_uri: str):
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(name)
    except MlflowException as error:
        if _not_found(error):
            raise LookupError(f"registered model {name!r} not found in {tracking_uri}") from error
        raise
    if alias is not None:
        version = (registered.aliases or {}).get(alias)
        if version is None:
            raise LookupError(f"{name} has no alias {alias!r} in {tracking_uri} (aliases: "
                              f"{', '.join(f'{a}={v}' for a, v in sorted((registered.aliases or {}).items())) or 'none'})")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        if _not_found(error):
            known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
            raise LookupError(f"model version {name}:{version} not found in {tracking_uri} "
                              f"(versions: {', '.join(map(str, known)) or 'none'})") from error
        raise


def _ms(timestamp) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp / 1000, timezone.utc).isoformat()


def _run_part(client, run_id: str) -> tuple[dict, dict]:
    """The run's summary and its tags."""
    run = client.get_run(run_id)
    return {"run_id": run.info.run_id, "run_name": run.info.run_name, "status": run.info.status,
            "experiment_id": run.info.experiment_id, "start_time": _ms(run.info.start_time),
            "end_time": _ms(run.info.end_time), "artifact_uri": run.info.artifact_uri,
            "params": dict(run.data.params), "metrics": dict(run.data.metrics)}, dict(run.data.tags)


def _dataset_part(lineage: Lineage, tags: dict, lake_dir: Path | None) -> None:
    """Fill the dataset, source versions and batches from the tags, checked against the manifest."""
    from cv_pipeline.data.delta_io import is_delta_table
    from cv_pipeline.training.dataset import load_manifest

    lineage.source_versions = {k.split(".", 1)[1]: int(v) for k, v in sorted(tags.items())
                               if k.startswith("delta_version.")}
    if tags.get("batches"):
        lineage.batches = list(json.loads(tags["batches"]))
    recorded_path, recorded_version = tags.get("dataset_path"), tags.get("dataset_version")
    if recorded_path is None or recorded_version is None:
        lineage.warnings.append("the model version has no dataset_path/dataset_version tags: its training data is unknown")
        return
    path = Path(recorded_path)
    if not is_delta_table(path) and lake_dir is not None and is_delta_table(lake_dir / path.name):
        lineage.warnings.append(f"recorded dataset table {path} is gone; reading {lake_dir / path.name}")
        path = lake_dir / path.name
    lineage.dataset = {"path": str(path), "version": int(recorded_version), "recorded_hash": tags.get("dataset_hash")}
    lineage.lake_dir = str(path.parent)
    if not is_delta_table(path):
        lineage.warnings.append(f"dataset table {path} not found: split counts and the manifest cannot be read")
        return
    try:
        manifest = load_manifest(path, int(recorded_version))
    except Exception as error:  # noqa: BLE001 - a vacuumed or rewritten table: say so, keep the rest
        lineage.warnings.append(f"cannot read the manifest of {path} version {recorded_version}: {error}")
        return
    lineage.dataset.update({
        "content_hash": manifest.content_hash, "split_counts": manifest.split_counts,
        "split_images": manifest.split_images, "seed": manifest.seed, "fractions": manifest.fractions,
        "min_box_size": manifest.extra.get("min_box_size"), "labels": len(manifest.labels),
        "held_back_batches": manifest.held_back_batches,
    })
    if lineage.dataset["recorded_hash"] and lineage.dataset["recorded_hash"] != manifest.content_hash:
        lineage.warnings.append(f"the model's dataset_hash {lineage.dataset['recorded_hash']} differs from the "
                                f"manifest's {manifest.content_hash} at {path} version {recorded_version}")
    manifest_versions = {k: int(v) for k, v in manifest.source_versions.items()}
    if not lineage.source_versions:
        lineage.source_versions = manifest_versions
    elif lineage.source_versions != manifest_versions:
        lineage.warnings.append(f"delta_version tags {lineage.source_versions} differ from the manifest's {manifest_versions}")
    if lineage.batches is None:
        lineage.batches = manifest.batches
    elif manifest.batches is not None and sorted(lineage.batches) != sorted(manifest.batches):
        lineage.warnings.append(f"batches tag {lineage.batches} differs from the manifest's {manifest.batches}")


def trace(ref: str, *, tracking_uri: str | None = None, lake_dir: str | Path | None = None) -> Lineage:
    """The lineage of a request id or model version `ref` (see the module doc). Raises LookupError
    naming what was not found: the request id, the registered model, the version or alias."""
    from mlflow import MlflowClient

    from cv_pipeline import settings

    tracking_uri = tracking_uri or settings.mlflow_tracking_uri()
    lake_dir = Path(lake_dir) if lake_dir is not None else settings.lake_dir()
    ref = str(ref).strip()
    lineage = Lineage(ref=ref)
    match = _VERSION_REF.match(ref)
    name = version = alias = None
    if match and (match["version"] or match["alias"]):
        name, version, alias = match["name"], match["version"], match["alias"]
    else:
        row, matches = find_request(lake_dir, ref)
        lineage.request = _request_part(row)
        if matches > 1:
            lineage.warnings.append(f"{matches} requests have id {ref!r}; this is the latest")
        name, version = row.get("model_name"), row.get("model_version")
        if not name or not version:
            lineage.warnings.append(f"request {ref!r} names no model version (status {row.get('status_code')}: "
                                    f"{row.get('error') or 'no error recorded'}): the chain stops here")
            return lineage

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    model_version = _model_version(client, name, version, alias, tracking_uri)
    tags = dict(model_version.tags or {})
    lineage.model = {"name": model_version.name, "version": str(model_version.version),
                     "aliases": sorted(model_version.aliases or []), "task": tags.get("task"),
                     "created": _ms(model_version.creation_timestamp), "source": model_version.source,
                     "run_id": model_version.run_id, "tags": tags}
    run_id = tags.get("mlflow_run_id") or model_version.run_id
    run_tags = {}
    if run_id:
        try:
            lineage.run, run_tags = _run_part(client, run_id)
        except Exception as error:  # noqa: BLE001 - a deleted run: the version's tags still say a lot
            lineage.warnings.append(f"MLflow run {run_id} cannot be read from {tracking_uri}: {error}")
    else:
        lineage.warnings.append(f"{name}:{model_version.version} names no MLflow run")
    # the version's tags first; the run carries the same lineage tags for versions registered without them
    lineage_tags = {**{k: v for k, v in run_tags.items() if not k.startswith("mlflow.")}, **tags}
    _dataset_part(lineage, lineage_tags, lake_dir)
    lineage.code_revision = lineage_tags.get("code_revision")
    lineage.dagster_run_id = lineage_tags.get("dagster_run_id")
    if not lineage.code_revision:
        lineage.warnings.append("no code_revision tag: the code the model was trained with is unknown")
    return lineage


# ----------------------------------------------------------------------------------------- format


def _short(value, n: int = 12) -> str:
    return "?" if value is None else str(value)[:n]


def _split_order(split: str) -> tuple:
    order = ("train", "val", "test")
    return (order.index(split) if split in order else len(order), split)


def format_lineage(lineage: Lineage) -> str:
    """The chain as a few lines a person reads top to bottom, request to code."""
    lines = []
    request = lineage.request
    if request is not None:
        client = f" (client id {request['client_request_id']})" if request.get("client_request_id") else ""
        lines.append(f"request   {request.get('databricks_request_id')}{client} at {request.get('request_time')}")
        lines.append(f"          endpoint {request.get('endpoint_name')} entity {request.get('served_entity_id')}: "
                     f"status {request.get('status_code')}, {float(request.get('execution_duration_ms') or 0):.1f} ms, "
                     f"{request['rows']} rows" + (f", error: {request['error']}" if request.get("error") else ""))
        for item in request["inputs"][:5]:
            lines.append(f"          row {item.get('row')}: sha256 {_short(item.get('sha256'))} "
                         f"{item.get('width')}x{item.get('height')}")
    model = lineage.model
    if model is not None:
        aliases = ", ".join(model["aliases"]) or "none"
        lines.append(f"model     {model['name']} version {model['version']} (task {model['task']}, aliases: {aliases}), "
                     f"registered {model['created']}")
        metrics = {k: v for k, v in sorted(model["tags"].items()) if k.startswith("test_")}
        if metrics:
            lines.append("          " + ", ".join(f"{k}={v}" for k, v in metrics.items()))
    run = lineage.run
    if run is not None:
        lines.append(f"run       {run['run_id']} {run['run_name']!r} {run['status']}, started {run['start_time']}")
        params = {k: run["params"][k] for k in _KEY_PARAMS if k in run["params"]}
        if params:
            lines.append("          params " + ", ".join(f"{k}={v}" for k, v in params.items()))
        key = {k: v for k, v in sorted(run["metrics"].items()) if k.startswith(("test_", "best_val_"))}
        if key:
            lines.append("          metrics " + ", ".join(f"{k}={v:.4g}" for k, v in list(key.items())[:8]))
    dataset = lineage.dataset
    if dataset is not None:
        hash_note = ""
        if dataset.get("content_hash"):
            same = dataset.get("recorded_hash") in (None, dataset["content_hash"])
            hash_note = " (the model's dataset_hash)" if same else f" (model recorded {_short(dataset['recorded_hash'])})"
        lines.append(f"dataset   {dataset['path']} version {dataset['version']}, hash "
                     f"{_short(dataset.get('content_hash') or dataset.get('recorded_hash'))}{hash_note}")
        if dataset.get("split_counts"):
            splits = ", ".join(f"{s} {dataset['split_counts'][s]} objects / {dataset['split_images'][s]} images"
                               for s in sorted(dataset["split_counts"], key=_split_order))
            lines.append(f"          {splits}; seed {dataset['seed']}, min_box_size {dataset['min_box_size']}")
    if lineage.source_versions:
        lines.append("tables    " + ", ".join(f"{t}@v{v}" for t, v in lineage.source_versions.items())
                     + (f" under {lineage.lake_dir}" if lineage.lake_dir else ""))
    if lineage.batches is not None:
        held = [b["batch_id"] for b in (dataset or {}).get("held_back_batches") or []]
        lines.append("batches   " + (", ".join(lineage.batches) or "none")
                     + (f" (held back: {', '.join(held)})" if held else ""))
    if model is not None:
        lines.append(f"code      {lineage.code_revision or 'unknown'}"
                     + (f" (dagster run {lineage.dagster_run_id})" if lineage.dagster_run_id else ""))
    lines += [f"warning   {w}" for w in lineage.warnings]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- rebuild


def rebuild(lineage: Lineage, out_dir: str | Path) -> dict:
    """Rebuild the traced training split into `<out_dir>/training_dataset` from the source tables at
    their recorded Delta versions (time travel) with the manifest's seed, fractions and
    min_box_size; `matches` says whether the rebuilt content hash is the one the model recorded."""
    from cv_pipeline.training.dataset import build_training_dataset

    dataset = lineage.dataset
    if dataset is None or lineage.lake_dir is None:
        raise ValueError(f"{lineage.ref}: no training dataset was traced, nothing to rebuild")
    if "seed" not in dataset:
        raise ValueError(f"{lineage.ref}: the manifest of {dataset['path']} version {dataset['version']} could not "
                         "be read, so its seed and fractions are unknown: " + "; ".join(lineage.warnings))
    if not lineage.source_versions:
        raise ValueError(f"{lineage.ref}: no source table versions recorded (delta_version.* tags)")
    output = Path(out_dir) / TRAINING_DATASET
    try:
        manifest = build_training_dataset(
            lineage.lake_dir, seed=int(dataset["seed"]), fractions=dict(dataset["fractions"]),
            min_box_size=float(dataset["min_box_size"] if dataset.get("min_box_size") is not None else 4.0),
            versions=dict(lineage.source_versions), output_path=output)
    except Exception as error:
        raise RuntimeError(f"rebuilding {dataset['path']} version {dataset['version']} from {lineage.lake_dir} at "
                           f"{lineage.source_versions} failed (were old versions vacuumed?): {error}") from error
    recorded = dataset.get("recorded_hash") or dataset.get("content_hash")
    return {"path": str(output), "version": manifest.version, "content_hash": manifest.content_hash,
            "recorded_hash": recorded, "matches": manifest.content_hash == recorded,
            "split_counts": manifest.split_counts, "recorded_split_counts": dataset.get("split_counts"),
            "source_versions": manifest.source_versions, "batches": manifest.batches}


# ---------------------------------------------------------------------------------------- command


def lineage_command(ref: str, *, as_json: bool = False, rebuild_dir: str | Path | None = None,
                    tracking_uri: str | None = None, lake_dir: str | Path | None = None) -> int:
    """`cv-pipeline lineage <ref> [--json] [--rebuild DIR]`: print the lineage (text or JSON) and,
    with `rebuild_dir`, the rebuild's result. Exit code 0; 1 when `ref` is not found or the rebuild
    fails; 2 when the rebuilt hash differs from the recorded one."""
    try:
        lineage = trace(ref, tracking_uri=tracking_uri, lake_dir=lake_dir)
        rebuilt = rebuild(lineage, rebuild_dir) if rebuild_dir is not None else None
    except (LookupError, ValueError, RuntimeError, FileNotFoundError) as error:
        print(f"cv-pipeline lineage: {error}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({**lineage.as_dict(), **({"rebuild": rebuilt} if rebuilt else {})}, indent=2, default=str))
    else:
        print(format_lineage(lineage))
        if rebuilt is not None:
            verdict = "matches" if rebuilt["matches"] else f"DIFFERS from the recorded {_short(rebuilt['recorded_hash'])}"
            print(f"rebuilt   {rebuilt['path']}: hash {_short(rebuilt['content_hash'])} {verdict}")
    return 0 if rebuilt is None or rebuilt["matches"] else 2
