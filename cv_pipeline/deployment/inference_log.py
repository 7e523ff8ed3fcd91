"""The `inference_log` Delta table: every request a serving endpoint answered, bad ones included.

Shaped like a Databricks inference table (`databricks_request_id`, `client_request_id`,
`request_time`, `request_date`, `served_entity_id`, `status_code`, `execution_duration_ms`,
`request`, `response`) plus parsed columns the monitoring reads without parsing JSON: the model name
and version, the error text, and `inputs`, one struct per row (sha256, width, height, prediction, and
what drift monitoring reads: the image's statistics and the served model's penultimate features).

Writes are off the request path: `InferenceLogWriter.add` only appends to a list; a background
thread commits the pending rows every `flush_interval_s` or as soon as `flush_rows` are pending, one
delta-rs append each. A failed commit keeps its rows for the next flush and is logged, never
raised into a request; `close()` flushes everything (a killed server loses at most one interval).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from cv_pipeline.data.delta_io import append_rows

log = logging.getLogger(__name__)

INPUT_TYPE = pa.struct(
    [
        ("row", pa.int32()),
        ("sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("prediction", pa.string()),  # JSON
        # what monitoring compares with the model's training data: the decoded image's statistics
        # (cv_pipeline.data.image_statistics) and the served model's penultimate features
        ("statistics", pa.map_(pa.string(), pa.float64())),
        ("features", pa.list_(pa.float32())),
    ]
)
SCHEMA = pa.schema(
    [
        ("databricks_request_id", pa.string()),
        ("client_request_id", pa.string()),
        ("request_time", pa.timestamp("us", tz="UTC")),
        ("request_date", pa.date32()),
        ("endpoint_name", pa.string()),
        ("served_entity_id", pa.string()),
        ("model_name", pa.string()),
        ("model_version", pa.string()),
        ("status_code", pa.int32()),
        ("execution_duration_ms", pa.float64()),
        ("request", pa.string()),  # JSON; image cells replaced by {"sha256", "bytes"} unless kept
        ("response", pa.string()),  # JSON
        ("error", pa.string()),
        ("inputs", pa.list_(INPUT_TYPE)),
    ]
)
PARTITION_BY = ("request_date",)


def to_arrow(records: list[dict[str, Any]]) -> pa.Table:
    """Records (dicts with SCHEMA's names; `request_date` derived from `request_time` when absent)
    as a Table of SCHEMA."""
    rows = []
    for record in records:
        row = dict(record)
        time = row["request_time"]
        if time.tzinfo is None:
            time = time.replace(tzinfo=timezone.utc)
        row["request_time"] = time
        row.setdefault("request_date", time.astimezone(timezone.utc).date())
        row.setdefault("inputs", [])
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


class InferenceLogWriter:
    """Batches inference log records and appends them to the Delta table at `path`."""

    def __init__(self, path: str | Path, flush_interval_s: float = 2.0, flush_rows: int = 1000):
        if not float(flush_interval_s) > 0 or int(flush_rows) < 1:
            raise ValueError(f"inference log: flush_interval_s must be > 0 and flush_rows >= 1, got "
                             f"{flush_interval_s!r} and {flush_rows!r}")
        self.path = str(path)
        self.flush_interval_s = float(flush_interval_s)
        self.flush_rows = int(flush_rows)
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()  # guards _pending
        self._write_lock = threading.Lock()  # one commit at a time (the thread and close())
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        self.rows_written = 0
        self.failed_writes = 0
        self.last_error: str | None = None

    def start(self) -> "InferenceLogWriter":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="inference-log-writer", daemon=True)
            self._thread.start()
        return self

    def add(self, record: dict[str, Any]) -> None:
        """Queue one record; never blocks on IO."""
        with self._lock:
            self._pending.append(record)
            full = len(self._pending) >= self.flush_rows
        if full:
            self._wake.set()

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Commit every pending record now; returns how many were written (0 on a failed commit,
        whose records stay pending for the next flush)."""
        with self._write_lock:
            with self._lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            try:
                append_rows(to_arrow(batch), self.path, partition_by=PARTITION_BY)
            except Exception as error:  # noqa: BLE001 - a write failure must never reach a request
                with self._lock:
                    self._pending[:0] = batch
                self.failed_writes += 1
                self.last_error = f"{type(error).__name__}: {error}"
                log.warning("inference log: appending %d rows to %s failed (retried on the next flush): %s",
                            len(batch), self.path, self.last_error)
                return 0
            self.rows_written += len(batch)
            return len(batch)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self.flush()

    def close(self) -> None:
        """Stop the thread and flush what is left (a last failure is logged and the rows lost)."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        self.flush()
        if self.pending:
            log.error("inference log: %d rows could not be written to %s: %s", self.pending, self.path, self.last_error)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
