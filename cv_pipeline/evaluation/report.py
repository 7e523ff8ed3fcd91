"""Evaluation reports: one self-contained HTML page, and per-image / per-class rows as Arrow tables.

The page inlines its CSS and its images (base64 data URIs) and links nothing outside itself, so it
opens the same from an MLflow artifact, a Databricks volume or an e-mail attachment. The tables
share one declared schema across tasks and runs, so every evaluation appends to the same Delta
tables; a column that does not apply to a task stays null.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import pyarrow as pa

from cv_pipeline.evaluation.error_analysis import ERROR_TYPES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class MetricsSection:
    """The headline numbers (name -> value), shown as a prominent two-column table."""

    title: str
    metrics: Mapping[str, Any]


@dataclass(frozen=True)
class TableSection:
    """A table from a list of row dicts, or from a dict: name -> row dict, or name -> value."""

    title: str
    rows: Sequence[Mapping[str, Any]] | Mapping[str, Any]
    index_label: str = "name"


@dataclass(frozen=True)
class ReportImage:
    """A PNG and the caption shown under it (also its alt text)."""

    png: bytes
    caption: str


@dataclass(frozen=True)
class ImagesSection:
    """Figures, each a `ReportImage` or a (png bytes, caption) pair."""

    title: str
    images: Sequence[ReportImage | tuple[bytes, str]]


@dataclass(frozen=True)
class NotesSection:
    """Free text: one paragraph, or a bulleted list of lines."""

    title: str
    notes: str | Sequence[str]


Section = Union[MetricsSection, TableSection, ImagesSection, NotesSection]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #1d2330; line-height: 1.45; }
h1 { font-size: 1.6rem; border-bottom: 2px solid #d0d7e2; padding-bottom: .4rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
th, td { border: 1px solid #d0d7e2; padding: .3rem .6rem; text-align: left; }
th { background: #eef2f7; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
table.metrics td { font-size: 1.05rem; }
table.metrics td.number { font-weight: 600; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #d0d7e2; }
figcaption { font-size: .85rem; color: #4a5568; }
.empty { color: #718096; font-style: italic; }
"""


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _format(value: Any) -> tuple[str, bool]:
    """(escaped cell text, whether the cell is numeric)."""
    if value is None:
        return "", False
    if isinstance(value, bool):
        return _text(value), False
    if isinstance(value, int):
        return _text(value), True
    if isinstance(value, float):
        return ("n/a" if math.isnan(value) else _text(f"{value:.4g}")), True
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        return _format(value.item())
    return _text(value), False


def _cell(value: Any) -> str:
    text, numeric = _format(value)
    return f'<td class="number">{text}</td>' if numeric else f"<td>{text}</td>"


def _table_rows(section: TableSection) -> tuple[list[str], list[Mapping[str, Any]]]:
    rows = section.rows
    if isinstance(rows, Mapping):
        if rows and all(isinstance(value, Mapping) for value in rows.values()):
            rows = [{section.index_label: name, **value} for name, value in rows.items()]
        else:
            rows = [{section.index_label: name, "value": value} for name, value in rows.items()]
    columns: dict[str, None] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"table {section.title!r} row {index} must be a dict, got {type(row).__name__}")
        columns.update(dict.fromkeys(str(key) for key in row))
    return list(columns), [{str(key): value for key, value in row.items()} for row in rows]


def _render_section(section: Section, index: int) -> str:
    if not isinstance(section, (MetricsSection, TableSection, ImagesSection, NotesSection)):
        raise ValueError(f"sections[{index}] must be a report section, got {type(section).__name__}")
    parts = [f"<section><h2>{_text(section.title)}</h2>"]
    if isinstance(section, MetricsSection):
        parts.append('<table class="metrics"><tbody>')
        for name, value in section.metrics.items():
            parts.append(f"<tr><th>{_text(name)}</th>{_cell(value)}</tr>")
        parts.append("</tbody></table>")
    elif isinstance(section, TableSection):
        columns, rows = _table_rows(section)
        if not rows:
            parts.append('<p class="empty">No rows.</p>')
        else:
            header = "".join(f"<th>{_text(column)}</th>" for column in columns)
            parts.append(f"<table><thead><tr>{header}</tr></thead><tbody>")
            for row in rows:
                parts.append("<tr>" + "".join(_cell(row.get(column)) for column in columns) + "</tr>")
            parts.append("</tbody></table>")
    elif isinstance(section, ImagesSection):
        for position, image in enumerate(section.images):
            png, caption = (image.png, image.caption) if isinstance(image, ReportImage) else image
            if not isinstance(png, (bytes, bytearray)) or not bytes(png).startswith(PNG_SIGNATURE):
                raise ValueError(f"sections[{index}] image {position} ({caption!r}) is not PNG bytes")
            data = base64.b64encode(bytes(png)).decode("ascii")
            parts.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{_text(caption)}">'
                f"<figcaption>{_text(caption)}</figcaption></figure>"
            )
    else:
        notes = section.notes
        if isinstance(notes, str):
            parts.append(f"<p>{_text(notes)}</p>")
        else:
            parts.append("<ul>" + "".join(f"<li>{_text(note)}</li>" for note in notes) + "</ul>")
    parts.append("</section>")
    return "\n".join(parts)


def html_report(title: str, sections: Sequence[Section]) -> str:
    """One self-contained HTML page: inline CSS, images as data URIs, every text HTML-escaped."""
    if isinstance(sections, (str, bytes)) or not isinstance(sections, Sequence):
        raise ValueError(f"sections must be a list of report sections, got {type(sections).__name__}")
    body = "\n".join(_render_section(section, index) for index, section in enumerate(sections))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_text(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><h1>{_text(title)}</h1>\n{body}\n</body></html>\n"
    )


def write_report(path: str | Path, html_text: str) -> Path:
    """Write the page as UTF-8, creating parent folders; atomic, so a reader never sees half a page."""
    if not isinstance(html_text, str):
        raise ValueError(f"html_text must be a str, got {type(html_text).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(html_text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


RUN_SCHEMA = pa.schema([
    pa.field("model_name", pa.string(), nullable=False),
    pa.field("model_version", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("task", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
    pa.field("dataset_version", pa.string(), nullable=False),
    pa.field("evaluated_at", pa.timestamp("us", tz="UTC"), nullable=False),
])  # fmt: skip
"""Who was evaluated on what, repeated on every row. Versions are strings: MLflow's model versions
are, and a dataset version may be a Delta version number or a tag."""

_COUNT_COLUMNS = [
    pa.field("tp", pa.int64()),
    pa.field("fp", pa.int64()),
    *(pa.field(f"fp_{name}", pa.int64()) for name in ERROR_TYPES),
    pa.field("missed", pa.int64()),
    pa.field("ignored", pa.int64()),
]
_EXTRA = pa.field("extra", pa.map_(pa.string(), pa.float64()))

PER_IMAGE_SCHEMA = pa.schema([
    *RUN_SCHEMA,
    pa.field("batch_id", pa.string()),  # source image ids are unique within a landing batch
    pa.field("image_id", pa.int64(), nullable=False),
    pa.field("annotation_id", pa.int64()),  # set when the unit is an object crop (classification)
    pa.field("file_name", pa.string()),
    pa.field("num_gt", pa.int64()),
    pa.field("num_pred", pa.int64()),
    *_COUNT_COLUMNS,
    pa.field("errors", pa.int64()),
    pa.field("error_score", pa.float64()),
    pa.field("label", pa.int64()),
    pa.field("prediction", pa.int64()),
    pa.field("correct", pa.bool_()),
    pa.field("confidence", pa.float64()),
    pa.field("pixel_accuracy", pa.float64()),
    pa.field("mean_iou", pa.float64()),
    _EXTRA,
])  # fmt: skip
"""One row per evaluated image (or object crop): detection counts by outcome, classification
label / prediction, segmentation scores; `extra` holds a custom task's per-image numbers."""

PER_CLASS_SCHEMA = pa.schema([
    *RUN_SCHEMA,
    pa.field("class_id", pa.int64(), nullable=False),
    pa.field("class_name", pa.string()),
    pa.field("num_gt", pa.int64()),
    pa.field("num_pred", pa.int64()),
    *_COUNT_COLUMNS,
    pa.field("precision", pa.float64()),
    pa.field("recall", pa.float64()),
    pa.field("f1", pa.float64()),
    pa.field("ap", pa.float64()),
    pa.field("ap50", pa.float64()),
    pa.field("ap75", pa.float64()),
    pa.field("iou", pa.float64()),
    _EXTRA,
])  # fmt: skip
"""One row per class: support and prediction counts, detection outcomes, classification precision /
recall / F1, COCO AP, segmentation IoU; `extra` holds a custom task's per-class numbers."""


def _run_values(run_columns: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(run_columns, Mapping):
        raise ValueError(f"run_columns must be a dict, got {type(run_columns).__name__}")
    expected = set(RUN_SCHEMA.names)
    missing, unknown = expected - set(run_columns), set(run_columns) - expected
    if missing or unknown:
        raise ValueError(
            f"run_columns must have exactly {RUN_SCHEMA.names}; "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}"
        )
    values = {}
    for field in RUN_SCHEMA:
        value = run_columns[field.name]
        if value is None:
            if not field.nullable:
                raise ValueError(f"run_columns[{field.name!r}] must not be None")
        elif field.name == "evaluated_at":
            if not isinstance(value, dt.datetime) or value.tzinfo is None:
                raise ValueError(f"run_columns['evaluated_at'] must be a timezone-aware datetime, got {value!r}")
            value = value.astimezone(dt.timezone.utc)
        elif field.name.endswith("_version") and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        elif not isinstance(value, str) or not value:
            raise ValueError(f"run_columns[{field.name!r}] must be a non-empty string, got {value!r}")
        values[field.name] = value
    return values


def _table(rows: Sequence[Mapping[str, Any]], run_columns: Mapping[str, Any], schema: pa.Schema, name: str) -> pa.Table:
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
        raise ValueError(f"rows must be a list of dicts, got {type(rows).__name__}")
    run = _run_values(run_columns)
    row_columns = [field for field in schema if field.name not in run]
    allowed = {field.name for field in row_columns}
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise ValueError(f"rows[{index}] must be a dict, got {type(row).__name__}")
        unknown = set(row) - allowed
        if unknown:
            raise ValueError(
                f"rows[{index}] has columns {sorted(map(str, unknown))} that the {name} schema does not declare; "
                f"put a task's own numbers under 'extra'"
            )
    arrays = [pa.array([run[field.name]] * len(rows), type=field.type) for field in RUN_SCHEMA]
    for field in row_columns:
        values = [row.get(field.name) for row in rows]
        if not field.nullable and any(value is None for value in values):
            raise ValueError(f"rows[{values.index(None)}] needs a value for {field.name!r}")
        if field.name == "extra":
            for index, value in enumerate(values):
                if value is not None and not isinstance(value, Mapping):
                    raise ValueError(f"rows[{index}]['extra'] must be a dict of name -> number, got {value!r}")
            values = [None if value is None else [(str(k), v) for k, v in value.items()] for value in values]
        try:
            arrays.append(pa.array(values, type=field.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as error:
            raise ValueError(f"{name} column {field.name!r} has a value that is not {field.type}: {error}") from error
    return pa.Table.from_arrays(arrays, schema=schema)


def per_image_table(rows: Sequence[Mapping[str, Any]], run_columns: Mapping[str, Any]) -> pa.Table:
    """Per-image rows (keys from `PER_IMAGE_SCHEMA`, missing ones null) with the run columns on each."""
    return _table(rows, run_columns, PER_IMAGE_SCHEMA, "per-image")


def per_class_table(rows: Sequence[Mapping[str, Any]], run_columns: Mapping[str, Any]) -> pa.Table:
    """Per-class rows (keys from `PER_CLASS_SCHEMA`, missing ones null) with the run columns on each."""
    return _table(rows, run_columns, PER_CLASS_SCHEMA, "per-class")
