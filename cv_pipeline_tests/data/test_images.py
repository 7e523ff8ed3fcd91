"""The image inspector: facts about good files, a clear error naming the path for each kind of bad
file, the store-bytes setting, the Spark `mapInPandas` body on a small DataFrame, and the processor's
in-process path for small batches giving the Spark path's rows."""

from __future__ import annotations

import hashlib
import io
import zipimport

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cv_pipeline.data.images import (
    IMAGE_BYTES_COLUMN,
    IMAGE_CHECK_COLUMNS,
    image_check_columns,
    inspect_image_file,
    inspect_image_files,
    inspect_image_partitions,
    inspect_image_partitions_fn,
)


def _textured(width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(width * 1000 + height)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def _save(path, image: Image.Image, fmt: str):
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture
def images(tmp_path):
    good_jpeg = _save(tmp_path / "photo.jpg", _textured(64, 48), "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good_jpeg.read_bytes()[: good_jpeg.stat().st_size // 2])
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    text = tmp_path / "notes.jpg"
    text.write_text("this is not an image\n")
    return {
        "jpeg": good_jpeg,
        "png": _save(tmp_path / "mask.png", _textured(30, 20, "RGBA"), "PNG"),
        "gray": _save(tmp_path / "gray.jpg", _textured(40, 50, "L"), "JPEG"),
        "truncated": truncated,
        "empty": empty,
        "text": text,
        "missing": tmp_path / "missing.jpg",
    }


@pytest.mark.parametrize("name, size, fmt, mode, channels", [
    ("jpeg", (64, 48), "JPEG", "RGB", 3),
    ("png", (30, 20), "PNG", "RGBA", 4),
    ("gray", (40, 50), "JPEG", "L", 1),
])
def test_good_images(images, name, size, fmt, mode, channels):
    path = images[name]
    facts = inspect_image_file(path)
    content = path.read_bytes()
    assert set(facts) == set(IMAGE_CHECK_COLUMNS)
    assert facts["file_exists"] and facts["decodable"] and facts["image_error"] is None
    assert (facts["actual_width"], facts["actual_height"]) == size
    assert (facts["image_format"], facts["color_mode"], facts["channels"]) == (fmt, mode, channels)
    assert facts["byte_size"] == len(content)
    assert facts["sha256"] == hashlib.sha256(content).hexdigest()
    assert inspect_image_file(str(path)) == facts  # str and Path alike


def test_include_bytes_returns_the_file_content(images):
    facts = inspect_image_file(images["jpeg"], include_bytes=True)
    assert set(facts) == set(IMAGE_CHECK_COLUMNS) | set(IMAGE_BYTES_COLUMN)
    assert facts["image_bytes"] == images["jpeg"].read_bytes()
    assert facts["sha256"] == hashlib.sha256(facts["image_bytes"]).hexdigest()
    assert inspect_image_file(images["missing"], include_bytes=True)["image_bytes"] is None
    assert inspect_image_file(images["truncated"], include_bytes=True)["image_bytes"] == images["truncated"].read_bytes()
    assert "image_bytes" not in inspect_image_file(images["jpeg"])
    assert image_check_columns(True) == {**IMAGE_CHECK_COLUMNS, "image_bytes": "binary"}


@pytest.mark.parametrize("name, exists, words", [
    ("missing", False, "not found"),
    ("empty", True, "empty (0 bytes)"),
    ("truncated", True, "truncated"),
    ("text", True, "not a recognised image format"),
])
def test_bad_files_fail_with_an_error_naming_the_path(images, name, exists, words):
    path = images[name]
    facts = inspect_image_file(path)
    assert facts["decodable"] is False
    assert facts["file_exists"] is exists
    assert str(path) in facts["image_error"] and words in facts["image_error"]
    assert facts["actual_width"] is None and facts["actual_height"] is None
    if exists:  # the content was read: its size and hash are still reported
        content = path.read_bytes()
        assert facts["byte_size"] == len(content)
        assert facts["sha256"] == hashlib.sha256(content).hexdigest()
    else:
        assert facts["byte_size"] is None and facts["sha256"] is None


def test_truncated_png_fails(tmp_path):
    good = _save(tmp_path / "good.png", _textured(64, 64), "PNG")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:-200])
    facts = inspect_image_file(cut)
    assert facts["decodable"] is False and str(cut) in facts["image_error"]


def test_partition_function_in_pandas(images):
    order = ["jpeg", "missing", "gray", "text"]
    frame = pd.DataFrame({"image_id": [1, 2, 3, 4], "file_path": [str(images[n]) for n in order]}, index=[7, 8, 9, 10])
    (out,) = list(inspect_image_partitions(iter([frame])))
    assert list(out.columns) == ["image_id", "file_path", *IMAGE_CHECK_COLUMNS]
    assert out["image_id"].tolist() == [1, 2, 3, 4]
    assert out["decodable"].tolist() == [True, False, True, False]
    assert out["actual_width"].tolist()[0] == 64 and pd.isna(out["actual_width"].tolist()[1])
    assert str(out["actual_width"].dtype) == "Int32" and str(out["byte_size"].dtype) == "Int64"
    assert inspect_image_partitions_fn(False) is inspect_image_partitions
    (empty,) = list(inspect_image_partitions_fn(True)(iter([frame.iloc[:0]])))
    assert list(empty.columns) == ["image_id", "file_path", *IMAGE_CHECK_COLUMNS, "image_bytes"] and empty.empty
    # the Spark-worker import-cache fix stays out of any process that is not running a Spark task
    assert not getattr(zipimport.zipimporter, "_cv_pipeline_cheap_invalidate", False)


def test_spark_partition_function_with_bytes(images):
    from cv_pipeline.data.spark import get_spark

    spark = get_spark("cv_pipeline_tests")
    order = ["jpeg", "png", "truncated", "missing"]
    rows = [(i, str(images[n])) for i, n in enumerate(order)]
    columns = image_check_columns(include_bytes=True)
    schema = "image_id long, file_path string, " + ", ".join(f"{k} {v}" for k, v in columns.items())
    frame = spark.createDataFrame(rows, "image_id long, file_path string").repartition(2)
    out = {r["image_id"]: r.asDict() for r in frame.mapInPandas(inspect_image_partitions_fn(True), schema).collect()}

    assert sorted(out) == [0, 1, 2, 3]
    jpeg, png, truncated, missing = (out[i] for i in range(4))
    assert (jpeg["decodable"], jpeg["actual_width"], jpeg["actual_height"], jpeg["channels"]) == (True, 64, 48, 3)
    assert bytes(jpeg["image_bytes"]) == images["jpeg"].read_bytes()
    assert jpeg["sha256"] == hashlib.sha256(images["jpeg"].read_bytes()).hexdigest()
    assert (png["image_format"], png["color_mode"], png["channels"]) == ("PNG", "RGBA", 4)
    assert truncated["decodable"] is False and "truncated" in truncated["image_error"]
    assert missing["file_exists"] is False and missing["image_bytes"] is None
    assert str(images["missing"]) in missing["image_error"]


def test_inspect_image_files_keeps_the_order_and_the_spark_types(images):
    import pyarrow as pa

    order = ["jpeg", "missing", "png", "truncated", "gray", "empty", "text"] * 3
    paths = [str(images[n]) for n in order]
    for include_bytes in (False, True):
        table = inspect_image_files(paths, include_bytes, workers=3)
        assert table.column_names == list(image_check_columns(include_bytes))
        assert table.schema.field("decodable").type == pa.bool_()
        assert table.schema.field("actual_width").type == pa.int32()
        assert table.schema.field("byte_size").type == pa.int64()
        assert table.to_pylist() == [inspect_image_file(p, include_bytes) for p in paths]
    assert inspect_image_files([], workers=4).num_rows == 0


def test_small_batches_are_inspected_in_process_with_the_spark_paths_rows(spark, images):
    from cv_pipeline.data.processor import COCOProcessor

    folder = images["jpeg"].parent
    records = [{"image_id": i, "file_name": p.name} for i, p in enumerate(images.values())]
    in_process, in_spark = COCOProcessor(spark), COCOProcessor(spark, in_process_max_images=0)
    assert in_process.validates_in_process(len(records)) and not in_spark.validates_in_process(len(records))
    assert not COCOProcessor(spark, in_process_max_images=5).validates_in_process(6)
    for include_bytes in (False, True):
        for image_records in (records, None):
            here = in_process.process_images(folder, image_records, include_bytes)
            there = in_spark.process_images(folder, image_records, include_bytes)
            assert here.schema == there.schema
            assert [r.asDict() for r in here.collect()] == [r.asDict() for r in there.collect()]
            facts = in_process.image_facts(folder, image_records, include_bytes)
            assert facts.equals(in_spark.image_facts(folder, image_records, include_bytes))
            assert facts.num_rows == (len(records) - (image_records is None))  # no record: no missing file
