"""Alerts: a failed check or a failed run as one JSON message to a webhook.

The payload carries the asset, the check, the figure that failed, a link to the run and a `text`
line, so a Slack or Teams incoming webhook shows something without a template.
`$CV_PIPELINE_ALERT_WEBHOOK_URL` turns alerts on; delivery never fails the caller.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Mapping
from urllib.parse import urlsplit

import requests

WEBHOOK_URL_ENV = "CV_PIPELINE_ALERT_WEBHOOK_URL"
DAGSTER_URL_ENV = "CV_PIPELINE_DAGSTER_URL"
DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"
SOURCE = "cv_pipeline"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Figure:
    """The number a check failed on: `p_value` 0.0003 against the threshold 0.05."""

    name: str
    value: float
    threshold: float | None = None

    def describe(self) -> str:
        if self.threshold is None:
            return f"{self.name} {self.value:g}"
        relation = "<" if self.value < self.threshold else ">" if self.value > self.threshold else "="
        return f"{self.name} {self.value:g} {relation} {self.threshold:g}"


@dataclass(frozen=True)
class Alert:
    """One failed check or failed run, as it is sent."""

    kind: Literal["check_failed", "run_failed"]
    title: str  # one line
    asset: str | None  # the asset key as a user string ("lake/coco_images"), or None
    check: str | None
    figure: Figure | None
    severity: Literal["ERROR", "WARN"]
    run_id: str | None
    run_url: str | None
    message: str
    time: str  # ISO 8601, UTC
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """One line for chat webhooks: what failed, on which figure, and where to look."""
        detail = self.figure.describe() if self.figure else (self.message.strip().splitlines() or [""])[0]
        line = f"{SOURCE}: {self.title}" + (f": {detail}" if detail else "")
        return line + (f" (run {self.run_url})" if self.run_url else "")

    def to_payload(self) -> dict[str, Any]:
        """A JSON-able dict: every field (the figure as {name, value, threshold}) plus `text`."""
        figure = None if self.figure is None else {
            "name": self.figure.name, "value": self.figure.value, "threshold": self.figure.threshold}
        payload = {"source": SOURCE, "kind": self.kind, "title": self.title, "asset": self.asset,
                   "check": self.check, "figure": figure, "severity": self.severity, "run_id": self.run_id,
                   "run_url": self.run_url, "message": self.message, "time": self.time,
                   "metadata": dict(self.metadata), "text": self.text()}
        return _json_safe(payload)


def figure_from_metadata(metadata: Mapping[str, Any]) -> Figure | None:
    """The figure a check's metadata names. Convention: `value` (the number), `figure` (its name;
    or the key holding the number when `value` is absent) and `threshold`; without them, the first
    numeric entry other than `threshold`."""
    name = metadata.get("figure") if isinstance(metadata.get("figure"), str) else None
    threshold = metadata.get("threshold") if _is_number(metadata.get("threshold")) else None
    if _is_number(metadata.get("value")):
        return Figure(name or "value", metadata["value"], threshold)
    if name and _is_number(metadata.get(name)):
        return Figure(name, metadata[name], threshold)
    for key, value in metadata.items():
        if key != "threshold" and _is_number(value):
            return Figure(key, value, threshold)
    return None


def run_url(run_id: str) -> str:
    """The run's page in the Dagster UI: `$CV_PIPELINE_DAGSTER_URL` (default
    http://127.0.0.1:3000) + `/runs/<run_id>`."""
    base = os.environ.get(DAGSTER_URL_ENV, "").strip() or DEFAULT_DAGSTER_URL
    return f"{base.rstrip('/')}/runs/{run_id}"


def utc_iso(timestamp: float | None = None) -> str:
    """A Unix timestamp (default: now) as ISO 8601 in UTC."""
    moment = datetime.fromtimestamp(time.time() if timestamp is None else timestamp, tz=timezone.utc)
    return moment.isoformat(timespec="milliseconds")


class WebhookNotifier:
    """POSTs alerts as JSON to one webhook URL. Connection errors, timeouts, 429 and 5xx answers are
    retried `retries` times with a short doubling backoff; an alert that still is not delivered is
    logged as a warning and `send` returns False: alerting never fails what it reports on."""

    def __init__(self, url: str, timeout_s: float = 5.0, retries: int = 2, headers: dict | None = None,
                 backoff_s: float = 0.5):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # The URL itself is not echoed: a webhook URL is a secret (Slack's carries its token).
            raise ValueError(f"alert webhook URL must be http:// or https:// with a host, "
                             f"got scheme {parts.scheme or '(none)'!r}")
        if retries < 0 or timeout_s <= 0 or backoff_s < 0:
            raise ValueError(f"WebhookNotifier needs retries >= 0, timeout_s > 0 and backoff_s >= 0, "
                             f"got retries={retries}, timeout_s={timeout_s}, backoff_s={backoff_s}")
        self.url = url
        self.timeout_s = timeout_s
        self.retries = retries
        self.headers = dict(headers or {})
        self.backoff_s = backoff_s

    @classmethod
    def from_env(cls) -> WebhookNotifier | None:
        """The notifier of `$CV_PIPELINE_ALERT_WEBHOOK_URL`; None (alerts off) when unset or empty."""
        url = os.environ.get(WEBHOOK_URL_ENV, "").strip()
        if not url:
            return None
        try:
            return cls(url)
        except ValueError as error:
            raise ValueError(f"{WEBHOOK_URL_ENV}: {error}") from None

    @property
    def destination(self) -> str:
        """The URL as logs show it: scheme, host and port; the path (often the secret) left out."""
        parts = urlsplit(self.url)
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{parts.hostname}{port}/…"

    def _redacted(self, text: str) -> str:
        """`text` (an error from requests, which quotes the URL) without the URL's path and query."""
        parts = urlsplit(self.url)
        secret = parts.path + (f"?{parts.query}" if parts.query else "")
        text = text.replace(self.url, self.destination)
        return text.replace(secret, "/…") if secret.strip("/") else text

    def send(self, alert: Alert) -> bool:
        """Deliver one alert; True when the webhook answered 2xx."""
        payload = alert.to_payload()
        problem = "not attempted"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = requests.post(self.url, json=payload, headers=self.headers, timeout=self.timeout_s,
                                         allow_redirects=False)
            except (requests.ConnectionError, requests.Timeout) as error:
                problem = self._redacted(f"{type(error).__name__}: {error}")
                continue
            except requests.RequestException as error:  # not transient: retrying would not help
                problem = self._redacted(f"{type(error).__name__}: {error}")
                break
            if 200 <= response.status_code < 300:
                return True
            problem = f"HTTP {response.status_code} {response.text[:200]!r}"
            if response.status_code != 429 and response.status_code < 500:
                break  # the webhook refused this request; the same request would be refused again
        log.warning("cv_pipeline: alert %r not delivered to %s after %d attempt(s): %s",
                    alert.title, self.destination, attempt + 1, problem)
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_safe(value: Any) -> Any:
    """Plain JSON: containers and scalars kept, non-finite floats and other objects as text (a
    strict JSON encoder, as `requests` uses, refuses NaN)."""
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)
