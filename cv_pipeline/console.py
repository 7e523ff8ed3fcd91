"""What `cv-pipeline run` prints: one line as each step starts and ends (duration, key figure),
a progress bar per training run, warnings and errors in full; everything else (Dagster's DEBUG
event stream, Spark's and Ray's start-up chatter, job output) goes to a log file.

    with run_console(log_path, verbose=False) as console:
        job.execute_in_process(..., run_config=console.run_config(...))   # console.logger_defs() on the job
        console.print("summary ...")

The log file takes the process's file descriptors 1 and 2, so the JVM, Ray and every Pipes job
subprocess write there too; the console writes to a duplicate of the original stdout.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import IO, Iterator

# Pipes training jobs log one message per epoch in this form (see cv_pipeline.jobs.train); the
# console turns them into a progress bar with an ETA.
EPOCH_MESSAGE = "epoch {epoch}/{epochs}: {metrics}"
_EPOCH_PATTERN = re.compile(r"^epoch (\d+)/(\d+): ?(.*)$")
LOGGER_KEY = "cv_pipeline_console"


def epoch_message(epoch: int, epochs: int, metrics: dict) -> str:
    """The per-epoch progress message of a training job (epoch counted from 1)."""
    shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)))
    return EPOCH_MESSAGE.format(epoch=epoch, epochs=epochs, metrics=shown)


def parse_epoch_message(message: str) -> tuple[int, int, str] | None:
    match = _EPOCH_PATTERN.match(message.strip())
    return (int(match.group(1)), int(match.group(2)), match.group(3)) if match else None


def key_figure(metadata: dict) -> str:
    """The figure a person looks for first in an asset's metadata, found by what the asset says
    about itself (its primary or monitored metric, its decision, version, row count), not by name."""
    def number(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    parts = []
    accepted, quarantined = metadata.get("accepted"), metadata.get("quarantined")
    if isinstance(accepted, dict) and isinstance(quarantined, dict):  # an ingestion's record counts
        parts.append("accepted " + ", ".join(f"{n} {kind}" for kind, n in accepted.items())
                     + f"; quarantined {sum(quarantined.values())}")
    for pointer in ("primary_metric", "monitor"):
        name = metadata.get(pointer)
        if isinstance(name, str) and isinstance(metadata.get(name), (int, float)):
            parts.append(f"{name}={number(metadata[name])}")
            break
    if "decision" in metadata:
        parts.append(f"decision={metadata['decision']}")
    if "version" in metadata and "model_name" in metadata:
        parts.append(f"{metadata['model_name']} v{metadata['version']}")
    if "invocations_url" in metadata:
        parts.append(str(metadata["invocations_url"]))
    if not parts and isinstance(metadata.get("dagster/row_count"), int):
        parts.append(f"{metadata['dagster/row_count']} rows")
    if "delta_version" in metadata and not parts[1:]:
        parts.append(f"Delta v{metadata['delta_version']}")
    return ", ".join(parts)


class ConsoleReporter:
    """Turns a run's Dagster log records into console lines (and progress bars on a terminal)."""

    def __init__(self, stream: IO[str], verbose: bool = False):
        self.stream = stream
        self.verbose = verbose
        self.interactive = stream.isatty()
        self.started: dict[str, float] = {}
        self.figures: dict[str, list[str]] = {}
        self.checks: dict[str, list[bool]] = {}
        self.bars: dict[str, object] = {}
        self.failed_checks: list[str] = []

    def print(self, text: str = "") -> None:
        for bar in self.bars.values():
            bar.clear()
        self.stream.write(text + "\n")
        self.stream.flush()
        for bar in self.bars.values():
            bar.refresh()

    def _label(self, meta: dict) -> str:
        step = meta.get("step_key") or meta.get("job_name") or "run"
        partition = (meta.get("job_tags") or {}).get("dagster/partition")
        return f"{step} [{partition}]" if partition else step

    def handle(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        event = meta.get("dagster_event")
        label = self._label(meta)
        if event is None:
            self._message(label, meta.get("orig_message") or record.getMessage(), record.levelno)
            return
        kind = event.event_type_value
        if kind == "STEP_START":
            self.started[label] = time.perf_counter()
            self.figures[label] = []
            self.print(f"  ... {label}")
        elif kind == "ASSET_MATERIALIZATION":
            materialization = event.event_specific_data.materialization
            figure = key_figure({k: v.value for k, v in materialization.metadata.items()})
            figures = self.figures.setdefault(label, [])
            if figure and not figures:  # a multi-asset step: its first asset speaks for it
                figures.append(figure)
        elif kind == "ASSET_CHECK_EVALUATION":
            evaluation = event.event_specific_data
            self.checks.setdefault(label, []).append(evaluation.passed)
            if not evaluation.passed:
                name = f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}"
                severity = evaluation.severity.value
                self.failed_checks.append(f"{name} ({severity})")
                self.print(f"  !   check {name} FAILED ({severity})" + _check_detail(evaluation))
        elif kind == "STEP_SUCCESS":
            self._close_bar(label)
            seconds, figures = self._finish(label)
            self.print(f"  ok  {label}  {seconds:.1f}s" + (f"  {figures}" if figures else ""))
        elif kind == "STEP_FAILURE":
            self._close_bar(label)
            seconds, figures = self._finish(label)
            if _root_error_class(event) == "DagsterAssetCheckFailedError":  # materialized, then stopped by a check
                self.print(f"  !   {label}  {seconds:.1f}s  {figures + '; ' if figures else ''}"
                           f"stopped by a blocking check")
            else:
                self.print(f"  ERR {label}  {seconds:.1f}s  {_failure_text(event)}")

    def _finish(self, label: str) -> tuple[float, str]:
        """Seconds since the step started, and its figures: the first asset's, and its checks passed."""
        seconds = time.perf_counter() - self.started.pop(label, time.perf_counter())
        figures = self.figures.pop(label, [])
        checks = self.checks.pop(label, [])
        if checks:
            figures.append(f"checks {sum(checks)}/{len(checks)} passed")
        return seconds, "; ".join(figures)

    def _message(self, label: str, message: str, level: int) -> None:
        progress = parse_epoch_message(message)
        if progress is not None:
            self._progress(label, *progress)
        elif message.startswith(_UPSTREAM_FAILED):  # Dagster's words for a step it skips
            self.print(f"  --  {label}  skipped: an upstream step failed or was held back")
        elif level >= logging.WARNING and "[pipes]" not in message:
            self.print(f"  {'!' if level < logging.ERROR else 'ERR'}   {label}: {message.strip()}")

    def _progress(self, label: str, epoch: int, epochs: int, metrics: str) -> None:
        if not self.interactive:
            return
        bar = self.bars.get(label)
        if bar is None:
            from tqdm import tqdm

            bar = self.bars[label] = tqdm(total=epochs, desc=f"      {label}", unit="epoch", file=self.stream,
                                          leave=False, dynamic_ncols=True)
        bar.update(epoch - bar.n)
        bar.set_postfix_str(metrics, refresh=True)

    def _close_bar(self, label: str) -> None:
        bar = self.bars.pop(label, None)
        if bar is not None:
            bar.close()

    def logging_handler(self) -> logging.Handler:
        reporter = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    reporter.handle(record)
                except Exception:  # a console glitch must never fail a run
                    self.handleError(record)

        return _Handler(logging.DEBUG)

    def logger_defs(self) -> dict:
        """Logger definitions for `JobDefinition.with_logger_defs`: this console and Dagster's own
        console logger (which writes into the log file while the console is redirected)."""
        import dagster as dg
        from dagster._loggers import colored_console_logger

        @dg.logger(description="cv-pipeline's console: step lines, progress bars, warnings and errors.")
        def console(_init_context):
            logger = logging.Logger(LOGGER_KEY, level=logging.DEBUG)
            logger.addHandler(self.logging_handler())
            return logger

        return {LOGGER_KEY: console, "console": colored_console_logger}

    def run_config(self, run_config: dict | None = None) -> dict:
        return {**(run_config or {}), "loggers": {LOGGER_KEY: {}, "console": {"config": {"log_level": "DEBUG"}}}}


def _check_detail(evaluation) -> str:
    metadata = {k: v.value for k, v in (evaluation.metadata or {}).items()}
    for key in ("message", "description", "summary", "observed"):
        if metadata.get(key):
            return f": {str(metadata[key])[:300]}"
    return ""


_UPSTREAM_FAILED = "Dependencies for step "


def _root_error(event):
    error = getattr(event.event_specific_data, "error", None)
    while error is not None and error.cause is not None:
        error = error.cause
    return error


def _root_error_class(event) -> str | None:
    error = _root_error(event)
    return error.cls_name if error is not None else None


def _failure_text(event) -> str:
    data = event.event_specific_data
    if getattr(data, "user_failure_data", None) is not None and data.user_failure_data.description:
        return data.user_failure_data.description.strip()
    error = _root_error(event)
    return error.message.strip() if error is not None else "failed"


@contextmanager
def run_console(log_path: Path, verbose: bool = False) -> Iterator[ConsoleReporter]:
    """A reporter writing to this process's stdout while file descriptors 1 and 2 go to `log_path`
    (with `verbose`, nothing is redirected and the full stream stays on the console)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if verbose:
        yield ConsoleReporter(sys.stdout, verbose=True)
        return
    saved = os.dup(1), os.dup(2)
    console = open(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    with open(log_path, "ab", buffering=0) as log, open(log_path, "a", buffering=1, encoding="utf-8") as text, \
            redirect_stdout(text), redirect_stderr(text):
        os.dup2(log.fileno(), 1)  # the JVM, Ray and job subprocesses write to the descriptors
        os.dup2(log.fileno(), 2)
        try:
            yield ConsoleReporter(console)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            console.close()
