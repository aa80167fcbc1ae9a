"""Data sources and prepare(): every reader on small files made here, the real digits and Fashion-MNIST."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resprout.data import Dataset, Split, available_sources, channel_stats, load_source, prepare, register_source
from resprout.data import sources
from resprout.errors import ConfigError, DataError, ResproutError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


def raises_one_line(exc_type, *fragments, match_call):
    """Run ``match_call``; it must raise ``exc_type`` with a one-line message containing every fragment."""
    with pytest.raises(exc_type) as info:
        match_call()
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg, f"not one line: {msg!r}"
    for frag in fragments:
        assert str(frag) in msg, f"{frag!r} not in {msg!r}"
    assert isinstance(info.value, ResproutError)
    return msg


@pytest.fixture(autouse=True)
def no_env_data(monkeypatch):
    monkeypatch.delenv("RESPROUT_DATA", raising=False)


# ---------------------------------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------------------------------


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    magic = (0x08 << 8) | arr.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.tobytes()


def write_file(path: Path, data: bytes, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def make_idx_dir(folder: Path, n_train=30, n_test=10, gz=False, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    paths = {}
    for i, (name, arr) in enumerate(arrays.items()):
        use_gz = gz if gz != "mixed" else bool(i % 2)
        paths[name] = write_file(folder / name, idx_bytes(arr), gz=use_gz)
    return arrays, paths


@pytest.mark.parametrize("gz", [False, True, "mixed"])
def test_idx_reads_raw_and_gzip(tmp_path, gz):
    arrays, _ = make_idx_dir(tmp_path / "m", gz=gz)
    ds = load_source("mnist", tmp_path / "m")
    assert ds.train.images.shape == (30, 1, 28, 28) and ds.test.images.shape == (10, 1, 28, 28)
    assert ds.train.images.dtype == torch.uint8 and ds.train.labels.dtype == torch.int64
    assert ds.train.images.is_contiguous()
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(ds.test.labels, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"].astype(np.int64)))
    assert ds.classes == [str(i) for i in range(10)] and ds.val is None and ds.input_shape == (1, 28, 28)


def test_idx_search_order_env_subdir_then_env_dir(tmp_path, monkeypatch):
    make_idx_dir(tmp_path / "data" / "fashion-mnist", n_train=20, seed=1)
    monkeypatch.setenv("RESPROUT_DATA", str(tmp_path / "data"))
    ds = load_source("fashion-mnist")
    assert len(ds.train) == 20 and ds.classes[0] == "T-shirt/top" and ds.classes[-1] == "Ankle boot"
    # Files directly in RESPROUT_DATA, and a data_path that is the parent of fashion-mnist/.
    make_idx_dir(tmp_path / "flat", n_train=12, gz=True)
    monkeypatch.setenv("RESPROUT_DATA", str(tmp_path / "flat"))
    assert len(load_source("mnist").train) == 12
    assert len(load_source("fashion-mnist", tmp_path / "data").train) == 20


def test_idx_not_found_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sources.SYSTEM_DATA_DIRS, "fashion-mnist", [tmp_path / "nowhere"])
    msg = raises_one_line(DataError, str(tmp_path / "nowhere"), "apt-get install -y dataset-fashion-mnist",
                          "data_path=DIR", match_call=lambda: load_source("fashion-mnist"))
    assert "RESPROUT_DATA is not set" in msg
    raises_one_line(DataError, str(tmp_path / "missing"), "does not exist",
                    match_call=lambda: load_source("mnist", tmp_path / "missing"))


def test_idx_missing_one_file_is_named(tmp_path):
    _, paths = make_idx_dir(tmp_path / "m")
    paths["t10k-labels-idx1-ubyte"].unlink()
    raises_one_line(DataError, "t10k-labels-idx1-ubyte", "missing",
                    match_call=lambda: load_source("mnist", tmp_path / "m"))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_payload(tmp_path, gz):
    arrays, paths = make_idx_dir(tmp_path / "m", n_train=20)
    full = idx_bytes(arrays["train-images-idx3-ubyte"])
    paths["train-images-idx3-ubyte"].unlink()
    bad = write_file(tmp_path / "m" / "train-images-idx3-ubyte", full[:16 + 1234], gz=gz)
    raises_one_line(DataError, f"{bad} is truncated: header says 20 images of 28x28 (15680 bytes), found 1234",
                    match_call=lambda: load_source("mnist", tmp_path / "m"))


def test_idx_truncated_gzip_stream(tmp_path):
    arrays, paths = make_idx_dir(tmp_path / "m", n_train=20, gz=True)
    f = paths["train-labels-idx1-ubyte"]
    # A gzip file cut in its trailer: the data is all there but the stream never ends.
    f.write_bytes(f.read_bytes()[:-4])
    raises_one_line(DataError, str(f), "truncated", match_call=lambda: load_source("mnist", tmp_path / "m"))
    # Cut in the middle of the compressed images: reports how much was recovered.
    g = paths["train-images-idx3-ubyte"]
    g.write_bytes(g.read_bytes()[:2000])
    raises_one_line(DataError, str(g), "is truncated: header says 20 images of 28x28 (15680 bytes), found",
                    match_call=lambda: load_source("mnist", tmp_path / "m"))


def test_idx_corrupt_gzip(tmp_path):
    _, paths = make_idx_dir(tmp_path / "m", gz=True)
    f = paths["t10k-images-idx3-ubyte"]
    data = bytearray(f.read_bytes())
    data[12:40] = b"\xff" * 28  # garbage in the deflate stream, gzip magic intact
    f.write_bytes(bytes(data))
    raises_one_line(DataError, str(f), "not a valid gzip file", match_call=lambda: load_source("mnist", tmp_path / "m"))


def test_idx_wrong_magic_extra_bytes_and_label_checks(tmp_path):
    arrays, paths = make_idx_dir(tmp_path / "m")
    lab = paths["train-labels-idx1-ubyte"]
    lab.write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"], magic=0x00000803))
    raises_one_line(DataError, str(lab), "magic number 0x00000803, expected 0x00000801",
                    match_call=lambda: load_source("mnist", tmp_path / "m"))
    lab.write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"]) + b"\x00\x00")
    raises_one_line(DataError, str(lab), "2 bytes more", match_call=lambda: load_source("mnist", tmp_path / "m"))
    lab.write_bytes(idx_bytes(arrays["train-labels-idx1-ubyte"][:-1]))
    raises_one_line(DataError, str(lab), "29 labels", "30 images",
                    match_call=lambda: load_source("mnist", tmp_path / "m"))
    bad = arrays["train-labels-idx1-ubyte"].copy()
    bad[3] = 12
    lab.write_bytes(idx_bytes(bad))
    raises_one_line(DataError, str(lab), "label 12", match_call=lambda: load_source("mnist", tmp_path / "m"))


# ---------------------------------------------------------------------------------------------------------------
# CIFAR pickles
# ---------------------------------------------------------------------------------------------------------------


def dump(path: Path, obj, protocol=2):
    with path.open("wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)


def make_cifar10(root: Path, per_batch=3, protocol=2, seed=0):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, per_batch)]
        dump(folder / name, {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                             b"filenames": [b"x.png"] * per_batch}, protocol)
        batches[name] = (data, labels)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    dump(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072},
         protocol)
    return folder, batches


def make_cifar100(root: Path, n_train=6, n_test=4, str_keys=False):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    k = (lambda s: s) if str_keys else (lambda s: s.encode())
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(x) for x in rng.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        dump(folder / name, {k("data"): data, k("fine_labels"): fine, k("coarse_labels"): coarse}, protocol=4)
        out[name] = (data, fine, coarse)
    dump(folder / "meta", {k("fine_label_names"): [f"fine{i}".encode() for i in range(100)],
                           k("coarse_label_names"): [f"coarse{i}" for i in range(20)]})
    return folder, out


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_reads_layout_dir_and_parent(tmp_path, protocol):
    folder, batches = make_cifar10(tmp_path, protocol=protocol)
    for path in (folder, tmp_path):
        ds = load_source("cifar10", path)
        assert ds.train.images.shape == (15, 3, 32, 32) and ds.test.images.shape == (3, 3, 32, 32)
        assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
        data, labels = batches["data_batch_2"]
        # Row layout: 1024 red, 1024 green, 1024 blue values, each 32x32 row-major.
        assert torch.equal(ds.train.images[3, 1], torch.from_numpy(data[0, 1024:2048].reshape(32, 32)))
        assert ds.train.labels[3:6].tolist() == labels
        assert ds.test.labels.tolist() == batches["test_batch"][1]


def py2_pickle_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2 wrote them (the real CIFAR files): py2 strings, numpy.core.multiarray._reconstruct."""
    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b
    n, d = data.shape
    out = b"\x80\x02}(" + s(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b") + b"\x87R"
    out += b"(K\x01J" + struct.pack("<i", n) + b"J" + struct.pack("<i", d) + b"\x86"
    out += b"cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R(K\x03" + s(b"|")
    out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" + struct.pack("<I", n * d) + data.tobytes() + b"tb"
    out += s(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return out + s(b"batch_label") + s(b"training batch 1 of 5") + b"u."


def test_cifar10_python2_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(3)
    expected = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, 2)]
        (folder / name).write_bytes(py2_pickle_batch(data, labels))
        expected.append((data, labels))
    names = b"".join(b"U" + bytes([len(c)]) + c for c in [b"c%d" % i for i in range(10)])
    (folder / "batches.meta").write_bytes(b"\x80\x02}(U\x0blabel_names](" + names + b"eu.")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DeprecationWarning for numpy.core under numpy 2
        ds = load_source("cifar10", tmp_path)
    assert ds.classes == [f"c{i}" for i in range(10)] and len(ds.train) == 10
    assert torch.equal(ds.test.images.flatten(1), torch.from_numpy(expected[-1][0]))
    assert ds.train.labels.tolist() == sum((lab for _, lab in expected[:5]), [])


def test_cifar100_fine_coarse_and_str_keys(tmp_path):
    _, out = make_cifar100(tmp_path / "a")
    fine = load_source("cifar100", tmp_path / "a")
    assert fine.num_classes == 100 and fine.classes[7] == "fine7" and fine.train.labels.tolist() == out["train"][1]
    coarse = load_source("cifar100", tmp_path / "a", labels="coarse")
    assert coarse.num_classes == 20 and coarse.classes[3] == "coarse3"
    assert coarse.test.labels.tolist() == out["test"][2]
    assert torch.equal(coarse.test.images.flatten(1), torch.from_numpy(out["test"][0]))
    _, out2 = make_cifar100(tmp_path / "b", str_keys=True)
    assert load_source("cifar100", tmp_path / "b" / "cifar-100-python").train.labels.tolist() == out2["train"][1]
    raises_one_line(ConfigError, "labels", "'medium'", "fine, coarse",
                    match_call=lambda: load_source("cifar100", tmp_path / "a", labels="medium"))
    raises_one_line(ConfigError, "'labels'", match_call=lambda: load_source("cifar10", tmp_path / "a", labels="fine"))


def test_cifar_truncated_and_garbage_pickles(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    f = folder / "data_batch_3"
    f.write_bytes(f.read_bytes()[:500])
    raises_one_line(DataError, str(f), "truncated or corrupt", match_call=lambda: load_source("cifar10", tmp_path))
    f.write_bytes(b"this is not a pickle at all\n")
    raises_one_line(DataError, str(f), match_call=lambda: load_source("cifar10", tmp_path))
    dump(f, [1, 2, 3])
    raises_one_line(DataError, str(f), "holds a list", match_call=lambda: load_source("cifar10", tmp_path))
    dump(f, {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    raises_one_line(DataError, str(f), "(N, 3072)", match_call=lambda: load_source("cifar10", tmp_path))
    (folder / "test_batch").unlink()
    raises_one_line(DataError, str(folder / "test_batch"), "missing",
                    match_call=lambda: load_source("cifar10", tmp_path))


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused_without_running(tmp_path):
    folder, _ = make_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    dump(folder / "data_batch_1", {b"data": _Evil(marker), b"labels": [0]})
    raises_one_line(DataError, str(folder / "data_batch_1"), "is not a CIFAR pickle: it references", "system",
                    match_call=lambda: load_source("cifar10", folder))
    assert not marker.exists()
    # Same for the meta file, with a protocol-4 pickle.
    dump(folder / "batches.meta", {b"label_names": _Evil(marker)}, protocol=4)
    raises_one_line(DataError, "batches.meta", "system", match_call=lambda: load_source("cifar10", folder))
    assert not marker.exists()


def test_cifar_not_found(tmp_path):
    (tmp_path / "empty").mkdir()
    raises_one_line(DataError, "cifar-10-batches-py", str(tmp_path / "empty"),
                    match_call=lambda: load_source("cifar10", tmp_path / "empty"))


# ---------------------------------------------------------------------------------------------------------------
# imagefolder
# ---------------------------------------------------------------------------------------------------------------

COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def png(path: Path, color=(10, 20, 30), size=(4, 4)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def make_split_tree(root: Path, counts: dict[str, dict[str, int]]):
    for split, per_class in counts.items():
        for cls, n in per_class.items():
            for i in range(n):
                png(root / split / cls / f"{i}.png", COLORS[cls])


def test_imagefolder_train_test_val_folders(tmp_path):
    make_split_tree(tmp_path, {"train": {"dog": 3, "cat": 2}, "test": {"cat": 1, "dog": 2}, "val": {"dog": 1}})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored")
    png(tmp_path / "train" / "cat" / ".hidden.png")
    png(tmp_path / "train" / "dog" / "UPPER.PNG", COLORS["dog"])
    (tmp_path / "train" / "cat" / "loop").symlink_to(tmp_path / "train" / "cat")  # a symlink loop is walked once
    ds = load_source("imagefolder", tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.train.images.shape == (6, 3, 4, 4) and len(ds.test) == 3 and len(ds.val) == 1
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 1, 1]
    assert ds.train.images[0, :, 0, 0].tolist() == [255, 0, 0]
    assert ds.train.images[-1, :, 2, 3].tolist() == [0, 255, 0]
    assert ds.val.labels.tolist() == [1]
    gray = load_source("imagefolder", tmp_path, channels=1)
    assert gray.input_shape == (1, 4, 4)
    assert gray.train.images[0, 0, 0, 0].item() == 76  # PIL's luminance of pure red


def test_imagefolder_split_lists(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(4):
            png(tmp_path / cls / f"{i}.png", COLORS[cls])
    (tmp_path / "train.txt").write_text("cat/0.png\ncat/1.png\ndog/0.png\n\ndog/3.png\n")
    (tmp_path / "test.txt").write_text("cat/2.png\ndog/1.png\n")
    (tmp_path / "val.txt").write_text("dog/2.png\n")
    ds = load_source("imagefolder", tmp_path)
    assert ds.classes == ["cat", "dog"]
    assert ds.train.labels.tolist() == [0, 0, 1, 1] and ds.test.labels.tolist() == [0, 1]
    assert ds.val.labels.tolist() == [1] and ds.val.images[0, 1, 0, 0].item() == 255
    (tmp_path / "test.txt").write_text("cat/2.png\ndog/9.png\n")
    raises_one_line(DataError, str(tmp_path / "test.txt"), "line 2", str(tmp_path / "dog" / "9.png"), "does not exist",
                    match_call=lambda: load_source("imagefolder", tmp_path))
    (tmp_path / "test.txt").write_text("cat/2.png\ncat/0.png\ndog/1.png\n")
    raises_one_line(DataError, str(tmp_path / "cat" / "0.png"), "both",
                    match_call=lambda: load_source("imagefolder", tmp_path))
    (tmp_path / "test.txt").unlink()
    raises_one_line(DataError, str(tmp_path / "test.txt"), "missing",
                    match_call=lambda: load_source("imagefolder", tmp_path))


def test_imagefolder_single_tree_fixed_stratified_split(tmp_path):
    for cls, n in (("cat", 10), ("dog", 5), ("emu", 2)):
        for i in range(n):
            png(tmp_path / cls / f"{i:02d}.png", COLORS[cls])
    ds = load_source("imagefolder", tmp_path)
    assert ds.test.class_counts(3) == [2, 1, 1] and ds.train.class_counts(3) == [8, 4, 1]
    again = load_source("imagefolder", tmp_path)
    assert torch.equal(ds.test.images, again.test.images) and torch.equal(ds.train.labels, again.train.labels)
    (tmp_path / "emu" / "01.png").unlink()
    raises_one_line(DataError, str(tmp_path / "emu"), "only 1 image",
                    match_call=lambda: load_source("imagefolder", tmp_path))


def test_imagefolder_errors_name_the_file_or_folder(tmp_path):
    make_split_tree(tmp_path, {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "readme.txt").write_text("no images here")
    raises_one_line(DataError, f"{tmp_path / 'train' / 'emu'} has no images",
                    match_call=lambda: load_source("imagefolder", tmp_path))
    png(tmp_path / "train" / "emu" / "0.png", COLORS["emu"])
    raises_one_line(DataError, "different class folders", "only in", "emu",
                    match_call=lambda: load_source("imagefolder", tmp_path))
    png(tmp_path / "test" / "emu" / "0.png", COLORS["emu"])
    assert load_source("imagefolder", tmp_path).num_classes == 3
    bad = tmp_path / "train" / "cat" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    raises_one_line(DataError, f"{bad} cannot be read:", match_call=lambda: load_source("imagefolder", tmp_path))
    bad.unlink()
    png(tmp_path / "train" / "stray.png")
    raises_one_line(DataError, str(tmp_path / "train" / "stray.png"), "not inside a class folder",
                    match_call=lambda: load_source("imagefolder", tmp_path))
    raises_one_line(DataError, str(tmp_path / "nope"), "does not exist",
                    match_call=lambda: load_source("imagefolder", tmp_path / "nope"))
    raises_one_line(ConfigError, "data_path", match_call=lambda: load_source("imagefolder"))
    raises_one_line(ConfigError, "channels", match_call=lambda: load_source("imagefolder", tmp_path, channels=2))


def test_imagefolder_mixed_sizes(tmp_path):
    make_split_tree(tmp_path, {"train": {"cat": 2, "dog": 2}, "test": {"cat": 1, "dog": 1}})
    odd = png(tmp_path / "train" / "dog" / "big.png", COLORS["dog"], size=(10, 6))
    msg = raises_one_line(DataError, str(odd), "10x6", "4x4", "image_size",
                          match_call=lambda: load_source("imagefolder", tmp_path))
    assert str(tmp_path / "train" / "cat" / "0.png") in msg  # names both files
    ds = load_source("imagefolder", tmp_path, image_size=6)
    assert ds.input_shape == (3, 6, 6) and len(ds.train) == 5
    assert ds.train.images[4, :, 3, 3].tolist() == [0, 255, 0]  # solid colors survive resizing


# ---------------------------------------------------------------------------------------------------------------
# digits and Fashion-MNIST (real data)
# ---------------------------------------------------------------------------------------------------------------


def test_digits_shapes_values_and_fixed_stratified_test_split():
    from sklearn.datasets import load_digits

    ds = load_source("digits")
    assert ds.input_shape == (1, 8, 8) and ds.classes == [str(i) for i in range(10)]
    assert len(ds.train) + len(ds.test) == 1797 and ds.val is None
    all_counts = np.bincount(load_digits().target, minlength=10)
    for c, n in enumerate(ds.test.class_counts(10)):
        assert abs(n - 0.2 * all_counts[c]) <= 1  # stratified 20%
    assert ds.train.images.max().item() == 255 and ds.train.images.min().item() == 0
    # Values 0..16 map to round(v * 255 / 16): the 8x8 images are kept, only scaled.
    raw = {tuple(np.floor(im * 255 / 16 + 0.5).astype(np.uint8).ravel()) for im in load_digits().images}
    assert all(tuple(im.ravel().tolist()) in raw for im in ds.test.images[:20])
    # The test split is fixed: the same for every load and every data_seed.
    a = prepare(load_source("digits"), per_class=20, val_split=0.1, data_seed=1)
    b = prepare(load_source("digits"), per_class=20, val_split=0.1, data_seed=2)
    assert torch.equal(a.test.images, ds.test.images) and torch.equal(b.test.labels, ds.test.labels)
    assert not torch.equal(a.train.images, b.train.images)


@pytest.mark.skipif(not FASHION_DIR.is_dir(),
                    reason=f"{FASHION_DIR} is absent (apt-get install -y dataset-fashion-mnist)")
def test_fashion_mnist_real_data():
    ds = load_source("fashion-mnist")  # found in the Debian location
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.train.class_counts(10) == [6000] * 10 and ds.test.class_counts(10) == [1000] * 10
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    mean, std = channel_stats(ds.train)
    assert abs(mean[0] - 0.2860) < 1e-3 and abs(std[0] - 0.3530) < 1e-3
    small = prepare(ds, per_class=10, val_split=0.1, image_size=32)
    assert small.train.class_counts(10) == [10] * 10 and small.val.class_counts(10) == [600] * 10
    assert small.input_shape == (1, 32, 32) and len(small.test) == 10000


# ---------------------------------------------------------------------------------------------------------------
# prepare()
# ---------------------------------------------------------------------------------------------------------------


def toy(n_per_class=(20, 15, 12), shape=(1, 6, 6), val=None, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(n_per_class)])
    labels = labels[torch.randperm(len(labels), generator=g)]
    images = torch.randint(0, 256, (len(labels), *shape), generator=g, dtype=torch.uint8)
    test = Split(torch.randint(0, 256, (9, *shape), generator=g, dtype=torch.uint8), torch.arange(9) % 3)
    return Dataset("toy", Split(images, labels), test, val, ["a", "b", "c"])


def rows(split: Split) -> set[bytes]:
    return {bytes(x.flatten().tolist()) for x in split.images}


def test_prepare_per_class_exact_seeded_and_nested():
    ds = toy()
    a = prepare(ds, per_class=5, data_seed=3)
    assert a.train.class_counts(3) == [5, 5, 5] and a.val is None
    assert torch.equal(a.train.images, prepare(ds, per_class=5, data_seed=3).train.images)
    assert rows(a.train) != rows(prepare(ds, per_class=5, data_seed=4).train)
    assert rows(a.train) <= rows(prepare(ds, per_class=10, data_seed=3).train)  # nested subsets
    assert rows(a.train) <= rows(ds.train)
    assert torch.equal(a.test.images, ds.test.images)  # the test split is never subset
    raises_one_line(DataError, "per_class=13", "'c'", "12", match_call=lambda: prepare(ds, per_class=13))


def test_prepare_val_carve_is_stratified_seeded_and_disjoint():
    ds = toy()
    p = prepare(ds, val_split=0.25, data_seed=0)
    assert p.val.class_counts(3) == [5, 4, 3] and p.train.class_counts(3) == [15, 11, 9]
    assert not rows(p.val) & rows(p.train) and rows(p.val) | rows(p.train) == rows(ds.train)
    assert torch.equal(p.val.images, prepare(ds, val_split=0.25, data_seed=0).val.images)
    assert rows(p.val) != rows(prepare(ds, val_split=0.25, data_seed=1).val)
    tiny = prepare(ds, val_split=0.01)
    assert tiny.val.class_counts(3) == [1, 1, 1]  # at least one per class
    # Carved first, then the per_class subset comes from what is left.
    both = prepare(ds, val_split=0.25, per_class=9)
    assert both.train.class_counts(3) == [9, 9, 9] and not rows(both.train) & rows(both.val)
    raises_one_line(DataError, "per_class=10", "'c'", "after carving", match_call=lambda: prepare(ds, val_split=0.25,
                                                                                                  per_class=10))
    one = toy(n_per_class=(5, 1, 4))
    raises_one_line(DataError, "val_split", "'b'", match_call=lambda: prepare(one, val_split=0.2))


def test_prepare_keeps_source_val_and_checks_arguments():
    src_val = Split(torch.zeros((3, 1, 6, 6), dtype=torch.uint8), torch.tensor([0, 1, 2]))
    ds = toy(val=src_val)
    p = prepare(ds, val_split=0.5)
    assert len(p.val) == 3 and len(p.train) == len(ds.train)
    for bad in (1.0, -0.1, True, "0.1"):
        raises_one_line(ConfigError, "val_split", match_call=lambda: prepare(ds, val_split=bad))
    raises_one_line(ConfigError, "per_class", match_call=lambda: prepare(ds, per_class=0))
    raises_one_line(ConfigError, "channels", match_call=lambda: prepare(ds, channels=2))
    raises_one_line(ConfigError, "image_size", match_call=lambda: prepare(ds, image_size=-3))
    raises_one_line(ConfigError, "data_seed", match_call=lambda: prepare(ds, data_seed=-1))


def test_prepare_pads_centered_when_larger():
    ds = toy(shape=(1, 28, 28))
    p = prepare(ds, image_size=32)
    assert p.input_shape == (1, 32, 32)
    assert torch.equal(p.train.images[:, :, 2:30, 2:30], ds.train.images)
    assert torch.equal(p.test.images[:, :, 2:30, 2:30], ds.test.images)
    border = p.train.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum().item() == 0


def test_prepare_resizes_bilinear_antialiased():
    ds = toy(shape=(1, 8, 8))
    assert torch.equal(prepare(ds, image_size=16).train.images[:, :, 4:12, 4:12], ds.train.images)  # fits: pads
    up = prepare(ds, image_size=16, fit="resize")
    assert up.input_shape == (1, 16, 16) and up.train.images.dtype == torch.uint8
    ref = F.interpolate(ds.train.images.float(), size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(up.train.images, ref.round().clamp(0, 255).to(torch.uint8))
    big = toy(shape=(3, 32, 32))
    down = prepare(big, image_size=16)
    ref = F.interpolate(big.test.images.float(), size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    assert torch.equal(down.test.images, ref.round().clamp(0, 255).to(torch.uint8))
    flat = Dataset("flat", Split(torch.full((2, 1, 8, 8), 77, dtype=torch.uint8), torch.tensor([0, 1])),
                   Split(torch.full((1, 1, 8, 8), 77, dtype=torch.uint8), torch.tensor([0])), None, ["x", "y"])
    assert (prepare(flat, image_size=5).train.images == 77).all()
    assert (prepare(flat, image_size=23, fit="resize").test.images == 77).all()
    raises_one_line(ConfigError, "8x8", "5x5", match_call=lambda: prepare(flat, image_size=5, fit="pad"))
    raises_one_line(ConfigError, "fit", match_call=lambda: prepare(flat, image_size=5, fit="crop"))


def test_prepare_channels_and_luminance():
    gray = toy(shape=(1, 6, 6))
    rgb = prepare(gray, channels=3)
    assert rgb.input_shape == (3, 6, 6) and rgb.train.images.is_contiguous()
    assert all(torch.equal(rgb.train.images[:, i], gray.train.images[:, 0]) for i in range(3))
    red = torch.zeros((1, 3, 2, 2), dtype=torch.uint8)
    red[:, 0] = 255
    pixels = torch.tensor([[[[255]], [[255]], [[255]]], [[[10]], [[200]], [[40]]]], dtype=torch.uint8)
    pixels = pixels.expand(2, 3, 2, 2)
    ds = Dataset("rgb", Split(red, torch.tensor([0])), Split(pixels, torch.tensor([0, 0])), None, ["x"])
    lum = prepare(ds, channels=1)
    assert lum.train.images.flatten().tolist() == [76] * 4  # round(0.299 * 255)
    assert lum.test.images[:, 0, 1, 1].tolist() == [255, round(0.299 * 10 + 0.587 * 200 + 0.114 * 40)]
    both = prepare(gray, channels=3, image_size=10)
    assert both.input_shape == (3, 10, 10) and torch.equal(both.train.images[:, 2, 2:8, 2:8], gray.train.images[:, 0])


def test_prepare_does_not_mutate_or_share_the_input():
    ds = toy()
    before = (ds.train.images.clone(), ds.train.labels.clone(), ds.test.images.clone())
    p = prepare(ds)
    assert torch.equal(p.train.images, before[0]) and torch.equal(p.test.images, before[2])
    p.train.images.zero_()
    p.test.images.zero_()
    p.train.labels.zero_()
    assert torch.equal(ds.train.images, before[0]) and torch.equal(ds.test.images, before[2])
    assert torch.equal(ds.train.labels, before[1]) and ds.val is None
    q = prepare(ds, per_class=3, val_split=0.2, image_size=9, channels=3)
    assert torch.equal(ds.train.images, before[0]) and ds.val is None and ds.input_shape == (1, 6, 6)
    for split in q.splits().values():
        assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
        assert split.labels.dtype == torch.int64


# ---------------------------------------------------------------------------------------------------------------
# registry, synthetic, data model
# ---------------------------------------------------------------------------------------------------------------


def test_registry_and_option_checks():
    assert available_sources() == sorted(["digits", "fashion-mnist", "mnist", "cifar10", "cifar100", "imagefolder",
                                          "synthetic", "cub200", "flower102", "fgvc-aircraft", "mit67",
                                          "stanford-dogs", "fashion-reid", "market1501", "dukemtmc", "voc", "coco",
                                          "fashion-canvas"])
    raises_one_line(ConfigError, "'svhn'", "cifar10", "synthetic", match_call=lambda: load_source("svhn"))
    raises_one_line(ConfigError, "'n_trian'", "n_train", match_call=lambda: load_source("synthetic", n_trian=5))
    raises_one_line(ConfigError, "'digits'", "data_path", match_call=lambda: load_source("digits", "/tmp"))
    raises_one_line(ConfigError, "n_test", match_call=lambda: load_source("synthetic", n_test=0))
    @register_source("tiny")
    def tiny(path=None, *, k=2):
        return load_source("synthetic", num_classes=k, n_train=k, n_test=k)

    assert "tiny" in available_sources() and load_source("tiny", k=3).num_classes == 3
    with pytest.raises(ValueError):
        register_source("tiny")(lambda: None)
    register_source("tiny", replace=True)(lambda: load_source("digits"))
    assert load_source("TINY").name == "digits"


def test_synthetic_deterministic_balanced_and_learnable_but_not_trivial():
    a, b = load_source("synthetic"), load_source("synthetic")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert a.input_shape == (1, 8, 8) and len(a.train) == 500 and len(a.test) == 200 and a.num_classes == 10
    assert a.train.class_counts(10) == [50] * 10
    assert not torch.equal(load_source("synthetic", seed=1).train.images, a.train.images)
    c = load_source("synthetic", num_classes=4, n_train=30, n_test=7, image_size=12, channels=3, seed=5)
    assert c.train.images.shape == (30, 3, 12, 12) and c.test.images.shape == (7, 3, 12, 12)
    assert torch.equal(load_source("synthetic", n_train=100).test.images, a.test.images)
    # Nearest class mean (fitted on train): well above chance (10%), far from perfect.
    x = a.train.images.flatten(1).float()
    means = torch.stack([x[a.train.labels == k].mean(0) for k in range(10)])
    pred = torch.cdist(a.test.images.flatten(1).float(), means).argmin(1)
    acc = (pred == a.test.labels).float().mean().item()
    assert 0.5 < acc < 0.97, acc


def test_channel_stats_matches_direct_computation():
    split = Split(torch.randint(0, 256, (40, 3, 5, 7), dtype=torch.uint8), torch.zeros(40, dtype=torch.int64))
    mean, std = channel_stats(split)
    x = split.images.double() / 255
    assert np.allclose(mean, x.mean(dim=(0, 2, 3)).tolist(), atol=1e-12)
    assert np.allclose(std, x.std(dim=(0, 2, 3), unbiased=False).tolist(), atol=1e-12)
    assert len(mean) == 3 and all(isinstance(v, float) for v in mean + std)


def test_data_model_validates():
    with pytest.raises(TypeError):
        Split(torch.zeros((2, 1, 4, 4)), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError):
        Split(torch.zeros((2, 1, 4, 4), dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
    s = Split(torch.zeros((4, 4, 1, 2), dtype=torch.uint8).permute(0, 2, 3, 1), torch.tensor([0, 1, 2, 3]))
    assert s.images.is_contiguous() and len(s) == 4
    raises_one_line(DataError, "'bad'", "labels must be 0..1",
                    match_call=lambda: Dataset("bad", s, s, None, ["a", "b"]))
