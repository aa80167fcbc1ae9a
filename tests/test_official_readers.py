"""Readers of the Knowledge Evolution paper's five datasets in their official layouts, on miniatures generated with
those layouts (tests/miniatures.py): the files, labels, classes and splits they list, and one line (exit 2) for a
file that is missing or malformed."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from resprout.cli import main
from resprout.data import load_source
from resprout.data.sources import open_source
from resprout.errors import DataError
from tests import miniatures
from tests.test_data_sources import raises_one_line

# where each miniature's files live below the folder the test passes as data_path
ROOTS = {"cub200": "CUB_200_2011", "flower102": "", "fgvc-aircraft": "fgvc-aircraft-2013b/data", "mit67": "",
         "stanford-dogs": ""}


@pytest.fixture(autouse=True)
def no_env_data(monkeypatch):
    monkeypatch.delenv("RESPROUT_DATA", raising=False)


def make(name: str, tmp_path: Path) -> tuple[Path, dict]:
    expected = miniatures.MAKERS[name](tmp_path)
    return tmp_path / ROOTS[name], expected


@pytest.mark.parametrize("name", sorted(miniatures.MAKERS))
def test_each_reader_lists_the_official_splits(name, tmp_path):
    root, expected = make(name, tmp_path)
    ds = open_source(name, tmp_path)  # the parent of the official folder, or the folder itself
    assert ds.classes == expected["classes"]
    assert set(ds.splits()) == {s for s in ("train", "val", "test") if s in expected}
    for split_name, split in ds.splits().items():
        got = [(f.relative_to(root).as_posix(), int(c)) for f, c in zip(split.files, split.labels)]
        assert sorted(got) == sorted(expected[split_name])
    again = open_source(name, root)
    assert [f for s in again.splits().values() for f in s.files] == [f for s in ds.splits().values() for f in s.files]
    decoded = load_source(name, tmp_path, image_size=12)  # the fixed-size path: every image resized to 12x12
    assert decoded.input_shape == (3, 12, 12)
    assert {k: len(v) for k, v in decoded.splits().items()} == {k: len(v) for k, v in ds.splits().items()}
    gray = load_source(name, tmp_path, image_size=12, channels=1)
    assert gray.input_shape == (1, 12, 12)


def test_the_data_folder_can_come_from_resprout_data(tmp_path, monkeypatch):
    miniatures.cub200(tmp_path / "store")
    monkeypatch.setenv("RESPROUT_DATA", str(tmp_path / "store"))
    assert len(open_source("cub200").train) == 12
    monkeypatch.setenv("RESPROUT_DATA", str(tmp_path / "nothing"))
    raises_one_line(DataError, "no cub200 data (images.txt)", "CUB_200_2011.tgz", match_call=lambda: open_source("cub200"))


def test_aircraft_family_and_manufacturer_labels(tmp_path):
    miniatures.fgvc_aircraft(tmp_path)
    family = open_source("fgvc-aircraft", tmp_path, labels="family")
    maker = open_source("fgvc-aircraft", tmp_path, labels="manufacturer")
    assert family.classes == ["Family 0", "Family 1"] and maker.classes == ["Maker0", "Maker1"]
    variant = open_source("fgvc-aircraft", tmp_path)
    # miniature: class c is family c % 2 and manufacturer c % 2
    assert family.train.labels.tolist() == (variant.train.labels % 2).tolist()
    raises_one_line(Exception, "labels", match_call=lambda: open_source("fgvc-aircraft", tmp_path, labels="model"))


MISSING = [("cub200", "images.txt"), ("cub200", "image_class_labels.txt"), ("cub200", "train_test_split.txt"),
           ("flower102", "imagelabels.mat"), ("flower102", "setid.mat"), ("flower102", "jpg"),
           ("fgvc-aircraft", "variants.txt"), ("fgvc-aircraft", "images_variant_val.txt"),
           ("fgvc-aircraft", "images"), ("mit67", "TrainImages.txt"), ("mit67", "TestImages.txt"),
           ("mit67", "Images"), ("stanford-dogs", "train_list.mat"), ("stanford-dogs", "test_list.mat"),
           ("stanford-dogs", "Images")]


@pytest.mark.parametrize("name,missing", MISSING)
def test_a_missing_file_is_one_line_naming_it(name, missing, tmp_path):
    root, _ = make(name, tmp_path)
    target = root / missing
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    raises_one_line(DataError, missing, match_call=lambda: open_source(name, tmp_path))


def _edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _drop_lines(path: Path, prefix: str) -> None:
    path.write_text("".join(line for line in path.read_text().splitlines(True) if not line.startswith(prefix)))


def _edit_mat(path: Path, **entries) -> None:
    mat = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    mat.update(entries)
    for k in [k for k, v in entries.items() if v is None]:
        del mat[k]
    savemat(path, mat)


def _garbage(path: Path) -> None:
    path.write_bytes(b"MATLAB 5.0 MAT-file, but then nothing useful" + bytes(range(40)))


MALFORMED = {
    # CUB-200-2011
    "cub: a line without its value": ("cub200", lambda r: _edit_text(r / "images.txt", "1 001.", "1\n2x 001."),
                                      "images.txt line 1"),
    "cub: an id missing from the labels": ("cub200", lambda r: _edit_text(r / "image_class_labels.txt", "1 1\n", ""),
                                          "image_class_labels.txt lacks image id 1"),
    "cub: a split flag of 2": ("cub200", lambda r: _edit_text(r / "train_test_split.txt", "1 1", "1 2"),
                               "is_training_image '2'"),
    "cub: a class id that is not a number": ("cub200", lambda r: _edit_text(r / "image_class_labels.txt", "1 1",
                                                                            "1 one"), "'one', not an integer"),
    "cub: a listed image that does not exist": ("cub200", lambda r: next((r / "images").rglob("*.jpg")).unlink(),
                                                "does not exist"),
    "cub: an id listed twice": ("cub200", lambda r: _edit_text(r / "train_test_split.txt", "2 1", "1 1"),
                                "listed twice"),
    "cub: a class without a name": ("cub200", lambda r: _edit_text(r / "classes.txt", "3 003.Bird_2\n", ""),
                                    "no name for class id 3"),
    # Flower-102
    "flowers: not a .mat file": ("flower102", lambda r: _garbage(r / "setid.mat"), "not a readable .mat file"),
    "flowers: no validation ids": ("flower102", lambda r: _edit_mat(r / "setid.mat", valid=None), "no 'valid' entry"),
    "flowers: an id beyond the labels": ("flower102", lambda r: _edit_mat(r / "setid.mat", tstid=np.array([[99]])),
                                         "image 99"),
    "flowers: an image in two splits": ("flower102", lambda r: _edit_mat(
        r / "setid.mat", valid=loadmat(str(r / "setid.mat"))["trnid"]), "is in both 'trnid' and 'valid'"),
    "flowers: a label of 0": ("flower102", lambda r: _edit_mat(r / "imagelabels.mat", labels=np.zeros((1, 18))),
                              "classes are numbered from 1"),
    "flowers: labels as a matrix": ("flower102", lambda r: _edit_mat(r / "imagelabels.mat",
                                                                     labels=np.ones((3, 6))), "one row or column"),
    # FGVC-Aircraft
    "aircraft: a class the names file lacks": ("fgvc-aircraft", lambda r: _edit_text(
        r / "images_variant_test.txt", "A300B4 F", "B747"), "'B747', which"),
    "aircraft: an image in two splits": ("fgvc-aircraft", lambda r: (r / "images_variant_val.txt").write_text(
        (r / "images_variant_train.txt").read_text()), "is in both"),
    "aircraft: a line without a class": ("fgvc-aircraft", lambda r: _edit_text(
        r / "images_variant_train.txt", " A300B4 F", ""), "not <image id> <class name>"),
    "aircraft: a class named twice": ("fgvc-aircraft", lambda r: _edit_text(r / "variants.txt", "727-200", "717-100"),
                                      "twice"),
    # MIT67
    "mit67: a line that is not category/file": ("mit67", lambda r: _edit_text(r / "TrainImages.txt", "scene_a/",
                                                                              "scene_a_"), "<category>/<file>"),
    "mit67: a test category train lacks": ("mit67", lambda r: _drop_lines(r / "TrainImages.txt", "scene_c/"),
                                           "category 'scene_c'"),
    "mit67: an image in both lists": ("mit67", lambda r: _edit_text(r / "TestImages.txt", "scene_a/scene_a_3.jpg",
                                                                    "scene_a/scene_a_0.jpg"), "already listed"),
    # Stanford Dogs
    "dogs: not a .mat file": ("stanford-dogs", lambda r: _garbage(r / "test_list.mat"), "not a readable .mat file"),
    "dogs: fewer labels than files": ("stanford-dogs", lambda r: _edit_mat(
        r / "train_list.mat", labels=np.array([[1.0], [2.0]])), "9 files but 2 labels"),
    "dogs: a label beyond the classes": ("stanford-dogs", lambda r: _edit_mat(
        r / "test_list.mat", labels=np.full((6, 1), 7.0)), "class ids 7..7, expected 1..3"),
    "dogs: a fractional label": ("stanford-dogs", lambda r: _edit_mat(
        r / "test_list.mat", labels=np.full((6, 1), 1.5)), "non-integer"),
    "dogs: file_list of numbers": ("stanford-dogs", lambda r: _edit_mat(
        r / "train_list.mat", file_list=np.zeros((9, 1))), "cell array of strings"),
    "dogs: one class in two folders": ("stanford-dogs", lambda r: _edit_mat(
        r / "test_list.mat", labels=np.array([[1.0]] * 6)), "also in"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_file_is_one_line_naming_it(case, tmp_path):
    name, spoil, fragment = MALFORMED[case]
    root, _ = make(name, tmp_path)
    spoil(root)
    msg = raises_one_line(DataError, fragment, match_call=lambda: open_source(name, tmp_path))
    assert str(tmp_path) in msg  # names the file (or folder) at fault


def test_the_command_line_says_it_in_one_line_with_exit_2(tmp_path, capsys):
    root, _ = make("cub200", tmp_path)
    (root / "train_test_split.txt").unlink()
    code = main(["train", "data=cub200", f"data_path={tmp_path}", "epochs=1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("resprout: error: ") and "train_test_split.txt is missing" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").glob("*-cub200-*"))
