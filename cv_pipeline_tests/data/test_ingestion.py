"""Ingestion with Spark and Delta: quarantine loses nothing, re-runs replace a batch, versions pin data."""

import json

import pytest

from cv_pipeline.data.delta_io import read_table, replace_batch, table_version, validate_batch_id
from cv_pipeline.data.processor import COCOProcessor, find_complete_batches
from cv_pipeline_tests.samples import SAMPLES

DEFECTIVE = SAMPLES / "defective" / "batch_defective"


@pytest.fixture(scope="module")
def processor(spark):
    return COCOProcessor(spark)


@pytest.fixture(scope="module")
def defective(processor):
    return processor.ingest_batch(DEFECTIVE)


def test_sample_batch_ingests_completely(processor):
    batch = processor.ingest_batch(SAMPLES / "landing" / "batch_0001")
    assert batch.counts["read"] == {"images": 110, "annotations": 271, "categories": 6}
    assert batch.counts["accepted"] == {"images": 110, "annotations": 271, "categories": 6}
    assert batch.quarantine.count() == 0
    images = batch.images.toPandas()
    assert images["sha256"].str.len().eq(64).all()
    assert (images["actual_width"] == images["width"]).all()
    assert set(images["image_format"]) == {"JPEG", "PNG"}
    assert images["file_name"].str.contains("/").any()  # sub-folder file names
    crowd = batch.annotations.filter("iscrowd = 1").toPandas()
    assert len(crowd) == 2 and set(crowd["segmentation_type"]) == {"rle_uncompressed"}


def test_image_bytes_are_stored_when_configured(spark):
    import hashlib

    batch = COCOProcessor(spark, store_image_bytes=True).ingest_batch(SAMPLES / "landing" / "batch_0002")
    images = batch.tables["coco_images"].to_pylist()
    assert len(images) == 110
    for image in images[:20]:
        data = (SAMPLES / "landing" / "batch_0002" / "images" / image["file_name"]).read_bytes()
        assert image["image_bytes"] == data and hashlib.sha256(data).hexdigest() == image["sha256"]
    # by default the table references the file by path and hash only
    assert "image_bytes" not in COCOProcessor(spark).ingest_batch(SAMPLES / "landing" / "batch_0002").tables[
        "coco_images"].column_names


def test_every_defect_is_quarantined_with_its_reason(defective):
    rows = defective.quarantine.toPandas()
    reasons = {(r.record_type, int(r.record_id)): r.reason_code for r in rows.itertuples()}
    expected = json.loads((DEFECTIVE / "defects.json").read_text())
    for defect in expected:
        key = (defect["record_type"], defect["id"])
        if defect["defect"] == "bbox_outside_image":
            assert key not in reasons  # kept in the table; the GX checks flag it
        elif defect["defect"] == "duplicate_annotation_id":
            assert reasons[key] == "duplicate_id"  # the first record with the id is kept, the repeat quarantined
        else:
            assert reasons[key] == defect["defect"], defect
    # annotations of rejected images go with them, each with a message naming file, record and field
    rejected_with_image = rows[rows.reason_code == "image_rejected"]
    assert len(rejected_with_image) > 0
    assert rejected_with_image["message"].str.contains("annotations.json: annotation id=").all()
    assert rejected_with_image["message"].str.contains("field 'image_id'").all()
    missing = rows[rows.reason_code == "image_missing"].iloc[0]
    assert "img_900002.png" in missing.message and "image file not found" in missing.message
    assert json.loads(missing.record_json)["id"] == 900002


def test_accepted_plus_quarantined_equals_read(defective):
    counts = defective.counts
    for kind in ("images", "annotations", "categories"):
        assert counts["accepted"][kind] + counts["quarantined"][kind] == counts["read"][kind], kind
    assert defective.images.count() == counts["accepted"]["images"]
    assert defective.annotations.count() == counts["accepted"]["annotations"]


def test_replace_batch_is_idempotent_and_keeps_other_batches(spark, processor, tmp_path):
    path = tmp_path / "coco_annotations"
    first = processor.ingest_batch(SAMPLES / "landing" / "batch_0001")
    second = processor.ingest_batch(SAMPLES / "landing" / "batch_0002")
    assert replace_batch(first.annotations, path, "batch_0001") == 0
    assert replace_batch(second.annotations, path, "batch_0002") == 1
    before = read_table(path).to_pandas().drop(columns="ingested_at").sort_values(["batch_id", "annotation_id"])
    again = processor.ingest_batch(SAMPLES / "landing" / "batch_0001")
    assert replace_batch(again.annotations, path, "batch_0001") == 2
    after = read_table(path).to_pandas().drop(columns="ingested_at").sort_values(["batch_id", "annotation_id"])
    assert len(after) == 542
    assert before.reset_index(drop=True).equals(after.reset_index(drop=True))
    # time travel: version 0 held batch_0001 only
    assert set(read_table(path, version=0).column("batch_id").to_pylist()) == {"batch_0001"}


def test_quick_start_api(spark):
    from cv_pipeline import COCOProcessor as Public

    processor = Public(spark)
    annotations = processor.load_coco_annotations(SAMPLES / "landing" / "batch_0002" / "annotations.json")
    assert annotations.count() == 271
    images = processor.process_images(SAMPLES / "defective" / "batch_defective" / "images").toPandas()
    assert len(images) == 11  # every file in the folder, including the broken ones
    assert set(images.loc[~images.decodable, "image_error"].str.contains("empty|cannot be decoded")) == {True}


def test_complete_batches_skip_incomplete_ones():
    assert find_complete_batches(SAMPLES / "defective") == ["batch_bad_json", "batch_defective"]
    assert find_complete_batches(SAMPLES / "nowhere") == []


@pytest.mark.parametrize("bad", ["../x", "a b", "", "x" * 200, "a/b"])
def test_batch_ids_that_cannot_name_a_partition(bad):
    with pytest.raises(ValueError, match="batch id"):
        validate_batch_id(bad)


def test_table_version_of_missing_table(tmp_path):
    assert table_version(tmp_path / "none") is None
    with pytest.raises(FileNotFoundError, match="no Delta table"):
        read_table(tmp_path / "none")
