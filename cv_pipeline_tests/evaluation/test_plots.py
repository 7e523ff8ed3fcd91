import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from cv_pipeline.evaluation.plots import confusion_matrix_png, png_data_uri_markdown

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
