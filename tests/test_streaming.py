"""Images read from disk by DataLoader workers (data_mode=stream) against the same images held in memory: the same
pixels, order, crops and statistics; the memory budget stated and enforced; a run killed mid-epoch and resumed (in
the other mode) ending with the weights of an uninterrupted one; sharding under torchrun; the KE paper's CUB-200
command of docs/data.md on a miniature."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from resprout.cli import main
from resprout.data import natural, readers
from resprout.data.files import decode, describe_bytes
from resprout.data.loader import EvalLoader, Normalizer
from resprout.data.natural import (ImageFiles, NaturalEvalLoader, NaturalTrainLoader, StoredImages, eval_loaders,
                                   estimate_bytes, prepare_natural)
from resprout.data.preparation import prepare_files
from resprout.data.samplers import make_sampler
from resprout.data.sources import open_source
from resprout.engine.checkpoint import load_file
from resprout.errors import ConfigError, DataError
from tests import miniatures
from tests.conftest import HANG_GUARD, PYTHON, ROOT, cli_env
from tests.test_data_sources import raises_one_line
from tests.test_distributed import torchrun
from tests.test_trainer import assert_same_weights, metric_rows


@pytest.fixture(scope="module")
def cub(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cub")
    miniatures.cub200(root, classes=3, train=6, test=2)
    return root


def files(root: Path):
    return prepare_files(open_source("cub200", root))


def _norm(nd) -> Normalizer:
    return Normalizer.from_stats(nd.mean, nd.std, torch.device("cpu"))


def _train_loader(nd, **kw) -> NaturalTrainLoader:
    return NaturalTrainLoader(nd.train_images, nd.train.labels, size=nd.size, batch_size=4, normalizer=_norm(nd),
                              seed=3, workers=nd.workers, **kw)


def test_streaming_yields_the_in_memory_batches(cub):
    memory = prepare_natural(files(cub), size=24, data_mode="memory", workers=0)
    stream = prepare_natural(files(cub), size=24, data_mode="stream", workers=2)
    assert isinstance(memory.train_images, StoredImages) and isinstance(stream.train_images, ImageFiles)
    assert (memory.mean, memory.std) == (stream.mean, stream.std)
    for i in range(len(memory.train_images)):  # the stream decodes exactly what memory stores
        assert torch.equal(stream.train_images[i], memory.train_images[i])
    for sampler in (None, make_sampler("class_pair")):
        a, b = _train_loader(memory, sampler=sampler), _train_loader(stream, sampler=sampler)
        assert b.workers == 2 and a.workers == 0
        for g, e in [(0, 0), (0, 1), (1, 0)]:
            steps = a.steps(g, e)
            assert steps == b.steps(g, e) == len(a.plan(g, e))
            for s in range(steps):
                xa, ya = a.batch(g, e, s)
                xb, yb = b.batch(g, e, s)
                assert torch.equal(xa, xb) and torch.equal(ya, yb), (g, e, s)
        # out of order, as a method re-reading batches does (KE re-estimating BN statistics)
        for s in (3, 1, 2, 0):
            assert torch.equal(a.batch(1, 1, s)[0], b.batch(1, 1, s)[0])
    ea, eb = eval_loaders(memory, _norm(memory), batch_size=5), eval_loaders(stream, _norm(stream), batch_size=5)
    assert isinstance(ea["test"], EvalLoader) and isinstance(eb["test"], NaturalEvalLoader)
    pairs = list(zip(ea["test"], eb["test"]))
    assert len(pairs) == len(ea["test"]) == len(eb["test"]) == 2
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_normalization_uses_the_statistics_of_the_stored_training_images(cub):
    nd = prepare_natural(files(cub), size=24, data_mode="memory", workers=0)
    pixels = torch.cat([t.reshape(-1, t.shape[2]) for t in nd.train_images.images]).double() / 255  # (N*H*W, C)
    assert np.allclose(nd.mean, pixels.mean(0).numpy(), rtol=0, atol=1e-12)
    assert np.allclose(nd.std, pixels.std(0, unbiased=False).numpy(), rtol=0, atol=1e-12)


def test_the_memory_mode_states_its_size_and_refuses_a_set_above_the_budget(cub, monkeypatch):
    said: list[str] = []
    nd = prepare_natural(files(cub), size=24, data_mode="memory", workers=0, budget=1e9, say=said.append)
    held = sum(t.numel() for t in nd.train_images.images) + nd.eval_images["test"].numel()
    assert estimate_bytes(files(cub), 24) == (held, "")  # every header read: exact
    assert len(said) == 1 and f"{describe_bytes(held)} in memory" in said[0] and "18 training images" in said[0]

    said.clear()
    auto = prepare_natural(files(cub), size=24, data_mode="auto", budget=1e4, workers=0, say=said.append)
    assert auto.data_mode == "stream" and isinstance(auto.train_images, ImageFiles)
    assert said == [f"data: cub200 (18 training images stored at short side 27, 6 evaluation crops of 24x24) would "
                    f"take {describe_bytes(held)} in memory, above memory_budget 10 kB: streamed from disk in the "
                    f"training process"]

    def no_decoding(*a, **k):
        raise AssertionError("decoded before the budget was checked")

    monkeypatch.setattr(natural, "read_stored", no_decoding)
    raises_one_line(ConfigError, describe_bytes(held), "memory_budget 10 kB", "data_mode=stream",
                    match_call=lambda: prepare_natural(files(cub), size=24, data_mode="memory", budget=1e4))


def test_the_fixed_size_path_checks_the_budget_before_decoding(tmp_path, monkeypatch):
    miniatures.mit67(tmp_path)
    fds = open_source("mit67", tmp_path, image_size=20)
    said: list[str] = []
    ds = decode(fds, budget=1e9, say=said.append)
    assert said == [f"data: mit67 (15 images of 20x20x3): {describe_bytes(15 * 3 * 20 * 20)} in memory, "
                    f"memory_budget 1 GB"]
    assert sum(s.images.numel() for s in ds.splits().values()) == 15 * 3 * 20 * 20
    monkeypatch.setattr(readers, "read_image", lambda *a, **k: (_ for _ in ()).throw(AssertionError("decoded")))
    raises_one_line(ConfigError, "memory_budget 1 kB", "data_mode=stream", match_call=lambda: decode(fds, budget=1e3))


def test_a_broken_image_in_a_worker_is_one_line_naming_it(cub, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(cub, root)
    victim = sorted((root / "CUB_200_2011" / "images").rglob("*.jpg"))[0]
    nd = prepare_natural(files(root), size=24, data_mode="stream", workers=2)
    victim.write_bytes(b"\xff\xd8 not a jpeg any more")
    loader = _train_loader(nd)
    with pytest.raises(DataError) as info:
        for s in range(loader.steps(0, 0)):
            loader.batch(0, 0, s)
    assert "\n" not in str(info.value) and str(victim) in str(info.value) and "cannot be read" in str(info.value)


# -- runs -----------------------------------------------------------------------------------------------------------------
BAD_KEYS = [
    (["data=digits", "augment=imagenet"], "augment=imagenet needs a source of image files"),
    (["data=digits", "data_mode=stream"], "data_mode=stream needs a source of image files"),
    (["data=cub200", "augment=crop+flip", "data_mode=stream", "data.image_size=16"], "data_mode=stream streams"),
    (["data=cub200", "image_fit=pad"], "image_fit=pad does not apply to augment=imagenet"),
    (["data=cub200", "crop_padding=4"], "crop_padding does not apply to augment=imagenet"),
    (["data=cub200", "data.image_size=16"], "data.image_size=16 resizes cub200 to squares"),
    (["data=cub200", "data_mode=disk"], "data_mode"),
    (["data=cub200", "memory_budget=0"], "memory_budget"),
]


@pytest.mark.parametrize("keys,fragment", BAD_KEYS)
def test_keys_that_do_not_fit_natural_images_are_refused_in_one_line(keys, fragment, cub, tmp_path, capsys):
    path = [f"data_path={cub}"] if "data=cub200" in keys else []
    code = main(["train", *keys, *path, "epochs=1", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and fragment in err, err
    assert not (tmp_path / "run").exists()


def test_an_image_folder_of_mixed_sizes_trains_with_augment_imagenet(tmp_path):
    """imagefolder refuses images of different sizes at one fixed size; with augment=imagenet they keep their
    own (ImageNet's layout: train/<class>/*, val/<class>/*), here streamed."""
    from resprout import train

    for split, n in (("train", 4), ("val", 2)):
        for c in range(2):
            for k in range(n):
                miniatures.write_image(tmp_path / "imgs" / split / f"class{c}" / f"{k}.jpg", c, k + 10 * c)
    (tmp_path / "imgs" / "test").symlink_to(tmp_path / "imgs" / "val")
    keys = dict(data="imagefolder", data_path=str(tmp_path / "imgs"), model="cnn", epochs=1, batch_size=4,
                threads=1, progress="none", save=False)
    raises_one_line(DataError, "images differ in size", match_call=lambda: train(**keys))
    result = train(**keys, augment="imagenet", image_size=24, data_mode="stream", data_workers=1)
    assert set(result["final"]["model"]) >= {"top1", "loss"}


RUN = ["data=cub200", "image_size=24", "model=cnn", "width=0.5", "batch_size=2", "epochs=6", "seed=5", "threads=1",
       "checkpoint_minutes=0.002"]


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, "-m", "resprout", *args], env=cli_env(tmp_path), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_streamed_run_stopped_mid_epoch_resumes_exactly_in_either_mode(tmp_path):
    """A streamed run (2 DataLoader workers) stopped at exact points (RESPROUT_FAULT): Ctrl-C inside the first epoch,
    SIGKILL inside the second (losing the steps since the last checkpoint), Ctrl-C again, and the last resume in
    memory mode. It ends with the weights and metrics of the run never stopped, which streamed throughout."""
    data = tmp_path / "data"
    miniatures.cub200(data, classes=3, train=10, test=2)  # 30 images: 15 steps of 2 per epoch
    keys = [*RUN, f"data_path={data}"]
    stream = ["data_mode=stream", "data_workers=2", "--quiet"]
    ref = _start(["train", *keys, *stream, "--out", str(tmp_path / "ref")], tmp_path)
    assert ref.wait(timeout=HANG_GUARD) == 0, ref.stderr.read()
    run = tmp_path / "run"
    steps = [("interrupt-after-step:7", 130), ("kill-after-step:12", -signal.SIGKILL),
             ("interrupt-after-step:20", 130), (None, 0)]
    positions = []
    for k, (fault, code) in enumerate(steps):
        args = ["train", *keys, *stream, "--out", str(run)] if k == 0 else ["resume", str(run), "--quiet"]
        if fault is None:
            args += ["data_mode=memory", "data_workers=0"]
        proc = subprocess.Popen([PYTHON, "-m", "resprout", *args], env=cli_env(tmp_path, fault),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.wait(timeout=HANG_GUARD) == code, proc.stderr.read()
        position = load_file(run / "checkpoint.pt")["position"]
        positions.append((position["epoch"], position["step"]))
    assert positions[0] == (0, 7), positions  # the Ctrl-C checkpoint sits inside the first epoch
    assert load_file(run / "checkpoint.pt")["position"]["finished"]
    assert_same_weights(load_file(tmp_path / "ref" / "checkpoint.pt")["members"],
                        load_file(run / "checkpoint.pt")["members"])
    assert metric_rows(tmp_path / "ref") == metric_rows(run)


@pytest.mark.slow
def test_two_processes_under_torchrun_stream_their_shares(cub, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(["train", "data=cub200", f"data_path={cub}", "image_size=24", "model=cnn", "epochs=2",
                     "batch_size=4", "data_mode=stream", "data_workers=1", "threads=1", "progress=plain", "--out",
                     str(out), "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert 0 <= result["final"]["model"]["top1"] <= 1
    assert len([line for line in proc.stderr.splitlines() if line.startswith("data: cub200")]) == 1  # rank 0
    rows = [r for r in metric_rows(out) if r[3] == "test" and r[4] == "top1"]
    assert len(rows) == 2


def _documented_command() -> list[str]:
    text = (ROOT / "docs" / "data.md").read_text()
    block = re.search(r"<!-- ke-cub200-command:start -->\s*```\n(.*?)```", text, re.S).group(1)
    return shlex.split(block.replace("\\\n", " "))


@pytest.mark.slow
def test_the_documented_cub200_command_runs_one_epoch_on_a_miniature(cub, tmp_path, capsys):
    """docs/data.md's Table 2 command with its model, method and optimizer keys, on the miniature: 32 px crops,
    two generations of one epoch, batch 4, on the CPU in this process."""
    args = _documented_command()
    assert args[:2] == ["resprout", "train"]
    keys = dict(a.split("=", 1) for a in args[2:] if "=" in a)
    assert {k: keys[k] for k in ("model", "stem", "method", "ke.split_rate", "lr", "batch_size", "epochs",
                                 "weight_decay", "momentum", "image_size", "generations")} == {
        "model": "resnet18", "stem": "imagenet", "method": "ke+ls", "ke.split_rate": "0.8", "lr": "0.256",
        "batch_size": "32", "epochs": "200", "weight_decay": "1e-4", "momentum": "0.9", "image_size": "224",
        "generations": "10"}  # the paper's Table 2 settings (Sec. 4.1)
    small = {"data_path": str(cub), "image_size": "32", "epochs": "1", "generations": "2", "batch_size": "4",
             "device": "cpu", "data_workers": "0", "threads": "1"}
    keys.update(small)
    code = main(["train", *(f"{k}={v}" for k, v in keys.items()), "--out", str(tmp_path / "run"), "--quiet",
                 "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["generations"]) == 2 and 0 <= result["final"]["model"]["top1"] <= 1
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert (saved["model"], saved["stem"], saved["augment"], saved["method"]) == ("resnet18", "imagenet", "imagenet",
                                                                                 "ke+ls")
    assert (saved["lr"], saved["weight_decay"], saved["momentum"]) == (0.256, 1e-4, 0.9)
    assert saved["method_options"]["ke"]["split_rate"] == 0.8 and saved["method_options"]["ls"]["smoothing"] == 0.1
    assert load_file(tmp_path / "run" / "checkpoint.pt")["position"]["finished"]


@pytest.mark.slow
def test_the_slim_network_of_a_ke_run_on_photographs_carries_their_normalization(cub, tmp_path, capsys):
    """``resprout slim`` of a Knowledge Evolution run on image files: the exported network takes (3, 24, 24) crops
    in [0, 1] and normalizes them with the run's statistics (those of the stored training images)."""
    run = tmp_path / "run"
    assert main(["train", "data=cub200", f"data_path={cub}", "image_size=24", "model=cnn", "method=ke", "epochs=1",
                 "batch_size=4", "data_workers=0", "threads=1", "--out", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["slim", str(run), "--out", str(tmp_path / "slim.pt2"), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    nd = prepare_natural(files(cub), size=24, data_mode="memory", workers=0)
    assert meta["input_shape"] == [3, 24, 24] and meta["classes"] == nd.classes
    assert (meta["mean"], meta["std"]) == (nd.mean, nd.std)
