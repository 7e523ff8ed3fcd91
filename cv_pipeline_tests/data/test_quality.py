"""The GX quality suites on small Spark DataFrames: clean data passes; each defect fails its check only."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from cv_pipeline.data.quality import (
    CHECK_DEFINITIONS,
    ERROR,
    WARN,
    QualityCheckResult,
    failed_blocking,
    results_as_metadata,
    run_quality_suites,
)
from cv_pipeline.data.spark import get_spark

IMAGES_SCHEMA = (
    "batch_id string, image_id long, file_name string, width int, height int, sha256 string, file_path string"
)
ANNOTATIONS_SCHEMA = (
    "batch_id string, annotation_id long, image_id long, category_id long, bbox_x double, bbox_y double, "
    "bbox_w double, bbox_h double, area double, iscrowd int, segmentation string"
)
CATEGORIES_SCHEMA = "batch_id string, category_id long, name string, supercategory string"

WIDTH, HEIGHT = 100, 80


@pytest.fixture(scope="session")
def spark():
    return get_spark("cv_pipeline_tests")


def clean_rows() -> dict[str, list[dict]]:
    """Two batches that reuse the same image, annotation and category ids (legal: ids are per batch).
    Each category has 5 non-crowd annotations per batch; one box pokes 0.5 px past two edges, within
    the 1 px tolerance; one crowd annotation covers its whole image."""
    images, annotations, categories = [], [], []
    for batch_id in ("b1", "b2"):
        for image_id in (1, 2, 3):
            images.append(dict(
                batch_id=batch_id, image_id=image_id, file_name=f"{image_id}.jpg", width=WIDTH, height=HEIGHT,
                sha256=f"{batch_id}{image_id:062d}", file_path=f"/landing/{batch_id}/images/{image_id}.jpg",
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
        annotations.append(
            annotation(batch_id, 201, image_id=2, category_id=2, bbox=(0.0, 0.0, 100.0, 80.0), iscrowd=1)
        )
    return {"images": images, "annotations": annotations, "categories": categories}


def annotation(batch_id, annotation_id, *, image_id, category_id, bbox, iscrowd=0, area=None) -> dict:
    x, y, w, h = bbox
    return dict(batch_id=batch_id, annotation_id=annotation_id, image_id=image_id, category_id=category_id,
                bbox_x=x, bbox_y=y, bbox_w=w, bbox_h=h, area=w * h if area is None else area, iscrowd=iscrowd,
                segmentation=json.dumps([[x, y, x + w, y, x + w, y + h]]))


def frames(spark, rows, *, drop_annotation_column: str | None = None):
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
        annotations = annotations.drop(drop_annotation_column)
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
    add(annotation("b2", 301, image_id=99, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0)))  # dangling image
    add(annotation("b2", 302, image_id=1, category_id=77, bbox=(1.0, 1.0, 5.0, 5.0)))  # dangling category
    # 20 px past the right edge: x + w = 120 on a 100 px wide image.
    add(annotation("b2", 303, image_id=1, category_id=1, bbox=(90.0, 1.0, 30.0, 5.0)))
    add(annotation("b2", 304, image_id=1, category_id=1, bbox=(1.0, 1.0, 0.0, 5.0), area=5.0))  # zero width
    add(annotation("b2", 305, image_id=1, category_id=1, bbox=(1.0, 1.0, 5.0, 5.0), iscrowd=2))  # iscrowd 2
    # A category with one non-crowd annotation in b1: enough for the references, too few for min annotations.
    rows["categories"].append(dict(batch_id="b1", category_id=3, name="bird", supercategory="animal"))
    add(annotation("b1", 306, image_id=1, category_id=3, bbox=(1.0, 1.0, 5.0, 5.0)))
    return rows


@pytest.fixture(scope="module")
def defect_results(spark):
    return by_name(run_quality_suites(*frames(spark, defect_rows())))


def test_defects_fail_exactly_their_checks(defect_results):
    assert failed_names(defect_results.values()) == {
        "annotations_unique_ids",
        "annotations_reference_existing_images",
        "annotations_reference_existing_categories",
        "annotations_bbox_inside_image",
        "annotations_valid_values",
        "categories_min_annotations",
    }


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
    # 303 (20 px past the right edge) and 304 (zero width, next test) are the two offenders.
    assert result.unexpected_count == 2
    assert 303 in result.unexpected_sample
    # 301's image is missing: left to the reference check, not judged here.
    assert 301 not in result.unexpected_sample
    assert result.element_count == defect_results["annotations_reference_existing_images"].element_count - 1


def test_zero_width_bbox(defect_results):
    result = defect_results["annotations_bbox_inside_image"]
    assert not result.passed
    assert 304 in result.unexpected_sample
    assert sorted(result.unexpected_sample) == [303, 304]
    # Its area was kept positive, so only the bbox check sees it.
    assert 304 not in defect_results["annotations_valid_values"].unexpected_sample


def test_iscrowd_out_of_range(defect_results):
    result = defect_results["annotations_valid_values"]
    assert not result.passed
    assert result.unexpected_count == 1
    assert result.unexpected_sample == [305]
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
    # Everything else still runs and passes.
    assert failed_names(results.values()) == {
        "images_schema", "annotations_schema", "annotations_valid_values", "categories_min_annotations",
    }


def test_rejects_non_spark_input(spark):
    images, annotations, _ = frames(spark, clean_rows())
    with pytest.raises(TypeError, match="categories_df"):
        run_quality_suites(images, annotations, [])
