"""Detection mAP through pycocotools, against a case computed by hand (one image, boxes with known IoUs, COCO's
101-point interpolated precision written out here as a plain loop), and a real torchvision Faster R-CNN that computes
its own losses from the dataset's targets and is evaluated by evaluate_detector."""

from __future__ import annotations

import math

import pytest
import torch

from resprout.data.detection import DetectionDataset
from resprout.metrics.detection import detection_map, evaluate_detector

pytestmark = pytest.mark.vision

IOU_THRESHOLDS = [0.5 + 0.05 * k for k in range(10)]


def coco_ap(hits: list[float], n_gt: int, threshold: float) -> float:
    """AP of one class at one IoU threshold as COCO defines it, by hand: ``hits`` are the IoUs of the detections
    with the ground truth they match, in decreasing score (0 for none); precision made monotone from the right and
    read at the 101 recall points 0, 0.01, ..., 1 (0 beyond the last recall reached)."""
    tp = fp = 0
    points = []  # (recall, precision) after each detection
    for iou in hits:
        if iou >= threshold:
            tp += 1
        else:
            fp += 1
        points.append((tp / n_gt, tp / (tp + fp)))
    total = 0.0
    for k in range(101):
        r = k / 100
        total += max([p for rec, p in points if rec >= r - 1e-12], default=0.0)
    return total / 101


def one_image(crowd_box: bool = False) -> DetectionDataset:
    boxes = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]] + ([[60, 60, 80, 80]] if crowd_box else [])
    labels = [0, 0, 1] + ([0] if crowd_box else [])
    crowd = [False, False, False] + ([True] if crowd_box else [])
    return DetectionDataset("one", ["a", "b"], [torch.zeros(3, 100, 100, dtype=torch.uint8)],
                            [torch.tensor(boxes, dtype=torch.float32)], [torch.tensor(labels)], ["0"],
                            [torch.tensor(crowd)])


# detections in torchvision's convention: label = class index + 1
DETECTIONS = {
    "boxes": torch.tensor([[0, 0, 10, 12],     # a, IoU 100/120 with box 0
                           [50, 50, 60, 60],   # a, matches nothing
                           [20, 0, 30, 16],    # a, IoU 100/160 with box 1
                           [40, 0, 50, 10],    # b, IoU 1 with box 2
                           [0, 0, 10, 10]],    # b, on an object of class a: a false positive for b
                          dtype=torch.float32),
    "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95]),
    "labels": torch.tensor([1, 1, 1, 2, 2]),
}


def test_map_equals_the_hand_computed_coco_average_precision():
    got = detection_map([DETECTIONS], one_image())
    # class a in decreasing score: IoU 0.833 (hit), a miss, IoU 0.625; class b: a miss (0.95), then IoU 1.0
    hits = {"a": ([100 / 120, 0.0, 100 / 160], 2), "b": ([0.0, 1.0], 1)}
    ap = {c: [coco_ap(h, n, t) for t in IOU_THRESHOLDS] for c, (h, n) in hits.items()}
    assert got["ap_50"]["a"] == pytest.approx(ap["a"][0], abs=1e-12)
    assert ap["a"][0] == pytest.approx((51 + 50 * 2 / 3) / 101)  # the 101-point sum, written out once more
    assert got["ap_50"]["b"] == pytest.approx(ap["b"][0], abs=1e-12) and ap["b"][0] == pytest.approx(0.5)
    assert got["map_50"] == pytest.approx((ap["a"][0] + ap["b"][0]) / 2, abs=1e-12)
    assert got["map_75"] == pytest.approx((ap["a"][5] + ap["b"][5]) / 2, abs=1e-12)
    assert got["map"] == pytest.approx(sum(ap["a"] + ap["b"]) / 20, abs=1e-12)


def test_perfect_missing_and_crowd_detections():
    ds = one_image()
    truth = {"boxes": ds.boxes[0], "scores": torch.ones(3), "labels": ds.labels[0] + 1}
    assert detection_map([truth], ds)["map"] == pytest.approx(1.0)
    none = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    assert detection_map([none], ds) == {"map": 0.0, "map_50": 0.0, "map_75": 0.0, "ap_50": {"a": 0.0, "b": 0.0}}
    # a crowd region is neither required nor penalised: the perfect detections stay perfect when one is added, and a
    # detection on it is not a false positive
    with_crowd = one_image(crowd_box=True)
    assert detection_map([truth], with_crowd)["map"] == pytest.approx(1.0)
    on_crowd = {k: torch.cat([truth[k], extra]) for k, extra in
                (("boxes", torch.tensor([[60.0, 60, 80, 80]])), ("scores", torch.tensor([2.0])),
                 ("labels", torch.tensor([1])))}
    assert detection_map([on_crowd], with_crowd)["map"] == pytest.approx(1.0)
    assert detection_map([on_crowd], ds)["map"] < 1.0  # the same detection without the crowd region is a miss


def test_a_class_without_ground_truth_is_left_out_of_the_mean():
    ds = DetectionDataset("one", ["a", "b", "c"], one_image().images, one_image().boxes, one_image().labels, ["0"])
    got = detection_map([DETECTIONS], ds)
    assert math.isnan(got["ap_50"]["c"])
    assert got["map_50"] == pytest.approx((got["ap_50"]["a"] + got["ap_50"]["b"]) / 2)


@pytest.mark.parametrize("prediction,fragment", [
    ({"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([3])}, "labels outside 1..2"),
    ({"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([0])}, "labels outside 1..2"),
    ({"boxes": torch.zeros(2, 4), "scores": torch.ones(1), "labels": torch.tensor([1])}, "2 boxes, 1 scores"),
    ({"boxes": torch.zeros(1, 4)}, "must be a dict with boxes, scores and labels"),
])
def test_bad_predictions_are_refused(prediction, fragment):
    with pytest.raises(ValueError, match=fragment):
        detection_map([prediction], one_image())
    with pytest.raises(ValueError, match="2 predictions for 1 images"):
        detection_map([DETECTIONS, DETECTIONS], one_image())


class FixedDetector(torch.nn.Module):
    """Returns DETECTIONS for every image, whatever it is given."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, images):
        self.calls.append((self.training, len(images)))
        return [dict(DETECTIONS) for _ in images]


def test_evaluate_detector_runs_the_model_in_eval_mode_and_restores_it():
    ds = one_image()
    model = FixedDetector().train()
    assert evaluate_detector(model, ds) == detection_map([DETECTIONS], ds)
    assert model.calls == [(False, 1)] and model.training


def test_a_torchvision_faster_rcnn_learns_from_the_targets_and_is_evaluated(tmp_path):
    import torchvision

    from resprout.data.detection.canvas import make_canvases

    g = torch.Generator().manual_seed(0)
    items = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    items[:, :, 4:24, 6:22] = torch.randint(60, 256, (8, 1, 20, 16), dtype=torch.uint8, generator=g)
    ds = make_canvases(items, torch.arange(8) % 2, ["even", "odd"], 2, canvas_size=64, objects=(1, 2),
                       scale=(0.75, 1.5), seed=0)
    ds.images = [im.expand(3, -1, -1).contiguous() for im in ds.images]
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=ds.num_classes + 1, min_size=64, max_size=64)
    model.train()
    images, targets = next(ds.batches(2))
    losses = model(images, targets)  # training mode: the model computes its own losses from the targets
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    model.roi_heads.score_thresh = 0.0  # keep every detection of an untrained model, so the metric has input
    got = evaluate_detector(model, ds, batch_size=1)
    assert model.training
    model.eval()
    with torch.inference_mode():
        outputs = [model([ds.image(i)])[0] for i in range(len(ds))]
    assert sum(len(o["boxes"]) for o in outputs) > 0  # torchvision's output format went through pycocotools
    assert got == detection_map(outputs, ds)
