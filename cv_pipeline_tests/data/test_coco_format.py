"""The whole COCO format: every field kept, written back out as the same document; the fast
(typed, bulk) and the exact (generic, one by one) paths agree."""

import copy
import json
from datetime import datetime, timezone

import numpy as np
import pytest

from cv_pipeline.data import coco
from cv_pipeline.data.coco import parse_coco
from cv_pipeline.data.export import document_from_tables
from cv_pipeline.data.processor import apply_taxonomy, batch_row, _counts

BIG = 2**62 + 11  # ids as large integers (beyond 2**53, where a float would lose them)


def real_tool_export() -> dict:
    """What labelling tools write: all optional fields, extra fields, keypoints, the three segmentation
    encodings, no segmentation, float and int boxes, iscrowd given and missing, large ids, sub-folders."""
    return {
        "info": {"description": "export", "version": "1.0", "year": 2024, "date_created": "2024/01/01"},
        "licenses": [{"id": 1, "name": "CC BY 4.0", "url": "http://licenses.example/by/4.0"}],
        "type": "instances",
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": 40, "height": 30, "license": 1, "flickr_url": "http://f/1",
             "coco_url": "http://c/1", "date_captured": "2024-01-01 10:00:00"},
            {"id": BIG, "file_name": "sub/dir/b.png", "width": 20, "height": 10, "date_captured": None,
             "camera": {"model": "x", "iso": 100}},
            {"id": 3, "file_name": "empty.jpg", "width": 8, "height": 8, "license": "proprietary"},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 2, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": [[1, 2, 11, 2, 11, 10, 1, 10]]},
            {"id": 11, "image_id": 1, "category_id": 2, "bbox": [0.5, 0.25, 4.75, 3.5], "area": 9.5,
             "segmentation": [[0.5, 0.25, 5.25, 0.25, 5.25, 3.75], [1.0, 1.0, 2.0, 1.0, 2.0, 2.0]],
             "attributes": {"occluded": False}},
            {"id": BIG + 1, "image_id": BIG, "category_id": 2, "bbox": [0, 0, 1, 5], "area": 5, "iscrowd": 1,
             "segmentation": {"size": [10, 20], "counts": "05S6"}},  # pycocotools.mask.encode: 5 pixels
            {"id": 13, "image_id": BIG, "category_id": 1, "bbox": [0, 0, 1, 2], "area": 2, "iscrowd": 1,
             "segmentation": {"size": [10, 20], "counts": [0, 2, 198]}},
            {"id": 14, "image_id": 1, "category_id": 3, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0,
             "keypoints": [6, 6, 2, 0, 0, 0, 9, 9, 1], "num_keypoints": 2},
        ],
        "categories": [
            {"id": 1, "name": "circle", "supercategory": "shape"},
            {"id": 2, "name": "square"},
            {"id": 3, "name": "person", "supercategory": "person", "keypoints": ["nose", "eye", "ear"],
             "skeleton": [[1, 2], [2, 3]], "color": "#ff0000"},
        ],
    }


def write(tmp_path, document):
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(document))
    return path


def round_trip(parsed):
    batch = batch_row("b", parsed, _counts(parsed), datetime.now(timezone.utc))
    return document_from_tables(parsed.images, parsed.annotations, parsed.categories, batch)


def test_every_field_is_kept_and_written_back(tmp_path):
    source = real_tool_export()
    parsed = parse_coco(write(tmp_path, source))
    assert parsed.rejected == []
    assert parsed.counts_read == {"images": 3, "annotations": 5, "categories": 3}
    expected = copy.deepcopy(source)
    expected["annotations"][1]["iscrowd"] = 0  # the documented default, made explicit
    assert round_trip(parsed) == expected

    rows = {a["annotation_id"]: a for a in parsed.rows("annotations")}
    assert [rows[i]["segmentation_type"] for i in (10, 11, BIG + 1, 13, 14)] == [
        "polygon", "polygon", "rle", "rle_uncompressed", "none"]
    assert rows[10]["segmentation_area"] == 80.0 and rows[10]["polygon_count"] == 1
    assert rows[11]["polygon_count"] == 2 and rows[11]["min_polygon_coords"] == 6
    assert rows[11]["segmentation_area"] == pytest.approx(0.5 * 4.75 * 3.5 + 0.5)
    assert (rows[BIG + 1]["rle_height"], rows[BIG + 1]["rle_width"], rows[BIG + 1]["segmentation_area"]) == (10, 20, 5.0)
    assert rows[14]["num_keypoints"] == 2 and json.loads(rows[14]["keypoints"]) == [6, 6, 2, 0, 0, 0, 9, 9, 1]
    images = {i["image_id"]: i for i in parsed.rows("images")}
    assert images[3]["license"] is None and json.loads(images[3]["extra_json"]) == {"license": "proprietary"}
    assert json.loads(images[BIG]["extra_json"]) == {"camera": {"model": "x", "iso": 100}, "date_captured": None}


def test_typed_and_generic_decoding_agree(tmp_path):
    plain = real_tool_export()
    for image in plain["images"]:
        image.pop("camera", None)
    plain["annotations"][1].pop("attributes")
    plain["categories"][2].pop("color")
    typed = parse_coco(write(tmp_path, plain))
    assert typed.decoding == {"images": "typed", "annotations": "typed", "categories": "typed"}
    generic = parse_coco(tmp_path / "given.json", document=json.loads(json.dumps(plain)))
    assert set(generic.decoding.values()) == {"generic"}
    def normalised(rows):  # the typed path keeps the source's segmentation text, the generic re-encodes it
        return [{**r, "segmentation": json.loads(r["segmentation"])} if r.get("segmentation") else r for r in rows]

    for section in ("images", "annotations", "categories"):
        assert normalised(typed.rows(section)) == normalised(generic.rows(section)), section


def test_bulk_polygon_measurement_matches_one_by_one():
    rng = np.random.default_rng(3)
    texts = []
    for _ in range(300):
        parts = [np.round(rng.uniform(0, 100, 2 * rng.integers(1, 12)), 2).tolist() for _ in range(rng.integers(1, 4))]
        texts.append(json.dumps(parts).encode())
    texts += [b"[[1,2,3,4,5,6,7]]", b"[[1,2,3,4]]", b"[[]]", b"[ [ 1, 2 ,3,4, 5,6 ] ]", b"[]"]
    bulk, exact = coco._bulk_polygons(texts), coco._polygons_one_by_one(texts)
    for key in bulk:
        np.testing.assert_allclose(np.asarray(bulk[key], float), np.asarray(exact[key], float), equal_nan=True,
                                   err_msg=key)
    assert list(bulk["valid"][-5:]) == [False, False, False, True, False]
    assert list(bulk["empty"][-5:]) == [False, False, False, False, True]


@pytest.mark.parametrize("segmentation, accepted", [
    ([[1, 2, 3, 4, 5, "6"]], False),        # a string among the numbers: the bulk parser falls back
    ([[1, 2, 3, 4, 5, [6]]], False),        # nested too deep
    ([[1, 2, 3, 4, 5, 6], []], False),      # an empty part
    ([1, 2, 3, 4, 5, 6], False),            # not a list of parts
    ({"size": [10, 10], "counts": [5, 5]}, False),   # runs don't cover 10 x 10 pixels
    ({"size": [10, 10], "counts": "garbage!"}, False),
    ({"size": [10], "counts": [100]}, False),
    ({"counts": [100]}, False),
    ("polygon", False),
    (None, True),
    ([], True),
])
@pytest.mark.parametrize("extra_fields", [True, False])  # the bulk "raw" and the typed decoding
def test_malformed_segmentations_are_rejected_naming_the_field(tmp_path, segmentation, accepted, extra_fields):
    document = real_tool_export()
    if not extra_fields:
        document["annotations"][1].pop("attributes")
    document["annotations"][0]["segmentation"] = segmentation
    parsed = parse_coco(write(tmp_path, document))
    assert parsed.decoding["annotations"] == ("raw" if extra_fields else "typed")
    rejected = [r for r in parsed.rejected if r.record_id == "10"]
    if accepted:
        assert rejected == [] and parsed.annotations.num_rows == 5
        return
    [record] = rejected
    assert record.reason_code == "invalid_field" and "field 'segmentation'" in record.message
    assert "annotations[0] (id=10)" in record.message
    assert json.loads(record.as_json())["segmentation"] == segmentation  # kept as it was
    assert parsed.annotations.num_rows == 4  # the others are untouched


@pytest.mark.parametrize("literal, field", [("NaN", "area"), ("Infinity", "area"), ("-Infinity", "bbox")])
def test_non_finite_numbers_reject_the_record_naming_the_field(tmp_path, literal, field):
    text = json.dumps(real_tool_export())
    if field == "area":
        text = text.replace('"area": 80', f'"area": {literal}', 1)
    else:
        text = text.replace('"bbox": [1, 2, 10, 8]', f'"bbox": [1, 2, {literal}, 8]', 1)
    path = tmp_path / "annotations.json"
    path.write_text(text)
    parsed = parse_coco(path)
    [record] = parsed.rejected
    assert record.reason_code == "invalid_field" and f"field '{field}'" in record.message
    assert str(path) in record.message and "annotations[0] (id=10)" in record.message
    assert literal in record.as_json()  # the record as it was, not repaired


def test_duplicate_ids_keep_the_first_and_quarantine_the_rest(tmp_path):
    document = real_tool_export()
    document["images"].append({**document["images"][0], "file_name": "again.jpg"})
    document["annotations"].append({**document["annotations"][0], "area": 81})
    parsed = parse_coco(write(tmp_path, document))
    assert sorted((r.record_type, r.reason_code) for r in parsed.rejected) == [
        ("annotation", "duplicate_id"), ("image", "duplicate_id")]
    assert {r.record["file_name"] for r in parsed.rejected if r.record_type == "image"} == {"again.jpg"}
    assert parsed.rows("images")[0]["file_name"] == "a.jpg"


@pytest.mark.parametrize("value", [-1, 2**63, 1.5, "7", True, None])
def test_ids_that_cannot_be_keys_are_rejected(tmp_path, value):
    document = real_tool_export()
    document["categories"][1]["id"] = value
    parsed = parse_coco(write(tmp_path, document))
    assert [(r.record_type, r.reason_code) for r in parsed.rejected if r.record_type == "category"] == [
        ("category", "invalid_field")]
    # the annotations that used category 2 can no longer find it
    assert {r.reason_code for r in parsed.rejected if r.record_type == "annotation"} <= {"unknown_category",
                                                                                          "category_rejected"}


def test_records_that_are_not_objects(tmp_path):
    document = real_tool_export()
    document["annotations"].insert(1, [1, 2, 3])
    document["images"].append("c.jpg")
    parsed = parse_coco(write(tmp_path, document))
    reasons = sorted((r.record_type, r.reason_code, r.message.split(": ", 1)[1]) for r in parsed.rejected)
    assert reasons == [("annotation", "invalid_record", "annotations[1] is not an object, got list"),
                       ("image", "invalid_record", "images[3] is not an object, got string")]
    assert parsed.annotations.num_rows == 5 and parsed.decoding["annotations"] == "generic"


def test_taxonomy_conflicts_are_quarantined_not_merged(tmp_path):
    parsed = parse_coco(write(tmp_path, real_tool_export()))
    # the landing zone already has id 2 = "box" and "person" = 7: categories 2 and 3 conflict
    conflicts = apply_taxonomy(parsed, {1: "circle", 2: "box", 7: "person"})
    assert conflicts == [2, 3]
    assert parsed.rows("categories")[0]["name"] == "circle" and parsed.categories.num_rows == 1
    by_reason = {}
    for r in parsed.rejected:
        by_reason.setdefault(r.reason_code, set()).add(int(r.record_id))
    assert by_reason == {"taxonomy_conflict": {2, 3}, "category_rejected": {11, BIG + 1, 14}}
    message = next(r.message for r in parsed.rejected if r.record_id == "2")
    assert "id 2 is 'box' in the batches already ingested" in message and "field 'name'" in message
    assert apply_taxonomy(parse_coco(write(tmp_path, real_tool_export())), {1: "circle", 2: "square"}) == []


def test_records_with_extra_fields_decode_in_bulk_like_the_generic_path(tmp_path):
    """Exports with fields we don't model (CVAT's `attributes`, ...) take the bulk "raw" path, which must
    give exactly what the record-by-record generic path gives."""
    source = real_tool_export()
    source["annotations"][0]["bbox"] = [1, 2, 10, "8"]  # a bad record among them
    raw = parse_coco(write(tmp_path, source))
    assert raw.decoding == {"images": "raw", "annotations": "raw", "categories": "raw"}
    generic = parse_coco(tmp_path / "given.json", document=json.loads(json.dumps(source)))
    for section in ("images", "annotations", "categories"):
        rows = [[{**r, "segmentation": json.loads(r["segmentation"]) if r.get("segmentation") else None}
                 for r in parsed.rows(section)] for parsed in (raw, generic)]
        assert rows[0] == rows[1], section
    assert [(r.reason_code, r.record) for r in raw.rejected] == [(r.reason_code, r.record) for r in generic.rejected]
    assert json.loads(raw.rejected[0].as_json())["bbox"] == [1, 2, 10, "8"]
