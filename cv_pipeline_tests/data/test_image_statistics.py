"""Image statistics on constructed images: each moves the way its name says, on any PIL mode and size."""

import io
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from cv_pipeline.data.image_statistics import IMAGE_STATISTICS, image_statistics, statistics_table


def scene(seed: int = 0, size: int = 300) -> Image.Image:
    """Smooth shading with a few solid shapes: the kind of image the synthetic samples hold."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    pixels = np.stack([80 + 60 * xx, 120 + 40 * yy, 100 + 30 * xx * yy], axis=-1)
    for _ in range(5):
        cy, cx, radius = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
        pixels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius ** 2] = rng.integers(0, 256, 3)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def reencoded(image: Image.Image, **save) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, **save)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def test_every_statistic_is_a_finite_float_in_order():
    values = image_statistics(scene())
    assert tuple(values) == IMAGE_STATISTICS
    assert all(isinstance(value, float) and math.isfinite(value) for value in values.values())
    assert values["width"] == values["height"] == 300.0 and values["aspect"] == 1.0


def test_constant_image_has_no_contrast_and_brighter_is_brighter():
    dark = image_statistics(Image.new("RGB", (64, 48), (40, 40, 40)))
    bright = image_statistics(Image.new("RGB", (64, 48), (200, 200, 200)))
    assert dark["contrast"] == 0.0 and dark["noise"] == 0.0 and dark["sharpness"] == 0.0
    assert dark["blockiness"] == pytest.approx(1.0)
    assert bright["brightness"] > dark["brightness"]
    assert bright["brightness"] == pytest.approx(200 / 255, abs=1e-3)
    assert image_statistics(Image.new("RGB", (10, 20)))["aspect"] == 0.5


def test_blur_lowers_sharpness_and_noise_raises_noise():
    image = scene()
    pixels = np.asarray(image, dtype=np.float64)
    blurred = Image.fromarray(np.clip(ndimage.gaussian_filter(pixels, sigma=(1, 1, 0)), 0, 255).astype(np.uint8))
    noisy = Image.fromarray(
        np.clip(pixels + np.random.default_rng(0).normal(0, 0.08 * 255, pixels.shape), 0, 255).astype(np.uint8))
    clean, soft, grainy = image_statistics(image), image_statistics(blurred), image_statistics(noisy)
    assert soft["sharpness"] < clean["sharpness"] - 0.3
    assert grainy["sharpness"] > clean["sharpness"] + 0.3
    assert grainy["noise"] > clean["noise"] + 10
    assert soft["noise"] <= clean["noise"] + 0.5


def test_low_quality_jpeg_is_blockier_than_png_even_off_the_grid():
    image = scene(1)
    png = image_statistics(reencoded(image, format="PNG"))
    jpeg = image_statistics(reencoded(image, format="JPEG", quality=10))
    cropped = image_statistics(reencoded(image, format="JPEG", quality=10).crop((3, 5, 250, 260)))
    assert jpeg["blockiness"] > png["blockiness"] + 0.3
    assert cropped["blockiness"] > png["blockiness"] + 0.3


def test_grayscale_has_no_saturation_and_colour_has_some():
    gray = image_statistics(scene().convert("L"))
    assert gray["saturation"] == 0.0 and gray["colorfulness"] == pytest.approx(0.0, abs=1e-6)
    assert image_statistics(scene())["saturation"] > 0.1


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 1), (17, 9)])
def test_tiny_images_give_finite_values(size):
    values = image_statistics(Image.new("RGB", size, (10, 200, 30)))
    assert all(math.isfinite(value) for value in values.values())


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I", "I;16", "F", "1"])
def test_any_mode_is_read_as_rgb(mode):
    image = scene().convert(mode) if mode != "I;16" else Image.fromarray(
        (np.asarray(scene().convert("L"), dtype=np.uint16) * 200))
    values = image_statistics(image)
    assert all(math.isfinite(value) for value in values.values())
    assert values["width"] == 300.0


def test_statistics_table_gives_one_array_per_statistic():
    table = statistics_table([scene(seed) for seed in range(3)])
    assert tuple(table) == IMAGE_STATISTICS
    assert all(values.shape == (3,) and values.dtype == np.float64 for values in table.values())
    assert table["brightness"][0] == image_statistics(scene(0))["brightness"]
    empty = statistics_table([])
    assert all(values.shape == (0,) for values in empty.values())
