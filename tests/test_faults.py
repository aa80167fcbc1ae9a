"""Faults a user can meet (a store that is read-only, full, foreign or corrupt; a truncated checkpoint; a full disk
while checkpointing; numbers out of range; special files and unreadable folders in an image tree): each must give
ONE clean line on stderr (exit code 2), no traceback, and leave the files that existed before byte-identical.

Test names start with the fault class (``test_store_``, ``test_checkpoint_``, ``test_numbers_``,
``test_imagefolder_``); RELIABILITY.md counts the cases per class from the collected ids.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from resprout.cli import main
from resprout.data import prepare
from resprout.data.sources import load_source
from resprout.engine import checkpoint as ckpt
from resprout.engine import store as store_mod
from resprout.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NoSpaceError,
    ResproutError,
    StoreError,
)
from tests.conftest import PYTHON, cli_env

TINY = ["data=synthetic", "data.n_train=64", "data.n_test=32", "data.num_classes=4", "width=0.25", "epochs=1"]


# -- helpers --------------------------------------------------------------------------------------------------------
def run_cli(args: list[str], tmp_path: Path, store: Path | None = None, timeout: float = 300):
    env = cli_env(tmp_path)
    if store is not None:
        env["RESPROUT_STORE"] = str(store)
    return subprocess.run([PYTHON, "-m", "resprout", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path, check=False)


def assert_one_line(code: int, err: str, *fragments: str, exit_code: int = 2) -> None:
    assert code == exit_code, err
    assert "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("resprout: error: "), err
    for frag in fragments:
        assert frag in err, err


def files_under(*roots: Path) -> dict[str, bytes]:
    out = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for p in paths:
            out[str(p)] = p.read_bytes()
    return out


def assert_unchanged(before: dict[str, bytes], after: dict[str, bytes]) -> None:
    """Every file that existed before is byte-identical; new files may only be SQLite's WAL sidecars."""
    assert {k: after.get(k) for k in before} == before
    assert all(k.endswith(("-wal", "-shm")) for k in set(after) - set(before)), sorted(set(after) - set(before))


def can(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


@contextlib.contextmanager
def immutable(path: Path):
    """``chattr +i``: even root cannot write (chmod does not stop root)."""
    if not can(["chattr", "+i", str(path)]):
        pytest.skip("chattr +i is not available here")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@contextlib.contextmanager
def full_filesystem(mountpoint: Path, size: str = "64k", keep: list[Path] = ()):
    """A tiny tmpfs at ``mountpoint`` holding copies of ``keep`` and then filled to the last byte."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    if not can(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)]):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        for p in keep:
            shutil.copy2(p, mountpoint / p.name)
        with contextlib.suppress(OSError), open(mountpoint / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    """One finished tiny run: (its run directory, its store); tests copy them, never change them."""
    base = tmp_path_factory.mktemp("made")
    store, run_dir = base / "store" / "resprout.db", base / "run"
    assert main(["train", *TINY, "epochs=2", "--store", str(store), "--out", str(run_dir), "--quiet"]) == 0
    db = sqlite3.connect(store)  # move everything from the WAL into the file, so that a copy of it is complete
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return run_dir, store


def copy_run(made_run, dest: Path, store: Path) -> Path:
    """A copy of the made run whose run.json points at ``store``."""
    run_dir = dest / "run"
    shutil.copytree(made_run[0], run_dir)
    info = json.loads((run_dir / "run.json").read_text())
    info["store"] = str(store)
    (run_dir / "run.json").write_text(json.dumps(info))
    return run_dir


# -- 1. the results store -------------------------------------------------------------------------------------------
def _foreign_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE users (name TEXT, email TEXT)")
    db.execute("INSERT INTO users VALUES ('ada', 'ada@example.org')")
    db.commit()
    db.close()


def _corrupt_row(path: Path, made_store: Path) -> None:
    shutil.copy2(made_store, path)
    db = sqlite3.connect(path)
    db.execute("UPDATE runs SET config='{not json'")
    db.commit()
    db.close()


STORE_CASES = [
    # (fault, command, expected fragment or None for success)
    ("readonly-file", "train", "is read-only"),
    ("readonly-file", "runs", None),  # reading a read-only store works
    ("readonly-file", "report", None),
    ("readonly-dir", "train", "cannot be opened"),
    ("readonly-dir", "runs", None),  # no store there: "no runs yet" (only `train` creates a store)
    ("full-disk", "train", "no space left on"),
    ("full-disk", "runs", "no space left on"),
    ("full-disk", "report", "no space left on"),
    ("full-disk-new-store", "train", "no space left on"),
    ("foreign-sqlite", "train", "is not a resprout results store"),
    ("foreign-sqlite", "runs", "is not a resprout results store"),
    ("foreign-sqlite", "report", "is not a resprout results store"),
    ("not-sqlite", "train", "not an SQLite file"),
    ("not-sqlite", "runs", "not an SQLite file"),
    ("not-sqlite", "report", "not an SQLite file"),
    ("corrupt-row", "runs", "has a corrupt row"),
    ("corrupt-row", "report", "has a corrupt row"),
    ("parent-is-a-file", "train", "is a file, not a folder"),
    ("parent-is-a-file", "runs", "is a file, not a folder"),
    ("parent-is-a-file", "report", "does not exist"),
]


@pytest.mark.slow
@pytest.mark.parametrize("fault, command, fragment", STORE_CASES, ids=[f"{f}-{c}" for f, c, _ in STORE_CASES])
def test_store_fault_is_one_clean_line(fault, command, fragment, made_run, tmp_path):
    area = tmp_path / "area"
    area.mkdir()
    store = area / "resprout.db"
    with contextlib.ExitStack() as stack:
        if fault == "readonly-file":
            shutil.copy2(made_run[1], store)
            stack.enter_context(immutable(store))
        elif fault == "readonly-dir":
            stack.enter_context(immutable(area))
        elif fault in ("full-disk", "full-disk-new-store"):
            keep = [made_run[1]] if fault == "full-disk" else []
            stack.enter_context(full_filesystem(area, keep=keep))
        elif fault == "foreign-sqlite":
            _foreign_sqlite(store)
        elif fault == "not-sqlite":
            store.write_text("name,email\nada,ada@example.org\n")
        elif fault == "corrupt-row":
            _corrupt_row(store, made_run[1])
        elif fault == "parent-is-a-file":
            (area / "afile").write_text("not a folder")
            store = area / "afile" / "resprout.db"
        before = files_under(area)
        if command == "train":
            args = ["train", *TINY, "--out", tmp_path / "out", "--quiet"]
        elif command == "runs":
            args = ["runs"]
        else:
            args = ["report", copy_run(made_run, tmp_path, store), "--out", tmp_path / "rep"]
        proc = run_cli(args, tmp_path, store=store)
        after = files_under(area)
    if fragment is None:
        assert proc.returncode == 0, proc.stderr
    else:
        assert_one_line(proc.returncode, proc.stderr, fragment, str(store))
    assert_unchanged(before, after)  # the store (and everything beside it) is byte-identical


def test_store_foreign_file_gets_no_tables(tmp_path):
    path = tmp_path / "other.db"
    _foreign_sqlite(path)
    before = path.read_bytes()
    with pytest.raises(StoreError, match="holds tables \\['users'\\]"):
        store_mod.Store(path)
    assert path.read_bytes() == before
    assert [r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")] == ["users"]


class _FillsUp:
    """A connection proxy whose metric writes fail as SQLite does when the disk fills."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __enter__(self):
        return self._real.__enter__()

    def __exit__(self, *exc):
        return self._real.__exit__(*exc)

    def executemany(self, sql, rows):
        if "epoch_metrics" in sql:
            raise sqlite3.OperationalError("database or disk is full")
        return self._real.executemany(sql, rows)


def test_store_fills_mid_run(tmp_path, monkeypatch, capsys):
    """The disk fills while a run logs its metrics: one line naming the store, not a traceback."""
    real_open = store_mod.Store._open

    def open_then_fill(self):
        real_open.__wrapped__(self)
        self._db = _FillsUp(self._db)

    monkeypatch.setattr(store_mod.Store, "_open", open_then_fill)
    store = tmp_path / "s" / "resprout.db"
    code = main(["train", *TINY, "--store", str(store), "--out", str(tmp_path / "out"), "--quiet"])
    assert_one_line(code, capsys.readouterr().err, f"no space left on {store}")


# -- 2. checkpoints -------------------------------------------------------------------------------------------------
DROPPED = ["position", "members", "rng", "fingerprint", "position.step", "members.model.model"]


def _drop(state: dict, key: str) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        state = state[p]
    del state[parts[-1]]


@pytest.mark.parametrize("key", DROPPED)
def test_checkpoint_missing_keys_is_refused(key, made_run, tmp_path, capsys):
    store = tmp_path / "store.db"
    shutil.copy2(made_run[1], store)
    run_dir = copy_run(made_run, tmp_path, store)
    path = run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    _drop(state, key)
    torch.save(state, path)
    before = files_under(run_dir)
    code = main(["resume", str(run_dir), "--quiet"])
    assert_one_line(code, capsys.readouterr().err, str(path), f"is missing keys [{key}]", "nothing was changed")
    assert files_under(run_dir) == before
    with pytest.raises(CheckpointError, match="missing keys"):
        ckpt.load_file(path)


def test_checkpoint_disk_full_keeps_the_previous_file(tmp_path):
    """A real full disk (a tiny tmpfs): the write fails with one line, the previous checkpoint stays."""
    with full_filesystem(tmp_path / "mnt", size="256k") as mnt:
        (mnt / "filler").unlink()
        path = mnt / "checkpoint.pt"
        ckpt.atomic_save({"format": ckpt.FORMAT, "w": torch.zeros(16)}, path)
        before = path.read_bytes()
        with pytest.raises(NoSpaceError) as info:
            ckpt.atomic_save({"format": ckpt.FORMAT, "w": torch.zeros(200_000)}, path)
        assert str(info.value) == f"no space left on {mnt} while writing checkpoint.pt; the previous checkpoint is kept"
        assert path.read_bytes() == before
        assert sorted(p.name for p in mnt.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_checkpoint_disk_full_during_a_run(tmp_path, monkeypatch, capsys):
    """ENOSPC on the second checkpoint of a run: one line, and the first checkpoint is intact."""
    real_save = torch.save
    calls, seen = [], {}
    out = tmp_path / "out"

    def save(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("format") == ckpt.FORMAT:
            calls.append(1)
            if len(calls) >= 2:
                seen["bytes"] = (out / "checkpoint.pt").read_bytes()
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    code = main(["train", *TINY, "epochs=3", "--out", str(out), "--quiet"])
    assert_one_line(code, capsys.readouterr().err, f"no space left on {out}")
    assert (out / "checkpoint.pt").read_bytes() == seen["bytes"]
    monkeypatch.setattr(torch, "save", real_save)
    ckpt.load_file(out / "checkpoint.pt")  # still a complete checkpoint


@pytest.mark.slow
def test_checkpoint_disk_full_from_the_command_line(tmp_path):
    with full_filesystem(tmp_path / "mnt", size="48k") as mnt:
        (mnt / "filler").unlink()
        proc = run_cli(["train", *TINY, "--out", mnt / "run", "--quiet"], tmp_path, store=tmp_path / "s" / "resprout.db")
    assert_one_line(proc.returncode, proc.stderr, "no space left on")


# -- 3. numbers -----------------------------------------------------------------------------------------------------
NUMBER_CASES = [
    ("seed=100000000000000000000000000", "bad value for seed: 1e+26 (must be < 2**63)"),
    (f"seed={2**63}", "bad value for seed: 9.22337e+18 (must be < 2**63)"),
    (f"data_seed={2**64}", "bad value for data_seed: 1.84467e+19 (must be < 2**63)"),
    (f"epochs={10**30}", "bad value for epochs: 1e+30 (must be < 2**63)"),
    (f"batch_size={10**400}", "bad value for batch_size: a 401-digit integer (must be < 2**63)"),
    ("data.n_train=100000000000000000000", "bad value for n_train: 1e+20 (must be < 2**63)"),
    ("lr=nan", "bad value for lr: nan (expected a finite number)"),
    ("lr=inf", "bad value for lr: inf (expected a finite number)"),
    ("lr=-inf", "bad value for lr: -inf (expected a finite number)"),
    ("lr=1e999", "bad value for lr: inf (expected a finite number)"),
    ("test_per_class=100", "test_per_class=100: class"),
]


@pytest.mark.parametrize("arg, message", NUMBER_CASES, ids=[a.split("=")[0] + "-" + str(i)
                                                            for i, (a, _) in enumerate(NUMBER_CASES)])
def test_numbers_out_of_range_are_one_line(arg, message, tmp_path, capsys):
    code = main(["train", *TINY, arg, "--out", str(tmp_path / "out"), "--quiet"])
    assert_one_line(code, capsys.readouterr().err, message)
    assert not (tmp_path / "out" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_numbers_from_the_command_line_have_no_traceback(tmp_path):
    proc = run_cli(["train", *TINY, "seed=100000000000000000000000000", "--quiet"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "resprout: error: bad value for seed: 1e+26 (must be < 2**63)\n"


@pytest.mark.parametrize("kw, error, message", [
    ({"test_per_class": 13}, DataError, "test_per_class=13: class '0' has only 12 test images"),
    ({"per_class": 2**63}, ConfigError, "must be < 2**63"),
    ({"test_per_class": 2**70}, ConfigError, "must be < 2**63"),
], ids=["test_per_class-too-large", "per_class-int64", "test_per_class-int64"])
def test_numbers_prepare_checks_test_per_class(kw, error, message):
    ds = load_source("synthetic", num_classes=4, n_train=64, n_test=48, image_size=8)
    assert min(int((ds.test.labels == c).sum()) for c in range(4)) == 12
    with pytest.raises(error) as info:
        prepare(ds, **kw)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert prepare(ds, test_per_class=12).test.labels.numel() == 48


# -- 4. image folders -----------------------------------------------------------------------------------------------
def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (10, 20, 30)).save(path)


def _tree(root: Path) -> None:
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                _png(root / split / cls / f"{i}.png")


def _special(kind: str, path: Path) -> contextlib.AbstractContextManager:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        return contextlib.closing(sock)
    elif kind == "chardev":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # like /dev/null
        except PermissionError:
            pytest.skip("cannot create a device node here")
    return contextlib.nullcontext()


@contextlib.contextmanager
def no_hang(seconds: int = 20):
    def fail(*_):
        raise AssertionError(f"hung for {seconds}s: a special file was opened")
    old = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


SPECIAL_CASES = [
    ("fifo", "train/cat/3.png", "a FIFO (named pipe)"),
    ("fifo", "train/cat/pipe", "a FIFO (named pipe)"),
    ("fifo", "train/cat/sub/deep.png", "a FIFO (named pipe)"),
    ("fifo", "train/stray.png", "a FIFO (named pipe)"),
    ("socket", "test/dog/s.png", "a socket"),
    ("chardev", "train/dog/null.png", "a character device"),
]


@pytest.mark.parametrize("kind, rel, what", SPECIAL_CASES, ids=[f"{k}-{r}" for k, r, _ in SPECIAL_CASES])
def test_imagefolder_special_files_are_refused(kind, rel, what, tmp_path):
    _tree(tmp_path)
    with _special(kind, tmp_path / rel), no_hang(), pytest.raises(DataError) as info:
        load_source("imagefolder", tmp_path)
    msg = str(info.value)
    assert msg == f"{tmp_path / rel} is {what}, not a regular file" + msg.split("not a regular file", 1)[1]
    assert "\n" not in msg


def test_imagefolder_special_file_in_a_split_list(tmp_path):
    for cls in ("cat", "dog"):
        for i in range(2):
            _png(tmp_path / cls / f"{i}.png")
    os.mkfifo(tmp_path / "cat" / "p.png")
    (tmp_path / "train.txt").write_text("cat/0.png\ndog/0.png\ncat/p.png\n")
    (tmp_path / "test.txt").write_text("cat/1.png\ndog/1.png\n")
    with no_hang(), pytest.raises(DataError, match="train.txt line 3: .*p.png is a FIFO"):
        load_source("imagefolder", tmp_path)


@pytest.mark.slow
def test_imagefolder_fifo_from_the_command_line(tmp_path):
    _tree(tmp_path / "imgs")
    os.mkfifo(tmp_path / "imgs" / "train" / "dog" / "x.png")
    proc = run_cli(["train", "data=imagefolder", f"data_path={tmp_path / 'imgs'}", "epochs=1", "--quiet"],
                   tmp_path, timeout=120)
    assert_one_line(proc.returncode, proc.stderr, str(tmp_path / "imgs" / "train" / "dog" / "x.png"), "FIFO")


@pytest.mark.parametrize("unreadable", ["train/cat", "train", "train/dog/sub"])
def test_imagefolder_unreadable_folder_is_named(unreadable, tmp_path, monkeypatch):
    """chmod 000 does not stop root: the listing fails as it would for another user (PermissionError)."""
    _tree(tmp_path)
    (tmp_path / "train" / "dog" / "sub").mkdir()
    _png(tmp_path / "train" / "dog" / "sub" / "x.png")
    target = os.fspath(tmp_path / unreadable)
    real = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and os.fspath(path) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DataError) as info:
        load_source("imagefolder", tmp_path)
    assert str(info.value) == f"{target} cannot be read: Permission denied"


def test_imagefolder_unreadable_folder_from_the_command_line(tmp_path, monkeypatch, capsys):
    _tree(tmp_path / "imgs")
    target = os.fspath(tmp_path / "imgs" / "test" / "dog")
    real = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and os.fspath(path) == target:
            raise PermissionError(errno.EACCES, "Permission denied", target)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    code = main(["train", "data=imagefolder", f"data_path={tmp_path / 'imgs'}", "epochs=1", "--quiet"])
    assert_one_line(code, capsys.readouterr().err, f"{target} cannot be read: Permission denied")


def test_every_fault_is_a_resprout_error():
    for cls in (StoreError, NoSpaceError, CheckpointError, ConfigError, DataError):
        assert issubclass(cls, ResproutError) and cls.exit_code == 2


def test_an_os_error_anywhere_is_one_line_naming_the_path(tmp_path, capsys, monkeypatch):
    """Whatever file or folder a command cannot create or write (here: the run directory's parent is a file) is
    named in one line, exit 2, no traceback."""
    from resprout.cli import main

    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    code = main(["train", "data=synthetic", "epochs=1", "progress=none", "--out", str(blocker / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and str(blocker) in err, err
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("content", [b"\xff\xfe\x00binary", b"{not json", b"[1, 2]", b'{"run_id": "x"}',
                                     b'{"run_id": "x", "config": 3, "store": "s"}'])
def test_run_json_that_is_binary_or_malformed_is_one_line(tmp_path, capsys, content):
    from resprout.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_bytes(content)
    for argv in (["resume", str(run)], ["slim", str(run), "--out", str(tmp_path / "s.pt")]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err and "run.json" in err, (argv, err)
    assert (run / "run.json").read_bytes() == content


# -- 5. bad inputs (the last cases of the bad-input campaign) -------------------------------------------------------
def _store_rows(store: Path) -> list[tuple]:
    """Every row of the store's runs table, read with plain sqlite3 (read-only: the file is not changed)."""
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return db.execute("SELECT * FROM runs ORDER BY id").fetchall()
    finally:
        db.close()


SCALAR_OPTIONS = [  # (case, file name, text, the line after "resprout: error: ")
    ("yaml-method_options.ke", "cfg.yaml", "method: ke\nmethod_options: {ke: 3}\n",
     "cfg.yaml: bad value for method_options.ke: 3 (expected a table of ke's options: option = value)"),
    ("toml-method_options.ke", "cfg.toml", 'method = "ke"\n[method_options]\nke = 3\n',
     "cfg.toml: bad value for method_options.ke: 3 (expected a table of ke's options: option = value)"),
    ("yaml-method_options", "cfg.yaml", "method_options: 3\n",
     "cfg.yaml: bad value for method_options: 3 (expected a table with one table of options per method)"),
    ("yaml-member_options.discriminator", "cfg.yaml", "member_options: {discriminator: 0.1}\n",
     "cfg.yaml: bad value for member_options.discriminator: 0.1 (expected a table of discriminator's optimizer "
     "keys, e.g. lr)"),
    ("yaml-member.discriminator", "cfg.yaml", "member: {discriminator: [1, 2]}\n",
     "cfg.yaml: bad value for member.discriminator: [1, 2] (expected a table of discriminator's optimizer keys, "
     "e.g. lr)"),
    ("yaml-data_options", "cfg.yaml", "data_options: 3\n",
     "cfg.yaml: bad value for data_options: 3 (expected a table of the data's options: option = value)"),
]


@pytest.mark.parametrize("name, text, line", [c[1:] for c in SCALAR_OPTIONS], ids=[c[0] for c in SCALAR_OPTIONS])
def test_input_scalar_where_a_table_of_options_belongs(name, text, line, tmp_path, capsys):
    (tmp_path / name).write_text(text)
    before = files_under(tmp_path)
    code = main(["train", name, *TINY, "--quiet"])
    assert (code, capsys.readouterr().err) == (2, f"resprout: error: {line}\n")
    assert files_under(tmp_path) == before and not (tmp_path / "runs").exists()  # no store, no run directory


@pytest.mark.slow
def test_input_scalar_options_from_the_command_line_have_no_traceback(tmp_path):
    (tmp_path / "cfg.yaml").write_text("data: synthetic\nmethod: ke\nmethod_options: {ke: 3}\n")
    proc = run_cli(["train", "cfg.yaml", "--quiet"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"resprout: error: {SCALAR_OPTIONS[0][3]}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"]


@pytest.mark.slow
@pytest.mark.parametrize("existing", [True, False], ids=["existing-store", "no-store"])
def test_input_method_refusal_at_setup_leaves_the_store_alone(existing, made_run, tmp_path):
    """``ke.member=teacher`` names no member: refused when the trainer is built, before a store row is written
    (it used to add a `failed` row for a run directory that never existed)."""
    area = tmp_path / "area"
    area.mkdir()
    store = area / "resprout.db"
    if existing:
        shutil.copy2(made_run[1], store)
    before = files_under(area)
    rows = _store_rows(store) if existing else None
    proc = run_cli(["train", *TINY, "method=ke", "ke.member=teacher", "--out", tmp_path / "out", "--quiet"],
                   tmp_path, store=store)
    assert proc.returncode == 2
    assert proc.stderr == "resprout: error: ke.member='teacher' is not a member of this run (model)\n"
    assert files_under(area) == before  # byte-identical, and no store and no sidecar created
    assert not (tmp_path / "out").exists()
    if existing:
        assert _store_rows(store) == rows


def wide_net() -> nn.Module:
    """A custom model of the runs below (synthetic data: 1 x 8 x 8 images, 4 classes)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 4))


def narrow_net() -> nn.Module:
    """The same layers as :func:`wide_net` with 8 hidden units: its checkpoint does not fit."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4))


def test_input_resume_with_weights_that_do_not_fit_changes_nothing(tmp_path, capsys):
    import resprout

    store = tmp_path / "s" / "resprout.db"
    run_dir = tmp_path / "run"
    resprout.train(module=wide_net, data="synthetic", data_options={"n_train": 64, "n_test": 32, "num_classes": 4},
                   epochs=1, progress="none", threads=1, out=run_dir, store=store)
    before, rows = files_under(run_dir), _store_rows(store)
    code = main(["resume", str(run_dir), "--module", "tests.test_faults:narrow_net", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"resprout: error: {run_dir / 'checkpoint.pt'}: weights of 'model' do not fit the model: tensor "
                   f"1.weight is [12, 64] in the checkpoint, [8, 64] in the model; nothing was changed\n")
    assert files_under(run_dir) == before
    assert _store_rows(store) == rows  # run_dir, updated and status as they were
    assert main(["resume", str(run_dir), "--quiet"]) == 0  # the recorded factory still resumes it


def test_input_weights_mismatch_names_missing_and_extra_tensors():
    from resprout.engine.checkpoint import weights_mismatch

    model = narrow_net()
    state = model.state_dict()
    assert weights_mismatch(model, state) is None
    assert weights_mismatch(model, {k: v for k, v in state.items() if k != "3.bias"}) == \
        "tensor 3.bias [4] is missing from the checkpoint"
    assert weights_mismatch(model, {**state, "9.weight": torch.zeros(2, 3)}) == \
        "tensor 9.weight [2, 3] in the checkpoint is not in the model"
    assert weights_mismatch(model, {**state, "3.weight": torch.zeros(4, 9)}) == \
        "tensor 3.weight is [4, 9] in the checkpoint, [4, 8] in the model"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["empty-file", "missing-file"])
def test_input_runs_never_creates_a_store(kind, tmp_path):
    """Only `train` creates a store: `runs` (and `report`) on an empty or missing store file write nothing."""
    if kind == "empty-file":
        store = tmp_path / "empty.db"
        store.write_bytes(b"")
    else:
        store = tmp_path / "nowhere" / "resprout.db"
    proc = run_cli(["runs"], tmp_path, store=store)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "no runs yet\n", "")
    assert sorted(p.name for p in tmp_path.iterdir()) == (["empty.db"] if kind == "empty-file" else [])
    if kind == "empty-file":
        assert store.read_bytes() == b""
    proc = run_cli(["runs", "--json"], tmp_path, store=store)
    assert proc.returncode == 0 and json.loads(proc.stdout) == {"runs": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == (["empty.db"] if kind == "empty-file" else [])


def test_input_report_never_creates_a_store(made_run, tmp_path, capsys):
    store = tmp_path / "empty.db"
    store.write_bytes(b"")
    run_dir = copy_run(made_run, tmp_path, store)
    code = main(["report", str(run_dir), "--out", str(tmp_path / "rep")])
    info = json.loads((run_dir / "run.json").read_text())
    assert_one_line(code, capsys.readouterr().err, f"{run_dir}: run {info['run_id']} is not in its store {store}")
    assert store.read_bytes() == b"" and not list(tmp_path.glob("empty.db-*"))


@pytest.mark.slow
def test_input_a_finished_run_leaves_no_store_sidecars(tmp_path):
    """The store is checkpointed when a run ends: no -wal/-shm beside it, and every row is in the main file."""
    store = tmp_path / "s" / "resprout.db"
    proc = run_cli(["train", *TINY, "--out", tmp_path / "run", "--quiet", "--json"], tmp_path, store=store)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in store.parent.iterdir()) == ["resprout.db"]
    run_id = json.loads(proc.stdout)["run_id"]
    assert [(r[0], r[4]) for r in _store_rows(store)] == [(run_id, "finished")]
    proc = run_cli(["resume", tmp_path / "run", "--quiet"], tmp_path, store=store)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in store.parent.iterdir()) == ["resprout.db"]


def test_input_a_run_from_python_closes_its_store(tmp_path):
    import resprout

    store = tmp_path / "s" / "resprout.db"
    resprout.train(data="synthetic", data_options={"n_train": 64, "n_test": 32, "num_classes": 4}, width=0.25,
                   epochs=1, progress="none", threads=1, out=tmp_path / "run", store=store)
    assert sorted(p.name for p in store.parent.iterdir()) == ["resprout.db"]
