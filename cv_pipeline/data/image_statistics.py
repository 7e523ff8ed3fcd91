"""Per-image statistics of decoded pixels, for drift monitoring: what a camera, a codec or a change
of scene does to the input shows up here before it shows up in a model's accuracy.

Every statistic is computed from the decoded image as the model sees it (`image.convert("RGB")`,
the same conversion `models.classification.preprocess` makes), never from file bytes: reference
images and request images reach us through different encodings. Global statistics (brightness,
contrast, saturation, colourfulness) read a strided subsample of at most ~256 px on the long side;
local ones (sharpness, noise, blockiness) read a native-resolution central window of at most
256 x 256, because resampling would wash out blur and noise and erase JPEG's 8-pixel grid.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from PIL import Image

__all__ = ["IMAGE_STATISTICS", "image_statistics", "statistics_table"]

#: The statistics `image_statistics` returns, in order.
IMAGE_STATISTICS: tuple[str, ...] = (
    "width",         # pixels
    "height",        # pixels
    "aspect",        # width / height
    "brightness",    # mean luma, 0-1
    "contrast",      # standard deviation of luma, 0-1
    "saturation",    # mean HSV saturation, 0-1
    "colorfulness",  # Hasler and Suesstrunk (2003) colourfulness of the 0-1 image
    "sharpness",     # log10(1 + variance of the 4-neighbour Laplacian of luma in grey levels)
    "noise",         # robust noise sigma in grey levels: 1.4826 * median |Immerkaer residual| / 6
    "blockiness",    # JPEG 8x8 grid: |luma step| across block boundaries over inside, best phase, mean of axes
)

_GLOBAL_SIDE = 256
_LOCAL_SIDE = 256
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_BLOCK = 8
_BLOCK_EPS = 0.25  # grey levels: a flat image is 1.0 (no grid), not 0/0


def image_statistics(image: Image.Image) -> dict[str, float]:
    """Every statistic of `IMAGE_STATISTICS` for one decoded image (any PIL mode), as finite floats."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    pixels = np.asarray(rgb)
    height, width = pixels.shape[:2]
    if width == 0 or height == 0:
        raise ValueError(f"image has no pixels ({width}x{height})")

    step = max(1, math.ceil(max(width, height) / _GLOBAL_SIDE))
    sample = pixels[::step, ::step].astype(np.float32) * np.float32(1.0 / 255.0)
    luma = sample @ _LUMA
    red, green, blue = sample[..., 0], sample[..., 1], sample[..., 2]
    high = np.maximum(np.maximum(red, green), blue)
    low = np.minimum(np.minimum(red, green), blue)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)
    rg = red - green
    yb = 0.5 * (red + green) - blue
    colorfulness = math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))

    top = (height - min(height, _LOCAL_SIDE)) // 2
    left = (width - min(width, _LOCAL_SIDE)) // 2
    window = pixels[top:top + _LOCAL_SIDE, left:left + _LOCAL_SIDE].astype(np.float32) @ _LUMA
    return {
        "width": float(width),
        "height": float(height),
        "aspect": width / height,
        "brightness": float(luma.mean()),
        "contrast": float(luma.std()),
        "saturation": float(saturation.mean()),
        "colorfulness": colorfulness,
        "sharpness": _sharpness(window),
        "noise": _noise(window),
        "blockiness": _blockiness(window),
    }


def statistics_table(images: Iterable[Image.Image]) -> dict[str, np.ndarray]:
    """`image_statistics` of each image, as one float64 array per name of `IMAGE_STATISTICS`."""
    rows = [image_statistics(image) for image in images]
    return {name: np.array([row[name] for row in rows], dtype=np.float64) for name in IMAGE_STATISTICS}


def _sharpness(luma: np.ndarray) -> float:
    """log10(1 + var) of the 4-neighbour Laplacian: blur lowers it, noise and detail raise it."""
    if min(luma.shape) < 3:
        return 0.0
    centre = luma[1:-1, 1:-1]
    laplacian = luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * centre
    return math.log10(1.0 + float(laplacian.var()))


def _noise(luma: np.ndarray) -> float:
    """Noise sigma from the median absolute response of Immerkaer's (1996) kernel, which cancels
    planes and smooth shading; the median (of every other row and column, for speed) ignores the
    edges that would dominate a mean."""
    if min(luma.shape) < 3:
        return 0.0
    across = luma[:, :-2] - 2.0 * luma[:, 1:-1] + luma[:, 2:]
    residual = np.abs(across[:-2:2] - 2.0 * across[1:-1:2] + across[2::2])[:, ::2]
    return 1.4826 * float(np.median(residual)) / 6.0


def _blockiness(luma: np.ndarray) -> float:
    """Mean over both axes of the largest, over the 8 grid phases, ratio of the mean absolute luma
    step across block boundaries to the one inside blocks; ~1 without a grid, > 1 with JPEG's."""
    ratios = [_axis_blockiness(np.abs(np.diff(luma, axis=axis)).mean(axis=1 - axis)) for axis in (1, 0)]
    return float(np.mean(ratios))


def _axis_blockiness(steps: np.ndarray) -> float:
    """Best-phase boundary/inside ratio of per-offset mean steps (index j: between pixels j, j+1)."""
    if steps.size < 2 * _BLOCK:
        return 1.0
    usable = steps[: steps.size // _BLOCK * _BLOCK].reshape(-1, _BLOCK)
    per_phase = usable.mean(axis=0)
    inside = (per_phase.sum() - per_phase) / (_BLOCK - 1)
    return float(((per_phase + _BLOCK_EPS) / (inside + _BLOCK_EPS)).max())
