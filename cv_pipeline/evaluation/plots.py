"""Evaluation plots as PNG bytes, for asset metadata and MLflow artifacts.

Figures are drawn on a `matplotlib.figure.Figure` with its own Agg canvas, never through
`pyplot`, so nothing touches the global backend or figure registry other code may be using.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def confusion_matrix_png(
    confusion_matrix: Any,
    class_names: Sequence[str],
    *,
    normalize: bool = True,
    title: str = "Confusion matrix",
) -> bytes:
    """A confusion-matrix heat map as PNG bytes; rows are ground truth, columns predictions.

    Each cell shows its count and, with `normalize`, the fraction of its row (the colour then
    encodes that fraction, so rare classes stay readable). The figure grows with the number of
    classes and the annotation font shrinks, so it stays legible up to about 30 classes.
    """
    counts = np.asarray(confusion_matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion_matrix must be square, got shape {counts.shape}")
    num_classes = counts.shape[0]
    if num_classes == 0:
        raise ValueError("confusion_matrix is empty")
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} entries but confusion_matrix is {num_classes} x {num_classes}"
        )
    if not np.issubdtype(counts.dtype, np.number):
        raise ValueError(f"confusion_matrix must be numeric, got dtype {counts.dtype}")

    row_totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=np.float64), where=row_totals != 0)
    shown = fractions if normalize else counts.astype(np.float64)

    side = float(np.clip(2.5 + 0.45 * num_classes, 4.0, 16.0))
    font_size = float(np.clip(11.0 - 0.22 * num_classes, 4.5, 10.0))
    figure = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(
        shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else max(float(shown.max()), 1.0), aspect="equal"
    )
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class" if normalize else "count")

    threshold = 0.5 * (1.0 if normalize else max(float(shown.max()), 1.0))
    integral = np.issubdtype(counts.dtype, np.integer) or bool(np.all(counts == np.round(counts)))
    for row in range(num_classes):
        for column in range(num_classes):
            count = counts[row, column]
            text = f"{int(count)}" if integral else f"{float(count):.3g}"
            if normalize:
                text += f"\n{fractions[row, column]:.2f}"
            axes.text(
                column,
                row,
                text,
                ha="center",
                va="center",
                fontsize=font_size,
                color="white" if shown[row, column] > threshold else "black",
            )

    ticks = np.arange(num_classes)
    axes.set_xticks(ticks, labels=[str(name) for name in class_names], rotation=45 if num_classes > 4 else 0,
                    ha="right" if num_classes > 4 else "center", fontsize=max(font_size, 6.0))
    axes.set_yticks(ticks, labels=[str(name) for name in class_names], fontsize=max(font_size, 6.0))
    axes.set_xlabel("predicted")
    axes.set_ylabel("ground truth")
    axes.set_title(title)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def png_data_uri_markdown(png: bytes, alt: str) -> str:
    """`![alt](data:image/png;base64,...)`: an inline image for Dagster markdown metadata."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("png does not start with the PNG signature")
    safe_alt = alt.replace("[", "(").replace("]", ")").replace("\n", " ")
    return f"![{safe_alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"
