"""Evaluation plots as PNG bytes, for asset metadata and MLflow artifacts.

Figures are drawn on a `matplotlib.figure.Figure` with its own Agg canvas, never through
`pyplot`, so nothing touches the global backend or figure registry other code may be using.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from cv_pipeline.evaluation.metrics import _to_numpy

GROUND_TRUTH_COLOR = (0.0, 0.75, 0.0)
PREDICTION_COLOR = (1.0, 0.3, 0.0)
ERROR_COLORS = {
    "tp": "#2ca02c", "duplicate": "#9467bd", "localization": "#ff7f0e", "classification": "#d62728",
    "both": "#8c564b", "background": "#7f7f7f", "missed": "#1f77b4", "ignored": "#c7c7c7",
}  # fmt: skip


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


MARKDOWN_MAX_WIDTH = 720  # px: Dagster shows markdown images at their natural size, in a dialog


def png_data_uri_markdown(png: bytes, alt: str, max_width: int = MARKDOWN_MAX_WIDTH) -> str:
    """`![alt](data:image/png;base64,...)`: an inline image for Dagster markdown metadata.

    The Dagster UI draws a markdown image at its natural size (its markdown allows no width), so a
    PNG wider than `max_width` pixels is scaled down to that width; narrower ones are kept as they are.
    """
    if not png.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError("png does not start with the PNG signature")
    png = _at_most(png, max_width)
    safe_alt = alt.replace("[", "(").replace("]", ")").replace("\n", " ")
    return f"![{safe_alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) in pixels, read from the PNG header."""
    if not png.startswith(b"\x89PNG\r\n\x1a\n") or png[12:16] != b"IHDR":
        raise ValueError("png does not start with the PNG signature and header")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _at_most(png: bytes, max_width: int) -> bytes:
    from PIL import Image

    if png_size(png)[0] <= max_width:
        return png
    with Image.open(io.BytesIO(png)) as image:
        height = max(1, round(image.height * max_width / image.width))
        buffer = io.BytesIO()
        image.convert("RGBA").resize((max_width, height), Image.Resampling.LANCZOS).save(buffer, format="PNG",
                                                                                         optimize=True)
        return buffer.getvalue()


def new_figure(width: float, height: float, dpi: int = 90, **kwargs) -> Figure:
    figure = Figure(figsize=(width, height), dpi=dpi, **kwargs)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def pr_curves_png(curves: Mapping[str, tuple[Any, Any]], title: str = "Precision-recall") -> bytes:
    """Precision-recall curves, one line per entry of `curves` (name -> (recall, precision)), as PNG bytes."""
    if not curves:
        raise ValueError("curves is empty")
    figure = new_figure(5.5, 4.2, layout="constrained")
    axes = figure.add_subplot()
    for name, pair in curves.items():
        try:
            recall, precision = pair
        except (TypeError, ValueError) as error:
            raise ValueError(f"curves[{name!r}] must be a (recall, precision) pair") from error
        recall = _to_numpy(recall, f"curves[{name!r}] recall").astype(np.float64)
        precision = _to_numpy(precision, f"curves[{name!r}] precision").astype(np.float64)
        if recall.ndim != 1 or recall.shape != precision.shape:
            raise ValueError(
                f"curves[{name!r}] recall and precision must be 1-D of one length, "
                f"got {recall.shape} and {precision.shape}"
            )
        axes.plot(recall, precision, label=str(name), linewidth=1.5)
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.05)
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8 if len(curves) <= 10 else 6, ncol=1 if len(curves) <= 10 else 2, loc="lower left")
    return figure_png(figure)


def per_class_bar_png(values: Mapping[str, float], title: str, xlabel: str) -> bytes:
    """One horizontal bar per class, in the order given, each labelled with its value, as PNG bytes.

    NaN marks a value that is undefined for that class (no ground truth, say): it gets no bar and reads "n/a".
    """
    if not values:
        raise ValueError("values is empty")
    names = [str(name) for name in values]
    numbers = np.array([float(value) for value in values.values()], dtype=np.float64)
    if np.isinf(numbers).any():
        raise ValueError(f"values[{names[int(np.argmax(np.isinf(numbers)))]!r}] is infinite")
    height = float(np.clip(1.0 + 0.28 * len(names), 2.5, 24.0))
    figure = new_figure(6.0, height, layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(len(names))
    shown = np.nan_to_num(numbers, nan=0.0)
    axes.barh(positions, shown, color="#1f77b4", height=0.7)
    axes.set_yticks(positions, labels=names, fontsize=8)
    axes.invert_yaxis()
    span = max(float(np.nanmax(np.abs(numbers))) if not np.isnan(numbers).all() else 1.0, 1e-12)
    for position, value, bar_end in zip(positions, numbers, shown):
        text = "n/a" if np.isnan(value) else f"{value:.3g}"
        axes.text(bar_end + 0.01 * span, position, text, va="center", fontsize=7).set_in_layout(False)
    low = min(0.0, float(np.nanmin(shown)))
    axes.set_xlim(low * 1.15, max(float(np.nanmax(shown)), 0.0) * 1.15 + 0.05 * span)
    axes.set_xlabel(xlabel)
    axes.set_title(title)
    return figure_png(figure)


def error_breakdown_png(counts: Mapping[str, int], title: str = "Detection errors") -> bytes:
    """Counts per outcome (tp, duplicate, localization, ..., missed) as a labelled bar chart, PNG bytes."""
    if not counts:
        raise ValueError("counts is empty")
    names = [str(name) for name in counts]
    numbers = []
    for name, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"counts[{name!r}] must be a non-negative integer, got {count!r}")
        numbers.append(int(count))
    figure = new_figure(max(4.0, 0.75 * len(names) + 1.5), 3.4, layout="constrained")
    axes = figure.add_subplot()
    colors = [ERROR_COLORS.get(name, "#1f77b4") for name in names]
    bars = axes.bar(np.arange(len(names)), numbers, color=colors)
    axes.bar_label(bars, fontsize=8)
    axes.set_xticks(np.arange(len(names)), labels=names, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
    axes.set_ylim(0, max(max(numbers), 1) * 1.15)
    axes.set_ylabel("count")
    axes.set_title(title)
    return figure_png(figure)


def _image_array(image: Any) -> np.ndarray:
    array = _to_numpy(image, "image")
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be an H x W x 3 uint8 array, got shape {array.shape} dtype {array.dtype}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image is empty: shape {array.shape}")
    return array


def _boxes(boxes: Any, argument: str, box_format: str) -> np.ndarray:
    array = _to_numpy(boxes, argument).astype(np.float64)
    if array.size == 0:
        return np.zeros((0, 4))
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{argument} must be N x 4, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{argument} holds a non-finite coordinate")
    if box_format == "xyxy":
        array = np.column_stack([array[:, :2], array[:, 2:] - array[:, :2]])
    if (array[:, 2:] < 0).any():
        raise ValueError(f"{argument} holds a box with negative width or height (box_format={box_format!r})")
    return array


def _vector(values: Any, argument: str, length: int) -> np.ndarray:
    array = _to_numpy(values, argument).reshape(-1) if values is not None else np.zeros(0)
    if array.shape[0] != length:
        raise ValueError(f"{argument} has {array.shape[0]} entries for {length} boxes")
    return array


def _instance_masks(masks: Any, argument: str, count: int, height: int, width: int, threshold: float) -> np.ndarray:
    array = _to_numpy(masks, argument)
    if array.ndim == 4 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (count, height, width):
        raise ValueError(f"{argument} must be {count} x {height} x {width} (one per box), got shape {array.shape}")
    return array > threshold if array.dtype != bool else array


def _blend(image: np.ndarray, mask: np.ndarray, color: Sequence[float], alpha: float) -> None:
    """Tints `image` (float, 0-255) in place toward `color` (0-1 RGB) where `mask` is set."""
    image[mask] = image[mask] * (1.0 - alpha) + np.asarray(color) * 255.0 * alpha


def _class_name(label: int, class_names: Sequence[str] | Mapping[int, str] | None) -> str:
    if class_names is None:
        return str(label)
    try:
        return str(class_names[label])
    except (IndexError, KeyError):
        raise ValueError(f"label {label} has no entry in class_names") from None


def _image_axes(height: int, width: int, max_size: int) -> tuple[Figure, Any]:
    """A figure whose only axes fill it exactly, the image scaled so its longer side is ~`max_size` px."""
    dpi = 100
    scale = float(np.clip(max_size / max(height, width), 0.05, 8.0))
    figure = new_figure(width * scale / dpi, height * scale / dpi, dpi=dpi)
    axes = figure.add_axes((0.0, 0.0, 1.0, 1.0))
    axes.set_axis_off()
    return figure, axes


def overlay_png(
    image: Any,
    gt_boxes: Any,
    gt_labels: Any,
    pred_boxes: Any,
    pred_labels: Any,
    pred_scores: Any,
    gt_masks: Any = None,
    pred_masks: Any = None,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    *,
    box_format: str = "xyxy",
    min_score: float = 0.0,
    mask_threshold: float = 0.5,
    max_size: int = 400,
) -> bytes:
    """Ground truth (green) against predictions (orange-red, labelled with their score) on one image.

    Boxes are `box_format` "xyxy" (torchvision) or "xywh" (COCO), in image pixels; masks (one per
    box, H x W, or N x 1 x H x W probabilities cut at `mask_threshold`) are drawn semi-transparent.
    Predictions scoring below `min_score` are left out. The image is scaled so its longer side is
    `max_size` pixels, which keeps the PNG small enough for asset metadata.
    """
    if box_format not in ("xyxy", "xywh"):
        raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")
    pixels = _image_array(image)
    height, width = pixels.shape[:2]
    gt = _boxes(gt_boxes, "gt_boxes", box_format)
    pred = _boxes(pred_boxes, "pred_boxes", box_format)
    gt_classes = _vector(gt_labels, "gt_labels", len(gt)).astype(np.int64)
    pred_classes = _vector(pred_labels, "pred_labels", len(pred)).astype(np.int64)
    scores = _vector(pred_scores, "pred_scores", len(pred)).astype(np.float64)
    keep = scores >= min_score

    canvas = pixels.astype(np.float64)
    if gt_masks is not None:
        for mask in _instance_masks(gt_masks, "gt_masks", len(gt), height, width, mask_threshold):
            _blend(canvas, mask, GROUND_TRUTH_COLOR, 0.35)
    if pred_masks is not None:
        masks = _instance_masks(pred_masks, "pred_masks", len(pred), height, width, mask_threshold)
        for mask in masks[keep]:
            _blend(canvas, mask, PREDICTION_COLOR, 0.35)

    figure, axes = _image_axes(height, width, max_size)
    axes.imshow(canvas.astype(np.uint8), interpolation="nearest")
    axes.set_xlim(-0.5, width - 0.5)
    axes.set_ylim(height - 0.5, -0.5)
    for (x, y, w, h), label in zip(gt, gt_classes):
        axes.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=GROUND_TRUTH_COLOR, linewidth=2))
        axes.text(x - 0.5, y - 0.5, _class_name(int(label), class_names), fontsize=7, color="white", va="bottom",
                  bbox={"facecolor": GROUND_TRUTH_COLOR, "alpha": 0.8, "pad": 1, "linewidth": 0}, clip_on=True)
    for (x, y, w, h), label, score in zip(pred[keep], pred_classes[keep], scores[keep]):
        axes.add_patch(Rectangle((x - 0.5, y - 0.5), w, h, fill=False, edgecolor=PREDICTION_COLOR, linewidth=1.5,
                                 linestyle="--"))
        axes.text(x - 0.5, y + h - 0.5, f"{_class_name(int(label), class_names)} {score:.2f}", fontsize=7,
                  color="white", va="top", bbox={"facecolor": PREDICTION_COLOR, "alpha": 0.8, "pad": 1, "linewidth": 0},
                  clip_on=True)
    return figure_png(figure)


def _class_colors(num_classes: int) -> np.ndarray:
    """A distinct RGB colour (0-1) per class: tab20's strong colours first, then its pale ones, cycled."""
    tab20 = np.asarray(colormaps["tab20"].colors)
    palette = np.concatenate([tab20[0::2], tab20[1::2]])
    return palette[np.arange(num_classes) % len(palette)]


def _semantic_mask(mask: Any, argument: str, shape: tuple[int, int], num_classes: int, ignore_index: int) -> np.ndarray:
    array = _to_numpy(mask, argument)
    if array.shape != shape:
        raise ValueError(f"{argument} must be {shape[0]} x {shape[1]} like the image, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{argument} must hold integer class indices, got dtype {array.dtype}")
    bad = ((array < 0) | (array >= num_classes)) & (array != ignore_index)
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{argument} holds {int(array[row, column])} at ({row}, {column}), "
            f"outside [0, {num_classes}) and not ignore_index {ignore_index}"
        )
    return array


def semantic_overlay_png(
    image: Any,
    gt_mask: Any,
    pred_mask: Any,
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    background_index: int | None = 0,
    ignore_index: int = 255,
    max_size: int = 320,
) -> bytes:
    """Ground-truth and predicted class masks side by side over the image, one colour per class.

    Pixels of `background_index` are left untinted and `ignore_index` pixels (crowd, padding) are
    washed out in white; a legend names the classes that appear, when `class_names` is given.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} entries for num_classes={num_classes}")
    pixels = _image_array(image)
    height, width = pixels.shape[:2]
    masks = {
        "ground truth": _semantic_mask(gt_mask, "gt_mask", (height, width), num_classes, ignore_index),
        "prediction": _semantic_mask(pred_mask, "pred_mask", (height, width), num_classes, ignore_index),
    }
    colors = _class_colors(num_classes)
    scale = float(np.clip(max_size / max(height, width), 0.05, 8.0))
    dpi = 90
    legend_rows = 0 if class_names is None else 1
    figure = new_figure(2 * width * scale / dpi + 0.3, height * scale / dpi + 0.45 + 0.3 * legend_rows, dpi=dpi,
                     layout="constrained")  # fmt: skip
    present: set[int] = set()
    for index, (name, mask) in enumerate(masks.items()):
        canvas = pixels.astype(np.float64)
        for label in np.unique(mask):
            label = int(label)
            if label == background_index:
                continue
            if label == ignore_index:
                _blend(canvas, mask == label, (1.0, 1.0, 1.0), 0.6)
                continue
            present.add(label)
            _blend(canvas, mask == label, colors[label], 0.55)
        axes = figure.add_subplot(1, 2, index + 1)
        axes.imshow(canvas.astype(np.uint8), interpolation="nearest")
        axes.set_axis_off()
        axes.set_title(name, fontsize=9)
    if class_names is not None and present:
        handles = [Patch(color=colors[label], label=str(class_names[label])) for label in sorted(present)]
        figure.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=7)
    return figure_png(figure)
