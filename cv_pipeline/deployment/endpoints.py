"""Local serving endpoints with Databricks Model Serving's REST surface, in one server process.

An endpoint (`cv_pipeline_<task>` by default) serves one or more registered model versions
("served entities") and splits its traffic between them by `traffic_config.routes`, as a Databricks
endpoint does: champion alone at 100 %, or champion and challenger (e.g. 90/10). Its config is a
JSON file, `<state_dir>/endpoints/<name>.json`:

    {"name": "cv_pipeline_classification", "task": "classification", "config_version": 2,
     "config": {"served_entities": [{"name": "cv_pipeline_classification-3",
                                     "entity_name": "cv_pipeline_classification",
                                     "entity_version": "3",
                                     "model_uri": "models:/cv_pipeline_classification/3"}, ...],
                "traffic_config": {"routes": [{"served_entity_name": "cv_pipeline_classification-3",
                                               "traffic_percentage": 90}, ...]}}}

`update_endpoint` writes it atomically (temporary file + rename, `config_version` + 1). The running
server notices a changed, new or removed file within `WATCH_INTERVAL_S` (it compares the files'
inode, size and mtime), loads every new model version fully on its watcher thread while requests
go on being served by the current ones, then swaps the routing table in one reference assignment:
a request already routed finishes on the version it was given, and no request is dropped.
`GET /serving-endpoints/{name}` reports the `config_version` in effect (`wait_for_config` polls it).
A config whose model fails to load leaves the endpoint on its previous config, with the error in
`state.config_update_message`; it is tried again when the file changes.

Routes (Databricks' paths):
    POST /serving-endpoints/{name}/invocations   `dataframe_split` (with or without `index`),
         `dataframe_records`, `instances` (objects with `image`, or base64 strings), `inputs` (the
         same as instances, or a column dict `{"image": [...]}`); optional `client_request_id`.
         Answers `{"predictions": [...], "served_entity_name", "model_name", "model_version",
         "databricks_request_id"}`; the same in headers `x-served-entity-name`, `x-model-name`,
         `x-model-version`, `x-request-id`. The served entity is drawn at random, weighted by
         `traffic_percentage` (what Databricks does).
    GET  /serving-endpoints, /serving-endpoints/{name}, /health and /ping.

Bad requests answer `{"error_code": ..., "message": "row 2, field 'image': ..."}`, rows counted
from 0: 400 BAD_REQUEST for malformed JSON, a body that is not an object, an unknown or missing
input format, an unknown column, a missing `image`, a cell that is not base64 text, zero bytes, not
an image, a truncated image (every image is decoded fully) and an empty batch; 413
REQUEST_TOO_LARGE for a body over `max_body_bytes`, more rows than `max_rows`, an image over
`max_image_bytes` or `max_image_pixels` (checked from the header before decoding, so a
decompression bomb is never decoded; in the server process this limit replaces PIL's
`MAX_IMAGE_PIXELS`); 404 RESOURCE_DOES_NOT_EXIST for an unknown endpoint; 503 for an endpoint whose
model could not be loaded. A model raising ValueError answers 400, any other exception 500 with its
message; the server keeps serving. Each is logged to the server log.

Every invocation, bad ones included, becomes one row of the Delta table `inference_log`
(`cv_pipeline.deployment.inference_log`), written off the request path.

Why our own ASGI app (Starlette on uvicorn) and not `mlflow models serve`: that server hosts one
model per process, so it has no traffic split between versions and no endpoint name; it cannot
log requests and responses to a table; it answers any bad cell of a batch with one opaque error
for the whole request (or a 500), and it cannot swap the model without a restart that drops
requests. Here the models are still plain MLflow pyfunc models loaded with
`mlflow.pyfunc.load_model`, decoded images go to the model's `predict_images` (each image is
decoded once, by the validation), and models without it get `predict(DataFrame)`. With
`--batch-rows N` (8 by default, 0 turns it off; see `ServeOptions.batch_rows`) requests for the same model that
wait while it is busy go into one `predict_images` call (`Batcher`; it never waits for a batch to
fill, and a batch that raises is rerun request by request so each error reaches its own request).

Process management (`EndpointServer`: its own session, state file, file lock, stop of the
process group) is `cv_pipeline.deployment.serving.ManagedServer`.

    python -m cv_pipeline.deployment.endpoints serve --state-dir DIR [--port N] [--log-table PATH]
    python -m cv_pipeline.deployment.endpoints update --task classification [--challenger-percentage 10]
    python -m cv_pipeline.deployment.endpoints list [--json] | stop
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import hashlib
import io
import json
import logging
import os
import random
import sys
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import requests
from PIL import Image, UnidentifiedImageError

from cv_pipeline.data.image_statistics import image_statistics
from cv_pipeline.deployment.inference_log import InferenceLogWriter, utc_now
from cv_pipeline.models.pyfunc import IMAGE_COLUMN
from cv_pipeline.deployment.registry import CHALLENGER, CHAMPION, ModelRegistry, registered_model_name
from cv_pipeline.deployment.serving import ManagedServer, _free_port, post_images

log = logging.getLogger("cv_pipeline.endpoints")

CONFIG_DIR_NAME = "endpoints"
WATCH_INTERVAL_S = 0.5
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
OPTIONAL_FIELDS = ("client_request_id", "params")
_MB = 1024 * 1024
_REDACT_MIN_CHARS = 64  # strings at least this long that are not validated image cells are shrunk too


def endpoint_name(task: str) -> str:
    return f"cv_pipeline_{task}"


# --- endpoint config ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ServedEntity:
    """One registered model version behind an endpoint (`name` is `<entity_name>-<version>`)."""

    name: str
    entity_name: str
    entity_version: str

    @property
    def model_uri(self) -> str:
        return ModelRegistry.model_uri(self.entity_name, self.entity_version)

    @classmethod
    def for_version(cls, model_name: str, version: str) -> "ServedEntity":
        return cls(name=f"{model_name}-{version}", entity_name=model_name, entity_version=str(version))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "model_uri": self.model_uri}


class Route(NamedTuple):
    """One entry of `traffic_config.routes`."""

    served_entity_name: str
    traffic_percentage: int


@dataclass(frozen=True)
class EndpointConfig:
    """An endpoint's served entities and traffic routes, in Databricks' shape (see the module doc)."""

    name: str
    task: str
    served_entities: tuple[ServedEntity, ...]
    routes: tuple[Route, ...]
    config_version: int = 1

    def __post_init__(self):
        names = [entity.name for entity in self.served_entities]
        if not names:
            raise ValueError(f"endpoint {self.name!r}: served_entities is empty")
        if len(set(names)) != len(names):
            raise ValueError(f"endpoint {self.name!r}: served entity names repeat: {names}")
        for route in self.routes:
            if route.served_entity_name not in names:
                raise ValueError(
                    f"endpoint {self.name!r}: route to {route.served_entity_name!r}, which is not one of "
                    f"the served entities {names}"
                )
            if not 0 <= route.traffic_percentage <= 100:
                raise ValueError(f"endpoint {self.name!r}: traffic_percentage {route.traffic_percentage} of "
                                 f"{route.served_entity_name!r} is not within 0-100")
        total = sum(route.traffic_percentage for route in self.routes)
        if total != 100:
            raise ValueError(f"endpoint {self.name!r}: traffic percentages sum to {total}, not 100")

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": self.task,
            "config_version": self.config_version,
            "config": {
                "served_entities": [entity.to_json() for entity in self.served_entities],
                "traffic_config": {"routes": [route._asdict() for route in self.routes]},
            },
        }

    @classmethod
    def from_json(cls, document: dict[str, Any], source: str = "config") -> "EndpointConfig":
        """Raises ValueError naming `source` and the field that is missing or wrong."""
        try:
            config = document["config"]
            entities = tuple(
                ServedEntity(str(entity["name"]), str(entity["entity_name"]), str(entity["entity_version"]))
                for entity in config["served_entities"]
            )
            routes = tuple(
                Route(str(route["served_entity_name"]), int(route["traffic_percentage"]))
                for route in config["traffic_config"]["routes"]
            )
            return cls(str(document["name"]), str(document["task"]), entities, routes,
                       int(document.get("config_version", 1)))
        except (KeyError, TypeError) as error:
            raise ValueError(f"{source}: missing or malformed field {error}") from error
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from error

    def with_version(self, config_version: int) -> "EndpointConfig":
        return dataclasses.replace(self, config_version=config_version)


def config_path(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / CONFIG_DIR_NAME / f"{name}.json"


def build_endpoint_config(
    registry: ModelRegistry,
    task: str,
    name: str | None = None,
    model_name: str | None = None,
    challenger_percentage: int = 10,
) -> EndpointConfig:
    """The config the registry's aliases call for: the `champion` version alone at 100 %, or
    champion and `challenger` split `100 - challenger_percentage` / `challenger_percentage` when a
    challenger alias exists, differs from the champion and `challenger_percentage` > 0.

    Raises LookupError when the registered model has no champion.
    """
    model_name = model_name or registered_model_name(task)
    champion = registry.version_for_alias(model_name, CHAMPION)
    if champion is None:
        raise LookupError(f"registered model {model_name!r} has no {CHAMPION!r} alias: nothing to serve")
    challenger = registry.version_for_alias(model_name, CHALLENGER)
    entities = [ServedEntity.for_version(model_name, champion)]
    routes = [Route(entities[0].name, 100)]
    if challenger is not None and challenger != champion and 0 < challenger_percentage < 100:
        entities.append(ServedEntity.for_version(model_name, challenger))
        routes = [Route(entities[0].name, 100 - challenger_percentage), Route(entities[1].name, challenger_percentage)]
    return EndpointConfig(name or endpoint_name(task), task, tuple(entities), tuple(routes))


def update_endpoint(state_dir: Path, config: EndpointConfig) -> EndpointConfig:
    """Write `config` atomically as the endpoint's config file, with `config_version` one past the
    file it replaces; a running server picks it up without a restart. Returns what was written."""
    path = config_path(state_dir, config.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    previous = read_endpoint_configs(state_dir).get(config.name)
    config = config.with_version(previous.config_version + 1 if previous else max(config.config_version, 1))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    temporary.write_text(json.dumps(config.to_json(), indent=2))
    temporary.replace(path)
    return config


def delete_endpoint(state_dir: Path, name: str) -> bool:
    """Remove an endpoint's config (the server stops serving it); True when there was one."""
    path = config_path(state_dir, name)
    existed = path.exists()
    path.unlink(missing_ok=True)
    return existed


def read_endpoint_configs(state_dir: Path) -> dict[str, EndpointConfig]:
    """Every endpoint config under `state_dir`, by name. Raises ValueError naming a bad file."""
    configs = {}
    for path in sorted((Path(state_dir) / CONFIG_DIR_NAME).glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # removed meanwhile
        except ValueError as error:
            raise ValueError(f"{path}: not valid JSON ({error})") from error
        config = EndpointConfig.from_json(document, str(path))
        configs[config.name] = config
    return configs


def _config_signature(state_dir: Path) -> tuple:
    signature = []
    for path in sorted((Path(state_dir) / CONFIG_DIR_NAME).glob("*.json")):
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        signature.append((path.name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


# --- requests: parsing and validation -----------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """What one request may hold; over any of them answers 413."""

    max_body_bytes: int = 64 * _MB
    max_rows: int = 64
    max_image_bytes: int = 20 * _MB
    max_image_pixels: int = 50_000_000


class RequestError(Exception):
    """A request the server refuses: HTTP `status`, Databricks' `error_code`, a message naming the
    row and field."""

    def __init__(self, status: int, message: str, error_code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_code = error_code or {
            400: "BAD_REQUEST", 404: "RESOURCE_DOES_NOT_EXIST", 413: "REQUEST_TOO_LARGE", 503: "TEMPORARILY_UNAVAILABLE"
        }.get(status, "INTERNAL_ERROR")


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def _records(rows: Any, field_name: str) -> list[dict[str, Any]]:
    """`instances` / `dataframe_records` / list-shaped `inputs`: objects, or bare base64 strings
    (taken as the `image` column; not for `dataframe_records`)."""
    if not isinstance(rows, list):
        raise _bad(f"field {field_name!r}: expected a list of rows, got {type(rows).__name__}")
    records = []
    for row, item in enumerate(rows):
        if isinstance(item, dict):
            records.append(item)
        elif isinstance(item, str) and field_name != "dataframe_records":
            records.append({IMAGE_COLUMN: item})
        else:
            raise _bad(f"row {row}, field {field_name!r}: expected an object with {IMAGE_COLUMN!r}, "
                       f"got {type(item).__name__}")
    return records


def _split(frame: Any) -> list[dict[str, Any]]:
    if not isinstance(frame, dict):
        raise _bad(f"field 'dataframe_split': expected an object with 'columns' and 'data', got {type(frame).__name__}")
    unknown = sorted(set(frame) - {"columns", "data", "index"})
    if unknown:
        raise _bad(f"field 'dataframe_split.{unknown[0]}': unknown; expected 'columns', 'data' and optionally 'index'")
    columns, data = frame.get("columns"), frame.get("data")
    if not isinstance(columns, list) or not all(isinstance(column, str) for column in columns):
        raise _bad("field 'dataframe_split.columns': expected a list of column names")
    if not isinstance(data, list):
        raise _bad("field 'dataframe_split.data': expected a list of rows")
    if "index" in frame and (not isinstance(frame["index"], list) or len(frame["index"]) != len(data)):
        raise _bad(f"field 'dataframe_split.index': expected a list of {len(data)} labels, one per row")
    records = []
    for row, values in enumerate(data):
        if not isinstance(values, list) or len(values) != len(columns):
            raise _bad(f"row {row}, field 'dataframe_split.data': expected a list of {len(columns)} values "
                       f"(one per column {columns}), got {json.dumps(values)[:80] if not isinstance(values, list) else len(values)}")
        records.append(dict(zip(columns, values)))
    return records


def _inputs(inputs: Any) -> list[dict[str, Any]]:
    if not isinstance(inputs, dict):
        return _records(inputs, "inputs")
    lengths = {}
    for column, values in inputs.items():
        if not isinstance(values, list):
            raise _bad(f"field 'inputs.{column}': expected a list of values, one per row")
        lengths[column] = len(values)
    if len(set(lengths.values())) > 1:
        raise _bad(f"field 'inputs': columns have different lengths {lengths}")
    count = next(iter(lengths.values()), 0)
    return [{column: values[row] for column, values in inputs.items()} for row in range(count)]


_PARSERS: dict[str, Callable[[Any], list[dict[str, Any]]]] = {
    "dataframe_split": _split,
    "dataframe_records": lambda rows: _records(rows, "dataframe_records"),
    "instances": lambda rows: _records(rows, "instances"),
    "inputs": _inputs,
}


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object; RequestError 400 for anything else."""
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise _bad(f"request body is not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise _bad(f"request body must be a JSON object with one of {list(FORMATS)}, got a JSON {type(payload).__name__}")
    return payload


def parse_rows(payload: dict[str, Any], max_rows: int) -> list[Any]:
    """The `image` cell of every row of a request in any of Databricks' input formats.

    RequestError 400 for an unknown field or column, no or several formats, a missing image or an
    empty batch; 413 for more than `max_rows` rows.
    """
    unknown = [key for key in payload if key not in FORMATS and key not in OPTIONAL_FIELDS]
    if unknown:
        raise _bad(f"field {unknown[0]!r}: unknown; expected one of {list(FORMATS)} "
                   f"(and optionally {list(OPTIONAL_FIELDS)})")
    formats = [key for key in payload if key in FORMATS]
    if len(formats) != 1:
        raise _bad(f"request needs exactly one of {list(FORMATS)}, got {formats or 'none'}")
    rows = _PARSERS[formats[0]](payload[formats[0]])
    if not rows:
        raise _bad(f"field {formats[0]!r}: empty batch, no rows")
    if len(rows) > max_rows:
        raise RequestError(413, f"field {formats[0]!r}: {len(rows)} rows, more than the maximum of {max_rows} per request")
    cells = []
    for row, record in enumerate(rows):
        for column in record:
            if column != IMAGE_COLUMN:
                raise _bad(f"row {row}, field {column!r}: unknown column; expected {IMAGE_COLUMN!r}")
        if IMAGE_COLUMN not in record:
            raise _bad(f"row {row}, field {IMAGE_COLUMN!r}: missing")
        cells.append(record[IMAGE_COLUMN])
    return cells


@dataclass
class DecodedImage:
    image: Image.Image
    sha256: str
    nbytes: int


def decode_cell(row: int, value: Any, limits: Limits) -> DecodedImage:
    """One `image` cell (base64 text, optionally a `data:` URI) fully decoded, or RequestError
    naming the row: 400 for bad base64, zero bytes, not an image or a truncated one; 413 for an
    image over `limits` (bytes before decoding base64, pixels from the header before decoding)."""
    where = f"row {row}, field {IMAGE_COLUMN!r}"
    if not isinstance(value, str):
        raise _bad(f"{where}: expected base64 text, got {type(value).__name__}")
    text = value.partition(",")[2] if value.startswith("data:") else value
    if len(text) * 3 // 4 > limits.max_image_bytes + 2:
        raise RequestError(413, f"{where}: about {len(text) * 3 // 4} bytes, more than the maximum of "
                                f"{limits.max_image_bytes} per image")
    try:
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error:
            if not any(character.isspace() for character in text):
                raise
            data = base64.b64decode("".join(text.split()), validate=True)  # line-wrapped base64
    except (binascii.Error, ValueError) as error:
        raise _bad(f"{where}: not valid base64 ({error})") from error
    if not data:
        raise _bad(f"{where}: empty image (0 bytes)")
    if len(data) > limits.max_image_bytes:
        raise RequestError(413, f"{where}: {len(data)} bytes, more than the maximum of {limits.max_image_bytes} per image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit follows
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"{where}: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise _bad(f"{where}: not an image file ({len(data)} bytes; {type(error).__name__})") from error
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise RequestError(413, f"{where}: {width}x{height} = {width * height / 1e6:.1f} megapixels, more than the "
                                f"maximum of {limits.max_image_pixels / 1e6:g} megapixels per image")
    try:
        image.load()
    except Exception as error:  # noqa: BLE001 - any decoder failure is a bad image, not a server error
        raise _bad(f"{where}: a {image.format} image of {width}x{height} that does not decode "
                   f"({type(error).__name__}: {error})") from error
    return DecodedImage(image, hashlib.sha256(data).hexdigest(), len(data))


def _digest(value: str) -> dict[str, Any]:
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        data = value.encode("utf-8", "replace")
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def redact(payload: Any, digests: dict[int, dict[str, Any]]) -> Any:
    """`payload` with each image cell (by identity, from `digests`) and every other string of at
    least `_REDACT_MIN_CHARS` characters replaced by `{"sha256", "bytes"}`: keeps the log small."""
    if isinstance(payload, dict):
        return {key: redact(value, digests) for key, value in payload.items()}
    if isinstance(payload, list):
        return [redact(value, digests) for value in payload]
    if isinstance(payload, str):
        known = digests.get(id(payload))
        if known is not None:
            return known
        if len(payload) >= _REDACT_MIN_CHARS:
            return _digest(payload)
    return payload


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _as_records(output: Any) -> list[Any]:
    """A model's output as one JSON-able value per row."""
    if hasattr(output, "to_dict") and hasattr(output, "columns"):  # a DataFrame
        output = output.to_dict(orient="records")
    elif hasattr(output, "tolist"):
        output = output.tolist()
    return json.loads(json.dumps(list(output), default=_json_default))


# --- the served models and the routing table ---------------------------------------------------


@dataclass
class ServedModel:
    """A loaded model version; `predict_images` when the pyfunc's Python model has it, and a
    `batcher` when the server batches requests dynamically."""

    entity: ServedEntity
    pyfunc: Any
    predict_images: Callable[[list[Image.Image]], Any] | None
    batcher: "Batcher | None" = None
    # (images) -> (predictions, features N x D or None): the model's representation, for monitoring
    predict_with_features: Callable[[list[Image.Image]], tuple[Any, Any]] | None = None

    def predict(self, images: list[Image.Image], cells: list[str]) -> tuple[list[Any], list | None]:
        """One JSON-able prediction per image, and per image its feature vector (None when the
        model gives none); raises what the model raises."""
        if self.batcher is not None:
            return self.batcher.submit(images, cells)
        return self.predict_now(images, cells)

    def predict_now(self, images: list[Image.Image], cells: list[str]) -> tuple[list[Any], list | None]:
        features = None
        if self.predict_with_features is not None:
            output, features = self.predict_with_features(images)
        elif self.predict_images is not None:
            output = self.predict_images(images)
        else:
            import pandas as pd

            output = self.pyfunc.predict(pd.DataFrame({IMAGE_COLUMN: cells}))
        predictions = _as_records(output)
        if len(predictions) != len(images):
            raise RuntimeError(f"{self.entity.name} returned {len(predictions)} predictions for {len(images)} rows")
        return predictions, (None if features is None else list(features))


@dataclass
class _Job:
    images: list[Image.Image]
    cells: list[str]
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[list[Any], list | None] | None = None
    error: BaseException | None = None


class Batcher:
    """Opportunistic dynamic batching for one model: a thread takes every request waiting (up to
    `max_rows` images) and calls the model once. It never waits for a batch to fill, so a lone
    request pays nothing; batches form only while the model is busy. A batch that raises is run
    again request by request, so an error reaches only the request that caused it."""

    def __init__(self, model: ServedModel, max_rows: int):
        import queue

        self.model, self.max_rows = model, max_rows
        self._queue: "queue.SimpleQueue[_Job | None]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.batches = self.rows = 0
        threading.Thread(target=self._run, name=f"batcher-{model.entity.name}", daemon=True).start()

    def submit(self, images: list[Image.Image], cells: list[str]) -> tuple[list[Any], list | None]:
        job = _Job(images, cells)
        with self._lock:
            if self._closed:  # swapped out while this request was on its way: run it here
                return self.model.predict_now(images, cells)
            self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Finish the queued requests, then stop the thread."""
        with self._lock:
            self._closed = True
            self._queue.put(None)

    def _run(self) -> None:
        import queue

        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, rows, stop = [job], len(job.images), False
            while rows < self.max_rows:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
                rows += len(more.images)
            self._serve(jobs)
            if stop:
                return

    def _serve(self, jobs: list[_Job]) -> None:
        self.batches, self.rows = self.batches + 1, self.rows + sum(len(job.images) for job in jobs)
        if len(jobs) > 1:
            try:
                predictions, features = self.model.predict_now([i for job in jobs for i in job.images],
                                                               [c for job in jobs for c in job.cells])
            except Exception:  # noqa: BLE001 - find the request that caused it
                predictions = None
            if predictions is not None:
                start = 0
                for job in jobs:
                    end = start + len(job.images)
                    job.result = (predictions[start:end], None if features is None else features[start:end])
                    job.done.set()
                    start = end
                return
        for job in jobs:
            try:
                job.result = self.model.predict_now(job.images, job.cells)
            except BaseException as error:  # noqa: BLE001 - handed to the request's thread
                job.error = error
            job.done.set()


def load_served_model(entity: ServedEntity) -> ServedModel:
    """Load a served entity's model fully (`mlflow.pyfunc.load_model` on its `models:/` URI)."""
    import mlflow

    model = mlflow.pyfunc.load_model(entity.model_uri)
    try:
        python_model = model.unwrap_python_model()
    except Exception:  # noqa: BLE001 - not a Python-function model (e.g. a flavour's own): predict(DataFrame)
        python_model = None
    return ServedModel(entity, model, getattr(python_model, "predict_images", None),
                       predict_with_features=getattr(python_model, "predict_images_with_features", None))


@dataclass
class LiveEndpoint:
    config: EndpointConfig
    models: dict[str, ServedModel]  # by served entity name
    _names: list[str] = field(default_factory=list)
    _weights: list[int] = field(default_factory=list)

    def __post_init__(self):
        routes = [route for route in self.config.routes if route.traffic_percentage > 0]
        self._names = [route.served_entity_name for route in routes]
        self._weights = [route.traffic_percentage for route in routes]

    def pick(self) -> ServedModel:
        """A served entity drawn at random, weighted by its traffic percentage."""
        return self.models[random.choices(self._names, self._weights)[0]]


class EndpointRouter:
    """The routing table of every endpoint under `state_dir`, reloaded when config files change.

    The table is one dict replaced whole (never mutated), so a request sees either the old or the
    new one; models are loaded before the swap and shared between endpoints by model URI.
    """

    def __init__(self, state_dir: Path, loader: Callable[[ServedEntity], ServedModel] = load_served_model,
                 batch_rows: int = 0):
        self.state_dir = Path(state_dir)
        self.loader = loader
        self.batch_rows = batch_rows  # > 0: each model with predict_images gets a Batcher of that many rows
        self.table: dict[str, LiveEndpoint] = {}
        self.errors: dict[str, str] = {}  # endpoint name -> why its latest config is not in effect
        self.updating: set[str] = set()
        self._signature: tuple | None = None
        self._reload_lock = threading.Lock()

    def refresh(self) -> bool:
        """Reload when the config files changed; True when the table was swapped."""
        with self._reload_lock:
            signature = _config_signature(self.state_dir)
            if signature == self._signature:
                return False
            self._signature = signature
            try:
                configs = read_endpoint_configs(self.state_dir)
            except ValueError as error:
                log.error("endpoint configs not reloaded: %s", error)
                self.errors["*"] = str(error)
                return False
            self.errors.pop("*", None)
            loaded = {model.entity.model_uri: model for live in self.table.values() for model in live.models.values()}
            table = {}
            for name, config in configs.items():
                current = self.table.get(name)
                if current is not None and current.config == config:
                    table[name] = current
                    continue
                self.updating.add(name)
                try:
                    models = {}
                    for entity in config.served_entities:
                        if entity.model_uri not in loaded:
                            started = time.perf_counter()
                            model = self.loader(entity)
                            if self.batch_rows > 0 and model.predict_images is not None:
                                model.batcher = Batcher(model, self.batch_rows)
                            loaded[entity.model_uri] = model
                            log.info("endpoint %s: loaded %s in %.1fs", name, entity.model_uri, time.perf_counter() - started)
                        model = loaded[entity.model_uri]
                        models[entity.name] = model if model.entity == entity else dataclasses.replace(model, entity=entity)
                    table[name] = LiveEndpoint(config, models)
                    self.errors.pop(name, None)
                except Exception as error:  # noqa: BLE001 - a bad version must not take the server down
                    self.errors[name] = f"{type(error).__name__}: {error}"
                    log.error("endpoint %s: config version %d not applied: %s", name, config.config_version, self.errors[name])
                    if current is not None:
                        table[name] = current
                finally:
                    self.updating.discard(name)
            for name in list(self.errors):
                if name != "*" and name not in configs:
                    del self.errors[name]
            retired = {id(m.batcher): m.batcher for live in self.table.values() for m in live.models.values() if m.batcher}
            kept = {id(m.batcher) for live in table.values() for m in live.models.values() if m.batcher}
            self.table = table  # the atomic swap
            for key, batcher in retired.items():
                if key not in kept:
                    batcher.close()  # requests already routed to it still finish
            return True

    def watch(self, stop: threading.Event, interval_s: float = WATCH_INTERVAL_S) -> None:
        while not stop.wait(interval_s):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - keep watching
                log.exception("endpoint config reload failed")

    def describe(self, name: str) -> dict[str, Any] | None:
        """Databricks' endpoint JSON for `name`: the config in effect, its state."""
        live = self.table.get(name)
        if live is None and name not in self.errors:
            return None
        state = {
            "ready": "READY" if live is not None else "NOT_READY",
            "config_update": "IN_PROGRESS" if name in self.updating else ("UPDATE_FAILED" if name in self.errors else "NOT_UPDATING"),
        }
        if name in self.errors:
            state["config_update_message"] = self.errors[name]
        described: dict[str, Any] = {"name": name, "state": state}
        if live is not None:
            described.update(task=live.config.task, config=live.config.to_json()["config"])
            described["config"]["config_version"] = live.config.config_version
        return described


# --- the ASGI app --------------------------------------------------------------------------------


@dataclass
class ServeOptions:
    """Everything the server process is started with besides where it listens."""

    log_table: str | None = None  # default: settings.table_path("inference_log")
    flush_interval_s: float = 2.0
    flush_rows: int = 1000
    keep_payloads: bool = False
    limits: Limits = field(default_factory=Limits)
    # Dynamic batching (Batcher) of up to this many images per model call; 0: off. On because it
    # passes the bar of 1.5x throughput at equal p95 (benchmarks/serving.py --compare-batching,
    # quiet 2 cores: the classifier keeps up with 119 req/s at p95 165 ms batched, 51 req/s at p95
    # 4 s unbatched; 2.45x at saturation, the detector 1.26x).
    batch_rows: int = 8

    def __post_init__(self):
        if not self.flush_interval_s > 0 or self.flush_rows < 1 or self.batch_rows < 0:
            raise ValueError(f"ServeOptions: flush_interval_s must be > 0, flush_rows >= 1 and batch_rows >= 0, got "
                             f"{self.flush_interval_s!r}, {self.flush_rows!r}, {self.batch_rows!r}")

    def to_args(self) -> list[str]:
        args = ["--flush-interval-s", str(self.flush_interval_s), "--flush-rows", str(self.flush_rows)]
        if self.log_table:
            args += ["--log-table", str(self.log_table)]
        if self.keep_payloads:
            args.append("--keep-payloads")
        args += ["--batch-rows", str(self.batch_rows)]
        for name, value in dataclasses.asdict(self.limits).items():
            args += [f"--{name.replace('_', '-')}", str(value)]
        return args

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Exchange:
    """What the inference log records of one invocation, filled in as handling proceeds."""

    request_id: str
    endpoint_name: str
    request_time: Any
    served: ServedModel | None = None
    client_request_id: str | None = None
    request_text: str = "null"
    inputs: list[dict[str, Any]] = field(default_factory=list)


def _handle(body: bytes, served: ServedModel, limits: Limits, keep_payloads: bool, exchange: _Exchange) -> dict:
    """Parse, validate and predict one request (on a worker thread); the response body."""
    payload: Any = None
    digests: dict[int, dict[str, Any]] = {}
    try:
        payload = parse_json(body)
        client_request_id = payload.get("client_request_id")
        if client_request_id is not None and not isinstance(client_request_id, str):
            raise _bad(f"field 'client_request_id': expected a string, got {type(client_request_id).__name__}")
        exchange.client_request_id = client_request_id
        cells = parse_rows(payload, limits.max_rows)
        decoded = []
        for row, cell in enumerate(cells):
            image = decode_cell(row, cell, limits)
            digests[id(cell)] = {"sha256": image.sha256, "bytes": image.nbytes}
            decoded.append(image)
        try:
            predictions, features = served.predict([image.image for image in decoded], cells)
        except ValueError as error:
            raise _bad(f"model {served.entity.name} refused the input: {error}") from error
        exchange.inputs = [
            {"row": row, "sha256": image.sha256, "width": image.image.width, "height": image.image.height,
             "prediction": json.dumps(prediction), "statistics": image_statistics(image.image),
             "features": None if features is None else [float(v) for v in features[row]]}
            for row, (image, prediction) in enumerate(zip(decoded, predictions))
        ]
        return {"predictions": predictions}
    finally:
        if payload is not None:
            exchange.request_text = json.dumps(payload if keep_payloads else redact(payload, digests))
        elif body:  # not JSON: the text itself, cut short unless payloads are kept
            exchange.request_text = json.dumps((body if keep_payloads else body[:2048]).decode("utf-8", "replace"))


async def _read_body(request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(413, f"request body of {int(declared)} bytes, more than the maximum of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(413, f"request body of more than {max_bytes} bytes, the maximum")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(state_dir: Path, options: ServeOptions | None = None, router: EndpointRouter | None = None):
    """The Starlette app serving every endpoint configured under `state_dir` (see the module doc).

    Its lifespan loads the endpoints before the first request, watches their configs and runs the
    inference log writer; shutting down flushes the log.
    """
    import contextlib

    import anyio.to_thread
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route as HttpRoute

    from cv_pipeline import settings

    options = options or ServeOptions()
    router = router or EndpointRouter(state_dir, batch_rows=options.batch_rows)
    writer = InferenceLogWriter(options.log_table or settings.table_path("inference_log"),
                                options.flush_interval_s, options.flush_rows)
    stop_watching = threading.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await anyio.to_thread.run_sync(router.refresh)
        watcher = threading.Thread(target=router.watch, args=(stop_watching,), name="endpoint-config-watcher", daemon=True)
        watcher.start()
        writer.start()
        log.info("serving %d endpoints from %s; inference log %s", len(router.table), state_dir, writer.path)
        try:
            yield
        finally:
            stop_watching.set()
            await anyio.to_thread.run_sync(writer.close)
            log.info("inference log: %d rows written to %s", writer.rows_written, writer.path)

    def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return Response(json.dumps(body, default=_json_default), status, headers, media_type="application/json")

    async def invocations(request):
        started = time.perf_counter()
        name = request.path_params["name"]
        exchange = _Exchange(str(uuid.uuid4()), name, utc_now())
        status, error = 200, None
        try:
            live = router.table.get(name)
            if live is None:
                if name in router.errors:
                    raise RequestError(503, f"endpoint {name!r} is not ready: {router.errors[name]}")
                raise RequestError(404, f"endpoint {name!r} does not exist; endpoints: {sorted(router.table)}")
            exchange.served = live.pick()
            body = await _read_body(request, options.limits.max_body_bytes)
            answer = await anyio.to_thread.run_sync(
                _handle, body, exchange.served, options.limits, options.keep_payloads, exchange
            )
        except RequestError as refused:
            status, error = refused.status, refused.message
            answer = {"error_code": refused.error_code, "message": refused.message}
            log.warning("%s %s -> %d %s", exchange.request_id, name, status, error)
        except Exception as failure:  # noqa: BLE001 - a model or server bug answers 500; the server goes on
            status, error = 500, f"{type(failure).__name__}: {failure}"
            answer = {"error_code": "INTERNAL_ERROR", "message": error}
            log.exception("%s %s -> 500", exchange.request_id, name)
        served = exchange.served
        headers = {"x-request-id": exchange.request_id}
        answer["databricks_request_id"] = exchange.request_id
        if served is not None:
            entity = served.entity
            answer.update(served_entity_name=entity.name, model_name=entity.entity_name, model_version=entity.entity_version)
            headers.update({"x-served-entity-name": entity.name, "x-model-name": entity.entity_name,
                            "x-model-version": entity.entity_version})
        response_text = json.dumps(answer, default=_json_default)
        duration_ms = (time.perf_counter() - started) * 1000
        writer.add({
            "databricks_request_id": exchange.request_id,
            "client_request_id": exchange.client_request_id,
            "request_time": exchange.request_time,
            "endpoint_name": name,
            "served_entity_id": served.entity.name if served else None,
            "model_name": served.entity.entity_name if served else None,
            "model_version": served.entity.entity_version if served else None,
            "status_code": status,
            "execution_duration_ms": duration_ms,
            "request": exchange.request_text,
            "response": response_text,
            "error": error,
            "inputs": exchange.inputs,
        })
        return Response(response_text, status, headers, media_type="application/json")

    async def list_all(request):
        names = sorted(set(router.table) | {name for name in router.errors if name != "*"})
        return _json({"endpoints": [router.describe(name) for name in names]})

    async def describe(request):
        described = router.describe(request.path_params["name"])
        if described is None:
            return _json({"error_code": "RESOURCE_DOES_NOT_EXIST",
                          "message": f"endpoint {request.path_params['name']!r} does not exist"}, 404)
        return _json(described)

    async def health(request):
        return JSONResponse({"status": "OK", "endpoints": len(router.table), "inference_log": {
            "path": writer.path, "rows_written": writer.rows_written, "pending": writer.pending,
            "failed_writes": writer.failed_writes, "last_error": writer.last_error}})

    app = Starlette(
        routes=[
            HttpRoute("/serving-endpoints/{name}/invocations", invocations, methods=["POST"]),
            HttpRoute("/serving-endpoints", list_all, methods=["GET"]),
            HttpRoute("/serving-endpoints/{name}", describe, methods=["GET"]),
            HttpRoute("/health", health, methods=["GET"]),
            HttpRoute("/ping", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.router, app.state.writer = router, writer
    return app


def serve(state_dir: Path, host: str = "127.0.0.1", port: int = 8080, options: ServeOptions | None = None,
          tracking_uri: str | None = None) -> None:
    """Run the server in this process until SIGTERM / SIGINT (uvicorn's graceful shutdown, which
    flushes the inference log)."""
    import mlflow
    import uvicorn

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    # This process's own pixel limit (Limits.max_image_pixels) is checked from the header first.
    Image.MAX_IMAGE_PIXELS = None
    app = create_app(Path(state_dir), options)
    uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False, log_level="info",
                                  timeout_graceful_shutdown=30)).run()


# --- the process, and clients --------------------------------------------------------------------


@dataclass(frozen=True)
class EndpointServerInfo:
    url: str
    port: int
    pid: int
    reused: bool


class EndpointServer(ManagedServer):
    """The one endpoint server process of a `state_dir` (`endpoints_server.json` records it)."""

    state_file_name = "endpoints_server.json"
    log_file_name = "endpoints_server.log"
    lock_file_name = "endpoints_server.lock"
    command_marker = "cv_pipeline.deployment.endpoints"
    description = "the endpoint server (python -m cv_pipeline.deployment.endpoints serve)"

    def status(self) -> EndpointServerInfo | None:
        """The running server (alive and answering /ping), else None."""
        state = self._running_state()
        if state is None:
            return None
        return EndpointServerInfo(state["url"], int(state["port"]), int(state["pid"]), reused=True)

    def ensure(self, tracking_uri: str, port: int | None = None, options: ServeOptions | None = None,
               timeout_s: float = 180) -> EndpointServerInfo:
        """The running server when it answers /ping and was started with the same tracking URI,
        options (and `port`, if given); otherwise a fresh one replacing it. Serialised by a file
        lock across processes; the server outlives the caller. Raises RuntimeError with the log's
        tail when it does not come up within `timeout_s`."""
        options = options or ServeOptions()
        with self._locked():
            state = self._running_state()
            wanted = {"tracking_uri": tracking_uri, "options": options.to_json()}
            if state is not None and all(state.get(key) == value for key, value in wanted.items()) \
                    and port in (None, int(state["port"])):
                return EndpointServerInfo(state["url"], int(state["port"]), int(state["pid"]), reused=True)
            self.stop()
            port = int(port) if port is not None else _free_port(self.host)
            command = [sys.executable, "-m", "cv_pipeline.deployment.endpoints", "serve",
                       "--state-dir", str(self.state_dir.resolve()), "--host", self.host, "--port", str(port),
                       "--tracking-uri", tracking_uri, *options.to_args()]
            env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
            repo_root = str(Path(__file__).resolve().parents[2])
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
            state = self._launch(command, env, port, wanted, timeout_s)
            return EndpointServerInfo(state["url"], port, int(state["pid"]), reused=False)


def invocations_url(server_url: str, name: str) -> str:
    return f"{server_url.rstrip('/')}/serving-endpoints/{name}/invocations"


def invoke(url: str, images: Sequence[Image.Image | bytes | str], timeout_s: float = 60.0,
           client_request_id: str | None = None) -> dict:
    """POST images to an endpoint's invocations `url` (as `list_endpoints` gives it); the answer
    (`predictions`, `served_entity_name`, `model_name`, `model_version`). Raises RuntimeError with
    status and message on anything but 200."""
    fields = {"client_request_id": client_request_id} if client_request_id else {}
    return post_images(url, images, timeout_s, **fields)


def wait_for_config(server_url: str, name: str, config_version: int, timeout_s: float = 120) -> dict:
    """Poll `GET /serving-endpoints/{name}` until `config_version` (or later) is in effect.
    Raises RuntimeError with the endpoint's state when it is not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    described: Any = None
    while time.monotonic() < deadline:
        response = requests.get(f"{server_url.rstrip('/')}/serving-endpoints/{name}", timeout=10)
        described = response.json()
        if response.status_code == 200 and described.get("config", {}).get("config_version", 0) >= config_version:
            return described
        time.sleep(0.1)
    raise RuntimeError(f"endpoint {name!r} did not reach config_version {config_version} in {timeout_s:.0f}s: {described}")


def list_endpoints(state_dir: Path) -> list[dict[str, Any]]:
    """Each configured endpoint: `name`, `task`, `url` (its invocations URL; None when the server is
    not running), `state` (READY, UPDATING while the server has not applied the latest config yet,
    UPDATE_FAILED, NOT_READY, or STOPPED when no server runs), `config_version` and
    `served_entities` (`name`, `model_name`, `model_version`, `model_uri`, `traffic_percentage`)."""
    server = EndpointServer(state_dir).status()
    listed = []
    for name, config in read_endpoint_configs(state_dir).items():
        state, message = "STOPPED", None
        if server is not None:
            try:
                response = requests.get(f"{server.url}/serving-endpoints/{name}", timeout=5)
                described = response.json() if response.status_code == 200 else None
            except requests.RequestException:
                described = None
            if described is None:
                state = "UPDATING"  # not picked up yet
            else:
                state = described["state"]["ready"]
                message = described["state"].get("config_update_message")
                if described["state"]["config_update"] == "UPDATE_FAILED":
                    state = "UPDATE_FAILED"
                elif described.get("config", {}).get("config_version") != config.config_version:
                    state = "UPDATING"
        percentages = {route.served_entity_name: route.traffic_percentage for route in config.routes}
        listed.append({
            "name": name,
            "task": config.task,
            "url": invocations_url(server.url, name) if server else None,
            "state": state,
            "message": message,
            "config_version": config.config_version,
            "served_entities": [
                {"name": entity.name, "model_name": entity.entity_name, "model_version": entity.entity_version,
                 "model_uri": entity.model_uri, "traffic_percentage": percentages.get(entity.name, 0)}
                for entity in config.served_entities
            ],
        })
    return listed


def format_endpoints(endpoints: list[dict[str, Any]]) -> str:
    """A table for people: one line per served entity."""
    if not endpoints:
        return "no serving endpoints"
    header = ("endpoint", "task", "state", "model", "version", "traffic", "url")
    lines = [header]
    for endpoint in endpoints:
        for index, entity in enumerate(endpoint["served_entities"]):
            first = index == 0
            lines.append((endpoint["name"] if first else "", endpoint["task"] if first else "",
                          endpoint["state"] if first else "", entity["model_name"], entity["model_version"],
                          f"{entity['traffic_percentage']}%", (endpoint["url"] or "-") if first else ""))
    widths = [max(len(str(line[column])) for line in lines) for column in range(len(header))]
    return "\n".join("  ".join(str(value).ljust(width) for value, width in zip(line, widths)).rstrip() for line in lines)


def _options_from_args(args: argparse.Namespace) -> ServeOptions:
    limits = Limits(args.max_body_bytes, args.max_rows, args.max_image_bytes, args.max_image_pixels)
    return ServeOptions(args.log_table, args.flush_interval_s, args.flush_rows, args.keep_payloads, limits, args.batch_rows)


def main(argv: list[str] | None = None) -> int:
    from cv_pipeline import settings

    parser = argparse.ArgumentParser(prog="python -m cv_pipeline.deployment.endpoints", description=__doc__.split("\n")[0])
    parser.add_argument("--state-dir", type=Path, default=None, help="serving state (default: $CV_PIPELINE_HOME/serving)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the server in the foreground")
    run.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--tracking-uri", default=None)
    run.add_argument("--log-table", default=None, help="inference_log Delta table (default: lake/inference_log)")
    run.add_argument("--flush-interval-s", type=float, default=2.0)
    run.add_argument("--flush-rows", type=int, default=1000)
    run.add_argument("--keep-payloads", action="store_true", help="log full request payloads, images included")
    run.add_argument("--batch-rows", type=int, default=ServeOptions.batch_rows,
                     help="dynamic batching of up to N images per model call (0: off)")
    defaults = Limits()
    for name, value in dataclasses.asdict(defaults).items():
        run.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    update = commands.add_parser("update", help="point an endpoint at the registry's champion (and challenger)")
    update.add_argument("--task", required=True)
    update.add_argument("--name", default=None)
    update.add_argument("--challenger-percentage", type=int, default=10)
    update.add_argument("--tracking-uri", default=None)
    listing = commands.add_parser("list", help="the endpoints and what they serve")
    listing.add_argument("--json", action="store_true")
    commands.add_parser("stop", help="stop the server")
    args = parser.parse_args(argv)
    state_dir = args.state_dir or settings.serving_dir()

    if args.command == "serve":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        serve(state_dir, args.host, args.port, _options_from_args(args), args.tracking_uri)
    elif args.command == "update":
        registry = ModelRegistry(args.tracking_uri or settings.mlflow_tracking_uri())
        config = update_endpoint(state_dir, build_endpoint_config(registry, args.task, args.name, challenger_percentage=args.challenger_percentage))
        print(json.dumps(config.to_json(), indent=2))
    elif args.command == "list":
        endpoints = list_endpoints(state_dir)
        print(json.dumps(endpoints, indent=2) if args.json else format_endpoints(endpoints))
    elif args.command == "stop":
        print("stopped" if EndpointServer(state_dir).stop() else "no server was running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
