"""Distillation on torchvision's two-stage detectors (Faster R-CNN): what KTAN's Table II needs of a teacher detector.

KTAN (Liu et al., Sec. IV-B, "Object detection") distils a Faster R-CNN student from a larger Faster R-CNN teacher
and describes where KD acts: the RPN generates candidate boxes, each is mapped onto the feature map and classified,
so "a softmax output of a large model only contains the probability" of each candidate's class. KD therefore acts on
the box head's class logits (``roi_heads.box_predictor.cls_score``), candidate by candidate.

**Feature maps** (FitNet's hint, DLN's and KTAN's ``m_s`` and ``m_t``) are FPN levels, chosen by module path
(``backbone.fpn.layer_blocks.<i>`` returns level ``i``). Both detectors must resize their images alike and the two
levels must have the same stride (:func:`check_same_resize`, :func:`check_same_maps`): the maps then match location
by location at every image size, and the regressor between them is a 1x1 conv.

**The same candidates.** Student and teacher each have their own RPN; their proposals differ, and the logits of two
different boxes cannot be compared. The teacher here scores the *student's* sampled proposals: the boxes the
student's box head classified in this step (the input of its ``roi_heads.box_roi_pool``, captured by a feature tap)
are pooled from the teacher's own feature maps and classified by the teacher's box head
(:func:`teacher_proposal_logits`), so both distributions are over the same boxes, row for row. The teacher's RPN
is not run. Proposals are in the coordinates of the student's resized images; a teacher that resizes its inputs to
another size (``model.min_size``) gets them scaled by the ratio of the two resized sizes, per image (what
torchvision's ``resize_boxes`` does). This is resprout's choice: the paper does not say how the two sets of
candidates are matched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import ContextManager

import torch
from torch import nn

from resprout.errors import ConfigError

__all__ = ["CLS_SCORE", "FPN_LEVEL", "ROI_POOL", "check_detector", "check_same_maps", "check_same_resize",
           "detector_classes", "pretrain_detector_regressor", "scale_boxes", "teacher_proposal_logits"]

#: the box head's class logits (one row per sampled proposal) and the RoI pooling that reads the proposals
CLS_SCORE = "roi_heads.box_predictor.cls_score"
ROI_POOL = "roi_heads.box_roi_pool"
#: the finest FPN level of torchvision's FPN backbones: ``layer_blocks.<i>`` is called once per forward and returns
#: level ``i`` (the feature-map methods' default layer on a detector)
FPN_LEVEL = "backbone.fpn.layer_blocks.0"


def check_detector(model: nn.Module, num_classes: int | None, what: str) -> None:
    """Refuse (one line) a network that is not a torchvision two-stage detector with ``num_classes`` object classes
    (its box head scores ``num_classes + 1``, the background included; None: any count). The distillation methods
    need one as student and as teacher: a one-stage detector (RetinaNet, FCOS, SSD) has no box head on proposals."""
    try:
        cls_score = model.get_submodule(CLS_SCORE)
        for path in ("transform", "backbone", ROI_POOL, "roi_heads.box_head"):
            model.get_submodule(path)
    except AttributeError:
        raise ConfigError(f"{what} is not a torchvision two-stage detector (no {CLS_SCORE}): the distillation "
                          f"methods need Faster R-CNN detectors (tv-det:fasterrcnn_*) as student and teacher") from None
    if num_classes is None:
        return
    if not isinstance(cls_score, nn.Linear) or cls_score.out_features != num_classes + 1:
        width = getattr(cls_score, "out_features", "?")
        raise ConfigError(f"{what} scores {width} classes with the background, this run's data "
                          f"{num_classes} + 1")


def check_same_resize(student: nn.Module, teacher: nn.Module, method: str) -> None:
    """Refuse (one line) a teacher detector that resizes its images otherwise than the student: a feature-map
    method compares the two detectors' maps location by location, which needs the same resized images."""
    sizes = [(tuple(m.transform.min_size), m.transform.max_size) for m in (student, teacher)]
    if sizes[0] != sizes[1]:
        raise ConfigError(f"method={method} compares the student's and the teacher's feature maps location by "
                          f"location, so both detectors must resize alike; the student has min_size="
                          f"{sizes[0][0][-1]} max_size={sizes[0][1]}, the teacher min_size={sizes[1][0][-1]} "
                          f"max_size={sizes[1][1]} (model.min_size, model.max_size)")


def check_same_maps(method: str, student: tuple[str, tuple], teacher: tuple[str, tuple]) -> None:
    """Refuse (one line) a student and a teacher FPN level (``(path, (C, H, W))`` each, probed on this run's
    images) of different sizes: another image size would change them otherwise."""
    (s_path, s_shape), (t_path, t_shape) = student, teacher
    if tuple(s_shape[1:]) != tuple(t_shape[1:]):
        raise ConfigError(f"method={method} on a detector compares maps of the same size (any image size gives "
                          f"them another): the student's {s_path!r} is {s_shape[1]}x{s_shape[2]}, the teacher's "
                          f"{t_path!r} {t_shape[1]}x{t_shape[2]}; tap FPN levels of the same stride "
                          f"({method}.student_layer, {method}.teacher_layer)")


def detector_classes(model: nn.Module) -> int:
    """The object classes of a torchvision detector (its box head's scores, without the background)."""
    return int(model.get_submodule(CLS_SCORE).out_features) - 1


def pretrain_detector_regressor(teacher: nn.Module, path: str, regressor: nn.Module,
                                batches: Iterable[tuple[list, list]], optimizer: torch.optim.Optimizer,
                                autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> list[float]:
    """KTAN's Algorithm 1 on a detector: train the teacher-to-student regressor ``R`` through the teacher's own
    heads. On a classifier, ``R`` is trained by ``CE(y, C(R(G(x))))`` with the teacher part ``G`` frozen; a
    detection image has no label ``y``, so here ``R`` is inserted after the teacher's map at ``path`` (a forward hook
    returns ``R(m_t)`` in its place) and the teacher's own detection losses on each batch's targets (its RPN and
    box head reading ``R(m_t)``) train ``R`` alone. The teacher is frozen: its parameters get no update and its
    batch norms stay in eval mode (their statistics unchanged); its modes are restored afterwards. ``R`` must keep
    the teacher's channel count (the heads read it): torchvision's FPNs all have 256. The paper does not say how
    ``R`` was pre-trained for its Table II; this is resprout's reading. Returns the losses."""
    modes = {id(m): m.training for m in teacher.modules()}
    teacher.train()
    for m in teacher.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    handle = teacher.get_submodule(path).register_forward_hook(lambda module, args, output: regressor(output))
    losses = []
    try:
        for images, targets in batches:
            with autocast():
                loss = torch.stack([v.float() for v in teacher(images, targets).values()]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        handle.remove()
        for m in teacher.modules():
            m.train(modes[id(m)])
    return losses


def scale_boxes(boxes: torch.Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> torch.Tensor:
    """``(x1, y1, x2, y2)`` boxes of an image resized to ``from_size`` (height, width) moved to ``to_size``."""
    ry, rx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return boxes * boxes.new_tensor([rx, ry, rx, ry])


def teacher_proposal_logits(teacher: nn.Module, images: list[torch.Tensor], proposals: list[torch.Tensor],
                            student_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """The teacher's box-head class logits on the student's proposals: ``teacher`` resizes and normalizes
    ``images`` with its own transform, computes its feature maps, pools every proposal (moved from the student's
    resized size ``student_sizes[i]`` to its own) and classifies it. One row per proposal, in the order of
    ``torch.cat(proposals)`` (the student's ``cls_score`` rows). Call it without gradient, the teacher in eval
    mode."""
    batch, _ = teacher.transform(images)
    features = teacher.backbone(batch.tensors)
    if isinstance(features, torch.Tensor):
        features = {"0": features}
    boxes = [scale_boxes(p, s, t) for p, s, t in zip(proposals, student_sizes, batch.image_sizes, strict=True)]
    heads = teacher.roi_heads
    logits, _ = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, boxes, batch.image_sizes)))
    return logits
