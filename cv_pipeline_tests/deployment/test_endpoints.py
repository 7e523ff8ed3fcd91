"""Serving endpoints: one real server on loopback over a real MLflow SQLite registry, writing a real
Delta inference_log; every request format, every bad request, traffic splits, swaps under load."""

import base64
import hashlib
import io
import json
import sys
import threading
import time
import zlib

import cloudpickle
import mlflow
import numpy as np
import pytest
import requests
from PIL import Image

from cv_pipeline.data.delta_io import read_table
from cv_pipeline.data.image_statistics import IMAGE_STATISTICS
from cv_pipeline.deployment.endpoints import (
    Batcher,
    EndpointConfig,
    EndpointServer,
    Limits,
    RequestError,
    Route,
    ServedEntity,
    ServedModel,
    ServeOptions,
    build_endpoint_config,
    decode_cell,
    format_endpoints,
    invoke,
    list_endpoints,
    parse_rows,
    read_endpoint_configs,
    redact,
    update_endpoint,
    wait_for_config,
)
from cv_pipeline.models.pyfunc import decode_image
from cv_pipeline.deployment.registry import CHALLENGER, CHAMPION, ModelRegistry
from cv_pipeline_tests.deployment.mlflow_store import temporary_mlflow_store

TOY = "cv_pipeline_toy"  # endpoint and registered model of task "toy"
PLAIN = "cv_pipeline_plain"  # a model without predict_images
LIMITS = Limits(max_body_bytes=3_000_000, max_rows=8, max_image_bytes=1_000_000, max_image_pixels=50_000_000)


class ToyModel(mlflow.pyfunc.PythonModel):
    """Size and mean colour of each image; width 13 makes it fail (RuntimeError), width 17 refuse (ValueError)."""

    task = "toy"

    def predict_images(self, images):
        predictions = []
        for image in images:
            if image.width == 13:
                raise RuntimeError("toy model crashed")
            if image.width == 17:
                raise ValueError("width 17 is not supported")
            mean = np.asarray(image.convert("RGB"), dtype=np.float64).mean(axis=(0, 1))
            predictions.append({"width": image.width, "height": image.height, "mean": np.round(mean, 3)})
        return predictions

    def predict_images_with_features(self, images):
        """The mean colour is its "representation": what the inference log records for monitoring."""
        predictions = self.predict_images(images)
        return predictions, np.array([p["mean"] for p in predictions], dtype=np.float32)

    def predict(self, context, model_input, params=None):
        return self.predict_images([decode_image(value) for value in model_input["image"]])


class PlainModel(mlflow.pyfunc.PythonModel):
    """Only predict(DataFrame): the server must fall back to it."""

    def predict(self, context, model_input, params=None):
        return [{"width": decode_image(value).width, "plain": True} for value in model_input["image"]]


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the server process cannot import this module


def _png(width=24, height=16, seed=0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg(width=64, height=48) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header says width x height: a decompression bomb's shape."""
    data = bytearray(_png(4, 4))
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


IMAGE = _b64(_png())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Three toy versions (v1 champion) and a plain model behind one server; stopped at the end."""
    root = tmp_path_factory.mktemp("endpoints")
    state_dir = root / "serving"
    with temporary_mlflow_store(root, "endpoints") as store:
        registry = ModelRegistry(store["uri"])
        versions = []
        for model_name, python_model in ((TOY, ToyModel()), (TOY, ToyModel()), (TOY, ToyModel()), (PLAIN, PlainModel())):
            with mlflow.start_run(experiment_id=store["experiment_id"]):
                info = mlflow.pyfunc.log_model(name="model", python_model=python_model, pip_requirements=[])
            versions.append(registry.register(info.model_uri, model_name))
        registry.set_alias(TOY, CHAMPION, versions[0])
        registry.set_alias(PLAIN, CHAMPION, versions[3])
        update_endpoint(state_dir, build_endpoint_config(registry, "toy"))
        update_endpoint(state_dir, build_endpoint_config(registry, "plain"))
        server = EndpointServer(state_dir)
        options = ServeOptions(log_table=str(root / "inference_log"), flush_interval_s=0.3, limits=LIMITS, batch_rows=4)
        info = server.ensure(store["uri"], options=options, timeout_s=240)
        context = {"registry": registry, "versions": versions, "state_dir": state_dir, "url": info.url,
                   "server": server, "log_table": options.log_table, "sent": 0,
                   "tracking_uri": store["uri"], "options": options}
        try:
            yield context
        finally:
            server.stop()


def _post(served, body, endpoint=TOY, raw=False):
    """POST to an endpoint's invocations, counting every request sent (the inference log's rows)."""
    served["sent"] += 1
    url = f"{served['url']}/serving-endpoints/{endpoint}/invocations"
    if raw:
        return requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    return requests.post(url, json=body, timeout=60)


def _split(*cells):
    return {"dataframe_split": {"columns": ["image"], "data": [[cell] for cell in cells]}}


# --- pure functions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": ["image"], "data": [["A"], ["B"]]}},
        {"dataframe_split": {"index": [5, 7], "columns": ["image"], "data": [["A"], ["B"]]}},
        {"dataframe_records": [{"image": "A"}, {"image": "B"}]},
        {"instances": [{"image": "A"}, {"image": "B"}]},
        {"instances": ["A", "B"]},
        {"inputs": ["A", "B"]},
        {"inputs": [{"image": "A"}, {"image": "B"}]},
        {"inputs": {"image": ["A", "B"]}, "client_request_id": "c1"},
    ],
)
def test_parse_rows_reads_every_databricks_format(payload):
    assert parse_rows(payload, max_rows=8) == ["A", "B"]


def test_redact_replaces_image_cells_by_digest():
    data = _png()
    payload = {"instances": [{"image": _b64(data)}], "client_request_id": "short"}
    digests = {id(payload["instances"][0]["image"]): {"sha256": "known", "bytes": 1}}
    assert redact(payload, digests) == {"instances": [{"image": {"sha256": "known", "bytes": 1}}],
                                        "client_request_id": "short"}
    assert redact(payload, {})["instances"][0]["image"] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def test_decode_cell_checks_pixels_from_the_header_before_decoding():
    with pytest.raises(RequestError) as refused:
        decode_cell(3, _b64(_png_claiming(9000, 9000)), Limits(max_image_pixels=1_000_000))
    assert refused.value.status == 413 and "row 3, field 'image'" in refused.value.message
    assert "81.0 megapixels" in refused.value.message


def test_endpoint_config_validates_routes_and_round_trips(tmp_path):
    entity = ServedEntity.for_version(TOY, "3")
    with pytest.raises(ValueError, match="sum to 90"):
        EndpointConfig(TOY, "toy", (entity,), (Route(entity.name, 90),))
    with pytest.raises(ValueError, match="not one of the served entities"):
        EndpointConfig(TOY, "toy", (entity,), (Route("other-1", 100),))
    config = EndpointConfig(TOY, "toy", (entity,), (Route(entity.name, 100),))
    assert update_endpoint(tmp_path, config).config_version == 1
    assert update_endpoint(tmp_path, config).config_version == 2
    assert read_endpoint_configs(tmp_path)[TOY] == config.with_version(2)
    assert config.to_json()["config"]["served_entities"][0]["model_uri"] == f"models:/{TOY}/3"


def test_batcher_batches_waiting_requests_and_keeps_errors_to_their_request():
    calls = []

    def predict_images(images):
        calls.append(len(images))
        time.sleep(0.05)
        if any(image.width == 17 for image in images):
            raise ValueError("width 17 is not supported")
        return [{"width": image.width} for image in images]

    model = ServedModel(ServedEntity.for_version(TOY, "1"), None, predict_images)
    model.batcher = Batcher(model, max_rows=8)
    widths = [20, 21, 17, 22, 23, 24]
    results = {}

    def submit(width):
        try:
            results[width], _features = model.predict([Image.new("RGB", (width, 4))], [""])
        except ValueError as error:
            results[width] = str(error)

    threads = [threading.Thread(target=submit, args=(width,)) for width in widths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results[17] == "width 17 is not supported"
    assert all(results[width] == [{"width": width}] for width in widths if width != 17)
    assert max(calls) > 1  # requests that waited went in one call
    model.batcher.close()
    assert model.predict([Image.new("RGB", (5, 5))], [""]) == ([{"width": 5}], None)  # closed: runs in the caller


def test_batcher_hands_each_request_its_own_feature_rows():
    def predict_with_features(images):
        time.sleep(0.05)
        return [{"width": image.width} for image in images], np.array([[image.width, 1.0] for image in images])

    model = ServedModel(ServedEntity.for_version(TOY, "1"), None, None, predict_with_features=predict_with_features)
    model.batcher = Batcher(model, max_rows=8)
    results = {}
    threads = [threading.Thread(target=lambda w=width: results.__setitem__(w, model.predict(
        [Image.new("RGB", (w, 4)), Image.new("RGB", (w + 100, 4))], ["", ""]))) for width in (10, 11, 12, 13)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    model.batcher.close()
    for width, (predictions, features) in results.items():
        assert predictions == [{"width": width}, {"width": width + 100}]
        assert [list(row) for row in features] == [[width, 1.0], [width + 100, 1.0]]


# --- the server -----------------------------------------------------------------------------------


def test_every_request_format_is_answered(served):
    image = _png(30, 20)
    bodies = [
        _split(_b64(image), IMAGE),
        {"dataframe_split": {"index": [4, 9], "columns": ["image"], "data": [[_b64(image)], [IMAGE]]}},
        {"dataframe_records": [{"image": _b64(image)}, {"image": IMAGE}]},
        {"instances": [{"image": _b64(image)}, {"image": IMAGE}]},
        {"instances": [_b64(image), IMAGE]},
        {"inputs": {"image": [_b64(image), IMAGE]}},
        {"inputs": [_b64(image), f"data:image/png;base64,{IMAGE}"], "client_request_id": "formats"},
    ]
    for body in bodies:
        response = _post(served, body)
        assert response.status_code == 200, (body.keys(), response.text)
        answer = response.json()
        assert [p["width"] for p in answer["predictions"]] == [30, 24]
        assert answer["model_name"] == TOY and answer["model_version"] == served["versions"][0]
        assert answer["served_entity_name"] == f"{TOY}-{served['versions'][0]}"
        assert response.headers["x-model-version"] == served["versions"][0]


def test_model_without_predict_images_is_served_through_predict(served):
    served["sent"] += 1
    answer = invoke(f"{served['url']}/serving-endpoints/{PLAIN}/invocations", [_png(21, 5)], client_request_id="p")
    assert answer["predictions"] == [{"width": 21, "plain": True}]


BAD_REQUESTS = [
    # (what, body, raw body?, status, words the message must contain)
    ("malformed JSON", b'{"instances": [', True, 400, ["not valid JSON"]),
    ("not an object", b'["a"]', True, 400, ["JSON object"]),
    ("unknown format", {"rows": [IMAGE]}, False, 400, ["field 'rows'", "unknown"]),
    ("no format", {"client_request_id": "x"}, False, 400, ["exactly one of"]),
    ("unknown column", {"dataframe_records": [{"image": IMAGE}, {"img": IMAGE}]}, False, 400, ["row 1", "field 'img'"]),
    ("missing image", {"dataframe_split": {"columns": [], "data": [[], []]}}, False, 400, ["row 0", "field 'image'", "missing"]),
    ("not base64", _split(IMAGE, IMAGE, "not*base64!"), False, 400, ["row 2", "field 'image'", "not valid base64"]),
    ("not text", {"instances": [{"image": IMAGE}, {"image": 7}]}, False, 400, ["row 1", "field 'image'", "int"]),
    ("zero bytes", _split(""), False, 400, ["row 0", "field 'image'", "0 bytes"]),
    ("not an image", _split(IMAGE, _b64(b"hello, not an image")), False, 400, ["row 1", "field 'image'", "not an image"]),
    ("truncated", _split(_b64(_jpeg()[: len(_jpeg()) * 2 // 3])), False, 400, ["row 0", "field 'image'", "does not decode"]),
    ("too many bytes", _split(_b64(b"x" * 1_100_000)), False, 413, ["row 0", "field 'image'", "maximum of 1000000"]),
    # 200 megapixels: past PIL's own bomb error (2 x MAX_IMAGE_PIXELS), so ours must fire first
    ("bomb", _split(IMAGE, _b64(_png_claiming(20000, 10000))), False, 413, ["row 1", "field 'image'", "megapixels"]),
    ("empty batch", {"instances": []}, False, 400, ["field 'instances'", "empty batch"]),
    ("too many rows", _split(*[IMAGE] * 9), False, 413, ["9 rows", "maximum of 8"]),
    ("body too large", _split(*[_b64(b"y" * 900_000)] * 4), False, 413, ["request body", "maximum"]),
    ("model refuses", _split(IMAGE, _b64(_png(17, 4))), False, 400, ["width 17 is not supported"]),
    ("model crashes", _split(_b64(_png(13, 4))), False, 500, ["RuntimeError", "toy model crashed"]),
    ("bad client_request_id", {"instances": [IMAGE], "client_request_id": 5}, False, 400, ["field 'client_request_id'"]),
]


@pytest.mark.parametrize("what, body, raw, status, words", BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_is_refused_and_the_server_keeps_serving(served, what, body, raw, status, words):
    response = _post(served, body, raw=raw)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error_code"] == {400: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE", 500: "INTERNAL_ERROR"}[status]
    for word in words:
        assert word in answer["message"], answer["message"]
    assert _post(served, _split(IMAGE)).status_code == 200


def test_unknown_endpoint_is_404(served):
    response = _post(served, _split(IMAGE), endpoint="cv_pipeline_nope")
    assert response.status_code == 404 and "cv_pipeline_nope" in response.json()["message"]
    assert requests.get(f"{served['url']}/serving-endpoints/cv_pipeline_nope", timeout=10).status_code == 404


def test_list_endpoints_and_rest_listing(served):
    listed = {endpoint["name"]: endpoint for endpoint in list_endpoints(served["state_dir"])}
    assert set(listed) == {TOY, PLAIN}
    toy = listed[TOY]
    assert toy["task"] == "toy" and toy["state"] == "READY"
    assert toy["url"] == f"{served['url']}/serving-endpoints/{TOY}/invocations"
    assert toy["served_entities"] == [{"name": f"{TOY}-{served['versions'][0]}", "model_name": TOY,
                                       "model_version": served["versions"][0],
                                       "model_uri": f"models:/{TOY}/{served['versions'][0]}", "traffic_percentage": 100}]
    assert TOY in format_endpoints(list(listed.values())) and "100%" in format_endpoints(list(listed.values()))
    rest = requests.get(f"{served['url']}/serving-endpoints", timeout=10).json()
    assert {endpoint["name"] for endpoint in rest["endpoints"]} == {TOY, PLAIN}
    assert requests.get(f"{served['url']}/health", timeout=10).json()["status"] == "OK"
    again = EndpointServer(served["state_dir"]).ensure(served["tracking_uri"], options=served["options"])
    assert again.reused and again.url == served["url"]


def test_traffic_split_routes_to_both_entities(served):
    registry, versions = served["registry"], served["versions"]
    registry.set_alias(TOY, CHALLENGER, versions[1])
    config = update_endpoint(served["state_dir"], build_endpoint_config(registry, "toy", challenger_percentage=10))
    assert [route.traffic_percentage for route in config.routes] == [90, 10]
    wait_for_config(served["url"], TOY, config.config_version)
    answered = [_post(served, _split(IMAGE)).json()["model_version"] for _ in range(300)]
    challenger_share = answered.count(versions[1])
    assert answered.count(versions[0]) + challenger_share == 300
    assert 12 <= challenger_share <= 55  # binomial(300, 0.1): mean 30, sd 5.2


def test_swap_under_load_drops_no_request(served):
    versions, failures, answers = served["versions"], [], []
    stop = threading.Event()

    def load():
        with requests.Session() as session:
            while not stop.is_set():
                sent_at = time.monotonic()
                served["sent"] += 1
                response = session.post(f"{served['url']}/serving-endpoints/{TOY}/invocations", json=_split(IMAGE), timeout=60)
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    answers.append((sent_at, response.json()["model_version"]))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.5)
        entity = ServedEntity.for_version(TOY, versions[2])
        updated_at = time.monotonic()
        config = update_endpoint(served["state_dir"], EndpointConfig(TOY, "toy", (entity,), (Route(entity.name, 100),)))
        wait_for_config(served["url"], TOY, config.config_version)
        swapped_at = time.monotonic()
        deadline = swapped_at + 30
        while sum(sent_at > swapped_at for sent_at, _ in answers) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures == []
    before = {version for sent_at, version in answers if sent_at < updated_at}
    assert before and versions[2] not in before  # the old versions served until the swap
    after = [version for sent_at, version in answers if sent_at > swapped_at]
    assert len(after) >= 20 and set(after) == {versions[2]}
    listed = {endpoint["name"]: endpoint for endpoint in list_endpoints(served["state_dir"])}
    assert [entity["model_version"] for entity in listed[TOY]["served_entities"]] == [versions[2]]


def test_a_version_that_fails_to_load_leaves_the_endpoint_serving(served):
    entity = ServedEntity.for_version(TOY, "99")
    config = update_endpoint(served["state_dir"], EndpointConfig(TOY, "toy", (entity,), (Route(entity.name, 100),)))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = requests.get(f"{served['url']}/serving-endpoints/{TOY}", timeout=10).json()["state"]
        if state["config_update"] == "UPDATE_FAILED":
            break
        time.sleep(0.1)
    assert state["config_update"] == "UPDATE_FAILED" and state["ready"] == "READY", state
    assert _post(served, _split(IMAGE)).json()["model_version"] == served["versions"][2]
    listed = {endpoint["name"]: endpoint for endpoint in list_endpoints(served["state_dir"])}
    assert listed[TOY]["state"] == "UPDATE_FAILED" and listed[TOY]["config_version"] == config.config_version
    assert "99" in listed[TOY]["message"]


def test_inference_log_has_every_request_after_a_clean_stop(served):
    good = _post(served, {"instances": [IMAGE], "client_request_id": "last-one"}).json()
    assert served["server"].stop()
    table = read_table(served["log_table"]).to_pylist()
    assert len(table) == served["sent"]
    by_id = {row["databricks_request_id"]: row for row in table}
    last = by_id[good["databricks_request_id"]]
    assert last["client_request_id"] == "last-one" and last["status_code"] == 200
    assert last["model_name"] == TOY and last["served_entity_id"] == good["served_entity_name"]
    assert last["inputs"][0]["sha256"] == hashlib.sha256(_png()).hexdigest()
    assert (last["inputs"][0]["width"], last["inputs"][0]["height"]) == (24, 16)
    assert json.loads(last["inputs"][0]["prediction"]) == good["predictions"][0]
    assert set(dict(last["inputs"][0]["statistics"])) == set(IMAGE_STATISTICS)  # what drift monitoring reads
    assert last["inputs"][0]["features"] == pytest.approx(good["predictions"][0]["mean"], abs=1e-3)
    plain = [row for row in table if row["model_name"] == PLAIN and row["status_code"] == 200]
    assert plain and plain[0]["inputs"][0]["features"] is None  # a model that gives no features
    assert json.loads(last["request"])["instances"][0] == {"sha256": hashlib.sha256(_png()).hexdigest(), "bytes": len(_png())}
    assert last["request_date"] == last["request_time"].date() and last["execution_duration_ms"] > 0
    statuses = {row["status_code"] for row in table}
    assert {200, 400, 404, 413, 500} <= statuses
    refused = [row for row in table if row["status_code"] == 400 and "not valid base64" in (row["error"] or "")]
    assert refused and refused[0]["inputs"] == [] and "row 2" in refused[0]["error"]
    assert max(len(row["request"]) for row in table) < 20_000  # images were replaced by their digests
    server_log = served["server"].log_path.read_text()
    assert "-> 400 row 2, field 'image': not valid base64" in server_log and "-> 500" in server_log
