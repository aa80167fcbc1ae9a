"""Detection as a task of the trainer: :class:`DetectionTask`, for a run on a detection set (``data=voc``, ``coco`` or
``fashion-canvas``) with a torchvision detector (``model=tv-det:<name>``).

KTAN's Table II (Liu et al., Sec. IV-B, "Object detection") trains Faster R-CNN on PASCAL VOC 2007 and compares the
methods by mAP; this is what such a run needs from the loop:

* **Targets** are one ``{"boxes", "labels"}`` dict per image (labels + 1: torchvision's label 0 is the background),
  as :class:`~resprout.data.detection.loaders.DetectionTrainLoader` yields them; :meth:`DetectionTask.targets`
  passes them on as they are.
* **Training**: a torchvision detector in training mode computes its own losses from the targets (the RPN's
  objectness and box regression, the box head's classification and box regression) and returns them as a dict.
  The loop forwards every member through the task (:meth:`Task.forward`; here ``model(images, targets)``), and
  ``method=ce`` (plain training) adds each of the model's losses as a term of its own (``classifier``,
  ``box_reg``, ``objectness``, ``rpn_box_reg``; their sum is the train loss of the epoch line), through
  :meth:`DetectionTask.losses` (``model_loss`` tells a method that the member's output is its losses).
* **Evaluation** runs the model in eval mode over the split (its detections: boxes, scores, labels per image) and
  reports COCO's mAP through pycocotools (:func:`resprout.metrics.detection.detection_map`): ``map_50`` (mAP@0.5,
  PASCAL VOC's criterion and Table II's metric), ``map`` (mAP@[.5:.95]) and ``map_75``, with ``top1`` = mAP@0.5 so
  that the epoch line, the tables and the choice of the best epoch read it as they read a top-1. Per-image
  correctness is not kept (an image's detections are not one right-or-wrong answer). In one process.

Besides ``ce``, the distillation methods of KTAN's Table II train a detector from a teacher detector
(:mod:`resprout.methods.detectors`): ``kd`` on the box head's class logits, the teacher scoring the student's own
proposals; ``fitnet``, ``dln`` and ``ktan`` on FPN levels chosen by module path. Every other method is refused on
detection data (:func:`resprout.inputs.check_detection`, ``Method.detection``).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from resprout.data.detection.loaders import DetectionEvalLoader
from resprout.engine.task import Task
from resprout.errors import ConfigError
from resprout.metrics.detection import detection_map

__all__ = ["DetectionTask"]


class DetectionTask(Task):
    """Boxes and labels per image; the model's own losses in training; mAP@0.5 (``top1``), mAP@[.5:.95], mAP@0.75."""

    name = "detection"
    metrics = ("top1", "map_50", "map", "map_75")
    model_loss = True

    def forward(self, module, inputs: list[torch.Tensor], targets: list[dict]):
        """A detector in training mode takes the targets and returns its loss dict; in eval mode (a frozen member)
        its detections."""
        model = getattr(module, "model", module)
        return module(inputs, targets) if model.training else module(inputs)

    def losses(self, output) -> dict[str, torch.Tensor]:
        """The terms of a detector's loss dict, named without torchvision's ``loss_`` prefix."""
        if not isinstance(output, dict) or not all(isinstance(v, torch.Tensor) for v in output.values()):
            raise ConfigError(f"a detection run's model must return its loss dict in training mode (a torchvision "
                              f"detector, model=tv-det:<name>); it returned {type(output).__name__}")
        return {k.removeprefix("loss_"): v for k, v in output.items()}

    def predictions(self, model: nn.Module, loader: DetectionEvalLoader) -> list[dict[str, torch.Tensor]]:
        """The model's detections on every image of the split, in order, in eval mode (its mode restored), in fp32
        whatever the run's precision: box coordinates decoded in bf16 keep about three significant digits (a pixel or
        more off on a few hundred), which moves IoUs and so mAP; the weights are fp32 anyway."""
        was_training = model.training
        model.eval()
        out: list[dict[str, torch.Tensor]] = []
        first = next(model.parameters(), None)
        device_type = first.device.type if first is not None else "cpu"
        try:
            with torch.inference_mode(), torch.autocast(device_type=device_type, enabled=False):
                for images, _ in loader:
                    out.extend({k: v.detach().float().cpu() if v.is_floating_point() else v.cpu()
                                for k, v in d.items()} for d in model(images))
        finally:
            model.train(was_training)
        return out

    def evaluate(self, model: nn.Module, loader, dist=None, correct: list | None = None) -> dict[str, float]:
        if dist is not None and dist.enabled:
            raise ConfigError("a detection task evaluates the whole split with pycocotools; run it in one process")
        if not isinstance(loader, DetectionEvalLoader):
            raise ConfigError("the detection task evaluates a detection split (data=voc, coco or fashion-canvas); "
                              "this split has no boxes")
        result = detection_map(self.predictions(model, loader), loader.dataset)
        return {"top1": result["map_50"], "map_50": result["map_50"], "map": result["map"],
                "map_75": result["map_75"]}
