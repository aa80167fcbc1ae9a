"""Data from the user's own code: ``resprout.train(train=..., test=..., val=...)``.

The reference is the same images through the built-in path (``data=digits``): a run on them must be the same run,
bit for bit (weights and every logged metric), whether they come as a map-style Dataset of ``ToTensor()``-style
floats, as uint8 tensors or as a ``TensorDataset``. Resume needs the same data (its fingerprint is stored) and ends
exactly like an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

import resprout
from resprout.cli import main
from resprout.data import load_source
from resprout.data.user import fingerprint, user_config_keys, user_dataset
from resprout.engine.checkpoint import load_file
from resprout.errors import ConfigError
from tests.test_trainer import CRASH, Crash, assert_same_weights, metric_rows

KEYS = dict(model="cnn", width=0.5, epochs=2, batch_size=64, per_class=30, augment="crop", seed=1, threads=1,
            progress="none")


@pytest.fixture(scope="module")
def digits():
    return load_source("digits")


class FloatDigits(Dataset):
    """What a torchvision dataset with ``transform=ToTensor()`` hands out: (C, H, W) floats k/255, int labels."""

    classes = [str(i) for i in range(10)]

    def __init__(self, split):
        self.images, self.labels = split.images, split.labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float() / 255.0, int(self.labels[i])


def test_a_user_dataset_trains_bit_identically_to_the_builtin_path(digits, tmp_path):
    ref = resprout.train(data="digits", out=tmp_path / "ref", **KEYS)
    mine = resprout.train(train=FloatDigits(digits.train), test=FloatDigits(digits.test), out=tmp_path / "mine",
                          **KEYS)
    assert mine["final"] == ref["final"]
    assert_same_weights(load_file(tmp_path / "ref" / "checkpoint.pt")["members"],
                        load_file(tmp_path / "mine" / "checkpoint.pt")["members"])
    assert metric_rows(tmp_path / "mine") == metric_rows(tmp_path / "ref")
    info = resprout.run.read_run_file(tmp_path / "mine")
    assert info["config"]["data"] == "user"
    assert info["config"]["data_options"] == {"fingerprint": fingerprint(user_dataset(
        (digits.train.images, digits.train.labels), (digits.test.images, digits.test.labels)))}


@pytest.mark.parametrize("form", ["tensors", "tensor-dataset", "hw-floats", "list-of-pairs"])
def test_every_form_of_the_same_data_is_the_same_dataset(digits, form):
    tr, te = digits.train, digits.test
    if form == "tensors":
        args = ((tr.images, tr.labels), (te.images, te.labels))
    elif form == "tensor-dataset":
        args = (TensorDataset(tr.images, tr.labels), TensorDataset(te.images, te.labels))
    elif form == "hw-floats":  # (N, H, W) one-channel floats in [0, 1], numpy labels
        args = ((tr.images[:, 0].double() / 255, tr.labels.numpy()), (te.images[:, 0].double() / 255, te.labels))
    else:  # a plain list of (image, label) pairs, images as numpy arrays
        args = ([(im.numpy(), int(lb)) for im, lb in zip(tr.images, tr.labels)],
                [(im, lb) for im, lb in zip(te.images, te.labels)])
    ds = user_dataset(*args)
    ref = user_dataset(FloatDigits(tr), FloatDigits(te))
    assert torch.equal(ds.train.images, tr.images) and torch.equal(ds.test.labels, te.labels)
    assert fingerprint(ds) == fingerprint(ref)
    assert ds.classes == [str(i) for i in range(10)] and ds.val is None


def test_per_class_val_and_class_names_apply_to_user_data(digits):
    tr, te = digits.train, digits.test
    named = type("Named", (FloatDigits,), {"classes": [f"digit {i}" for i in range(10)]})
    ds = user_dataset(named(tr), FloatDigits(te), (te.images[:50], te.labels[:50]))
    cfg = resprout.make_config(**user_config_keys({**KEYS, "per_class": 5}, ds))
    trainer = resprout.run.create_trainer(cfg, run_dir=None, run_id=None, store_path=None, data=ds)
    assert trainer.dataset.train.class_counts(10) == [5] * 10
    assert trainer.dataset.classes[3] == "digit 3"
    assert set(trainer.eval_loaders) == {"val", "test"} and len(trainer.dataset.val) == 50


def test_a_crashed_user_data_run_resumes_exactly_with_the_same_data(digits, tmp_path):
    tr, te = (digits.train.images, digits.train.labels), (digits.test.images, digits.test.labels)
    keys = {**KEYS, "method": "ce+test_crash", "epochs": 3}
    ref = resprout.train(train=tr, test=te, methods=[Crash], out=tmp_path / "ref", **keys)
    CRASH["at"] = (0, 2, 1)  # inside the third epoch, after the checkpoint of the second
    with pytest.raises(RuntimeError, match="simulated crash"):
        resprout.train(train=tr, test=te, methods=[Crash], out=tmp_path / "run", **keys)
    assert load_file(tmp_path / "run" / "checkpoint.pt")["position"]["epoch"] == 2
    other = (te[0][:200], te[1][:200])
    with pytest.raises(ConfigError, match="is not the data") as e:  # other data: refused, nothing changed
        resprout.resume(tmp_path / "run", train=tr, test=other)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="pass the same data again"):
        resprout.resume(tmp_path / "run")
    done = resprout.resume(tmp_path / "run", train=tr, test=te, methods=[Crash])
    assert done["final"] == ref["final"]
    assert_same_weights(load_file(tmp_path / "ref" / "checkpoint.pt")["members"],
                        load_file(tmp_path / "run" / "checkpoint.pt")["members"])
    assert metric_rows(tmp_path / "run") == metric_rows(tmp_path / "ref")


def test_the_cli_says_in_one_line_that_a_user_data_run_resumes_from_python(digits, tmp_path, capsys):
    tr = (digits.train.images[:100], digits.train.labels[:100])
    te = (digits.test.images[:50], digits.test.labels[:50])
    resprout.train(train=tr, test=te, out=tmp_path / "run", **{**KEYS, "epochs": 1, "per_class": None})
    assert main(["resume", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "resprout.resume(dir, train=..., test=...)" in err


@pytest.mark.parametrize("make,fragment", [
    (lambda tr, te: ((tr.images.float() / 255 - 0.5) / 0.2, tr.labels), "not 8-bit levels"),
    (lambda tr, te: (tr.images.int() * 300, tr.labels), "8-bit values"),
    (lambda tr, te: (tr.images[:, :, :4], tr.labels), "same image shape"),
    (lambda tr, te: (tr.images, tr.labels - 1), "labels must be 0 .. K-1"),
    (lambda tr, te: (tr.images, tr.labels[:10]), "images but 10 labels"),
    (lambda tr, te: (tr.images, tr.labels.float() + 0.5), "fractional"),
    (lambda tr, te: 42, "must be a torch Dataset"),
    (lambda tr, te: [1, 2, 3], r"train\[0\] must be an \(image, label\) pair"),
])
def test_bad_user_data_is_one_line_before_anything_is_written(digits, tmp_path, make, fragment):
    tr, te = digits.train, digits.test
    with pytest.raises(ConfigError, match=fragment) as e:
        resprout.train(train=make(tr, te), test=(te.images, te.labels), out=tmp_path / "run", **KEYS)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_user_data_and_a_named_source_together_are_refused(digits):
    tr = (digits.train.images, digits.train.labels)
    with pytest.raises(ConfigError, match="both give the data"):
        resprout.train(data="fashion-mnist", train=tr, test=tr, save=False, **KEYS)
    with pytest.raises(ConfigError, match="test= is missing"):
        resprout.train(train=tr, save=False, **KEYS)


def test_the_example_script_runs(tmp_path):
    """Its result is the run of the same data given as uint8 tensors (the same run, bit for bit), and its test
    top-1 is what the saved network scores on the example's test split, normalized and counted by hand."""
    import runpy

    import numpy as np
    from sklearn.datasets import load_digits

    root = Path(__file__).resolve().parents[1]
    result = runpy.run_path(str(root / "examples" / "own_data.py"), run_name="__main__",
                            init_globals={"EPOCHS": 1, "OUT": str(tmp_path / "example")})
    final = result["result"]["final"]["model"]

    d = load_digits()  # the example's split, made again: a seeded permutation, 360 test images
    order = np.random.default_rng(0).permutation(len(d.target))
    levels = torch.from_numpy(np.round(d.images * 255.0 / 16.0)).to(torch.uint8)[:, None]
    labels = torch.from_numpy(d.target)
    train_idx, test_idx = torch.from_numpy(order[360:]), torch.from_numpy(order[:360])
    same = resprout.train(train=(levels[train_idx], labels[train_idx]), test=(levels[test_idx], labels[test_idx]),
                          module=result["SmallNet"], augment="crop", epochs=1, seed=0, save=False, progress="none")
    assert same["final"]["model"] == final

    net = result["SmallNet"]()
    net.load_state_dict(load_file(tmp_path / "example" / "checkpoint.pt")["members"]["model"]["model"])
    x_train = levels[train_idx].double() / 255
    mean, std = x_train.mean().item(), x_train.std(unbiased=False).item()  # one channel, population std
    x = ((levels[test_idx].double() / 255 - mean) / std).float()
    with torch.no_grad():
        hits = (net.eval()(x).argmax(1) == labels[test_idx]).sum().item()
    # float rounding of the normalization may flip a near-tie: one test image at most
    assert abs(final["top1"] * 360 - hits) <= 1, (final["top1"], hits)
