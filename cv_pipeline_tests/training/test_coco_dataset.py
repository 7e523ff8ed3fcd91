"""CocoDeltaDataset over the real sample lake: pinned versions, manifest splits, torchvision targets,
masks from polygons and RLE, joint transforms, and DDP-safe sharding with real DataLoader workers."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from cv_pipeline.data.delta_io import read_table, replace_batch
from cv_pipeline.training.coco_dataset import (
    CocoDeltaDataset,
    ShardedDataset,
    classification_target,
    collate_detection,
    detection_target,
    detection_transforms,
    instance_segmentation_target,
    load_image_records,
    segmentation_to_mask,
    semantic_target,
    semantic_transforms,
)

SPLIT_NAMES = ("train", "val", "test")


@pytest.fixture(scope="module")
def records(ingested_lake):
    return {split: load_image_records(ingested_lake.manifest, split) for split in SPLIT_NAMES}


def _assert_box_bounds_mask(box, mask, slack=1.0):
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert len(xs) and xs.min() >= box[0] - slack and xs.max() <= box[2] + slack
    assert ys.min() >= box[1] - slack and ys.max() <= box[3] + slack


def _keys(records):
    return [(r.batch_id, r.image_id) for r in records]


def test_splits_agree_with_the_manifest_and_cover_every_image(ingested_lake, records):
    manifest = ingested_lake.manifest
    images = read_table(ingested_lake.lake_dir / "coco_images", manifest.source_versions["coco_images"])
    every = set(zip(images["batch_id"].to_pylist(), images["image_id"].to_pylist()))
    seen = [set(_keys(records[s])) for s in SPLIT_NAMES]
    assert sum(map(len, seen)) == len(every) and set().union(*seen) == every  # disjoint, complete
    for split, keys in zip(SPLIT_NAMES, seen):
        assert _keys(records[split]) == sorted(keys)  # (batch_id, image_id) order
        rows = read_table(manifest.table_path, manifest.version, filters=[("split", "=", split)])
        in_manifest = set(zip(rows["batch_id"].to_pylist(), rows["image_id"].to_pylist()))
        with_objects = {k for k, r in zip(_keys(records[split]), records[split]) if r.has_objects()}
        assert in_manifest <= keys and len(in_manifest) == manifest.split_images[split]
        assert with_objects >= in_manifest  # the manifest also drops boxes under min_box_size
    assert any(not len(r.annotation_ids) for r in records["train"])  # empty images get a split too
    with pytest.raises(ValueError, match="unknown split"):
        load_image_records(manifest, "holdout")


def test_records_stay_on_the_pinned_versions(ingested_lake, records, tmp_path):
    lake = tmp_path / "lake"
    shutil.copytree(ingested_lake.lake_dir, lake)
    manifest = dataclasses.replace(ingested_lake.manifest, table_path=str(lake / "training_dataset"))
    # a later run replaces batch_0002 with fewer images and relabels every annotation of it
    images = read_table(lake / "coco_images", 1)
    kept = images.filter(pc.equal(images["batch_id"], "batch_0002")).slice(0, 3)
    assert replace_batch(kept, lake / "coco_images", "batch_0002") == 2
    annotations = read_table(lake / "coco_annotations", 1)
    changed = annotations.filter(pc.equal(annotations["batch_id"], "batch_0002"))
    changed = changed.set_column(changed.schema.get_field_index("bbox_x"), "bbox_x",
                                 pc.add(changed["bbox_x"], 1.0))
    assert replace_batch(changed, lake / "coco_annotations", "batch_0002") == 2

    again = {split: load_image_records(manifest, split) for split in SPLIT_NAMES}
    for split in SPLIT_NAMES:
        assert _keys(again[split]) == _keys(records[split])
        for old, new in zip(records[split], again[split]):
            np.testing.assert_array_equal(old.boxes_xywh, new.boxes_xywh)
            assert old.segmentations == new.segmentations
    latest = dataclasses.replace(manifest, source_versions={**manifest.source_versions, "coco_images": 2,
                                                            "coco_annotations": 2})
    newer = [r for s in SPLIT_NAMES for r in load_image_records(latest, s)]
    assert sum(r.batch_id == "batch_0002" for r in newer) == 3
    moved = next(r for r in newer if r.batch_id == "batch_0002" and len(r.annotation_ids))
    key = (moved.batch_id, moved.image_id)
    old = next(r for s in SPLIT_NAMES for r in records[s] if (r.batch_id, r.image_id) == key)
    np.testing.assert_allclose(moved.boxes_xywh[:, 0], old.boxes_xywh[:, 0] + 1.0, rtol=1e-6)


def test_detection_targets_match_the_coco_rows(ingested_lake, records):
    manifest = ingested_lake.manifest
    table = read_table(ingested_lake.lake_dir / "coco_annotations", manifest.source_versions["coco_annotations"])
    rows = {(r["batch_id"], r["annotation_id"]): r for r in table.to_pylist()}
    label_of = {label["category_id"]: label["index"] for label in manifest.labels}
    checked = 0
    for record in records["train"] + records["val"]:
        target = detection_target(record, record.height, record.width)
        ids = record.annotation_ids[record.iscrowd == 0]
        assert target["boxes"].format.name == "XYXY"
        assert tuple(target["boxes"].canvas_size) == (record.height, record.width)
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert int(target["image_id"]) == record.image_id
        assert list(record.annotation_ids) == sorted(record.annotation_ids)
        for box, label, area, annotation_id in zip(target["boxes"], target["labels"], target["area"], ids):
            row = rows[(record.batch_id, int(annotation_id))]
            expected = [row["bbox_x"], row["bbox_y"], row["bbox_x"] + row["bbox_w"], row["bbox_y"] + row["bbox_h"]]
            np.testing.assert_allclose(box.numpy(), expected, rtol=1e-5)
            assert int(label) == label_of[row["category_id"]] + 1 and row["iscrowd"] == 0
            assert float(area) == pytest.approx(row["area"])
            checked += 1
    assert checked > 300


def test_polygon_masks_have_the_annotated_area(records):
    for record in records["val"]:
        target = instance_segmentation_target(record, record.height, record.width)
        masks = target["masks"]
        assert masks.dtype == torch.uint8 and masks.shape == (len(target["boxes"]), record.height, record.width)
        pixels = masks.flatten(1).sum(1).float()
        assert torch.allclose(pixels, target["area"], rtol=0.03)
        for mask, box in zip(masks, target["boxes"]):  # the COCO box bounds its mask
            _assert_box_bounds_mask(box, mask)


def test_crowd_rle_becomes_ignore_pixels(records):
    record = next(r for r in records["train"] if (r.iscrowd == 1).any())
    crowd = np.flatnonzero(record.iscrowd == 1)
    assert json.loads(record.segmentations[crowd[0]])["counts"].__class__ is list  # uncompressed RLE
    union = np.zeros((record.height, record.width), bool)
    for i in crowd:
        union |= segmentation_to_mask(record.segmentations[i], record.height, record.width).astype(bool)
    mask = semantic_target(record, record.height, record.width, ignore_index=255)["mask"]
    assert mask.dtype == torch.int64 and mask.shape == (record.height, record.width)
    assert int((mask == 255).sum()) == int(union.sum()) > 0
    objects = set((record.labels[record.iscrowd == 0] + 1).tolist())
    assert set(mask.unique().tolist()) <= objects | {0, 255} and objects & set(mask.unique().tolist())
    # crowd annotations are not detection targets
    assert len(detection_target(record, record.height, record.width)["boxes"]) == int((record.iscrowd == 0).sum())


def test_compressed_rle_and_bad_segmentations(records):
    mask = np.zeros((30, 40), np.uint8, order="F")
    mask[5:12, 7:30] = 1
    mask[20:25, 3:6] = 1
    encoded = mask_utils.encode(np.asfortranarray(mask))
    text = json.dumps({"size": encoded["size"], "counts": encoded["counts"].decode("ascii")})
    np.testing.assert_array_equal(segmentation_to_mask(text, 30, 40), mask)
    np.testing.assert_array_equal(segmentation_to_mask(json.loads(text), 30, 40), mask)  # parsed objects too

    with pytest.raises(ValueError, match="RLE size"):
        segmentation_to_mask(text, 40, 30)
    with pytest.raises(ValueError, match="sum to 1200"):
        segmentation_to_mask({"size": [30, 40], "counts": "53l2"}, 30, 40, name="annotation b:9")
    with pytest.raises(ValueError, match="annotation b:9: .*RLE alphabet"):
        segmentation_to_mask({"size": [30, 40], "counts": "zzzz"}, 30, 40, name="annotation b:9")

    record = next(r for r in records["val"] if len(r.annotation_ids) >= 2)
    bad = dataclasses.replace(record, segmentations=[record.segmentations[0], "[[1, 2, 3"] + record.segmentations[2:])
    name = f"annotation {record.batch_id}:{int(record.annotation_ids[1])}"
    with pytest.raises(ValueError, match=f"{name} .*segmentation cannot be decoded"):
        instance_segmentation_target(bad, record.height, record.width)
    with pytest.raises(ValueError, match="annotation b:7: segmentation cannot be decoded"):
        segmentation_to_mask('{"not": "a segmentation"}', 10, 10, name="annotation b:7")


def test_horizontal_flip_moves_boxes_and_masks_together(records):
    record = next(r for r in records["train"] if (r.iscrowd == 0).sum() >= 2)
    plain = CocoDeltaDataset([record], instance_segmentation_target)[0]
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), detection_transforms(train=False)])
    image, target = CocoDeltaDataset([record], instance_segmentation_target, flip)[0]
    assert image.dtype == torch.float32 and image.shape == (3, record.height, record.width)
    torch.testing.assert_close(image, plain[0].flip(-1).float() / 255)
    width = record.width
    expected = plain[1]["boxes"].clone()
    expected[:, 0], expected[:, 2] = width - plain[1]["boxes"][:, 2], width - plain[1]["boxes"][:, 0]
    torch.testing.assert_close(target["boxes"].as_subclass(torch.Tensor), expected.as_subclass(torch.Tensor))
    torch.testing.assert_close(target["masks"], plain[1]["masks"].flip(-1))
    for mask, box in zip(target["masks"], target["boxes"]):  # the flipped box still bounds the flipped mask
        _assert_box_bounds_mask(box, mask)
    assert torch.equal(target["labels"], plain[1]["labels"]) and len(target["area"]) == len(target["labels"])


def test_semantic_augmentation_keeps_labels_on_their_pixels(records):
    """Crops, quarter turns and colour changes move image and mask together and never invent a label."""
    from cv_pipeline.models.builtin_tasks import soft_dice_loss

    record = next(r for r in records["train"] if (r.iscrowd == 0).sum() >= 2)
    dataset = CocoDeltaDataset([record], semantic_target, semantic_transforms(True, 96))
    plain = CocoDeltaDataset([record], semantic_target, semantic_transforms(False, 96))[0][1]["mask"]
    torch.manual_seed(0)
    for _ in range(8):
        image, target = dataset[0]
        mask = target["mask"].as_subclass(torch.Tensor)
        assert image.shape == (3, 96, 96) and mask.shape == (96, 96)
        assert set(mask.unique().tolist()) <= set(plain.unique().tolist())  # nearest, no blended labels
    with pytest.raises(ValueError, match="unknown semantic augmentation 'heavy'"):
        semantic_transforms(True, 96, "heavy")

    mask = plain.as_subclass(torch.Tensor).long()[None]
    perfect = torch.nn.functional.one_hot(mask.clamp(max=6), 7).permute(0, 3, 1, 2).float() * 50
    assert soft_dice_loss(perfect, mask) < 0.05 < soft_dice_loss(-perfect, mask)


def test_images_from_stored_bytes_and_size_mismatch(records):
    record = records["val"][0]
    from_file = CocoDeltaDataset([record], semantic_target)[0]
    stored = dataclasses.replace(record, file_path="/nonexistent/elsewhere.png",
                                 image_bytes=Path(record.file_path).read_bytes())
    from_bytes = CocoDeltaDataset([stored], semantic_target)[0]
    assert torch.equal(from_bytes[0], from_file[0]) and torch.equal(from_bytes[1]["mask"], from_file[1]["mask"])
    wrong = dataclasses.replace(record, width=record.width + 1)
    with pytest.raises(ValueError, match=f"{Path(record.file_path).name}.*differs from the table"):
        CocoDeltaDataset([wrong], semantic_target)[0]
    missing = dataclasses.replace(record, file_path="/nonexistent/elsewhere.png")
    with pytest.raises((RuntimeError, OSError), match="elsewhere.png"):
        CocoDeltaDataset([missing], semantic_target)[0]


def test_classification_uses_the_largest_object_and_skips_empty_images(records):
    dataset = CocoDeltaDataset(records["train"], classification_target)
    assert 0 < len(dataset) == sum(r.has_objects() for r in records["train"]) < len(records["train"])
    record = dataset.records[0]
    objects = np.flatnonzero(record.iscrowd == 0)
    _, target = dataset[0]
    assert int(target["label"]) == int(record.labels[objects[np.argmax(record.area[objects])]])


def test_detection_batches_leave_workers_intact(records):
    dataset = CocoDeltaDataset(records["val"][:6], instance_segmentation_target, detection_transforms(False))
    in_process = list(DataLoader(dataset, batch_size=3, collate_fn=collate_detection))
    from_workers = list(DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_detection))
    assert len(in_process) == len(from_workers) == 2
    for (images, targets), (sent_images, sent_targets) in zip(in_process, from_workers):
        assert len(sent_images) == len(sent_targets) == 3 and all(i.dtype == torch.float32 for i in sent_images)
        for image, sent in zip(images, sent_images):
            assert type(sent) is type(image) and torch.equal(sent, image)
        for target, sent in zip(targets, sent_targets):
            assert sent.keys() == target.keys()
            for key in target:
                assert type(sent[key]) is type(target[key]) and torch.equal(sent[key], target[key]), key
            assert sent["boxes"].canvas_size == target["boxes"].canvas_size and sent["boxes"].format.name == "XYXY"
            assert sent["masks"].shape[0] == sent["boxes"].shape[0] == sent["labels"].shape[0] == sent["area"].shape[0]


class _Indexed(Dataset):
    """A real dataset item plus its index, so the test sees which samples each rank got."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        image, target = self.dataset[index]
        return index, int(target["image_id"]), tuple(image.shape)


def test_sharding_over_ranks_and_dataloader_workers(records):
    base = CocoDeltaDataset(records["test"][:29], detection_target)  # odd: one rank is padded
    world = 2

    def run(epoch):
        seen = []
        for rank in range(world):
            shard = ShardedDataset(_Indexed(base), seed=3, rank=rank, world_size=world)
            shard.set_epoch(epoch)
            loader = DataLoader(shard, batch_size=4, num_workers=2, collate_fn=list)
            seen.append([item for batch in loader for item in batch])
            assert len(seen[-1]) == len(shard) == 15
        return seen

    first = run(0)
    indices = [[i for i, _, _ in share] for share in first]
    assert set(indices[0] + indices[1]) == set(range(29)) and len(indices[0] + indices[1]) == 30  # one pad
    shares = [ShardedDataset(base, seed=3, rank=r, world_size=2).rank_indices() for r in range(world)]
    assert sorted(shares[0] + shares[1][:14]) == sorted(set(range(29)))  # disjoint before the pad
    assert {i for i, _, _ in first[0]} == set(shares[0])  # the two workers split the rank's share
    assert all(image_id == base.records[i].image_id for share in first for i, image_id, _ in share)
    second = run(1)
    assert [i for i, _, _ in second[0]] != indices[0]  # set_epoch reshuffles
    assert {i for share in second for i, _, _ in share} == set(range(29))

    dropped = [ShardedDataset(base, seed=3, rank=r, world_size=2, drop_last=True) for r in range(world)]
    assert [len(d) for d in dropped] == [14, 14] and not set(dropped[0].rank_indices()) & set(dropped[1].rank_indices())
    single = ShardedDataset(base, shuffle=False)  # outside Ray Train and torch.distributed: rank 0 of 1
    assert (single.rank, single.world_size, single.rank_indices()) == (0, 1, list(range(29)))
