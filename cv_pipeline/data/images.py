"""Image file validation: read each file once, hash it, decode it fully, measure it.

`inspect_image_file` is plain Python; `inspect_image_partitions` applies it inside Spark tasks
(`mapInPandas`), so on a cluster the image bytes never pass through the driver.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Iterator

import pandas as pd

IMAGE_CHECK_COLUMNS = {
    "file_exists": "boolean",
    "decodable": "boolean",
    "actual_width": "int",
    "actual_height": "int",
    "image_format": "string",
    "color_mode": "string",
    "channels": "int",
    "byte_size": "long",
    "sha256": "string",
    "image_error": "string",
}

_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "LA": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "CMYK": 4}


def inspect_image_file(path: str | Path) -> dict:
    """Facts about one image file; `image_error` says why it is unusable (None when it is fine)."""
    from PIL import Image, UnidentifiedImageError

    result = {name: None for name in IMAGE_CHECK_COLUMNS}
    result.update(file_exists=False, decodable=False)
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        result["image_error"] = f"image file not found: {path}"
        return result
    except OSError as exc:
        result["image_error"] = f"image file unreadable: {path}: {exc}"
        return result
    result.update(file_exists=True, byte_size=len(data), sha256=hashlib.sha256(data).hexdigest())
    if not data:
        result["image_error"] = f"image file is empty (0 bytes): {path}"
        return result
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode every pixel: truncated files fail here, not later in training
            result.update(
                decodable=True,
                actual_width=image.width,
                actual_height=image.height,
                image_format=image.format,
                color_mode=image.mode,
                channels=_CHANNELS.get(image.mode, len(image.getbands())),
            )
    except UnidentifiedImageError:
        result["image_error"] = f"not a recognised image format: {path}"
    except (OSError, ValueError, SyntaxError) as exc:
        result["image_error"] = f"image cannot be decoded: {path}: {exc}"
    return result


def inspect_image_partitions(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`mapInPandas` body: the input's columns plus IMAGE_CHECK_COLUMNS for its `file_path` column."""
    for frame in frames:
        facts = pd.DataFrame([inspect_image_file(p) for p in frame["file_path"]], columns=list(IMAGE_CHECK_COLUMNS))
        for column, dtype in (("actual_width", "Int32"), ("actual_height", "Int32"), ("channels", "Int32"), ("byte_size", "Int64")):
            facts[column] = facts[column].astype(dtype)
        yield pd.concat([frame.reset_index(drop=True), facts], axis=1)
