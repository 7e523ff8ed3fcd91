import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from cv_pipeline.evaluation.plots import (
    confusion_matrix_png,
    error_breakdown_png,
    overlay_png,
    per_class_bar_png,
    png_data_uri_markdown,
    pr_curves_png,
    semantic_overlay_png,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("normalize", [True, False])
def test_confusion_matrix_png_is_a_decodable_png(normalize):
    counts = [[5, 1, 0], [2, 7, 1], [0, 0, 0]]
    png = confusion_matrix_png(counts, ["circle", "square", "triangle"], normalize=normalize)
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG" and image.width > 200 and image.height > 200


def test_thirty_classes_render():
    counts = np.random.default_rng(0).integers(0, 50, (30, 30))
    png = confusion_matrix_png(counts, [f"category_{i}" for i in range(30)], title="30 classes")
    assert Image.open(io.BytesIO(png)).size[0] > 800


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_png([[1, 2, 3]], ["a"])
    with pytest.raises(ValueError, match="class_names has 1 entries"):
        confusion_matrix_png([[1, 0], [0, 1]], ["a"])


def test_png_data_uri_markdown():
    png = confusion_matrix_png([[1, 0], [0, 1]], ["a", "b"])
    markdown = png_data_uri_markdown(png, "Confusion matrix")
    match = re.fullmatch(r"!\[Confusion matrix\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match is not None
    assert base64.b64decode(match.group(1)) == png
    with pytest.raises(ValueError, match="PNG signature"):
        png_data_uri_markdown(b"GIF89a", "x")


def decode(png):
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_pr_curves_png():
    recall = np.linspace(0, 1, 101)
    png = pr_curves_png({"cat": (recall, 1 - 0.5 * recall), "dog": (recall.tolist(), (1 - recall**2).tolist())}, "PR")
    image = decode(png)
    assert 300 < image.width < 700 and 250 < image.height < 500
    with pytest.raises(ValueError, match="one length"):
        pr_curves_png({"cat": ([0, 1], [1])}, "PR")
    with pytest.raises(ValueError, match="empty"):
        pr_curves_png({}, "PR")


def test_per_class_bar_png_grows_with_classes_and_shows_undefined_values():
    few = decode(per_class_bar_png({"cat": 0.5, "dog": float("nan")}, "AP per class", "AP"))
    many = decode(per_class_bar_png({f"class {i}": i / 25 for i in range(25)}, "AP per class", "AP"))
    assert many.height > few.height
    assert few.width < 700
    with pytest.raises(ValueError, match="'dog'.*infinite"):
        per_class_bar_png({"cat": 0.5, "dog": float("inf")}, "AP", "AP")


def test_error_breakdown_png():
    counts = {"tp": 40, "duplicate": 3, "localization": 7, "classification": 2, "both": 1, "background": 9, "missed": 5}
    image = decode(error_breakdown_png(counts))
    assert image.width < 800 and image.height < 400
    with pytest.raises(ValueError, match="counts\\['tp'\\]"):
        error_breakdown_png({"tp": -1})


def grey_image(height=120, width=160):
    return np.full((height, width, 3), 128, dtype=np.uint8)


def changed(png, reference_size, points):
    """Whether the output differs from plain grey around each (x, y) point given in input pixels."""
    output = np.asarray(decode(png).convert("RGB")).astype(int)
    scale = output.shape[1] / reference_size[1]
    result = []
    for x, y in points:
        row, column = int(round(y * scale)), int(round(x * scale))
        window = output[max(row - 2, 0) : row + 3, max(column - 2, 0) : column + 3]
        result.append(bool((np.abs(window - 128) > 30).any()))
    return result


def test_overlay_png_draws_boxes_where_they_are():
    image = grey_image()
    png = overlay_png(
        image,
        gt_boxes=[[20, 60, 60, 100]], gt_labels=[1],
        pred_boxes=[[90, 20, 140, 70]], pred_labels=[0], pred_scores=[0.87],
        class_names=["cat", "dog"],
    )  # fmt: skip
    output = decode(png)
    assert output.width == 400 and abs(output.height - 300) <= 1
    # the right edge of each box, away from its label, and a point well away from both boxes
    assert changed(png, image.shape, [(60, 80), (140, 45), (150, 110)]) == [True, True, False]
    pixels = np.asarray(output.convert("RGB")).astype(int)
    scale = output.width / 160
    gt_edge = pixels[int(80 * scale), int(60 * scale) - 2 : int(60 * scale) + 3]
    assert (gt_edge[:, 1] > gt_edge[:, 0] + 50).any()  # green
    pred_edge = pixels[int(30 * scale) : int(60 * scale), int(140 * scale) - 2 : int(140 * scale) + 3]
    assert (pred_edge[..., 0] > pred_edge[..., 2] + 80).any()  # orange-red, along a dashed edge


def test_overlay_png_with_masks_xywh_and_a_score_cut():
    image = grey_image()
    gt_mask = np.zeros((1, 120, 160), dtype=bool)
    gt_mask[0, 30:50, 30:50] = True
    pred_mask = np.zeros((2, 1, 120, 160), dtype=np.float32)
    pred_mask[0, 0, 80:100, 100:130] = 0.9
    pred_mask[1, 0, 5:15, 5:15] = 0.9
    png = overlay_png(
        image, [[30, 30, 20, 20]], [0], [[100, 80, 30, 20], [5, 5, 10, 10]], [0, 0], [0.9, 0.1],
        gt_masks=gt_mask, pred_masks=pred_mask, box_format="xywh", min_score=0.5,
    )  # fmt: skip
    # inside each mask (not on an edge), and inside the mask of the prediction cut by min_score
    assert changed(png, image.shape, [(40, 40), (115, 90), (10, 10)]) == [True, True, False]


def test_overlay_png_without_anything_to_draw_is_the_image():
    png = overlay_png(grey_image(), [], [], np.zeros((0, 4)), [], [])
    pixels = np.asarray(decode(png).convert("RGB")).astype(int)
    assert (np.abs(pixels - 128) <= 1).all()


def test_overlay_png_rejects_bad_inputs():
    with pytest.raises(ValueError, match="image must be an H x W x 3 uint8"):
        overlay_png(np.zeros((10, 10)), [], [], [], [], [])
    with pytest.raises(ValueError, match="pred_scores has 0 entries for 1 boxes"):
        overlay_png(grey_image(), [], [], [[0, 0, 5, 5]], [1], [])
    with pytest.raises(ValueError, match="negative width"):
        overlay_png(grey_image(), [[10, 10, 5, 5]], [1], [], [], [])
    with pytest.raises(ValueError, match="label 3 has no entry in class_names"):
        overlay_png(grey_image(), [[0, 0, 5, 5]], [3], [], [], [], class_names=["a"])
    with pytest.raises(ValueError, match="gt_masks must be 1 x 120 x 160"):
        overlay_png(grey_image(), [[0, 0, 5, 5]], [0], [], [], [], gt_masks=np.zeros((1, 10, 10), bool))


def test_semantic_overlay_png_puts_ground_truth_and_prediction_side_by_side():
    image = grey_image(100, 100)
    gt = np.zeros((100, 100), dtype=np.int64)
    gt[20:80, 20:80] = 2
    gt[0:5, :] = 255
    pred = np.zeros_like(gt)
    png = semantic_overlay_png(image, gt, pred, num_classes=3, class_names=["background", "cat", "dog"])
    pixels = np.asarray(decode(png).convert("RGB")).astype(int)
    colourful = np.abs(pixels - pixels.mean(axis=2, keepdims=True)).max(axis=2) > 40
    left, right = colourful[:, : pixels.shape[1] // 2], colourful[:, pixels.shape[1] // 2 :]
    assert left.sum() > 1000  # the ground-truth class is tinted
    assert right.sum() < 0.05 * left.sum()  # an all-background prediction is not (legend swatches aside)
    assert pixels.shape[1] < 900
    with pytest.raises(ValueError, match="pred_mask holds 7"):
        semantic_overlay_png(image, gt, pred + 7, num_classes=3)
    with pytest.raises(ValueError, match="gt_mask must be 100 x 100"):
        semantic_overlay_png(image, gt[:50], pred, num_classes=3)
