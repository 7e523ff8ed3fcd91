"""The built-in tasks: classification, detection, instance and semantic segmentation.

Each is an ordinary `TaskSpec`, registered the same way a user's task is. Models are torchvision's,
by name, with random weights (`weights=None, weights_backbone=None`: nothing is downloaded); the
`*_resnet18_fpn` / `lraspp_resnet18` variants put torchvision's own detection and segmentation
heads on a ResNet-18, a size that trains from scratch on a CPU.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from cv_pipeline.models.classification import CLASSIFIER_ARCHITECTURES
from cv_pipeline.models.tasks import TaskSpec

# ---------------------------------------------------------------------------------------------
# Model factories
# ---------------------------------------------------------------------------------------------

TORCHVISION_DETECTORS = (
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large", "ssd300_vgg16",
)
TORCHVISION_INSTANCE_SEGMENTERS = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2")
TORCHVISION_SEMANTIC_SEGMENTERS = (
    "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large", "fcn_resnet50", "fcn_resnet101",
    "lraspp_mobilenet_v3_large",
)


def _torchvision_detector(name: str, num_classes: int, image_size: int | None = None, **options) -> nn.Module:
    from torchvision.models import detection

    kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes, **options}
    if image_size and not name.startswith("ssd"):
        kwargs.update(min_size=image_size, max_size=image_size)
    return getattr(detection, name)(**kwargs)


def _resnet_fpn(backbone_name: str, *, p6p7: bool = False, fpn_channels: int = 256):
    """torchvision's `resnet_fpn_backbone` (every layer trainable, plain BatchNorm), with the FPN's
    width as a parameter: P2-P5 + max-pooled P6, or P3-P5 + P6/P7 (RetinaNet, FCOS)."""
    from torchvision.models import resnet
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

    body = getattr(resnet, backbone_name)(weights=None, norm_layer=nn.BatchNorm2d)
    returned = [2, 3, 4] if p6p7 else [1, 2, 3, 4]
    stage2 = body.inplanes // 8  # channels of layer1 (64 for ResNet-18/34, 256 with bottlenecks)
    return BackboneWithFPN(body, {f"layer{k}": str(i) for i, k in enumerate(returned)},
                           [stage2 * 2 ** (k - 1) for k in returned], fpn_channels,
                           extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels) if p6p7 else LastLevelMaxPool())


def _small_anchors():
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    return AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)


# Fewer sampled anchors, proposals, RoIs and detections than torchvision's COCO settings: a
# quarter of the RoI-head cost, tuned on the samples (benchmarks/learning.py); any can be overridden.
SMALL_RCNN_OPTIONS = {"rpn_batch_size_per_image": 64, "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
                      "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100, "box_detections_per_img": 20}
# Narrower than torchvision's (256-channel FPN, 1024-wide box head, 256-channel mask head), where
# a 160-px step spends its time: the stride-4 FPN output and RPN 3x3 convolutions cost more than
# the ResNet-18 itself at 256 channels, and the mask head (~0.46 GMAC per positive RoI) more than
# everything else together. At 128/512/64 a Mask R-CNN step needs about a quarter of the MACs
# (benchmarks/learning.py measures what that does to the learning goals).
FPN_CHANNELS, BOX_HEAD_WIDTH, MASK_HEAD_CHANNELS = 128, 512, 64


def _rcnn_heads(num_classes: int, fpn_channels: int, representation_size: int) -> dict:
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    return {"num_classes": None, "box_head": TwoMLPHead(fpn_channels * 7 * 7, representation_size),
            "box_predictor": FastRCNNPredictor(representation_size, num_classes)}


def fasterrcnn_resnet18_fpn(num_classes: int, image_size: int = 160, fpn_channels: int = FPN_CHANNELS,
                            representation_size: int = BOX_HEAD_WIDTH, **options) -> nn.Module:
    from torchvision.models.detection import FasterRCNN

    options = {**SMALL_RCNN_OPTIONS, "box_batch_size_per_image": 64, **options}
    return FasterRCNN(_resnet_fpn("resnet18", fpn_channels=fpn_channels), min_size=image_size, max_size=image_size,
                      rpn_anchor_generator=_small_anchors(),
                      **_rcnn_heads(num_classes, fpn_channels, representation_size), **options)


def maskrcnn_resnet18_fpn(num_classes: int, image_size: int = 160, fpn_channels: int = FPN_CHANNELS,
                          representation_size: int = BOX_HEAD_WIDTH, mask_channels: int = MASK_HEAD_CHANNELS,
                          **options) -> nn.Module:
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    options = {**SMALL_RCNN_OPTIONS, "box_batch_size_per_image": 32, **options}
    return MaskRCNN(_resnet_fpn("resnet18", fpn_channels=fpn_channels), min_size=image_size, max_size=image_size,
                    rpn_anchor_generator=_small_anchors(),
                    mask_head=MaskRCNNHeads(fpn_channels, (mask_channels,) * 4, 1),
                    mask_predictor=MaskRCNNPredictor(mask_channels, mask_channels, num_classes),
                    **_rcnn_heads(num_classes, fpn_channels, representation_size), **options)


def fcos_resnet18_fpn(num_classes: int, image_size: int = 160, **options) -> nn.Module:
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(sizes=((8,), (16,), (32,), (64,), (128,)), aspect_ratios=((1.0,),) * 5)
    return FCOS(_resnet_fpn("resnet18", p6p7=True), num_classes=num_classes, min_size=image_size,
                max_size=image_size, anchor_generator=anchors, **options)


def retinanet_resnet18_fpn(num_classes: int, image_size: int = 160, **options) -> nn.Module:
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    sizes = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for s in (16, 32, 64, 128, 256))
    anchors = AnchorGenerator(sizes=sizes, aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    return RetinaNet(_resnet_fpn("resnet18", p6p7=True), num_classes=num_classes, min_size=image_size,
                     max_size=image_size, anchor_generator=anchors, **options)


def _torchvision_segmenter(name: str, num_classes: int, **options) -> nn.Module:
    from torchvision.models import segmentation

    kwargs = {"weights": None, "weights_backbone": None, "num_classes": num_classes, **options}
    if not name.startswith("lraspp"):
        kwargs.setdefault("aux_loss", False)
    return getattr(segmentation, name)(**kwargs)


class SemanticFPN(nn.Module):
    """Semantic FPN (Kirillov et al., Panoptic FPN): every pyramid level of torchvision's FPN is
    brought to stride 4 by conv-BN-ReLU blocks and bilinear upsampling, summed, classified per pixel
    and upsampled to the input; returns `{"out": logits}` like torchvision's segmentation models."""

    def __init__(self, backbone: nn.Module, num_classes: int, channels: int = 128, levels: int = 4):
        super().__init__()
        self.backbone = backbone
        self.levels = [str(i) for i in range(levels)]
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Conv2d(backbone.out_channels, channels, 3, padding=1, bias=False),
                          nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
            for _ in self.levels)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, images: torch.Tensor) -> dict:
        features = self.backbone(images)
        size = features[self.levels[0]].shape[-2:]
        fused = sum(F.interpolate(head(features[level]), size=size, mode="bilinear", align_corners=False)
                    for level, head in zip(self.levels, self.heads))
        logits = F.interpolate(self.classifier(fused), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": logits}


def fpn_resnet18(num_classes: int, channels: int = 128, fpn_channels: int = FPN_CHANNELS) -> nn.Module:
    """Semantic FPN head on the ResNet-18 FPN backbone of `fasterrcnn_resnet18_fpn` (same layout and
    parameter names, so a detector's backbone and FPN load into it)."""
    return SemanticFPN(_resnet_fpn("resnet18", fpn_channels=fpn_channels), num_classes, channels=channels)


def lraspp_resnet18(num_classes: int, **options) -> nn.Module:
    """torchvision's LR-ASPP head on a ResNet-18: stride-8 detail from layer2, context from layer4."""
    from torchvision.models import resnet18
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.lraspp import LRASPP

    backbone = IntermediateLayerGetter(resnet18(weights=None), return_layers={"layer2": "low", "layer4": "high"})
    return LRASPP(backbone, low_channels=128, high_channels=512, num_classes=num_classes,
                  inter_channels=options.pop("inter_channels", 128))



# ---------------------------------------------------------------------------------------------
# Losses and metrics
# ---------------------------------------------------------------------------------------------


def classification_loss(model, batch, config) -> dict:
    images, labels = batch
    logits = model(images)
    return {"loss": F.cross_entropy(logits, labels, label_smoothing=float(config.get("label_smoothing", 0.0)))}


def classification_metrics(num_classes: int):
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

    return MetricCollection({"acc": MulticlassAccuracy(num_classes, average="micro"),
                             "f1_macro": MulticlassF1Score(num_classes, average="macro")})


def classification_update(metric, model, batch) -> None:
    images, labels = batch
    metric.update(model(images).argmax(dim=1), labels)


def detection_loss(model, batch, config) -> dict:
    images, targets = batch
    parts = model(list(images), [_plain_target(t) for t in targets])
    return {"loss": sum(parts.values()), **parts}


def _plain_target(target: dict) -> dict:
    return {k: v for k, v in target.items() if isinstance(v, torch.Tensor)}


def detection_metrics(num_classes: int, iou_types=("bbox",)):
    from torchmetrics.detection import MeanAveragePrecision

    return MeanAveragePrecision(iou_type=iou_types[0] if len(iou_types) == 1 else tuple(iou_types),
                                backend="pycocotools")


def detection_update(metric, model, batch, with_masks: bool = False) -> None:
    images, targets = batch
    outputs = model(list(images))
    predictions, truths = [], []
    for output, target in zip(outputs, targets):
        prediction = {"boxes": output["boxes"].float(), "scores": output["scores"].float(), "labels": output["labels"]}
        truth = {"boxes": target["boxes"].as_subclass(torch.Tensor).float(), "labels": target["labels"]}
        if "iscrowd" in target:
            truth["iscrowd"] = target["iscrowd"]
        if with_masks:
            prediction["masks"] = output["masks"][:, 0] > 0.5
            truth["masks"] = target["masks"].as_subclass(torch.Tensor).bool()
        predictions.append(prediction)
        truths.append(truth)
    metric.update(predictions, truths)


def semantic_loss(model, batch, config) -> dict:
    """Pixel cross-entropy, plus `dice_weight` x soft Dice loss (mean over classes): the Dice term
    weighs every class equally, as mIoU does, where cross-entropy is dominated by background."""
    images, target = batch
    logits = model(images)["out"]
    mask = target["mask"].long()
    ignore_index = int(config.get("ignore_index", 255))
    parts = {"ce_loss": F.cross_entropy(logits, mask, ignore_index=ignore_index)}
    dice_weight = float(config.get("dice_weight", 0.0))
    if dice_weight:
        parts["dice_loss"] = soft_dice_loss(logits, mask, ignore_index)
    return {"loss": parts["ce_loss"] + dice_weight * parts.get("dice_loss", 0.0), **parts}


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int = 255, smooth: float = 1.0):
    """1 - mean over classes of the soft Dice coefficient between softmax(logits) and the one-hot
    mask, over the pixels that are not `ignore_index`."""
    valid = (mask != ignore_index).unsqueeze(1)
    probs = logits.float().softmax(dim=1) * valid
    onehot = F.one_hot(mask.where(valid.squeeze(1), 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    intersection = (probs * onehot).sum(dims)
    dice = (2 * intersection + smooth) / (probs.sum(dims) + onehot.sum(dims) + smooth)
    return 1 - dice.mean()


def semantic_metrics(num_classes: int, ignore_index: int = 255):
    from torchmetrics import MetricCollection
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    return MetricCollection({
        "miou": MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index),
        "pixel_acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index),
    })


def semantic_update(metric, model, batch) -> None:
    images, target = batch
    metric.update(model(images)["out"].argmax(dim=1), target["mask"].long())


# ---------------------------------------------------------------------------------------------
# Data: the default Delta datasets come from the target builders and transforms below
# ---------------------------------------------------------------------------------------------


def _detection_target(record, height, width, with_masks=False):
    from cv_pipeline.training.coco_dataset import detection_target

    return detection_target(record, height, width, with_masks=with_masks)


def _semantic_target(record, height, width):
    from cv_pipeline.training.coco_dataset import semantic_target

    return semantic_target(record, height, width)


def _classification_target(record, height, width):
    from cv_pipeline.training.coco_dataset import classification_target

    return classification_target(record, height, width)


def _detection_transforms(train, config):
    from cv_pipeline.training.coco_dataset import detection_transforms

    return detection_transforms(train)


def _semantic_transforms(train, config):
    from cv_pipeline.training.coco_dataset import semantic_transforms

    return semantic_transforms(train, int(config.get("image_size", 256)), str(config.get("augment", "dihedral")))


def _classification_transforms(train, config):
    from cv_pipeline.training.coco_dataset import classification_transforms

    return classification_transforms(train, int(config.get("image_size", 64)))


def _collate_detection(batch):
    from cv_pipeline.training.coco_dataset import collate_detection

    return collate_detection(batch)


def _has_objects(record) -> bool:
    return bool((record.iscrowd == 0).any())


def classification_datasets(manifest, config):
    """Object crops (default, `classification_input: crops`) or whole images labelled by their
    largest object (`classification_input: images`)."""
    source = config.get("classification_input", "crops")
    if source == "images":
        return None  # the default Delta image dataset, with the whole-image target
    if source != "crops":
        raise ValueError(f"classification_input must be 'crops' or 'images', got {source!r}")
    from cv_pipeline.training.crops import CropDataset, load_crops, train_transform
    from cv_pipeline.training.dataset import load_split

    size = int(config.get("image_size", 64))
    train = CropDataset(*load_crops(load_split(manifest.table_path, manifest.version, "train"), size),
                        transform=train_transform(size))
    val = CropDataset(*load_crops(load_split(manifest.table_path, manifest.version, "val"), size))
    return train, val


# ---------------------------------------------------------------------------------------------
# Prediction: what a served, batch-scored or evaluated model answers, one dict per image
# ---------------------------------------------------------------------------------------------


def _names_by_index(info: dict) -> list[dict]:
    return sorted(info["labels"], key=lambda label: label["index"])


def mask_rle(mask) -> dict:
    """COCO RLE (`size` [h, w], `counts` as text) of a binary mask."""
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict):
    """The binary (H, W) uint8 mask of a `mask_rle` dict."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": list(rle["size"]), "counts": rle["counts"].encode("ascii")})


def _image_tensors(images) -> list[torch.Tensor]:
    from torchvision.transforms.v2 import functional as TF

    return [TF.to_dtype(TF.to_image(image.convert("RGB")), torch.float32, scale=True) for image in images]


def classification_predict(model, images, info) -> list[dict]:
    """Top-1 class (`category_id`, `label`, `score`) and every class's probability, per image: the
    image is resized to the training `image_size` as the crops were (bilinear), then normalised."""
    from cv_pipeline.models.classification import preprocess

    labels = _names_by_index(info)
    if not images:
        return []
    probabilities = torch.softmax(model(preprocess(images, int(info["config"].get("image_size", 64)))), dim=1)
    answers = []
    for row in probabilities.tolist():
        top = max(range(len(row)), key=row.__getitem__)
        answers.append({"category_id": int(labels[top]["category_id"]), "label": str(labels[top]["name"]),
                        "score": float(row[top]),
                        "probabilities": {str(label["name"]): float(p) for label, p in zip(labels, row)}})
    return answers


def detector_predict(model, images, info, with_masks: bool = False) -> list[dict]:
    """Every detection torchvision's post-processing keeps, per image: COCO `bbox` [x, y, w, h] in
    the image's pixels, `category_id`, `label`, `score`, and with masks each mask as COCO RLE."""
    labels = _names_by_index(info)
    answers = []
    for output in model(_image_tensors(images)) if images else []:
        boxes = output["boxes"].float().tolist()
        masks = (output["masks"][:, 0] > 0.5).cpu().numpy() if with_masks else None
        detections = []
        for k, ((x0, y0, x1, y1), klass, score) in enumerate(zip(boxes, output["labels"].tolist(),
                                                                 output["scores"].float().tolist())):
            label = labels[int(klass) - 1]
            detection = {"bbox": [x0, y0, x1 - x0, y1 - y0], "category_id": int(label["category_id"]),
                         "label": str(label["name"]), "score": float(score)}
            if masks is not None:
                detection["segmentation"] = mask_rle(masks[k])
            detections.append(detection)
        answers.append({"detections": detections})
    return answers


def semantic_predict(model, images, info) -> list[dict]:
    """The class of every pixel at the input's own resolution, per image: logits at the training
    `image_size`, resized bilinearly to the image before the argmax; each class present as a COCO RLE
    mask with its pixel count (pixels of no listed class are background)."""
    from torchvision.transforms.v2 import functional as TF

    from cv_pipeline.training.coco_dataset import semantic_transforms

    labels = _names_by_index(info)
    if not images:
        return []
    transform = semantic_transforms(False, int(info["config"].get("image_size", 256)), "none")
    logits = model(torch.stack([transform(TF.to_image(image.convert("RGB"))) for image in images]))["out"]
    answers = []
    for image, logit in zip(images, logits):
        full = F.interpolate(logit[None].float(), size=(image.height, image.width), mode="bilinear",
                             align_corners=False)[0].argmax(0)
        classes = []
        for index in full.unique().tolist():
            if index == 0:
                continue
            mask = (full == index).numpy()
            label = labels[index - 1]
            classes.append({"category_id": int(label["category_id"]), "label": str(label["name"]),
                            "pixels": int(mask.sum()), "mask": mask_rle(mask)})
        answers.append({"width": image.width, "height": image.height, "classes": classes})
    return answers


def _classifier_features(model):
    """torchvision classifiers pool their last feature map in `avgpool`, right before the classifier."""
    return model.avgpool


def _backbone_features(model):
    """torchvision detectors and segmenters (and the semantic FPN) keep their feature extractor in
    `backbone`: its maps, pooled per level, are what the heads see."""
    return model.backbone


def classification_signals(prediction: dict, width: int, height: int) -> dict:
    return {"label": [prediction["label"]], "score": [float(prediction["score"])]}


def detection_signals(prediction: dict, width: int, height: int) -> dict:
    """One value per image (the drift tests' units): its top detection's class and score, how many
    detections, and their median size as a share of the image."""
    detections = prediction["detections"]
    if not detections:
        return {"boxes_per_image": [0]}
    top = max(detections, key=lambda d: d["score"])
    areas = sorted(float(d["bbox"][2]) * float(d["bbox"][3]) for d in detections)
    return {"label": [top["label"]], "score": [float(top["score"])], "boxes_per_image": [len(detections)],
            "box_area": [areas[len(areas) // 2] / float(max(width * height, 1))]}


def semantic_signals(prediction: dict, width: int, height: int) -> dict:
    """One value per image: the class covering most of it, how many classes, and the share of the
    image that is not background."""
    classes = prediction["classes"]
    if not classes:
        return {"classes_per_image": [0], "foreground": [0.0]}
    top = max(classes, key=lambda c: c["pixels"])
    return {"label": [top["label"]], "classes_per_image": [len(classes)],
            "foreground": [sum(float(c["pixels"]) for c in classes) / float(max(width * height, 1))]}


def _evaluation(name: str):
    """A function of `cv_pipeline.evaluation`, imported when first called (evaluation needs plots)."""
    def call(*args, **kwargs):
        import importlib

        module, _, attribute = name.rpartition(".")
        return getattr(importlib.import_module(module), attribute)(*args, **kwargs)

    call.__name__ = name.rpartition(".")[2]
    return call


_RLE_EXAMPLE = {"size": [128, 128], "counts": "PPR1"}

_TRAINING_DEFAULTS = {"optimizer": "adamw", "warmup_epochs": 0.0}


def _with_background(num_classes: int) -> int:
    return num_classes + 1


# What detection and instance segmentation share: torchvision's detector API, targets, batching, defaults.
_DETECTOR_TASK = dict(
    loss=detection_loss, transforms=_detection_transforms, collate=_collate_detection,
    model_classes=_with_background, model_config_keys=("image_size",),
    defaults={**_TRAINING_DEFAULTS, "image_size": 160, "epochs": 16, "batch_size": 4, "lr": 5e-4,
              "weight_decay": 1e-4, "warmup_epochs": 1.0},
)

CLASSIFICATION = TaskSpec(
    name="classification",
    description="Image classification of object crops (or whole images), cross-entropy; accuracy and macro F1.",
    models=CLASSIFIER_ARCHITECTURES,
    default_model="resnet18",
    loss=classification_loss, metrics=classification_metrics, update_metrics=classification_update,
    monitor="acc", target_builder=_classification_target, transforms=_classification_transforms,
    keep_record=_has_objects, build_datasets=classification_datasets, loss_in_eval=True,
    defaults={**_TRAINING_DEFAULTS, "image_size": 64, "epochs": 12, "batch_size": 32, "lr": 2e-3,
              "weight_decay": 1e-4, "label_smoothing": 0.05},
    profiles={"quick": {"epochs": 10}},  # 6 epochs reached val accuracy 0.71 only
    goals={"full": 0.9, "quick": 0.8},
    predict=classification_predict,
    output_example={"category_id": 1, "label": "circle", "score": 0.9, "probabilities": {"circle": 0.9}},
    evaluation_samples=_evaluation("cv_pipeline.evaluation.predictions.crop_samples"),
    evaluate=_evaluation("cv_pipeline.evaluation.task_evaluation.evaluate_classification"),
    primary_metric="accuracy", promotion_threshold=0.6,
    feature_module=_classifier_features, prediction_signals=classification_signals,
)
DETECTION = TaskSpec(
    name="detection",
    description="Object detection with torchvision detectors; COCO mAP (pycocotools) on validation.",
    models={**{name: partial(_torchvision_detector, name) for name in TORCHVISION_DETECTORS},
            "fasterrcnn_resnet18_fpn": fasterrcnn_resnet18_fpn, "fcos_resnet18_fpn": fcos_resnet18_fpn,
            "retinanet_resnet18_fpn": retinanet_resnet18_fpn},
    default_model="fasterrcnn_resnet18_fpn",
    metrics=detection_metrics, update_metrics=detection_update, monitor="map_50",
    target_builder=_detection_target, **_DETECTOR_TASK,
    profiles={"quick": {"epochs": 8, "image_size": 128}},
    goals={"full": 0.5, "quick": 0.3},
    predict=detector_predict,
    output_example={"detections": [{"bbox": [10.0, 12.0, 30.0, 24.0], "category_id": 1, "label": "circle",
                                    "score": 0.9}]},
    evaluation_samples=_evaluation("cv_pipeline.evaluation.predictions.detection_samples"),
    evaluate=_evaluation("cv_pipeline.evaluation.task_evaluation.evaluate_detection"),
    primary_metric="map_50", promotion_threshold=0.25,
    feature_module=_backbone_features, prediction_signals=detection_signals,
)
INSTANCE_SEGMENTATION = TaskSpec(
    name="instance_segmentation",
    description="Instance segmentation with Mask R-CNN; box and mask COCO mAP on validation.",
    models={**{name: partial(_torchvision_detector, name) for name in TORCHVISION_INSTANCE_SEGMENTERS},
            "maskrcnn_resnet18_fpn": maskrcnn_resnet18_fpn},
    default_model="maskrcnn_resnet18_fpn",
    metrics=partial(detection_metrics, iou_types=("bbox", "segm")),
    update_metrics=partial(detection_update, with_masks=True), monitor="segm_map_50",
    target_builder=partial(_detection_target, with_masks=True), **_DETECTOR_TASK,
    # the full recipe learns from scratch; the quick one fine-tunes the detector's model (same
    # backbone, FPN, RPN and box head) and mostly learns the mask head
    profiles={"full": {"init_from_upstream": False},
              "quick": {"epochs": 3, "image_size": 128, "warmup_epochs": 0.0, "init_from_upstream": True}},
    goals={"full": 0.4, "quick": 0.2},
    predict=partial(detector_predict, with_masks=True),
    output_example={"detections": [{"bbox": [10.0, 12.0, 30.0, 24.0], "category_id": 1, "label": "circle",
                                    "score": 0.9, "segmentation": _RLE_EXAMPLE}]},
    evaluation_samples=_evaluation("cv_pipeline.evaluation.predictions.detection_samples"),
    evaluate=partial(_evaluation("cv_pipeline.evaluation.task_evaluation.evaluate_detection"), iou_types=("bbox", "segm")),
    primary_metric="segm_map_50", promotion_threshold=0.15, init_from_task="detection",
    feature_module=_backbone_features, prediction_signals=detection_signals,
)
SEMANTIC_SEGMENTATION = TaskSpec(
    name="semantic_segmentation",
    description="Semantic segmentation (background + one class per category, crowd pixels ignored); mIoU.",
    models={**{name: partial(_torchvision_segmenter, name) for name in TORCHVISION_SEMANTIC_SEGMENTERS},
            "lraspp_resnet18": lraspp_resnet18, "fpn_resnet18": fpn_resnet18},
    default_model="fpn_resnet18",
    loss=semantic_loss, metrics=semantic_metrics, update_metrics=semantic_update, monitor="miou",
    target_builder=_semantic_target, transforms=_semantic_transforms, loss_in_eval=True,
    model_classes=_with_background,
    defaults={**_TRAINING_DEFAULTS, "image_size": 160, "epochs": 30, "batch_size": 4, "lr": 1e-3,
              "weight_decay": 1e-4, "warmup_epochs": 1.0},
    # quick: horizontal flips only and a soft Dice term, which learn faster in a short schedule than
    # the full recipe's dihedral/crop/colour augmentation (test mIoU 0.40 against 0.24 after 6-8
    # epochs from a 5-epoch detector); 8 epochs end at test mIoU 0.406, 10 at 0.408 for 20 s more
    profiles={"quick": {"epochs": 8, "image_size": 128, "augment": "flip", "dice_weight": 1.0}},
    goals={"full": 0.6, "quick": 0.4},
    predict=semantic_predict,
    output_example={"width": 128, "height": 128, "classes": [{"category_id": 1, "label": "circle", "pixels": 300,
                                                             "mask": _RLE_EXAMPLE}]},
    evaluation_samples=_evaluation("cv_pipeline.evaluation.predictions.semantic_samples"),
    evaluate=_evaluation("cv_pipeline.evaluation.task_evaluation.evaluate_semantic"),
    primary_metric="miou", promotion_threshold=0.3, init_from_task="detection",
    feature_module=_backbone_features, prediction_signals=semantic_signals,
)

BUILTIN_TASKS = (CLASSIFICATION, DETECTION, INSTANCE_SEGMENTATION, SEMANTIC_SEGMENTATION)
