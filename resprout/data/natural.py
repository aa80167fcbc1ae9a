"""Natural images at their own scale (``augment=imagenet``): in memory or streamed from disk.

The Knowledge Evolution paper trains at 224 px on photographs of every size (CUB-200, Flower-102, ...), and
ImageNet does not fit in memory. For such data each image is **stored once with its short side at**
:func:`~resprout.data.augment.stored_short_side` (256 px for 224 px crops), as uint8, keeping its aspect ratio, and
each batch is cut from the stored images: a random resized crop and a flip for training, the central crop for
evaluation (:func:`~resprout.data.augment.train_view`, :func:`~resprout.data.augment.eval_view`).

Where the stored images live (``data_mode``):

* ``memory``: decoded once at the start (by DataLoader workers), kept in memory; the run states their size first and
  refuses (one line, with the streaming hint) a set above ``memory_budget``. Evaluation splits are kept as their
  central crops.
* ``stream``: each image is decoded from disk when a batch needs it, in DataLoader worker processes.
* ``auto``: memory when the estimate fits the budget, else stream.

Both modes run the same code on the same pixels: an image decoded from disk is exactly the image the memory mode
stores (:func:`read_stored`), and the view of the image at position ``p`` of global batch ``s`` draws from its own
generator seeded by (seed, generation, epoch, s, p). So the two modes give the same batches bit for bit, a resumed
run continues mid-epoch exactly, and under ``torchrun`` every process takes its share of the same global batch.
Normalization uses per-channel statistics of a fixed sample of the stored training images (all of them up to
:data:`STATS_IMAGES`), the same in both modes.
"""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from resprout.data import readers
from resprout.data.augment import DEFAULT_CROP, eval_view, short_side_size, stored_short_side, train_view
from resprout.data.dataset import channel_stats, stats_of_histograms
from resprout.data.files import FileDataset, FileSplit, check_budget, describe_bytes, image_sizes
from resprout.data.loader import _AUGMENT, EvalLoader, Normalizer, TrainLoader, _shard
from resprout.data.samplers import Sampler, make_sampler
from resprout.errors import ConfigError, DataError, ResproutError
from resprout.seeding import generator

DATA_MODES = ("auto", "memory", "stream")
#: training images whose pixels give the normalization statistics (a fixed sample, evenly spread over the split)
STATS_IMAGES = 1024
#: image headers read to estimate the memory a split takes (evenly spread over the split)
SIZE_SAMPLE = 1000
_CHUNK = 32  # images decoded per worker task while loading into memory


def default_workers() -> int:
    """DataLoader workers when ``data_workers`` is not given: one per core, at most 4."""
    return max(1, min(4, os.cpu_count() or 1))


def read_stored(file: Path, mode: str, short: int) -> torch.Tensor:
    """One image file as it is stored: uint8 (H, W, C) (Pillow's layout: crops and resizes need no transpose),
    short side ``short``, aspect ratio kept."""
    arr = readers.read_image(file, mode, short_side=short)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return torch.from_numpy(np.array(arr, order="C"))  # a writable copy (Pillow's array is read-only)


class ImageFiles:
    """Stored images read from disk on demand (:func:`read_stored`)."""

    def __init__(self, files: Sequence[Path], mode: str, short: int) -> None:
        self.files = [str(f) for f in files]  # plain strings: cheaper to hold (and to fork) than Path objects
        self.mode, self.short = mode, short

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return read_stored(Path(self.files[i]), self.mode, self.short)


class StoredImages:
    """Stored images held in memory: one uint8 (H, W, C) tensor per image (sizes differ)."""

    def __init__(self, images: list[torch.Tensor]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() for t in self.images)


Images = ImageFiles | StoredImages


# -- work in DataLoader workers --------------------------------------------------------------------------------------------
class _Failed(NamedTuple):
    """A worker's one-line error, passed back as a value (DataLoader would wrap it in a multi-line traceback)."""

    message: str


class _Tasks(torch.utils.data.Dataset):
    def __init__(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> None:
        self.fn, self.items = fn, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Any:
        try:
            return self.fn(self.items[k])
        except ResproutError as e:
            return _Failed(str(e))


def ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int, *, pin: bool = False) -> Iterator[Any]:
    """``fn(item)`` for every item, in order: in this process (``workers=0``) or in that many DataLoader worker
    processes, which compute ahead (two tasks each). A :class:`~resprout.errors.ResproutError` in a worker is
    raised here as one line."""
    if workers <= 0:
        for item in items:
            yield fn(item)
        return
    loader = torch.utils.data.DataLoader(_Tasks(fn, items), batch_size=None, shuffle=False, num_workers=workers,
                                         pin_memory=pin, prefetch_factor=2)
    for out in loader:
        if isinstance(out, _Failed):
            raise DataError(out.message)
        yield out


def _chunks(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


# -- the run's data ----------------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class NaturalData:
    """The data of an ``augment=imagenet`` run: the chosen files, where their stored images are, the crop size and
    the normalization statistics. Reads like a dataset (``classes``, ``train.labels``, ...) where a run needs it."""

    files: FileDataset
    size: int
    data_mode: str  # "memory" or "stream"
    train_images: Images
    eval_images: dict[str, torch.Tensor | ImageFiles]  # central crops (memory) or the files (stream)
    mean: list[float]
    std: list[float]
    workers: int

    @property
    def name(self) -> str:
        return self.files.name

    @property
    def classes(self) -> list[str]:
        return self.files.classes

    @property
    def num_classes(self) -> int:
        return self.files.num_classes

    @property
    def train(self) -> FileSplit:
        return self.files.train

    @property
    def val(self) -> FileSplit | None:
        return self.files.val

    @property
    def test(self) -> FileSplit:
        return self.files.test

    def splits(self) -> dict[str, FileSplit]:
        return self.files.splits()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.files.channels, self.size, self.size

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits().items())
        return (f"NaturalData({self.name!r}, {sizes}, {self.size}px crops of images stored at short side "
                f"{stored_short_side(self.size)}, {self.data_mode})")


def normalization_stats(ds: Any) -> tuple[list[float], list[float]]:
    """The per-channel mean and std a run normalizes with: those of :class:`NaturalData`'s sample of stored training
    images, or the exact ones of a dataset in memory's training split."""
    if isinstance(ds, NaturalData):
        return ds.mean, ds.std
    return channel_stats(ds.train)


def estimate_bytes(fds: FileDataset, size: int) -> tuple[float, str]:
    """(bytes, how they were counted: "" when exactly) of the memory mode: the stored training images (their sizes
    read from the headers of up to :data:`SIZE_SAMPLE` files) and the central crops of the evaluation splits."""
    short = stored_short_side(size)
    sizes = image_sizes(fds.train.files, SIZE_SAMPLE)
    per_image = float(np.mean([h * w for h, w in (short_side_size(h, w, short) for h, w in sizes)]))
    evaluated = sum(len(s) for name, s in fds.splits().items() if name != "train")
    total = fds.channels * (per_image * len(fds.train) + evaluated * size * size)
    how = "" if len(sizes) == len(fds.train) else \
        f"estimated from the sizes of {len(sizes):,} of {len(fds.train):,} training images"
    return total, how


def check_natural_keys(*, image_fit: str = "auto", crop_padding: int | None = None,
                       files: FileDataset | None = None) -> None:
    """Refuse (one line) the keys that mean nothing with ``augment=imagenet``."""
    if image_fit != "auto":
        raise ConfigError(f"image_fit={image_fit} does not apply to augment=imagenet (images keep their aspect ratio; "
                          f"image_size is the crop)")
    if crop_padding is not None:
        raise ConfigError("crop_padding does not apply to augment=imagenet (its crops are random resized crops)")
    if files is not None and files.image_size is not None:
        raise ConfigError(f"data.image_size={files.image_size} resizes {files.name} to squares, which "
                          f"augment=imagenet does not do: give image_size=S (the crop) instead")


def prepare_natural(fds: FileDataset, *, size: int | None = None, channels: int | None = None,
                    data_mode: str = "auto", budget: float | None = None, workers: int | None = None,
                    say: Callable[[str], None] | None = None) -> NaturalData:
    """Place the stored images of ``fds`` (memory or stream, see the module docstring) and compute the
    normalization statistics; ``size``: the crop (default 224); ``channels``: 1 or 3 (default: the source's);
    ``workers``: DataLoader workers (default :func:`default_workers`). Refuses (one line) a memory mode above
    ``budget`` bytes before decoding anything."""
    if data_mode not in DATA_MODES:
        raise ConfigError(f"bad value for data_mode: {data_mode!r} (allowed: {', '.join(DATA_MODES)})")
    size = DEFAULT_CROP if size is None else size
    workers = default_workers() if workers is None else workers
    if channels is not None and channels != fds.channels:
        fds = dataclasses.replace(fds, channels=channels)
    short = stored_short_side(size)
    what = (f"{fds.name} ({len(fds.train):,} training images stored at short side {short}, "
            f"{len(fds) - len(fds.train):,} evaluation crops of {size}x{size})")
    place = data_mode
    if data_mode != "stream":
        nbytes, how = estimate_bytes(fds, size)
        if data_mode == "auto" and budget is not None and nbytes > budget:
            place = "stream"
            if say is not None:
                estimated = f" ({how})" if how else ""
                say(f"data: {what} would take {describe_bytes(nbytes)} in memory{estimated}, above memory_budget "
                    f"{describe_bytes(budget)}: streamed from disk {_by(workers)}")
        else:
            place = "memory"
            check_budget(what, nbytes, budget, estimated=how, say=say)
    elif say is not None:
        say(f"data: {what} streamed from disk {_by(workers)}")
    files = ImageFiles(fds.train.files, fds.mode, short)
    if place == "memory":
        train: Images = StoredImages(_load(files, workers))
        evals: dict[str, torch.Tensor | ImageFiles] = {
            name: _eval_crops(ImageFiles(split.files, fds.mode, short), size, workers)
            for name, split in fds.splits().items() if name != "train"}
    else:
        train = files
        evals = {name: ImageFiles(split.files, fds.mode, short) for name, split in fds.splits().items()
                 if name != "train"}
    mean, std = sample_stats(train, workers)
    return NaturalData(fds, size, place, train, evals, mean, std, workers)


def _by(workers: int) -> str:
    return f"by {workers} DataLoader workers" if workers else "in the training process"


def _decode_range(files: ImageFiles, r: range) -> list[torch.Tensor]:
    return [files[i] for i in r]


def _load(files: ImageFiles, workers: int) -> list[torch.Tensor]:
    out: list[torch.Tensor] = []
    for part in ordered_map(partial(_decode_range, files), _chunks(len(files), _CHUNK), workers):
        out.extend(part)
    return out


def _crop_range(files: ImageFiles, size: int, r: range) -> torch.Tensor:
    return torch.stack([eval_view(files[i], size) for i in r])


def _eval_crops(files: ImageFiles, size: int, workers: int) -> torch.Tensor:
    return torch.cat(list(ordered_map(partial(_crop_range, files, size), _chunks(len(files), _CHUNK), workers)))


def stats_sample(n: int) -> list[int]:
    """The training images the statistics are computed on: all of them up to :data:`STATS_IMAGES`, else that many
    spread evenly over the split."""
    if n <= STATS_IMAGES:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, STATS_IMAGES).round().astype(int).tolist()))


def level_histograms(image: torch.Tensor) -> torch.Tensor:
    """(C, 256) int64 counts of the gray levels of each channel of a stored uint8 (H, W, C) image."""
    return torch.stack([torch.bincount(image[:, :, c].reshape(-1), minlength=256) for c in range(image.shape[2])])


def _histograms(images: Images, idx: list[int]) -> torch.Tensor:
    return sum(level_histograms(images[i]) for i in idx)


def sample_stats(images: Images, workers: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``x / 255`` over the stored images of :func:`stats_sample` (exact sums)."""
    idx = stats_sample(len(images))
    if len(idx) == 0:
        raise DataError("cannot compute channel statistics of an empty split")
    parts = [idx[i:i + _CHUNK] for i in range(0, len(idx), _CHUNK)]
    run_in = workers if isinstance(images, ImageFiles) else 0  # in memory, counting is faster than a fork
    hists = sum(ordered_map(partial(_histograms, images), parts, run_in))
    return stats_of_histograms(list(hists))


# -- loaders ------------------------------------------------------------------------------------------------------------------
class NaturalTrainLoader(TrainLoader):
    """Seeded, resumable training batches of natural images: a random resized crop of ``size`` and a flip per image
    (:func:`~resprout.data.augment.train_view`), computed in this process (``workers=0``) or ahead by DataLoader
    workers. Same order, plan and sharding as :class:`~resprout.data.loader.TrainLoader`."""

    def __init__(self, images: Images, labels: torch.Tensor, *, size: int, batch_size: int, normalizer: Normalizer,
                 seed: int, flip: bool = True, sampler: Sampler | None = None, device: torch.device | str = "cpu",
                 channels_last: bool = False, rank: int = 0, world_size: int = 1, workers: int = 0) -> None:
        # not TrainLoader.__init__: the images are not one tensor on the device
        self.source = images
        self.size, self.flip_images, self.workers = size, flip, workers
        self.device = torch.device(device)
        self.labels = labels.to(self.device)
        self._labels_cpu = labels.cpu()
        self.batch_size = batch_size
        self.normalize = normalizer
        self.seed = seed
        self.crop_padding, self.flip = 0, False  # the tensor loader's augmentation: not used here
        self.sampler = sampler or make_sampler("random")
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self._plan_key: tuple[int, int] | None = None
        self._plan: list[torch.Tensor] = []
        self._ahead: list | None = None  # [generation, epoch, next step, iterator] of the workers' batches

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c = int(self.source[0].shape[2]) if isinstance(self.source, StoredImages) else \
            (1 if self.source.mode == "L" else 3)
        return c, self.size, self.size

    def stream(self, seed: int) -> NaturalTrainLoader:
        out = super().stream(seed)
        out._ahead = None
        return out

    def views(self, generation: int, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of batch ``step`` as uint8 views (B, C, size, size) and its labels (on the CPU)."""
        batch = self.plan(generation, epoch)[step]
        pos = self.positions(len(batch))
        idx = batch[pos]
        out = []
        for i, p in zip(idx.tolist(), pos.tolist()):
            g = generator(self.seed, _AUGMENT, generation, epoch, step, p)
            out.append(train_view(self.source[i], self.size, g, flip=self.flip_images))
        return torch.stack(out), self._labels_cpu[idx]

    def _views_at(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.views(*key)

    def _next_views(self, generation: int, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        ahead = self._ahead
        if ahead is None or ahead[:3] != [generation, epoch, step]:
            keys = [(generation, epoch, s) for s in range(step, self.steps(generation, epoch))]
            ahead = [generation, epoch, step, ordered_map(self._views_at, keys, self.workers,
                                                          pin=self.device.type == "cuda")]
        out = next(ahead[3])
        ahead[2] += 1
        self._ahead = ahead if ahead[2] < self.steps(generation, epoch) else None
        return out

    def batch(self, generation: int, epoch: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This process's share of batch ``step`` of the epoch, augmented and normalized."""
        if self.workers > 0:
            x, y = self._next_views(generation, epoch, step)
        else:
            x, y = self.views(generation, epoch, step)
        x = self.normalize(x.to(self.device, non_blocking=True).float())
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device)


class NaturalEvalLoader:
    """Ordered evaluation batches of image files: each image's central crop (:func:`~resprout.data.augment.eval_view`),
    decoded by DataLoader workers; under distributed runs each process takes a contiguous part."""

    def __init__(self, images: ImageFiles, labels: torch.Tensor, *, size: int, batch_size: int,
                 normalizer: Normalizer, device: torch.device | str = "cpu", channels_last: bool = False,
                 rank: int = 0, world_size: int = 1, workers: int = 0) -> None:
        self.device = torch.device(device)
        self.part = _shard(torch.arange(len(labels)), rank, world_size).tolist()
        self.images, self.size, self.workers = images, size, workers
        self.labels = labels[self.part].to(self.device)
        self.batch_size = batch_size
        self.normalize = normalizer
        self.channels_last = channels_last
        self.total = len(labels)  # over all processes

    def __len__(self) -> int:
        return -(-len(self.part) // self.batch_size)

    def _crops(self, r: range) -> torch.Tensor:
        return torch.stack([eval_view(self.images[self.part[k]], self.size) for k in r])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ranges = _chunks(len(self.part), self.batch_size)
        for r, crops in zip(ranges, ordered_map(self._crops, ranges, self.workers, pin=self.device.type == "cuda")):
            x = self.normalize(crops.to(self.device, non_blocking=True).float())
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels[r.start:r.stop]


def eval_loaders(nd: NaturalData, norm: Normalizer, *, batch_size: int, device: torch.device | str = "cpu",
                 channels_last: bool = False, rank: int = 0, world_size: int = 1
                 ) -> dict[str, EvalLoader | NaturalEvalLoader]:
    """The evaluation loaders of ``nd``: in memory, the central crops as an :class:`EvalLoader`; streamed, a
    :class:`NaturalEvalLoader`."""
    out: dict[str, EvalLoader | NaturalEvalLoader] = {}
    for name in ("val", "test"):
        split = getattr(nd, name)
        if split is None:
            continue
        images = nd.eval_images[name]
        common = dict(batch_size=batch_size, normalizer=norm, device=device, channels_last=channels_last, rank=rank,
                      world_size=world_size)
        if isinstance(images, torch.Tensor):
            out[name] = EvalLoader(images, split.labels, **common)
        else:
            out[name] = NaturalEvalLoader(images, split.labels, size=nd.size, workers=nd.workers, **common)
    return out
