"""The GX quality suites on small Spark DataFrames: clean data passes; each defect fails its check only."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from cv_pipeline.data.quality import (
    CHECK_DEFINITIONS,
    ERROR,
    TRAINING_CHECK_DEFINITIONS,
    WARN,
    QualityCheckResult,
    failed_blocking,
    quality_metrics_rows,
    quality_metrics_table,
    results_as_metadata,
    run_quality_suites,
    run_split_leakage_check,
)
from cv_pipeline.data.spark import get_spark

IMAGES_SCHEMA = (
    "batch_id string, image_id long, file_name string, width int, height int, sha256 string, file_path string, "
    "actual_width int, actual_height int, image_format string"
)
ANNOTATIONS_SCHEMA = (
    "batch_id string, annotation_id long, image_id long, category_id long, bbox_x double, bbox_y double, "
    "bbox_w double, bbox_h double, area double, iscrowd int, segmentation string, segmentation_type string, "
    "segmentation_area double, polygon_count int, min_polygon_coords int, odd_polygon_parts int, "
    "rle_height int, rle_width int, num_keypoints int, keypoints string"
)
GEOMETRY_COLUMNS = (
    "segmentation_type", "segmentation_area", "polygon_count", "min_polygon_coords", "odd_polygon_parts",
    "rle_height", "rle_width",
)
NEW_CHECKS = {
    "annotations_polygons_well_formed", "annotations_rle_matches_image", "annotations_area_consistent",
    "images_duplicate_content", "categories_class_imbalance",
}
CATEGORIES_SCHEMA = "batch_id string, category_id long, name string, supercategory string"

WIDTH, HEIGHT = 100, 80


@pytest.fixture(scope="session")
def spark():
    return get_spark("cv_pipeline_tests")


def clean_rows() -> dict[str, list[dict]]:
    """Two batches that reuse the same image, annotation and category ids (legal: ids are per batch).
    Each category has 5 non-crowd annotations per batch; one box pokes 0.5 px past two edges, within
    the 1 px tolerance; one crowd annotation covers its whole image with an uncompressed RLE. Polygons
    are the boxes' rectangles (area = segmentation area), except a small object whose mask area is
    15 px off its polygon's (within the tolerance), a compressed RLE and one without segmentation."""
    images, annotations, categories = [], [], []
    for batch_id in ("b1", "b2"):
        for image_id in (1, 2, 3):
            images.append(dict(
                batch_id=batch_id, image_id=image_id, file_name=f"{image_id}.jpg", width=WIDTH, height=HEIGHT,
                sha256=f"{batch_id}{image_id:062d}", file_path=f"/landing/{batch_id}/images/{image_id}.jpg",
                actual_width=WIDTH, actual_height=HEIGHT, image_format="JPEG",
            ))
        for category_id, name in ((1, "cat"), (2, "dog")):
            categories.append(
                dict(batch_id=batch_id, category_id=category_id, name=name, supercategory="animal")
            )
        annotation_ids = iter(range(101, 111))
        for category_id in (1, 2):
            for k in range(5):
                annotations.append(annotation(
                    batch_id, next(annotation_ids), image_id=1 + k % 3, category_id=category_id,
                    bbox=(10.0 + k, 5.0, 20.0, 30.0),
                ))
        annotations.append(annotation(batch_id, 200, image_id=1, category_id=1, bbox=(-0.5, 0.0, 80.0, 80.5)))
        annotations.append(annotation(
            batch_id, 201, image_id=2, category_id=2, bbox=(0.0, 0.0, 100.0, 80.0), iscrowd=1,
            segmentation_type="rle_uncompressed",
        ))
        by_id = {a["annotation_id"]: a for a in annotations if a["batch_id"] == batch_id}
        # A 3 x 3 px object: COCO's mask area (24) is well above its polygon's (9).
        by_id[101].update(annotation(batch_id, 101, image_id=1, category_id=1, bbox=(10.0, 5.0, 3.0, 3.0),
                                     area=24.0))
        by_id[102].update(annotation(batch_id, 102, image_id=2, category_id=1, bbox=(11.0, 5.0, 20.0, 30.0),
                                     segmentation_type="rle"))
        by_id[110].update(annotation(batch_id, 110, image_id=2, category_id=2, bbox=(14.0, 5.0, 20.0, 30.0),
                                     segmentation_type="none"))
    return {"images": images, "annotations": annotations, "categories": categories}


def annotation(batch_id, annotation_id, *, image_id, category_id, bbox, iscrowd=0, area=None,
               segmentation_type="polygon", **geometry) -> dict:
    """One annotation row with the geometry columns ingestion derives: a polygon is the box's rectangle
    (shoelace area w * h), an RLE covers the box on an image-sized mask. `geometry` overrides columns."""
    x, y, w, h = bbox
    row = dict(batch_id=batch_id, annotation_id=annotation_id, image_id=image_id, category_id=category_id,
               bbox_x=x, bbox_y=y, bbox_w=w, bbox_h=h, area=w * h if area is None else area, iscrowd=iscrowd,
               segmentation=None, segmentation_type=segmentation_type, segmentation_area=None,
               polygon_count=None, min_polygon_coords=None, odd_polygon_parts=None, rle_height=None,
               rle_width=None, num_keypoints=None, keypoints=None)
    if segmentation_type == "polygon":
        row.update(segmentation=json.dumps([[x, y, x + w, y, x + w, y + h, x, y + h]]), segmentation_area=w * h,
                   polygon_count=1, min_polygon_coords=8, odd_polygon_parts=0)
    elif segmentation_type in ("rle", "rle_uncompressed"):
        counts = "PPYo0" if segmentation_type == "rle" else [0, int(w * h)]
        row.update(segmentation=json.dumps({"size": [HEIGHT, WIDTH], "counts": counts}), segmentation_area=w * h,
                   rle_height=HEIGHT, rle_width=WIDTH)
    row.update(geometry)
    return row


def frames(spark, rows, *, drop_annotation_column: str | tuple[str, ...] | None = None):
    """Spark DataFrames built through Arrow: without it, a frame made from Python rows is read back by
    Python workers in every Spark job, which costs more than the checks themselves."""
    arrow = "spark.sql.execution.arrow.pyspark.enabled"
    previous = spark.conf.get(arrow)
    spark.conf.set(arrow, "true")
    try:
        images = spark.createDataFrame(pd.DataFrame(rows["images"]), IMAGES_SCHEMA)
        annotations = spark.createDataFrame(pd.DataFrame(rows["annotations"]), ANNOTATIONS_SCHEMA)
        categories = spark.createDataFrame(pd.DataFrame(rows["categories"]), CATEGORIES_SCHEMA)
    finally:
        spark.conf.set(arrow, previous)
    if drop_annotation_column:
        drop = (drop_annotation_column,) if isinstance(drop_annotation_column, str) else drop_annotation_column
        annotations = annotations.drop(*drop)
    return images, annotations, categories


def by_name(results: list[QualityCheckResult]) -> dict[str, QualityCheckResult]:
    return {r.name: r for r in results}


def failed_names(results) -> set[str]:
    return {r.name for r in results if not r.passed}


@pytest.fixture(scope="module")
def clean_results(spark):
    return run_quality_suites(*frames(spark, clean_rows()))


def test_clean_data_passes_every_check(clean_results):
    assert [r.name for r in clean_results] == [d.name for d in CHECK_DEFINITIONS]
    assert failed_names(clean_results) == set(), [r for r in clean_results if not r.passed]
    assert failed_blocking(clean_results) == []
    results = by_name(clean_results)
    # Same ids in batches b1 and b2 are not duplicates.
    assert results["annotations_unique_ids"].element_count == 24
    assert results["annotations_unique_ids"].unexpected_count == 0
    assert results["images_unique_ids"].element_count == 6
    assert results["categories_unique_ids"].unexpected_count == 0
    assert results["annotations_reference_existing_images"].element_count == 24
    assert all(r.unexpected_sample == [] for r in clean_results)
    assert results["categories_min_annotations"].severity == WARN
    # Conditional checks count the rows they judge: per batch 9 polygons, 2 RLEs, 10 non-crowd
    # segmentation areas (the crowd region's is not judged), 11 non-crowd boxes.
    assert results["annotations_polygons_well_formed"].element_count == 18
    assert results["annotations_rle_matches_image"].element_count == 4
    assert results["annotations_area_consistent"].element_count == 20
    assert results["annotations_bbox_inside_image"].element_count == 22
    assert results["annotations_bbox_positive_size"].element_count == 22
    assert results["images_duplicate_content"].element_count == 6
    assert results["categories_class_imbalance"].element_count == 4
    severities = {name: results[name].severity for name in NEW_CHECKS}
    assert severities == {
        "annotations_polygons_well_formed": ERROR, "annotations_rle_matches_image": ERROR,
        "annotations_area_consistent": WARN, "images_duplicate_content": WARN,
        "categories_class_imbalance": WARN,
    }
    assert results["annotations_bbox_positive_size"].severity == WARN
    assert "0.2 * max(area, segmentation_area) + 16 px" in results["annotations_area_consistent"].description
    meta = results_as_metadata(results["annotations_bbox_inside_image"])
    assert json.loads(json.dumps(meta)) == meta
    assert set(meta) == {
        "passed", "severity", "element_count", "unexpected_count", "unexpected_sample", "description",
    }
    assert all(e["success"] for r in clean_results for e in r.expectations)


def defect_rows() -> dict[str, list[dict]]:
    """The clean rows plus one instance of each row-level defect, each on its own annotation id,
    so each check sees exactly its own defect."""
    rows = clean_rows()
    add = rows["annotations"].append
    # Duplicate (b2, 105): a copy of an existing, otherwise valid annotation.
    add(dict(next(a for a in rows["annotations"] if (a["batch_id"], a["annotation_id"]) == ("b2", 105))))
    # Dangling image; its RLE size is wrong too, but without an image that is the reference check's.
    add(annotation("b2", 301, image_id=99, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), segmentation_type="rle",
                   rle_height=1, rle_width=1))
    add(annotation("b2", 302, image_id=1, category_id=77, bbox=(1.0, 1.0, 5.0, 5.0)))  # dangling category
    # 20 px past the right edge: x + w = 120 on a 100 px wide image.
    add(annotation("b2", 303, image_id=1, category_id=1, bbox=(90.0, 1.0, 30.0, 5.0)))
    add(annotation("b2", 304, image_id=1, category_id=1, bbox=(1.0, 1.0, 0.0, 5.0), area=5.0))  # zero width
    add(annotation("b2", 305, image_id=1, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), iscrowd=2))  # iscrowd 2
    # A category with one non-crowd annotation in b1: enough for the references, too few for min annotations.
    rows["categories"].append(dict(batch_id="b1", category_id=3, name="bird", supercategory="animal"))
    add(annotation("b1", 306, image_id=1, category_id=3, bbox=(1.0, 1.0, 5.0, 5.0)))
    # Polygons: a 2-point part (4 coordinates), an odd part (7 coordinates), no part at all.
    add(annotation("b2", 307, image_id=1, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), polygon_count=2,
                   min_polygon_coords=4))
    add(annotation("b2", 308, image_id=1, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), min_polygon_coords=7,
                   odd_polygon_parts=1))
    add(annotation("b2", 309, image_id=1, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), polygon_count=0,
                   min_polygon_coords=None))
    # An RLE whose size is (width, height): transposed.
    add(annotation("b2", 310, image_id=2, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), segmentation_type="rle",
                   rle_height=WIDTH, rle_width=HEIGHT))
    # area 300 for a 600 px polygon: 300 off, more than 0.2 * 600 + 16.
    add(annotation("b2", 311, image_id=1, category_id=1, bbox=(1.0, 1.0, 20.0, 30.0), area=300.0))
    # Shapes real exports have, none of which may block a batch: crowd regions whose box pokes out of
    # the image, whose area is not their mask's (COCO val2017: 1,340 stated against 1,004 pixels), or
    # whose box is empty with a negative area; a box-only annotation with area 0 (CVAT, Roboflow); a
    # zero-height box over a 4-point line (COCO train2017 has two: a WARN); a box 0.8 px past the edge.
    add(annotation("b2", 312, image_id=1, category_id=1, bbox=(90.0, 1.0, 30.0, 5.0), iscrowd=1, area=1340.0,
                   segmentation_type="rle_uncompressed", segmentation_area=1004.0))
    add(annotation("b2", 313, image_id=1, category_id=1, bbox=(1.0, 1.0, 0.0, 5.0), iscrowd=1, area=-5.0,
                   segmentation_type="rle_uncompressed"))
    add(annotation("b2", 314, image_id=1, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), area=0.0,
                   segmentation_type="none"))
    add(annotation("b2", 315, image_id=1, category_id=1, bbox=(10.0, 20.0, 1.03, 0.0), area=0.0, polygon_count=1,
                   min_polygon_coords=8, segmentation_area=0.0))
    add(annotation("b2", 316, image_id=1, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), area=-1.0,
                   segmentation_type="none"))  # a negative area: evaluation would drop the object
    add(annotation("b2", 317, image_id=1, category_id=1, bbox=(80.0, 1.0, 20.8, 5.0)))
    # Image (b2, 4) has the bytes of (b2, 1).
    twin = next(i for i in rows["images"] if (i["batch_id"], i["image_id"]) == ("b2", 1))
    rows["images"].append(dict(twin, image_id=4, file_name="4.jpg", file_path="/landing/b2/images/4.jpg"))
    # Batch b3: 60 cats and 5 dogs, enough dogs for min annotations but fewer than 60 / 10.
    rows["images"].extend(
        dict(batch_id="b3", image_id=i, file_name=f"{i}.jpg", width=WIDTH, height=HEIGHT, sha256=f"b3{i:062d}",
             file_path=f"/landing/b3/images/{i}.jpg", actual_width=WIDTH, actual_height=HEIGHT, image_format="JPEG")
        for i in (1, 2)
    )
    # Image (b3, 2) declares 100 x 80 but its file is 80 x 100.
    rows["images"][-1].update(actual_width=HEIGHT, actual_height=WIDTH)
    rows["categories"].extend(
        dict(batch_id="b3", category_id=c, name=n, supercategory="animal") for c, n in ((1, "cat"), (2, "dog"))
    )
    for k in range(65):
        add(annotation("b3", 1000 + k, image_id=1 + k % 2, category_id=1 if k < 60 else 2,
                       bbox=(1.0, 1.0, 5.0, 5.0)))
    return rows


@pytest.fixture(scope="module")
def defect_results(spark):
    return by_name(run_quality_suites(*frames(spark, defect_rows())))


def test_defects_fail_exactly_their_checks(defect_results):
    assert failed_names(defect_results.values()) == {
        "images_decoded_as_declared",
        "annotations_unique_ids",
        "annotations_reference_existing_images",
        "annotations_reference_existing_categories",
        "annotations_bbox_inside_image",
        "annotations_bbox_positive_size",
        "annotations_valid_values",
        "categories_min_annotations",
        *NEW_CHECKS,
    }
    warnings = {"categories_min_annotations", "images_duplicate_content", "categories_class_imbalance",
                "annotations_area_consistent", "annotations_bbox_positive_size"}
    assert {r.name for r in failed_blocking(list(defect_results.values()))} == (
        failed_names(defect_results.values()) - warnings)


def test_image_decoded_at_another_size(defect_results):
    result = defect_results["images_decoded_as_declared"]
    assert (result.unexpected_count, result.unexpected_sample, result.element_count) == (1, [2], 9)


def test_duplicate_annotation_id(defect_results):
    result = defect_results["annotations_unique_ids"]
    assert not result.passed and result.severity == ERROR
    assert result.unexpected_count == 2  # both rows sharing (b2, 105)
    assert result.unexpected_sample == [105]


def test_dangling_image_id(defect_results):
    result = defect_results["annotations_reference_existing_images"]
    assert not result.passed
    assert result.unexpected_count == 1
    assert result.unexpected_sample == [301]


def test_dangling_category_id(defect_results):
    result = defect_results["annotations_reference_existing_categories"]
    assert not result.passed
    assert result.unexpected_count == 1
    assert result.unexpected_sample == [302]


def test_bbox_past_right_edge(defect_results):
    result = defect_results["annotations_bbox_inside_image"]
    assert not result.passed and result.severity == ERROR
    # 303 (20 px past the right edge) is the one offender: 312 (crowd) is not judged, 317 (0.8 px past
    # the edge) is within the tolerance, and empty boxes (304, 315) are annotations_bbox_positive_size's.
    assert (result.unexpected_count, result.unexpected_sample) == (1, [303])
    # 301's image is missing (left to the reference check) and the 4 crowd regions are not judged.
    assert result.element_count == defect_results["annotations_reference_existing_images"].element_count - 1 - 4


def test_zero_size_bbox_is_a_warning(defect_results):
    result = defect_results["annotations_bbox_positive_size"]
    assert not result.passed and result.severity == WARN
    # 304 (zero width) and 315 (COCO train2017's zero-height line); 313 is a crowd region.
    assert sorted(result.unexpected_sample) == [304, 315] and result.unexpected_count == 2
    assert "annotations_bbox_positive_size" not in {r.name for r in failed_blocking(list(defect_results.values()))}
    # Their areas are not negative, so only this check sees them.
    assert not {304, 315} & set(defect_results["annotations_valid_values"].unexpected_sample)


def test_iscrowd_out_of_range_and_negative_area(defect_results):
    result = defect_results["annotations_valid_values"]
    assert not result.passed and result.severity == ERROR
    # 305: iscrowd 2; 316: area -1. Area 0 (314, 315) passes, and 313's negative area is a crowd region's.
    assert result.unexpected_count == 2
    assert sorted(result.unexpected_sample) == [305, 316]
    iscrowd = next(e for e in result.expectations if e["kwargs"].get("column") == "iscrowd")
    assert iscrowd["success"] is False and iscrowd["unexpected_count"] == 1


def test_too_few_annotations_is_a_warning_not_blocking(defect_results):
    result = defect_results["categories_min_annotations"]
    assert not result.passed and result.severity == WARN
    assert result.unexpected_count == 1
    assert result.unexpected_sample == [3]
    blocking = failed_blocking(list(defect_results.values()))
    assert "categories_min_annotations" not in {r.name for r in blocking}
    assert {r.severity for r in blocking} == {ERROR}


def test_malformed_polygons(defect_results):
    result = defect_results["annotations_polygons_well_formed"]
    assert not result.passed and result.severity == ERROR
    assert result.unexpected_count == 3
    assert sorted(result.unexpected_sample) == [307, 308, 309]
    # RLE and segmentation-less rows are not judged: 9 clean polygons per batch, 65 in b3, and 12 added
    # (the copy of (b2, 105), 302-309, 311, 315 and 317).
    assert result.element_count == 18 + 65 + 12


def test_rle_size_differs_from_image(defect_results):
    result = defect_results["annotations_rle_matches_image"]
    assert not result.passed and result.severity == ERROR
    assert result.unexpected_count == 1
    assert result.unexpected_sample == [310]
    # 301's image is missing: left to the reference check. Crowd RLEs (312, 313) are judged: a mask of
    # another size can't be laid on its image, crowd or not.
    assert result.element_count == 4 + 1 + 2
    assert "rle_height" in result.description


def test_area_far_from_segmentation_area_is_a_warning(defect_results):
    result = defect_results["annotations_area_consistent"]
    assert not result.passed and result.severity == WARN
    assert result.unexpected_count == 1
    # 312, a crowd region whose area is not its mask's (as in COCO itself), is not judged; 101's 24 px
    # mask area for a 9 px polygon is within 0.2 * 24 + 16.
    assert result.unexpected_sample == [311]
    assert "annotations_area_consistent" not in {r.name for r in failed_blocking(list(defect_results.values()))}


def test_duplicate_content_within_batch_is_a_warning(defect_results):
    result = defect_results["images_duplicate_content"]
    assert not result.passed and result.severity == WARN
    assert result.unexpected_count == 2  # both images with the same bytes
    assert sorted(result.unexpected_sample) == [1, 4]
    assert result.element_count == 6 + 1 + 2
    assert "images_duplicate_content" not in {r.name for r in failed_blocking(list(defect_results.values()))}


def test_class_imbalance_is_a_warning(defect_results):
    result = defect_results["categories_class_imbalance"]
    assert not result.passed and result.severity == WARN
    assert result.unexpected_count == 1
    assert result.unexpected_sample == [2]  # (b3, dog): 5 against 60 cats
    # Bird (1 annotation) is judged too, against b1's largest category (6): within the ratio.
    assert result.element_count == 4 + 1 + 2
    assert "1/10 " in result.description


@pytest.fixture(scope="module")
def option_results(spark):
    """Clean rows with tighter options: image (b2, 3)'s bytes are already in the table under batch b0,
    the imbalance ratio is 1.1 (5 dogs < 6 cats / 1.1 in each batch) and areas must match exactly.
    The table also holds b1's own rows (a re-run), which are not duplicates of themselves."""
    images, annotations, categories = frames(spark, clean_rows())
    b2_image_3 = next(i for i in clean_rows()["images"] if (i["batch_id"], i["image_id"]) == ("b2", 3))
    existing = images.filter("batch_id = 'b1'").select("batch_id", "image_id", "sha256").unionByName(
        spark.createDataFrame([("b0", 7, b2_image_3["sha256"])], "batch_id string, image_id long, sha256 string")
    )
    return by_name(run_quality_suites(
        images, annotations, categories, existing_images_df=existing, max_imbalance_ratio=1.1,
        area_rel_tolerance=0.0, area_abs_tolerance_px=0.0,
    ))


def test_options_fail_only_their_checks(option_results):
    assert failed_names(option_results.values()) == {
        "images_duplicate_content", "categories_class_imbalance", "annotations_area_consistent",
    }
    assert failed_blocking(list(option_results.values())) == []


def test_duplicate_content_of_another_batch(option_results):
    result = option_results["images_duplicate_content"]
    assert not result.passed
    assert result.unexpected_count == 1
    assert result.unexpected_sample == [3]
    assert "of the table" in result.description


def test_imbalance_ratio_and_area_tolerance_options(option_results):
    imbalance = option_results["categories_class_imbalance"]
    assert imbalance.unexpected_count == 2  # dogs of b1 and b2
    assert imbalance.unexpected_sample == [2]
    area = option_results["annotations_area_consistent"]
    assert area.unexpected_count == 2  # the small object of each batch
    assert area.unexpected_sample == [101]
    assert "0 * max(area, segmentation_area) + 0 px" in area.description


def test_frames_without_geometry_columns(spark):
    """Frames as written before ingestion derived the geometry columns: the schema checks name them and
    the checks that read them fail as not evaluated; the others still run and pass."""
    images, annotations, categories = frames(spark, clean_rows(), drop_annotation_column=GEOMETRY_COLUMNS)
    results = by_name(run_quality_suites(images.drop("sha256"), annotations, categories))
    assert failed_names(results.values()) == {
        "images_schema", "annotations_schema", "annotations_polygons_well_formed",
        "annotations_rle_matches_image", "annotations_area_consistent", "images_duplicate_content",
    }
    assert sorted(results["annotations_schema"].unexpected_sample) == sorted(GEOMETRY_COLUMNS)
    assert results["images_schema"].unexpected_sample == ["sha256"]
    for name in NEW_CHECKS - {"categories_class_imbalance"}:
        assert "Not evaluated" in results[name].description, name
        assert results[name].element_count == 0
    assert "coco_annotations.segmentation_area" in results["annotations_area_consistent"].description
    assert "coco_images.sha256" in results["images_duplicate_content"].description


def test_rejects_bad_options(spark):
    images, annotations, categories = frames(spark, clean_rows())
    with pytest.raises(ValueError, match="max_imbalance_ratio"):
        run_quality_suites(images, annotations, categories, max_imbalance_ratio=0.5)
    with pytest.raises(ValueError, match="area_rel_tolerance"):
        run_quality_suites(images, annotations, categories, area_rel_tolerance=-0.1)
    with pytest.raises(TypeError, match="existing_images_df"):
        run_quality_suites(images, annotations, categories, existing_images_df=pd.DataFrame())
    with pytest.raises(ValueError, match="sha256"):
        run_quality_suites(images, annotations, categories, existing_images_df=images.drop("sha256"))


def test_split_without_leakage_passes():
    manifest = pd.DataFrame({
        "sha256": ["a", "a", "b", "c", None], "split": ["train", "train", "val", "test", "train"],
        "image_id": [1, 1, 2, 3, 4],
    })
    result = run_split_leakage_check(manifest)
    assert result.name == "training_split_no_leakage" == TRAINING_CHECK_DEFINITIONS[0].name
    assert result.table == "training_dataset" and result.severity == ERROR
    assert result.passed
    assert (result.element_count, result.unexpected_count, result.unexpected_sample) == (3, 0, [])
    assert "training_split_no_leakage" not in {d.name for d in CHECK_DEFINITIONS}


@pytest.mark.parametrize("as_arrow", [False, True])
def test_split_leakage_fails_with_the_hashes(as_arrow):
    manifest = pd.DataFrame({
        "sha256": ["x", "a", "a", "b", "x", "x", "c"],
        "split": ["train", "train", "val", "val", "test", "train", "test"],
    })
    frame = pa.Table.from_pandas(manifest) if as_arrow else manifest
    result = run_split_leakage_check(frame)
    assert not result.passed and result.severity == ERROR
    assert result.element_count == 4  # distinct hashes
    assert result.unexpected_count == 2
    assert sorted(result.unexpected_sample) == ["a", "x"]
    assert failed_blocking([result]) == [result]
    assert json.loads(json.dumps(results_as_metadata(result))) == results_as_metadata(result)


def test_split_leakage_without_split_column_is_not_evaluated():
    result = run_split_leakage_check(pd.DataFrame({"sha256": ["a", "b"]}))
    assert not result.passed
    assert result.unexpected_sample == ["split"]
    assert "Not evaluated" in result.description and "training_dataset.split" in result.description
    with pytest.raises(TypeError, match="pandas DataFrame or a pyarrow Table"):
        run_split_leakage_check([{"sha256": "a", "split": "train"}])


def test_quality_metrics_rows(spark, clean_results, defect_results):
    at = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    rows = quality_metrics_rows("b2", list(defect_results.values()), run_id="run-1", evaluated_at=at)
    assert len(rows) == len(CHECK_DEFINITIONS)
    fields = quality_metrics_table(rows).column_names
    assert all(list(row) == fields for row in rows)
    polygons = next(r for r in rows if r["check_name"] == "annotations_polygons_well_formed")
    assert polygons == {
        "batch_id": "b2", "check_name": "annotations_polygons_well_formed", "table_name": "coco_annotations",
        "severity": ERROR, "passed": False, "element_count": 95, "unexpected_count": 3,
        "unexpected_fraction": pytest.approx(3 / 95), "evaluated_at": at, "run_id": "run-1",
    }
    not_evaluated = QualityCheckResult("x", "coco_images", WARN, False, "", 0, 1, ["sha256"], [])
    defaults = quality_metrics_rows("b1", [*clean_results, not_evaluated])
    assert defaults[-1]["unexpected_fraction"] is None and defaults[-1]["run_id"] is None
    assert defaults[0]["unexpected_fraction"] == 0.0 and defaults[0]["evaluated_at"].tzinfo is not None
    assert len({r["evaluated_at"] for r in defaults}) == 1
    table = spark.createDataFrame(quality_metrics_table(rows + defaults))  # what ingestion appends
    assert table.count() == 2 * len(CHECK_DEFINITIONS) + 1
    assert table.filter("passed = false and batch_id = 'b2'").count() == len(NEW_CHECKS) + 8


def test_missing_column_and_wrong_type_fail_schema(spark):
    images, annotations, categories = frames(spark, clean_rows(), drop_annotation_column="iscrowd")
    images = images.withColumn("height", images["height"].cast("long"))
    results = by_name(run_quality_suites(images, annotations, categories))

    schema = results["annotations_schema"]
    assert not schema.passed and schema.severity == ERROR
    assert schema.unexpected_count == 1
    assert schema.unexpected_sample == ["iscrowd"]
    images_schema = results["images_schema"]
    assert not images_schema.passed
    assert images_schema.unexpected_sample == ["height"]
    mistyped = [e for e in images_schema.expectations if not e["success"]]
    assert [(e["kwargs"]["column"], e["observed_value"]) for e in mistyped] == [("height", "LongType")]
    # Checks that need the missing column fail (GX: it does not exist) and say they were not evaluated.
    assert not results["annotations_valid_values"].passed
    assert "Not evaluated" in results["annotations_valid_values"].description
    assert not results["categories_min_annotations"].passed
    assert "Not evaluated" in results["categories_class_imbalance"].description
    # Everything else still runs and passes.
    assert failed_names(results.values()) == {
        "images_schema", "annotations_schema", "annotations_valid_values", "categories_min_annotations",
        "categories_class_imbalance",
    }


def test_rejects_non_spark_input(spark):
    images, annotations, _ = frames(spark, clean_rows())
    with pytest.raises(TypeError, match="categories_df"):
        run_quality_suites(images, annotations, [])


# --------------------------------------------------------------------------- real-world exports
#
# Documents shaped the way COCO 2017 itself and common labelling tools export them, written to a
# temporary landing zone with generated images and ingested by the real parser. None of them may
# lose a record or fail a blocking check.


def _column_major_rle(mask) -> list[int]:
    """COCO's uncompressed RLE counts of a binary mask (column-major, starting with a 0-run)."""
    import numpy as np

    flat = mask.flatten(order="F").astype(np.int8)
    boundaries = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], boundaries, [flat.size]])).tolist()
    return [0, *counts] if flat[0] else counts


def _mask_area_and_box(polygons, height, width):
    from pycocotools import mask as mask_utils

    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    return float(mask_utils.area(rle)), [round(float(v), 2) for v in mask_utils.toBbox(rle)]


def _crowd(annotation_id, image_id, category_id, mask, stated_area):
    """A COCO crowd annotation: uncompressed RLE, its box tight around the mask, `area` as COCO states it."""
    import numpy as np

    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = [float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1)]
    return {"segmentation": {"counts": _column_major_rle(mask), "size": list(mask.shape)}, "area": stated_area,
            "iscrowd": 1, "image_id": image_id, "bbox": box, "category_id": category_id, "id": annotation_id}


def real_world_documents() -> dict[str, tuple[dict, dict[str, tuple[int, int]]]]:
    """batch id -> (COCO document, {file_name: (width, height)})."""
    import numpy as np

    # COCO val2017 (instances_val2017.json's shape): an object polygon whose area is its mask's, one
    # touching the right edge with sub-pixel coordinates past it, and two crowd regions whose stated
    # area is not their RLE's pixel count (1,340 against 1,004; 44,673 against 27,008, as in COCO).
    height, width = 427, 640
    person = [[120.31, 80.22, 180.5, 82.0, 190.12, 300.74, 110.0, 298.4]]
    person_area, person_box = _mask_area_and_box(person, height, width)
    edge = [[600.1, 100.2, 640.4, 100.2, 640.4, 150.7, 600.1, 150.7]]
    edge_area, _ = _mask_area_and_box(edge, height, width)
    small_crowd = np.zeros((height, width), np.uint8)
    small_crowd[10:14, 300:551] = 1  # 4 x 251 = 1,004 px
    large_crowd = np.zeros((height, width), np.uint8)
    large_crowd[200:328, 400:611] = 1  # 128 x 211 = 27,008 px
    assert int(small_crowd.sum()) == 1004 and int(large_crowd.sum()) == 27008
    coco_val = {
        "info": {"description": "COCO 2017 Dataset", "url": "http://cocodataset.org", "version": "1.0",
                 "year": 2017, "contributor": "COCO Consortium", "date_created": "2017/09/01"},
        "licenses": [{"url": "http://creativecommons.org/licenses/by/2.0/", "id": 4, "name": "Attribution License"}],
        "images": [{"license": 4, "file_name": "000000397133.jpg",
                    "coco_url": "http://images.cocodataset.org/val2017/000000397133.jpg", "height": height,
                    "width": width, "date_captured": "2013-11-14 17:02:52",
                    "flickr_url": "http://farm7.staticflickr.com/6116/6255196340_da26cf2c9e_z.jpg", "id": 397133}],
        "annotations": [
            {"segmentation": person, "area": person_area, "iscrowd": 0, "image_id": 397133, "bbox": person_box,
             "category_id": 1, "id": 200887},
            {"segmentation": edge, "area": edge_area, "iscrowd": 0, "image_id": 397133,
             "bbox": [600.1, 100.2, 40.3, 50.5], "category_id": 1, "id": 200888},
            _crowd(900100397133, 397133, 1, small_crowd, 1340.0),
            _crowd(900100397134, 397133, 1, large_crowd, 44673.0),
        ],
        "categories": [{"supercategory": "person", "id": 1, "name": "person"}],
    }
    # COCO train2017: annotation 918 of image 200365, a zero-height box over a 4-point line, area 0.
    coco_train = {
        "info": coco_val["info"], "licenses": coco_val["licenses"],
        "images": [{"license": 4, "file_name": "000000200365.jpg", "height": height, "width": width, "id": 200365}],
        "annotations": [
            {"segmentation": [[296.65, 388.33, 296.65, 388.33, 297.68, 388.33, 297.68, 388.33]], "area": 0.0,
             "iscrowd": 0, "image_id": 200365, "bbox": [296.65, 388.33, 1.03, 0.0], "category_id": 58, "id": 918},
            {"segmentation": person, "area": person_area, "iscrowd": 0, "image_id": 200365, "bbox": person_box,
             "category_id": 58, "id": 919},
        ],
        "categories": [{"supercategory": "food", "id": 58, "name": "hot dog"}],
    }
    # CVAT "COCO 1.0": box-only annotations with `segmentation: []` and area w*h, attributes, empty info
    # strings, `date_captured: 0`; a mask exported as a crowd RLE; a box over the whole frame.
    cvat_mask = np.zeros((240, 320), np.uint8)
    cvat_mask[50:90, 60:140] = 1
    cvat = {
        "licenses": [{"name": "", "id": 0, "url": ""}],
        "info": {"contributor": "", "date_created": "", "description": "", "url": "", "version": "", "year": ""},
        "categories": [{"id": 1, "name": "car", "supercategory": ""}, {"id": 2, "name": "road", "supercategory": ""}],
        "images": [{"id": 1, "width": 320, "height": 240, "file_name": "frame_000000.png", "license": 0,
                    "flickr_url": "", "coco_url": "", "date_captured": 0}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [], "area": 1515.0,
             "bbox": [10.0, 20.0, 50.5, 30.0], "iscrowd": 0, "attributes": {"occluded": False, "rotation": 0.0}},
            {"id": 2, "image_id": 1, "category_id": 1, "segmentation": [], "area": 76800.0,
             "bbox": [0.0, 0.0, 320.0, 240.0], "iscrowd": 0, "attributes": {"occluded": True, "rotation": 0.0}},
            {**_crowd(3, 1, 2, cvat_mask, float(cvat_mask.sum())), "attributes": {"occluded": False}},
        ],
    }
    # Roboflow: a placeholder category 0 named after the project, box-only annotations with
    # `segmentation: []`, area w*h or 0, integer and float coordinates, ids from 0.
    roboflow = {
        "info": {"year": "2023", "version": "3", "description": "Exported from roboflow.com", "contributor": "",
                 "url": "https://public.roboflow.com/object-detection/vehicles", "date_created": "2023-05-01T12:00:00+00:00"},
        "licenses": [{"id": 1, "url": "https://creativecommons.org/licenses/by/4.0/", "name": "CC BY 4.0"}],
        "categories": [{"id": 0, "name": "vehicles", "supercategory": "none"},
                       {"id": 1, "name": "car", "supercategory": "vehicles"},
                       {"id": 2, "name": "truck", "supercategory": "vehicles"}],
        "images": [{"id": 0, "license": 1, "file_name": "img1_jpg.rf.3c1f4e0b8a.jpg", "height": 240, "width": 320,
                    "date_captured": "2023-05-01T12:00:00+00:00"}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 1, "bbox": [10, 20, 50.5, 30], "area": 1515, "segmentation": [],
             "iscrowd": 0},
            {"id": 1, "image_id": 0, "category_id": 2, "bbox": [200, 100, 119.99, 140], "area": 0,
             "segmentation": [], "iscrowd": 0},
        ],
    }
    # Label Studio: no licenses, categories without supercategory, `ignore`, float noise on a box
    # reaching the right edge, file names under a folder; one annotation without iscrowd (as some
    # converters write them).
    label_studio = {
        "images": [{"width": 320, "height": 240, "id": 0, "file_name": "images/5e1a2b3c-photo.jpg"}],
        "categories": [{"id": 0, "name": "Car"}, {"id": 1, "name": "Truck"}],
        "annotations": [
            {"id": 0, "image_id": 0, "category_id": 0, "segmentation": [],
             "bbox": [250.00000000000003, 10.0, 70.00000000000006, 50.0], "ignore": 0, "iscrowd": 0,
             "area": 3500.0000000000036},
            {"id": 1, "image_id": 0, "category_id": 1, "segmentation": [], "bbox": [5.0, 5.0, 40.0, 30.0],
             "ignore": 0, "area": 1200.0},
        ],
        "info": {"year": 2024, "version": "1.0", "description": "", "contributor": "Label Studio", "url": "",
                 "date_created": "2024-01-01 00:00:00.000000"},
    }
    # labelme2coco: nulls in info, licenses and images, a `_background_` category without annotations,
    # `type`, polygons whose area and box come from their mask (pycocotools).
    cat = [[40.0, 30.0, 160.0, 35.0, 150.0, 200.0, 45.0, 190.0]]
    cat_area, cat_box = _mask_area_and_box(cat, 240, 320)
    labelme = {
        "info": {"description": None, "url": None, "version": None, "year": 2024, "contributor": None,
                 "date_created": "2024-01-01 00:00:00.000000"},
        "licenses": [{"url": None, "id": 0, "name": None}],
        "images": [{"license": 0, "url": None, "file_name": "JPEGImages/cat_01.jpg", "height": 240, "width": 320,
                    "date_captured": None, "id": 0}],
        "type": "instances",
        "annotations": [{"id": 0, "image_id": 0, "category_id": 1, "segmentation": cat, "area": cat_area,
                         "bbox": cat_box, "iscrowd": 0}],
        "categories": [{"supercategory": None, "id": 0, "name": "_background_"},
                       {"supercategory": None, "id": 1, "name": "cat"}],
    }
    sizes = {"coco_val2017": {"000000397133.jpg": (640, 427)}, "coco_train2017": {"000000200365.jpg": (640, 427)},
             "cvat": {"frame_000000.png": (320, 240)}, "roboflow": {"img1_jpg.rf.3c1f4e0b8a.jpg": (320, 240)},
             "label_studio": {"images/5e1a2b3c-photo.jpg": (320, 240)}, "labelme": {"JPEGImages/cat_01.jpg": (320, 240)}}
    documents = {"coco_val2017": coco_val, "coco_train2017": coco_train, "cvat": cvat, "roboflow": roboflow,
                 "label_studio": label_studio, "labelme": labelme}
    return {name: (documents[name], sizes[name]) for name in documents}


def write_landing_batch(root, batch_id: str, document: dict, sizes: dict, seed: int):
    """A landing batch folder: annotations.json, random-noise images at their file names, _SUCCESS."""
    import numpy as np
    from PIL import Image

    batch = root / batch_id
    rng = np.random.default_rng(seed)
    for file_name, (width, height) in sizes.items():
        path = batch / "images" / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
    (batch / "annotations.json").write_text(json.dumps(document))
    (batch / "_SUCCESS").touch()
    return batch


@pytest.fixture(scope="module")
def real_world(spark, tmp_path_factory):
    """The real-world-shaped batches, ingested (image facts taken here, not by Spark's inspection job)
    and checked together: (batches, results)."""
    import hashlib

    from cv_pipeline.data.processor import COCOProcessor

    root = tmp_path_factory.mktemp("real_world_landing")
    processor = COCOProcessor(spark)
    batches, images, annotations, categories = {}, [], [], []
    for seed, (batch_id, (document, sizes)) in enumerate(real_world_documents().items()):
        batch_dir = write_landing_batch(root, batch_id, document, sizes, seed)
        batch = processor.ingest_batch(batch_dir, inspect_images=False)
        table = batch.tables["coco_images"]
        files = [batch_dir / "images" / name for name in table.column("file_name").to_pylist()]
        facts = {"file_path": [str(f) for f in files],
                 "sha256": [hashlib.sha256(f.read_bytes()).hexdigest() for f in files],
                 "actual_width": table.column("width").to_pylist(), "actual_height": table.column("height").to_pylist(),
                 "image_format": ["PNG" if f.suffix == ".png" else "JPEG" for f in files]}
        for name, values in facts.items():
            index = table.schema.get_field_index(name)
            table = table.set_column(index, name, pa.array(values, table.schema.field(name).type))
        batches[batch_id] = batch
        images.append(table)
        annotations.append(batch.tables["coco_annotations"])
        categories.append(batch.tables["coco_categories"])
    frames = [spark.createDataFrame(pa.concat_tables(tables)) for tables in (images, annotations, categories)]
    return batches, by_name(run_quality_suites(*frames))


def test_real_world_exports_are_ingested_whole_and_pass_every_blocking_check(real_world):
    batches, results = real_world
    for batch_id, batch in batches.items():
        assert batch.counts["quarantined_by_reason"] == {}, (batch_id, batch.counts)
        assert batch.counts["accepted"] == batch.counts["read"], batch_id
    assert failed_blocking(list(results.values())) == [], [
        (r.name, r.unexpected_sample) for r in failed_blocking(list(results.values()))]
    # The crowd regions' stated areas are not their masks' (COCO's own data), and are not judged.
    crowd = batches["coco_val2017"].tables["coco_annotations"].filter(pc.equal(
        batches["coco_val2017"].tables["coco_annotations"]["iscrowd"], 1)).to_pylist()
    assert sorted((r["area"], r["segmentation_area"]) for r in crowd) == [(1340.0, 1004.0), (44673.0, 27008.0)]
    assert results["annotations_area_consistent"].passed
    # Box-only annotations (CVAT, Roboflow, Label Studio) have no segmentation and are typed so.
    box_only = batches["roboflow"].tables["coco_annotations"].column("segmentation_type").to_pylist()
    assert box_only == ["none", "none"]
    # A missing iscrowd is 0 (Label Studio's second annotation).
    assert batches["label_studio"].tables["coco_annotations"].column("iscrowd").to_pylist() == [0, 0]


def test_real_world_exports_warn_where_a_warning_is_due(real_world):
    _, results = real_world
    # COCO train2017's zero-height box: reported, not blocking.
    zero = results["annotations_bbox_positive_size"]
    assert not zero.passed and zero.severity == WARN and zero.unexpected_sample == [918]
    # Roboflow's and labelme's annotation-less placeholder categories: too few annotations (WARN).
    assert {0} <= set(results["categories_min_annotations"].unexpected_sample)
    assert results["categories_min_annotations"].severity == WARN
