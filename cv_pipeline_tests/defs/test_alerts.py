"""Alerts reach a webhook: the notifier retries and never raises; the check sensor sends each failed
check once, with its figure and run link; the run-failure sensor names the failed asset and its error.
The webhook is a local HTTP receiver on loopback."""

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from cv_pipeline.defs.alerts import alert_on_failed_checks, alert_on_run_failure
from cv_pipeline.monitoring.alerts import WEBHOOK_URL_ENV, Alert, Figure, WebhookNotifier, utc_iso


class Receiver:
    """Records every JSON body POSTed to it; answers the queued statuses first, then 200."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.statuses: list[int] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/cv_pipeline"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)


@pytest.fixture
def receiver(monkeypatch):
    webhook = Receiver()
    webhook.thread.start()
    monkeypatch.setenv(WEBHOOK_URL_ENV, webhook.url)
    monkeypatch.setenv("CV_PIPELINE_DAGSTER_URL", "http://dagster.example:3000/")
    yield webhook
    webhook.server.shutdown()
    webhook.server.server_close()


def _alert(**changes) -> Alert:
    fields = dict(kind="check_failed", title="check no_input_drift on classification_endpoint_monitoring failed",
                  asset="classification_endpoint_monitoring", check="no_input_drift",
                  figure=Figure("p_value", 0.0003, 0.05), severity="ERROR", run_id="abc",
                  run_url="http://127.0.0.1:3000/runs/abc", message="input drift", time=utc_iso(),
                  metadata={"p_value": 0.0003, "ratio": float("nan")})
    return Alert(**{**fields, **changes})


def test_notifier_posts_the_payload(receiver):
    assert WebhookNotifier.from_env().send(_alert())
    [body] = receiver.bodies
    assert body["kind"] == "check_failed" and body["check"] == "no_input_drift"
    assert body["figure"] == {"name": "p_value", "value": 0.0003, "threshold": 0.05}
    assert body["text"] == ("cv_pipeline: check no_input_drift on classification_endpoint_monitoring failed: "
                            "p_value 0.0003 < 0.05 (run http://127.0.0.1:3000/runs/abc)")
    assert body["metadata"] == {"p_value": 0.0003, "ratio": "nan"}  # strict JSON: no NaN


def test_notifier_retries_a_5xx_then_gives_up_without_raising(receiver, caplog):
    notifier = WebhookNotifier(receiver.url, backoff_s=0.01)
    receiver.statuses = [500]
    assert notifier.send(_alert()) and len(receiver.bodies) == 2

    receiver.bodies.clear()
    receiver.statuses = [503, 503, 503]
    assert notifier.send(_alert()) is False and len(receiver.bodies) == 3
    assert "HTTP 503" in caplog.text and f"127.0.0.1:{receiver.server.server_address[1]}" in caplog.text
    assert "/hooks/cv_pipeline" not in caplog.text  # a webhook's path is its secret

    receiver.bodies.clear()
    receiver.statuses = [400]
    assert notifier.send(_alert()) is False and len(receiver.bodies) == 1  # a 4xx is not retried


def test_notifier_gives_up_when_nothing_listens(caplog):
    with socket.socket() as probe:  # a port that was free a moment ago: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert WebhookNotifier(f"http://127.0.0.1:{port}/hook", timeout_s=1, backoff_s=0.01).send(_alert()) is False
    assert "ConnectionError" in caplog.text and f"127.0.0.1:{port}" in caplog.text
    assert "/hook" not in caplog.text


def test_notifier_refuses_what_is_not_an_http_url(monkeypatch):
    for url in ("ftp://example.com/hook", "hooks.slack.com/services/T0/B0/secret", "http://"):
        with pytest.raises(ValueError, match="http:// or https://"):
            WebhookNotifier(url)
    monkeypatch.setenv(WEBHOOK_URL_ENV, "file:///etc/passwd")
    with pytest.raises(ValueError, match=WEBHOOK_URL_ENV):
        WebhookNotifier.from_env()
    monkeypatch.setenv(WEBHOOK_URL_ENV, "  ")
    assert WebhookNotifier.from_env() is None


@dg.asset
def scored_batch():
    return 1


@dg.asset_check(asset=scored_batch)
def no_input_drift(scored_batch):
    return dg.AssetCheckResult(passed=False, metadata={"figure": "p_value", "value": 0.001, "threshold": 0.05},
                               description="input drift")


@dg.asset_check(asset=scored_batch)
def enough_rows(scored_batch):
    return dg.AssetCheckResult(passed=True, metadata={"rows": 120})


@dg.asset
def broken_table():
    raise ValueError("the lake is gone")


DEFS = dg.Definitions(assets=[scored_batch, broken_table], asset_checks=[no_input_drift, enough_rows],
                      sensors=[alert_on_failed_checks, alert_on_run_failure])


def _tick(instance, cursor):
    return alert_on_failed_checks(dg.build_sensor_context(instance=instance, cursor=cursor, definitions=DEFS))


def _report_failed_drift_check(instance, **metadata):
    """A failed evaluation reported outside any run (as an external monitor would)."""
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("scored_batch"), check_name="no_input_drift", passed=False, metadata=metadata,
        severity=dg.AssetCheckSeverity.WARN))


def test_check_sensor_alerts_each_failed_check_once(receiver):
    with dg.DagsterInstance.ephemeral() as instance:
        _report_failed_drift_check(instance, psi=0.5)  # history: never sent
        first = _tick(instance, None)
        assert not receiver.bodies and first.cursor

        run_id = dg.materialize([scored_batch, no_input_drift, enough_rows], instance=instance).run_id
        _report_failed_drift_check(instance, batch_id="b7", psi=0.31, threshold=0.2)
        second = _tick(instance, first.cursor)
        assert [body["run_id"] for body in receiver.bodies] == [run_id, None]  # the passing check: nothing
        body = receiver.bodies[0]
        assert (body["kind"], body["asset"], body["check"], body["severity"]) == (
            "check_failed", "scored_batch", "no_input_drift", "ERROR")
        assert body["figure"] == {"name": "p_value", "value": 0.001, "threshold": 0.05}
        assert body["run_url"] == f"http://dagster.example:3000/runs/{run_id}"
        assert body["metadata"] == {"figure": "p_value", "value": 0.001, "threshold": 0.05}
        assert body["message"] == "input drift" and body["time"].endswith("+00:00")
        runless = receiver.bodies[1]
        assert runless["severity"] == "WARN" and runless["run_url"] is None
        assert runless["figure"] == {"name": "psi", "value": 0.31, "threshold": 0.2}  # first numeric entry
        assert runless["text"] == "cv_pipeline: check no_input_drift on scored_batch failed: psi 0.31 > 0.2"

        third = _tick(instance, second.cursor)
        assert len(receiver.bodies) == 2 and "0 of 0" in third.skip_reason.skip_message


def test_check_sensor_retries_an_undelivered_alert_next_tick(receiver):
    # On the default local storage, as `dagster dev` has it: SQLite, its event log sharded per run.
    with dg.instance_for_test() as instance:
        cursor = _tick(instance, None).cursor
        _report_failed_drift_check(instance, p_value=0.01)
        receiver.statuses = [404]  # not retried by the notifier; the sensor keeps the alert
        cursor = _tick(instance, cursor).cursor
        _tick(instance, cursor)
        assert len(receiver.bodies) == 2 and receiver.bodies[0] == receiver.bodies[1]


def _failed_run_context(instance):
    result = dg.materialize([scored_batch, broken_table], instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    [record] = instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return dg.build_run_status_sensor_context(
        sensor_name="alert_on_run_failure", dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance, dagster_run=run)


def test_run_failure_sensor_names_the_failed_asset_and_its_error(receiver):
    with dg.DagsterInstance.ephemeral() as instance:
        context = _failed_run_context(instance)
        assert alert_on_run_failure(context) is None
    [body] = receiver.bodies
    run_id = context.dagster_run.run_id
    assert (body["kind"], body["asset"], body["severity"]) == ("run_failed", "broken_table", "ERROR")
    assert body["message"] == "broken_table: ValueError: the lake is gone"
    assert body["run_id"] == run_id and body["run_url"] == f"http://dagster.example:3000/runs/{run_id}"
    assert body["text"].endswith(f"failed: broken_table: ValueError: the lake is gone (run {body['run_url']})")


def test_run_failure_sensor_as_the_daemon_ticks_it_sends_every_failed_run_once(receiver):
    with dg.DagsterInstance.ephemeral() as instance:
        def tick(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=DEFS)
            return alert_on_run_failure.evaluate_tick(context).cursor

        cursor = tick(None)  # starts from now
        runs = [dg.materialize([broken_table], instance=instance, raise_on_error=False).run_id for _ in range(2)]
        cursor = tick(cursor)
        assert sorted(body["run_id"] for body in receiver.bodies) == sorted(runs)  # both in one tick
        tick(cursor)
        assert len(receiver.bodies) == 2


def test_no_webhook_configured_means_no_alerts(receiver, monkeypatch):
    monkeypatch.delenv(WEBHOOK_URL_ENV)
    with dg.DagsterInstance.ephemeral() as instance:
        cursor = _tick(instance, None).cursor
        _report_failed_drift_check(instance, p_value=0.01)
        off = _tick(instance, cursor)
        assert "alerts are off" in off.skip_reason.skip_message
        assert alert_on_run_failure(_failed_run_context(instance)) is None

        # Turned on later: the failure from while alerts were off is not replayed.
        monkeypatch.setenv(WEBHOOK_URL_ENV, receiver.url)
        _tick(instance, off.cursor)
    assert receiver.bodies == []
