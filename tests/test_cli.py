"""The command contract: train / resume / runs / report / profile, JSON output, one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from resprout.cli import main
from tests.conftest import PYTHON, cli_env


def run_cli(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "resprout", *args], env=cli_env(tmp_path), capture_output=True, text=True,
                          timeout=timeout, cwd=tmp_path)


@pytest.mark.slow
def test_train_digits_json_contract(tmp_path):
    """The issue's acceptance command: real digits, 3 epochs, test top-1 above 0.8, one JSON object on stdout."""
    proc = run_cli(["train", "data=digits", "model=cnn", "epochs=3", "seed=0", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert Path(result["run_dir"]).is_dir()
    assert result["final"]["model"]["top1"] > 0.8
    assert result["best"]["model"]["top1"] >= result["final"]["model"]["top1"]
    assert result["best"]["model"]["selected_on"] == "test"
    assert len(result["generations"]) == 1
    # without a terminal the progress is one plain line per epoch, on stderr
    epoch_lines = [l for l in proc.stderr.splitlines() if l.startswith("gen 1/1 ep ")]
    assert len(epoch_lines) == 3 and "test loss" in epoch_lines[0]

    runs = run_cli(["runs", "--json"], tmp_path)
    listed = json.loads(runs.stdout)["runs"]
    assert [r["id"] for r in listed] == [result["run_id"]] and listed[0]["status"] == "finished"
    assert result["run_id"] in run_cli(["runs"], tmp_path).stdout


@pytest.mark.slow
def test_config_file_and_overrides(tmp_path):
    (tmp_path / "exp.toml").write_text(
        'data = "synthetic"\nmodel = "cnn"\nwidth = 0.25\nepochs = 1\nmethod = "ls"\n'
        '[data_options]\nn_train = 64\nn_test = 32\nnum_classes = 4\n[ls]\nsmoothing = 0.2\n')
    proc = run_cli(["train", "exp.toml", "epochs=2", "--json", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    saved = json.loads((Path(result["run_dir"]) / "run.json").read_text())["config"]
    assert saved["epochs"] == 2 and saved["method_options"] == {"ls": {"smoothing": 0.2}}
    assert saved["data_options"]["n_train"] == 64
    (tmp_path / "exp.yaml").write_text("data: synthetic\nepochs: 1\nwidth: 0.25\ndata_options: {n_train: 64, n_test: 32}\n")
    proc = run_cli(["train", "exp.yaml", "--json", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, message", [
    (["train", "epoch=3"], "unknown key 'epoch' (did you mean epochs?)"),
    (["train", "epochs=three"], "bad value for epochs: 'three' (expected an integer)"),
    (["train", "epochs=0"], "bad value for epochs: 0 (must be >= 1)"),
    (["train", "optimizer=lion"], "bad value for optimizer: 'lion' (allowed: sgd, adam)"),
    (["train", "model=resnet9000"], "unknown model 'resnet9000'"),
    (["train", "data=imagenet"], "imagenet"),
    (["train", "data=mnist", "data_path=/nonexistent/mnist"], "/nonexistent/mnist"),
    (["train", "method=ke2"], "unknown method 'ke2'"),
    (["train", "missing.toml"], "config file 'missing.toml' does not exist"),
    (["train", "a.toml", "b.toml"], "at most one config file"),
    (["resume", "/nonexistent/run"], "/nonexistent/run does not exist"),
    (["report", "/nonexistent/run"], "/nonexistent/run does not exist"),
    (["profile", "model=cnn", "input=3x32"], "bad value for input: '3x32'"),
    (["profile", "model=nope"], "unknown model 'nope'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message, capsys, tmp_path):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("resprout: error: "), err
    assert message in err


@pytest.mark.slow
def test_a_bad_key_from_the_real_command_has_no_traceback(tmp_path):
    proc = run_cli(["train", "lr=fast"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "resprout: error: bad value for lr: 'fast' (expected a number)\n"


@pytest.mark.slow
def test_report_compares_seeds_and_writes_plots(tmp_path):
    dirs = []
    for method in ("ce", "ls"):
        for seed in (0, 1):
            out = tmp_path / f"{method}{seed}"
            code = main(["train", "data=synthetic", "data.n_train=64", "data.n_test=32", "data.num_classes=4",
                         "width=0.25", "epochs=2", "generations=2", f"method={method}", f"seed={seed}", "--out",
                         str(out), "--quiet"])
            assert code == 0
            dirs.append(str(out))
    proc = run_cli(["report", *dirs, "--out", str(tmp_path / "rep")], tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout
    main_table, _, per_generation = table.partition("per generation")
    rows = [l for l in main_table.splitlines() if l.startswith("| method=")]
    assert len(rows) == 2 and all(" ± " in r for r in rows)  # two groups, each mean ± std over 2 seeds
    assert len([l for l in per_generation.splitlines() if l.startswith("| method=")]) == 4  # 2 groups x 2 gens
    png = tmp_path / "rep" / "curves.png"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "curves.png" in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "generations.png").stat().st_size > 10_000  # the runs have 2 generations


def test_profile_json(tmp_path, capsys):
    assert main(["profile", "model=resnet20", "input=3x32x32", "classes=10", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 272_474
    assert 40_000_000 < out["macs"] < 42_000_000 and out["by_type"]["conv"] > 0.9 * out["macs"]
    assert main(["profile", "model=resnet18", "stem=imagenet", "input=3x224x224", "classes=1000"]) == 0
    text = capsys.readouterr().out
    assert "11,689,512 parameters" in text


def test_keys_lists_every_key(capsys):
    assert main(["keys"]) == 0
    out = capsys.readouterr().out
    for key in ("data", "model", "method", "epochs", "generations", "seed", "batch_size", "lr", "per_class",
                "device"):
        assert f"| {key} " in out


def _namespace(argv: list[str]) -> dict:
    from resprout.cli import build_parser, parse

    ns = vars(parse(build_parser(), argv))
    ns.pop("fn")
    return ns


@pytest.mark.parametrize("mixed, flags_last", [
    (["train", "data=digits", "epochs=1", "--json", "--out", "d", "threads=1"],
     ["train", "data=digits", "epochs=1", "threads=1", "--json", "--out", "d"]),
    (["train", "--quiet", "exp.toml", "--store", "s.db", "lr=0.05", "--json", "seed=2"],
     ["train", "exp.toml", "lr=0.05", "seed=2", "--quiet", "--store", "s.db", "--json"]),
    (["resume", "--json", "runs/a", "--quiet", "lr=0.01", "--module", "m:F", "threads=2"],
     ["resume", "runs/a", "lr=0.01", "threads=2", "--json", "--quiet", "--module", "m:F"]),
    (["compare", "method=ce,ke", "--out", "cmp", "seeds=0,1", "--json", "epochs=2"],
     ["compare", "method=ce,ke", "seeds=0,1", "epochs=2", "--out", "cmp", "--json"]),
    (["analyze", "--out", "a", "runs/x", "--json", "baseline=runs/y"],
     ["analyze", "runs/x", "baseline=runs/y", "--out", "a", "--json"]),
    (["report", "r1", "--out", "rep", "r2"], ["report", "r1", "r2", "--out", "rep"]),
    (["profile", "--json", "model=cnn", "input=1x8x8"], ["profile", "model=cnn", "input=1x8x8", "--json"]),
])
def test_keys_and_flags_in_any_order(mixed, flags_last):
    """Keys after a flag are the same keys: the namespace equals that of the flags-last order (which argparse's
    plain parsing always read), for every command that takes both."""
    from resprout.cli import build_parser

    plain = vars(build_parser().parse_args(flags_last))
    plain.pop("fn")
    assert _namespace(mixed) == plain


@pytest.mark.slow
def test_the_issue_command_trains_with_every_key(tmp_path):
    """`train data=digits epochs=1 --json --out d threads=1` (a key after the flags) runs with threads=1."""
    proc = run_cli(["train", "data=digits", "epochs=1", "--json", "--out", "d", "threads=1", "progress=none"],
                   tmp_path)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "d" / "run.json").read_text())["config"]
    assert (saved["epochs"], saved["threads"], saved["progress"]) == (1, 1, "none")
    assert json.loads(proc.stdout)["run_dir"].endswith("d")


@pytest.mark.parametrize("args, line", [
    (["train", "data=digits", "--bogus"], "resprout: error: train: unrecognized arguments: --bogus\n"),
    (["runs", "extra"], "resprout: error: runs: unrecognized arguments: extra\n"),
    (["resume"], "resprout: error: resume: the following arguments are required: run_dir\n"),
    (["compare", "--out", "x"], "resprout: error: compare: the following arguments are required: key=value\n"),
    ([], "resprout: error: the following arguments are required: command\n"),
])
def test_a_usage_mistake_has_one_prefix(args, line, capsys):
    assert main(args) == 2
    assert capsys.readouterr().err == line
