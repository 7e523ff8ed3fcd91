"""COCO parsing: unreadable documents fail naming file and position; bad records are rejected with reasons."""

import json
import math

import pytest

from cv_pipeline.data.coco import COCOFormatError, parse_coco, safe_relative_path

CATEGORIES = [{"id": 1, "name": "circle", "supercategory": "round"}, {"id": 2, "name": "square"}]


def write(tmp_path, document, raw=None):
    path = tmp_path / "annotations.json"
    path.write_text(raw if raw is not None else json.dumps(document))
    return path


def document(**overrides):
    doc = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
        "annotations": [{"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 3, 3], "area": 9,
                         "segmentation": [[1, 1, 4, 1, 4, 4]]}],
        "categories": CATEGORIES,
    }
    doc.update(overrides)
    return doc


def test_invalid_json_names_file_line_and_column(tmp_path):
    path = write(tmp_path, None, raw='{"images": [\n  {"id": 1,, }]}')
    with pytest.raises(COCOFormatError) as error:
        parse_coco(path)
    message = str(error.value)
    assert str(path) in message and "line 2 column" in message and "char" in message


def test_truncated_sample_batch_is_invalid_json():
    from cv_pipeline_tests.samples import SAMPLES

    with pytest.raises(COCOFormatError, match=r"batch_bad_json/annotations.json: invalid JSON at line"):
        parse_coco(SAMPLES / "defective" / "batch_bad_json" / "annotations.json")


@pytest.mark.parametrize(
    "raw, match",
    [
        ("[1, 2]", "top level must be a JSON object, got list"),
        ('{"images": [], "annotations": []}', "missing top-level key 'categories'"),
        ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list, got object"),
        ('{"images": [], "annotations": 3, "categories": []}', "'annotations' must be a list, got number"),
        ('"text"', "top level must be a JSON object, got string"),
        ('', "invalid JSON at line 1 column 1"),
    ],
)
def test_document_level_errors(tmp_path, raw, match):
    with pytest.raises(COCOFormatError, match=match):
        parse_coco(write(tmp_path, None, raw=raw))


def test_missing_file(tmp_path):
    with pytest.raises(COCOFormatError, match="annotation file not found"):
        parse_coco(tmp_path / "nope.json")


def test_valid_document_is_normalised(tmp_path):
    parsed = parse_coco(write(tmp_path, document()))
    annotations = parsed.rows("annotations")
    assert [a["annotation_id"] for a in annotations] == [5]
    annotation = annotations[0]
    assert annotation["iscrowd"] == 0  # missing iscrowd means 0, as pycocotools assumes
    assert annotation["segmentation_type"] == "polygon"
    assert parsed.rows("categories")[1]["supercategory"] is None
    assert parsed.rejected == []


@pytest.mark.parametrize(
    "annotation, reason, field",
    [
        ({"category_id": 99}, "unknown_category", "category_id"),
        ({"image_id": 42}, "unknown_image", "image_id"),
        ({"bbox": [1, 2, 3]}, "invalid_field", "bbox"),
        ({"bbox": [1, 2, 3, "x"]}, "invalid_field", "bbox"),
        ({"area": None}, "invalid_field", "area"),
        ({"iscrowd": "yes"}, "invalid_field", "iscrowd"),
        ({"segmentation": [[1, 2, 3]]}, "invalid_field", "segmentation"),
        ({"segmentation": {"counts": "abc"}}, "invalid_field", "segmentation"),
        ({"id": -3}, "invalid_field", "id"),
        ({"id": True}, "invalid_field", "id"),
    ],
)
def test_bad_annotation_is_rejected_with_reason(tmp_path, annotation, reason, field):
    base = document()["annotations"][0]
    parsed = parse_coco(write(tmp_path, document(annotations=[{**base, **annotation}])))
    assert parsed.annotations.num_rows == 0
    [rejected] = parsed.rejected
    assert rejected.reason_code == reason
    assert "annotations[0]" in rejected.message and f"field '{field}'" in rejected.message
    assert str(tmp_path / "annotations.json") in rejected.message


@pytest.mark.parametrize("file_name", ["../escape.jpg", "/etc/passwd", "a/../../b.jpg", "", "a\\b.jpg"])
def test_file_names_escaping_the_batch_are_rejected(tmp_path, file_name):
    images = [{"id": 1, "file_name": file_name, "width": 10, "height": 10}]
    parsed = parse_coco(write(tmp_path, document(images=images)))
    assert parsed.images.num_rows == 0
    assert {r.reason_code for r in parsed.rejected if r.record_type == "image"} == {"unsafe_path"}
    # its annotation is rejected because its image was, not silently dropped
    assert {r.reason_code for r in parsed.rejected if r.record_type == "annotation"} == {"image_rejected"}
    assert safe_relative_path(file_name) is None


def test_duplicate_category_and_bad_image_sizes(tmp_path):
    categories = CATEGORIES + [{"id": 1, "name": "other"}]
    images = [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10},
              {"id": 2, "file_name": "b.jpg", "width": 0, "height": 10}]
    parsed = parse_coco(write(tmp_path, document(categories=categories, images=images)))
    reasons = sorted((r.record_type, r.reason_code) for r in parsed.rejected)
    assert reasons == [("category", "duplicate_id"), ("image", "invalid_field")]
    assert parsed.counts_read == {"images": 2, "annotations": 1, "categories": 3}


def test_rle_segmentations_are_accepted(tmp_path):
    base = document()["annotations"][0]
    annotations = [
        {**base, "id": 6, "iscrowd": 1, "segmentation": {"size": [10, 10], "counts": [0, 5, 95]}},
        {**base, "id": 7, "iscrowd": 1, "segmentation": {"size": [10, 10], "counts": "05o2"}},  # pycocotools.mask.encode of 5 pixels
    ]
    parsed = parse_coco(write(tmp_path, document(annotations=annotations)))
    rows = parsed.rows("annotations")
    assert [a["segmentation_type"] for a in rows] == ["rle_uncompressed", "rle"]
    assert [(a["rle_height"], a["rle_width"], a["segmentation_area"]) for a in rows] == [(10, 10, 5.0), (10, 10, 5.0)]
    assert not math.isnan(rows[0]["area"])
