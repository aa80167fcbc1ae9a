"""What a run trains on and what scores it: the dataset of a configuration, its training and evaluation loaders,
and the task its data sets (classification, re-identification or detection), with the checks that data, model,
methods and task fit together (each refused in one line, before a model is built or a file written).

:mod:`resprout.run` builds a run from these; benchmarks use :func:`build_dataset` to read the data a
configuration names without training.
"""

from __future__ import annotations

from typing import Callable

import torch

from resprout.config import Config
from resprout.data import Dataset, prepare
from resprout.data.augment import resolve_augment
from resprout.data.detection.loaders import AUGMENTS as DETECTION_AUGMENTS
from resprout.data.detection.loaders import DetectionData, DetectionEvalLoader, DetectionTrainLoader
from resprout.data.files import FileDataset, decode, memory_budget
from resprout.data.loader import EvalLoader, Normalizer, TrainLoader
from resprout.data.natural import (NaturalData, NaturalTrainLoader, check_natural_keys, normalization_stats,
                                   prepare_natural)
from resprout.data.natural import eval_loaders as natural_eval_loaders
from resprout.data.preparation import prepare_files
from resprout.data.reid.dataset import ReidDataset
from resprout.data.reid.prepared import ReidData, ReidEvalLoader, prepare_reid
from resprout.data.samplers import make_sampler
from resprout.data.sources import open_source
from resprout.data.user import check_same_data, is_user_source
from resprout.engine.detection import DetectionTask
from resprout.engine.distributed import DistInfo
from resprout.engine.precision import resolve_channels_last
from resprout.engine.task import ReidTask
from resprout.errors import ConfigError
from resprout.metrics.detection import require_pycocotools
from resprout.models.external import is_detector


# -- the data ---------------------------------------------------------------------------------------------------------
def build_dataset(cfg: Config, data: Dataset | None = None, say: Callable[[str], None] | None = None):
    """The dataset a run trains on: from the source ``cfg.data``, or from ``data`` (the user's own splits, see
    :mod:`resprout.data.user`) when ``cfg.data`` is ``user``. Image files with ``augment=imagenet`` give a
    :class:`~resprout.data.natural.NaturalData` (in memory or streamed; ``say`` hears its size); a
    re-identification source a :class:`~resprout.data.reid.prepared.ReidData`."""
    if is_user_source(cfg.data):
        check_same_data(cfg.data_options, data, "this run")
        ds = data
    else:
        ds = open_source(cfg.data, cfg.data_path, **cfg.data_options)
    if isinstance(ds, ReidDataset):
        return _reid_data(cfg, ds)
    if isinstance(ds, DetectionData):
        return _detection_data(cfg, ds)
    choice = dict(per_class=cfg.per_class, val_split=cfg.val_split, data_seed=cfg.data_seed,
                  test_per_class=cfg.test_per_class)
    augment = resolve_augment(cfg.augment, cfg.data)
    if isinstance(ds, FileDataset):
        files = prepare_files(ds, **choice)
        if augment == "imagenet":
            check_natural_keys(image_fit=cfg.image_fit, crop_padding=cfg.crop_padding, files=files)
            return prepare_natural(files, size=cfg.image_size, channels=cfg.channels, data_mode=cfg.data_mode,
                                   budget=memory_budget(cfg.memory_budget), workers=cfg.data_workers, say=say)
        if cfg.data_mode == "stream":
            raise ConfigError(f"data_mode=stream streams augment=imagenet data; augment={augment} reads {cfg.data} "
                              f"into memory at one size")
        ds, choice = decode(files, budget=memory_budget(cfg.memory_budget), say=say), {}
    elif augment == "imagenet" or cfg.data_mode == "stream":
        key = "augment=imagenet" if augment == "imagenet" else "data_mode=stream"
        raise ConfigError(f"{key} needs a source of image files (imagefolder, cub200, ...); data={cfg.data} holds "
                          f"images of one size in memory: use augment=crop+flip")
    return prepare(ds, **choice, image_size=cfg.image_size, channels=cfg.channels, fit=cfg.image_fit)


def _reid_data(cfg: Config, ds: ReidDataset) -> ReidData:
    """The run's re-identification set; the keys that choose a classification set's images are refused (one line):
    a re-id set's identities, queries and gallery are its own."""
    for key, default in (("per_class", None), ("test_per_class", None), ("val_split", 0.0)):
        if getattr(cfg, key) != default:
            raise ConfigError(f"{key}={getattr(cfg, key)} does not apply to a re-identification set (data={cfg.data}): "
                              f"its identities, queries and gallery are the set's own (the data.* options choose "
                              f"them, see resprout keys)")
    if resolve_augment(cfg.augment, cfg.data) == "imagenet" or cfg.data_mode == "stream":
        raise ConfigError(f"data={cfg.data} is a re-identification set held in memory at one size: use augment="
                          f"crop+flip, crop, flip or none, and data_mode=auto or memory")
    return prepare_reid(ds, image_size=cfg.image_size, channels=cfg.channels, fit=cfg.image_fit)


def _detection_data(cfg: Config, ds: DetectionData) -> DetectionData:
    """The run's detection set, as the source made it; the keys that choose or reshape a classification set's images
    are refused (one line): a detector takes every image at its own size (``model.min_size`` / ``model.max_size``
    resize inside the model) and a detection set's splits are its own."""
    for key, default in (("per_class", None), ("test_per_class", None), ("val_split", 0.0), ("image_size", None),
                         ("channels", None)):
        if getattr(cfg, key) != default:
            raise ConfigError(f"{key}={getattr(cfg, key)} does not apply to a detection set (data={cfg.data}): its "
                              f"splits are the set's own and a detector resizes its images itself (model.min_size, "
                              f"model.max_size)")
    if cfg.data_mode == "stream":
        raise ConfigError(f"data={cfg.data} is a detection set held in memory: use data_mode=auto or memory")
    _detection_augment(cfg)
    for split in (ds.train, ds.test):  # mAP is undefined on a split with nothing to find, and nothing is learnt
        if not any(bool((~crowd).any()) for crowd in split.crowd):
            raise ConfigError(f"data={cfg.data}: the {split.name!r} split ({len(split)} images) has no object that "
                              f"is not crowd/difficult: a detector has nothing to learn or be scored on there")
    return ds


def _detection_augment(cfg: Config) -> str:
    augment = "flip" if cfg.augment == "auto" else cfg.augment
    if augment not in DETECTION_AUGMENTS:
        raise ConfigError(f"augment={cfg.augment} does not apply to a detection set (data={cfg.data}): use "
                          f"{' or '.join(DETECTION_AUGMENTS)} (auto: flip, boxes flipped with their image)")
    return augment


def build_loaders(cfg: Config, ds, methods, device: torch.device, dist: DistInfo
                  ) -> tuple[TrainLoader, dict[str, EvalLoader]]:
    if isinstance(ds, DetectionData):
        train = DetectionTrainLoader(ds.train, batch_size=cfg.batch_size, seed=cfg.seed,
                                     augment=_detection_augment(cfg), device=device)
        return train, build_eval_loaders(cfg, ds, None, device, dist)
    wanted = [m for m in methods if m.sampler]
    sampler = make_sampler(wanted[0].sampler, **wanted[0].sampler_options) if wanted else None
    channels_last = resolve_channels_last(cfg.channels_last, cfg.model)
    if isinstance(ds, NaturalData):
        norm = Normalizer.from_stats(*normalization_stats(ds), device)
        train = NaturalTrainLoader(ds.train_images, ds.train.labels, size=ds.size, batch_size=cfg.batch_size,
                                   normalizer=norm, seed=cfg.seed, sampler=sampler, device=device,
                                   channels_last=channels_last, rank=dist.rank, world_size=dist.world_size,
                                   workers=ds.workers)
        return train, build_eval_loaders(cfg, ds, norm, device, dist)
    norm = Normalizer.from_stats(*normalization_stats(ds), device)
    augment = resolve_augment(cfg.augment, cfg.data)
    size = ds.input_shape[1]
    padding = cfg.crop_padding if cfg.crop_padding is not None else max(1, size // 8)
    train = TrainLoader(ds.train.images, ds.train.labels, batch_size=cfg.batch_size, normalizer=norm, seed=cfg.seed,
                        augment=augment, crop_padding=padding, sampler=sampler, device=device,
                        channels_last=channels_last, rank=dist.rank, world_size=dist.world_size)
    return train, build_eval_loaders(cfg, ds, norm, device, dist)


def build_eval_loaders(cfg: Config, ds, norm: Normalizer, device: torch.device, dist: DistInfo
                       ) -> dict[str, EvalLoader]:
    if isinstance(ds, NaturalData):
        return natural_eval_loaders(ds, norm, batch_size=cfg.eval_batch_size, device=device,
                                    channels_last=resolve_channels_last(cfg.channels_last, cfg.model),
                                    rank=dist.rank, world_size=dist.world_size)
    if isinstance(ds, DetectionData):  # boxes, evaluated by mAP in one process (refused under torchrun)
        # at most the training batch: a detector pads a batch to its largest image (512 VOC images would be GBs)
        return {"test": DetectionEvalLoader(ds.test, batch_size=min(cfg.eval_batch_size, cfg.batch_size),
                                            device=device)}
    if isinstance(ds, ReidData):  # queries and gallery, with cameras (refused under torchrun)
        return {"test": ReidEvalLoader(ds, batch_size=cfg.eval_batch_size, normalizer=norm, device=device,
                                       channels_last=resolve_channels_last(cfg.channels_last, cfg.model),
                                       rank=dist.rank, world_size=dist.world_size)}
    evals = {}
    for split_name in ("val", "test"):
        split = getattr(ds, split_name)
        if split is not None:
            evals[split_name] = EvalLoader(split.images, split.labels, batch_size=cfg.eval_batch_size,
                                           normalizer=norm, device=device,
                                           channels_last=resolve_channels_last(cfg.channels_last, cfg.model),
                                           rank=dist.rank, world_size=dist.world_size)
    return evals


# -- the task, and what must fit it ----------------------------------------------------------------------------------
def data_task(ds):
    """The task a run's data sets (None: the default, classification)."""
    if isinstance(ds, ReidData):
        return ReidTask()
    return DetectionTask() if isinstance(ds, DetectionData) else None


def check_detection(cfg: Config, ds, methods, module, dist: DistInfo) -> None:
    """Detection data needs a detector and methods that train one, and a detector needs detection data: anything
    else is refused in one line before a model is built (resprout.engine.detection)."""
    detection = isinstance(ds, DetectionData)
    if not detection:
        if is_detector(cfg.model):
            raise ConfigError(f"model={cfg.model} is a detector; data={cfg.data} is not a detection set: train it on "
                              f"data=voc, coco or fashion-canvas")
        return
    if module is not None or not is_detector(cfg.model):
        raise ConfigError(f"data={cfg.data} is a detection set; model={cfg.model} is not a detector: use "
                          f"model=tv-det:<name> (e.g. tv-det:fasterrcnn_mobilenet_v3_large_fpn)")
    refused = [m.name for m in methods if not getattr(m, "detection", False)]
    if refused:
        raise ConfigError(f"method={cfg.method}: {', '.join(refused)} does not train a detector (data={cfg.data}); "
                          f"use method=ce, kd, fitnet, dln or ktan")
    if dist.enabled:
        raise ConfigError("a detection run evaluates its whole test split with pycocotools in one process; run it "
                          "without torchrun")
    require_pycocotools()  # refused now, not after the first epoch, when pycocotools is missing


def check_task(cfg: Config, ds, task) -> None:
    """A detection set is evaluated by the detection task and nothing else by it; a re-id set is evaluated by the
    re-id task, and the re-id task needs a re-id set: a method that set another task on a re-id set (``triplet``:
    Recall@K of its own embedding), or the re-id task on a classification set, is refused in one line."""
    if isinstance(ds, DetectionData) != isinstance(task, DetectionTask):
        raise ConfigError(f"method={cfg.method} evaluates with the {task.name} task; data={cfg.data} needs the "
                          f"{'detection' if isinstance(ds, DetectionData) else 'classification'} task")
    if isinstance(ds, ReidData) and not isinstance(task, ReidTask):
        raise ConfigError(f"method={cfg.method} evaluates with its own {task.name} task, but data={cfg.data} is a "
                          f"re-identification set, evaluated by rank-1 and mAP over its query and gallery: use a "
                          f"method that trains an identity classifier (ce, ls, graft, kd, ...)")
    if isinstance(task, ReidTask) and not isinstance(ds, ReidData):
        raise ConfigError(f"method={cfg.method} sets the re-identification task, which needs a query and a gallery "
                          f"with cameras (data=fashion-reid, market1501 or dukemtmc); data={cfg.data} is a "
                          f"classification set")
