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
    classes and the annotation font shrinks, so it stays legible up to about 30 classes; past 15
    classes zero cells are left blank.
    """
    counts = np.asarray(confusion_matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion_matrix must be square, got shape {counts.shape}")
    num_classes = counts.shape[0]
    if num_classes == 0:
        raise ValueError("confusion_matrix is empty")
    if len(class_names) != num_classes:
        raise ValueError(
            f"class_names has {len(class_names)} entries "
            f"but confusion_matrix is {num_classes} x {num_classes}"
        )
    if not np.issubdtype(counts.dtype, np.number):
        raise ValueError(f"confusion_matrix must be numeric, got dtype {counts.dtype}")

    row_totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    fractions = np.zeros(counts.shape, dtype=np.float64)
    np.divide(counts, row_totals, out=fractions, where=row_totals != 0)
    shown = fractions if normalize else counts.astype(np.float64)

    side = float(np.clip(2.5 + 0.45 * num_classes, 4.0, 16.0))
    font_size = float(np.clip(12.0 - 0.17 * num_classes, 6.5, 10.0))
    label_size = max(font_size, 7.0)
    figure = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    vmax = 1.0 if normalize else max(float(shown.max()), 1.0)
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=vmax, aspect="equal")
    colorbar = figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class" if normalize else "count")

    # Past 15 classes empty cells stay blank, so the errors that do occur stand out.
    skip_zeros = num_classes > 15
    integral = np.issubdtype(counts.dtype, np.integer) or bool(np.all(counts == np.round(counts)))
    for row in range(num_classes):
        for column in range(num_classes):
            count = counts[row, column]
            if skip_zeros and count == 0:
                continue
            text = f"{int(count)}" if integral else f"{float(count):.3g}"
            if normalize:
                text += f"\n{fractions[row, column]:.2f}"
            annotation = axes.text(
                column,
                row,
                text,
                ha="center",
                va="center",
                fontsize=font_size,
                color="white" if shown[row, column] > 0.5 * vmax else "black",
            )
            annotation.set_in_layout(False)  # inside the axes; measuring hundreds of them is slow

    ticks = np.arange(num_classes)
    names = [str(name) for name in class_names]
    rotate = num_classes > 4 or max(len(name) for name in names) > 12
    axes.set_xticks(
        ticks, labels=names, rotation=45 if rotate else 0, ha="right" if rotate else "center",
        rotation_mode="anchor", fontsize=label_size,
    )  # fmt: skip
    axes.set_yticks(ticks, labels=names, fontsize=label_size)
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
