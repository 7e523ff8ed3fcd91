"""Image file validation: read each file once, hash it, decode it fully, measure it.

`inspect_image_file` is plain Python; `inspect_image_files` applies it to a batch in this process
with a pool of threads (Pillow's decoders and hashlib release the GIL), `inspect_image_partitions`
inside Spark tasks (`mapInPandas`), so on a cluster the image bytes never pass through the driver.

Storing images: by default a row references its file by path and carries its sha256 (so a later
reader can tell the file changed). `include_bytes=True` ("store bytes") adds `image_bytes`, the
file's content as read for hashing (no second read), for tables that must not depend on the
landing zone staying in place; its Spark type is `IMAGE_BYTES_COLUMN`.

Cost: the full decode dominates (~2 ms for a 640x480 JPEG with libjpeg-turbo); the single read
and the sha256 add ~5%, and decoding from the bytes in memory saves the decoder's own file reads,
so the inspector runs at 0.92-0.98 of a bare `Image.open(p).load()` loop. In Spark the job's fixed
cost (~0.3-0.5 s and ~1 CPU-s of JVM on 2 cores) dominates small batches, which is why the processor
validates batches up to a size in process (`benchmarks/image_validation.py` measures both).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator

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
# The extra column `include_bytes=True` adds (after IMAGE_CHECK_COLUMNS), with its Spark type.
IMAGE_BYTES_COLUMN = {"image_bytes": "binary"}

_CHANNELS = {"1": 1, "L": 1, "P": 1, "I": 1, "F": 1, "I;16": 1, "LA": 2, "La": 2, "PA": 2, "RGB": 3, "YCbCr": 3,
             "LAB": 3, "HSV": 3, "RGBA": 4, "RGBa": 4, "RGBX": 4, "CMYK": 4}
_PANDAS_DTYPES = {"boolean": "boolean", "int": "Int32", "long": "Int64"}  # strings and bytes stay Python objects
# The Arrow type of each Spark type above: what Spark's `toArrow()` gives for the mapInPandas output.
ARROW_TYPES = {"boolean": "bool_", "int": "int32", "long": "int64", "string": "string", "binary": "binary"}
_NULLABLE = frozenset(_PANDAS_DTYPES)


def image_check_columns(include_bytes: bool = False) -> dict[str, str]:
    """Result columns and their Spark types: IMAGE_CHECK_COLUMNS, plus IMAGE_BYTES_COLUMN when storing bytes."""
    return {**IMAGE_CHECK_COLUMNS, **IMAGE_BYTES_COLUMN} if include_bytes else dict(IMAGE_CHECK_COLUMNS)


def _pil():
    from PIL import Image, ImageFile

    # A truncated file must fail validation, not come back padded with grey: refuse to inspect at all
    # if something in this process switched Pillow to tolerate truncation.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: image validation needs it False")
    return Image


def _failure(path, file_exists: bool, error: str, data: bytes | None, include_bytes: bool) -> dict:
    result = dict.fromkeys(IMAGE_CHECK_COLUMNS)
    result.update(file_exists=file_exists, decodable=False, image_error=error)
    if data is not None:
        result.update(byte_size=len(data), sha256=hashlib.sha256(data).hexdigest())
    if include_bytes:
        result["image_bytes"] = data
    return result


def inspect_image_file(path: str | Path, include_bytes: bool = False) -> dict:
    """Facts about one image file; `image_error` says why it is unusable (None when it is fine).

    The file is read once; that content is hashed (sha256), decoded in full (a truncated file fails
    here, not later in training) and, with `include_bytes`, returned as `image_bytes` (None when the
    file cannot be read).
    """
    Image = _pil()
    try:
        with open(path, "rb", buffering=0) as handle:  # unbuffered: one read of the whole file
            data = handle.readall()
    except FileNotFoundError:
        return _failure(path, False, f"image file not found: {path}", None, include_bytes)
    except OSError as exc:
        return _failure(path, False, f"image file unreadable: {path}: {exc}", None, include_bytes)
    if not data:
        return _failure(path, True, f"image file is empty (0 bytes): {path}", data, include_bytes)
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode every pixel: truncated files fail here, not later in training
            mode = image.mode
            result = {
                "file_exists": True,
                "decodable": True,
                "actual_width": image.width,
                "actual_height": image.height,
                "image_format": image.format,
                "color_mode": mode,
                "channels": _CHANNELS.get(mode) or len(image.getbands()),
                "byte_size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "image_error": None,
            }
    except Image.UnidentifiedImageError:
        return _failure(path, True, f"not a recognised image format: {path}", data, include_bytes)
    except Image.DecompressionBombError as exc:
        return _failure(path, True, f"image too large to decode: {path}: {exc}", data, include_bytes)
    except (OSError, ValueError, SyntaxError) as exc:
        return _failure(path, True, f"image cannot be decoded: {path}: {exc}", data, include_bytes)
    except Exception as exc:  # noqa: BLE001 - decoders raise odd types on corrupt data; report it, keep the task alive
        return _failure(path, True, f"image cannot be decoded: {path}: {type(exc).__name__}: {exc}", data, include_bytes)
    if include_bytes:
        result["image_bytes"] = data
    return result


def inspect_image_files(paths: list[str], include_bytes: bool = False, workers: int | None = None):
    """`inspect_image_file` for each path, in this process, as a pyarrow Table of
    `image_check_columns(include_bytes)` in the order of `paths` (the same values and types as the
    Spark path's columns). `workers` threads (default `os.cpu_count()`) decode at once: Pillow's
    decoders and hashlib release the GIL, so they use the cores as Spark tasks would, without a job."""
    import pyarrow as pa

    count = len(paths)
    workers = max(1, min(count, workers or os.cpu_count() or 1))
    facts: list = [None] * count
    if workers == 1:
        facts = [inspect_image_file(p, include_bytes) for p in paths]
    else:
        # Each thread pulls the next index until none is left: no future per file, and this thread
        # sleeps until the end instead of waking for every result (each wake-up takes the GIL from a
        # worker; `pool.map` cost ~6% more CPU per image).
        positions = itertools.count()

        def work() -> None:
            while (index := next(positions)) < count:
                facts[index] = inspect_image_file(paths[index], include_bytes)

        with ThreadPoolExecutor(workers, thread_name_prefix="inspect_image") as pool:
            for future in [pool.submit(work) for _ in range(workers)]:
                future.result()
    return pa.table({name: pa.array([f[name] for f in facts], getattr(pa, ARROW_TYPES[kind])())
                     for name, kind in image_check_columns(include_bytes).items()})


def _inspect_frames(frames: Iterator[pd.DataFrame], include_bytes: bool) -> Iterator[pd.DataFrame]:
    from cv_pipeline.data.spark import cheap_zip_cache_invalidation_in_worker

    cheap_zip_cache_invalidation_in_worker()
    columns = image_check_columns(include_bytes)
    for frame in frames:
        facts = [inspect_image_file(p, include_bytes) for p in frame["file_path"]]
        # One DataFrame per batch, built from whole columns in one constructor call (no per-row
        # pandas work; `assign`/`concat` cost 2-3x more for a 50-row batch).
        data = {name: frame[name].array for name in frame.columns}
        for name, kind in columns.items():
            column = [f[name] for f in facts]
            data[name] = pd.array(column, dtype=_PANDAS_DTYPES[kind]) if kind in _NULLABLE else column
        yield pd.DataFrame(data, copy=False)


def inspect_image_partitions(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`mapInPandas` body: the input's columns plus IMAGE_CHECK_COLUMNS for its `file_path` column
    (images referenced by path)."""
    return _inspect_frames(frames, include_bytes=False)


def _inspect_image_partitions_with_bytes(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """`mapInPandas` body: the input's columns, IMAGE_CHECK_COLUMNS and IMAGE_BYTES_COLUMN."""
    return _inspect_frames(frames, include_bytes=True)


def inspect_image_partitions_fn(include_bytes: bool = False) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """The `mapInPandas` body for a store-bytes setting; pair it with `image_check_columns(include_bytes)`
    in the output schema. Both are module functions, so Spark ships them by reference."""
    return _inspect_image_partitions_with_bytes if include_bytes else inspect_image_partitions
