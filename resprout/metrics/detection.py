"""Detection metrics: mAP@0.5 and mAP@[.5:.95] through pycocotools' COCOeval (the reference COCO implementation).

mAP here is COCO's (Lin et al., ECCV 2014; the ``cocoapi`` evaluation): per class and IoU threshold, precision is made
monotone (the best precision at any higher recall) and averaged at 101 recall points 0, 0.01, ..., 1; a detection
matches the unmatched ground-truth box of its class with the highest IoU at or above the threshold, detections taken
in decreasing score; at most 100 detections per image count (the highest scored); classes with no ground truth are
left out of the mean. ``map_50`` is the mean over classes at IoU 0.5 (the PASCAL VOC criterion, KTAN Table II's
metric, though VOC 2007 interpolates at 11 recall points), ``map`` the mean over the ten thresholds 0.5:0.05:0.95.

Crowd objects (COCO ``iscrowd``, VOC ``difficult``) are neither required nor penalised: a detection that falls on
one counts neither way (COCOeval matches it by the fraction of the detection inside the region).

pycocotools is imported when first used; without it the call is one :class:`~resprout.errors.ConfigError` line.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch

from resprout.data.detection.coco import coco_dict
from resprout.data.detection.dataset import DetectionDataset
from resprout.errors import ConfigError

__all__ = ["detection_map", "evaluate_detector", "require_pycocotools"]

MAX_DETECTIONS = 100  # per image, COCO's rule


def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except Exception as e:  # noqa: BLE001  (any failure of a foreign package's import is one line)
        reason = "is not installed" if isinstance(e, ModuleNotFoundError) else f"fails to import ({type(e).__name__})"
        raise ConfigError(f"detection mAP needs pycocotools, which {reason}; install the vision extra "
                          f"(make vision, or pip install -e '.[vision]')") from None
    return COCO, COCOeval


def require_pycocotools() -> None:
    """One :class:`~resprout.errors.ConfigError` line now when pycocotools cannot be imported (a run checks this
    before it trains, not at its first evaluation)."""
    _pycocotools()


def _coco(dataset: dict):
    COCO, _ = _pycocotools()
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


def _check_prediction(p: dict, i: int, num_classes: int, label_offset: int) -> tuple[np.ndarray, ...]:
    try:
        boxes, scores, labels = p["boxes"], p["scores"], p["labels"]
    except (KeyError, TypeError):
        raise ValueError(f"prediction {i} must be a dict with boxes, scores and labels (torchvision's detection "
                         f"output)") from None
    boxes = torch.as_tensor(boxes).detach().cpu().double().reshape(-1, 4).numpy()
    scores = torch.as_tensor(scores).detach().cpu().double().reshape(-1).numpy()
    labels = torch.as_tensor(labels).detach().cpu().long().reshape(-1).numpy() - label_offset
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"prediction {i} has {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"prediction {i} has labels outside {label_offset}..{num_classes - 1 + label_offset} "
                         f"(label_offset={label_offset}: the dataset's {num_classes} classes)")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"prediction {i} has a box or score that is not finite")
    return boxes, scores, labels


def detection_map(predictions: Sequence[dict], dataset: DetectionDataset, *, label_offset: int = 1) -> dict:
    """COCO mAP of ``predictions`` against ``dataset``'s boxes.

    ``predictions[i]`` is image ``i``'s detections as torchvision's detectors return them: ``boxes`` (D, 4) as
    ``(x1, y1, x2, y2)`` pixels, ``scores`` (D,), ``labels`` (D,) with ``label_offset`` added to the dataset's
    labels (1: label 0 is their background). Returns ``map`` (mAP@[.5:.95]), ``map_50`` (mAP@0.5), ``map_75``
    and ``ap_50`` (AP@0.5 per class name; NaN for a class with no ground truth). ValueError when the lengths or
    labels do not match, or when the dataset has no object to find.
    """
    if len(predictions) != len(dataset):
        raise ValueError(f"{len(predictions)} predictions for {len(dataset)} images")
    if not any(bool((~c).any()) for c in dataset.crowd):
        raise ValueError(f"{dataset.name!r} has no (non-crowd) object to detect: mAP is undefined")
    _, COCOeval = _pycocotools()
    gt_dict = coco_dict(dataset)
    detections = []
    for i, p in enumerate(predictions):
        boxes, scores, labels = _check_prediction(p, i, dataset.num_classes, label_offset)
        for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels, strict=True):
            w, h = x2 - x1, y2 - y1
            detections.append({"id": len(detections) + 1, "image_id": i + 1, "category_id": int(label) + 1,
                               "bbox": [x1, y1, w, h], "area": w * h, "score": float(score), "iscrowd": 0})
    gt = _coco(gt_dict)
    dt = _coco({"images": gt_dict["images"], "categories": gt_dict["categories"], "annotations": detections})
    evaluator = COCOeval(gt, dt, iouType="bbox")
    evaluator.params.maxDets = [1, 10, MAX_DETECTIONS]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # precision: [IoU threshold, recall point, class, area range, max detections]; -1 where a class has no ground
    # truth. Area range 0 is "all", max detections index -1 is MAX_DETECTIONS (as in COCOeval.summarize).
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, name in enumerate(dataset.classes):
        p50 = precision[0, :, k]
        per_class[name] = float(p50.mean()) if (p50 > -1).all() else float("nan")
    return {"map": float(evaluator.stats[0]), "map_50": float(evaluator.stats[1]),
            "map_75": float(evaluator.stats[2]), "ap_50": per_class}


def evaluate_detector(model: torch.nn.Module, dataset: DetectionDataset, *, batch_size: int = 8,
                      label_offset: int = 1) -> dict:
    """Run ``model`` (a torchvision detector, or any module that takes a list of (C, H, W) float images in [0, 1]
    and returns one ``{boxes, scores, labels}`` dict per image in eval mode) over ``dataset`` and return
    :func:`detection_map`. The model's train/eval mode is restored afterwards."""
    was_training = model.training
    model.eval()
    predictions: list[dict] = []
    try:
        with torch.inference_mode():
            for images, _ in dataset.batches(batch_size, label_offset=label_offset):
                out = model(images)
                if not isinstance(out, list | tuple) or len(out) != len(images):
                    raise ValueError(f"the model returned {type(out).__name__} for {len(images)} images; expected a "
                                     f"list of one detection dict per image")
                predictions.extend({k: v.detach().cpu() for k, v in o.items()} for o in out)
    finally:
        model.train(was_training)
    return detection_map(predictions, dataset, label_offset=label_offset)
