"""The reproduction machinery: the statistics of a claim against hand-computed numbers, the file format's
refusals, compare rows with their own keys, the engine's per-image record against a re-evaluation, and a tiny table
end to end (results/ against the store, reuse without the store, the page rebuilt from results/ alone and
re-derived when the stored rows change)."""

import csv
import json
import math
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks import reproduce
from benchmarks.reproduction import report as rep
from benchmarks.reproduction import results as res
from benchmarks.reproduction import stats
from benchmarks.reproduction.spec import load_all, load_spec
from resprout.compare.grid import build_grid
from resprout.engine.evaluation import pack_bits, unpack_bits
from resprout.errors import ConfigError
from resprout.hardware import cpu_name

TINY = Path(__file__).parent / "data" / "tiny-reproduction.toml"
CROSS = Path(__file__).parent / "data" / "tiny-cross.toml"


# -- statistics --------------------------------------------------------------------------------------------------------
def test_one_seed_is_mcnemars_variance():
    a = np.array([[1, 1, 0, 0, 1]], bool)
    b = np.array([[1, 0, 1, 0, 0]], bool)
    p = stats.paired_from_bits(a, b)
    # two images only A gets right, one only B: McNemar's (b + c)/N^2 - (b - c)^2/N^3, times N/(N-1) (the sample
    # variance's denominator)
    mcnemar = 3 / 25 - 1 / 125
    assert p.diff == pytest.approx(0.2)
    assert p.se ** 2 == pytest.approx(mcnemar * 5 / 4)
    assert stats.verdict(p) == stats.UNRESOLVED  # one seed: the seed term is unknown


def test_two_seeds_by_hand():
    # c = A - B = [[1, 0, 0], [1, 0, -1]]: d = 1/6; s_d^2 = 1/18, s_x^2 = 7/12, MS_res = 1/6 (worked by hand)
    a = np.array([[1, 1, 0], [1, 0, 0]], bool)
    b = np.array([[0, 1, 0], [0, 0, 1]], bool)
    p = stats.paired_from_bits(a, b)
    assert p.diff == pytest.approx(1 / 6)
    assert p.se == pytest.approx(math.sqrt(1 / 36 + 7 / 36 - 1 / 36))


def loop_variance(c: list[list[int]]) -> float:
    """The estimator written out with loops (no numpy), as the stats docstring states it."""
    n, N = len(c), len(c[0])
    d_s = [sum(row) / N for row in c]
    x_i = [sum(c[s][i] for s in range(n)) / n for i in range(N)]
    d = sum(d_s) / n
    s_d2 = sum((v - d) ** 2 for v in d_s) / (n - 1)
    s_x2 = sum((v - d) ** 2 for v in x_i) / (N - 1)
    ms = sum((c[s][i] - d_s[s] - x_i[i] + d) ** 2 for s in range(n) for i in range(N)) / ((n - 1) * (N - 1))
    return max(s_d2 / n + s_x2 / N - ms / (n * N), s_d2 / n, s_x2 / N)


def test_random_tables_against_loops():
    rng = np.random.default_rng(0)
    for n, N in ((2, 50), (3, 200), (5, 400)):
        a = rng.random((n, N)) < 0.8
        b = rng.random((n, N)) < 0.75
        c = (a.astype(int) - b.astype(int)).tolist()
        assert stats.paired_from_bits(a, b).se ** 2 == pytest.approx(loop_variance(c), rel=1e-12)


def test_accuracies_alone():
    p = stats.paired_from_accuracies([0.8, 0.9], [0.7, 0.8], 100)
    assert p.diff == pytest.approx(0.1)
    assert p.se == pytest.approx(math.sqrt((0.85 * 0.15 + 0.75 * 0.25) / 100))  # the seed term is 0 here
    assert not p.exact


@pytest.mark.parametrize("diff,direction,margin,word", [
    (0.05, ">", 0.0, stats.HOLDS), (-0.05, ">", 0.0, stats.REVERSED), (0.03, ">", 0.0, stats.UNRESOLVED),
    (0.05, "<", 0.0, stats.REVERSED), (0.005, "<", 0.01, stats.HOLDS), (0.015, "<", 0.01, stats.UNRESOLVED),
    (0.06, ">", 0.01, stats.HOLDS), (0.045, ">", 0.01, stats.UNRESOLVED)])
def test_verdict_needs_two_standard_errors(diff, direction, margin, word):
    se = 0.02 if abs(diff) > 0.01 else 0.002
    assert stats.verdict(stats.Paired(diff, se, 3, 100, True, 0, 0), direction, margin) == word


def test_a_property_of_the_weights_has_the_seeds_variance_alone():
    p = stats.paired_from_values([0.10, 0.20, 0.30], [0.20, 0.20, 0.20])
    assert p.diff == pytest.approx(0.0)
    assert p.se == pytest.approx(math.sqrt(0.01 / 3))  # d_s = -0.1, 0, 0.1: sample variance 0.01


def test_filter_shares_by_hand():
    from torch import nn

    net = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.ReLU(), nn.Conv2d(3, 1, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.0005, 0.05, 2.0]).view(3, 1, 1, 1))
        net[2].weight.copy_(torch.tensor([0.3, -0.3, 0.3]).view(1, 3, 1, 1))  # one filter, l1 0.9
    shares = res.filter_shares(net)
    assert shares["filters"] == 4
    assert [shares[c] for c in res.FILTER_COLUMNS] == [0.25, 0.25, 0.5, 0.75]


def test_bits_round_trip():
    x = torch.rand(1001) < 0.5
    assert (unpack_bits(pack_bits(x), 1001) == x.numpy()).all()


# -- the file format ---------------------------------------------------------------------------------------------------
def write(tmp_path, text: str) -> Path:
    p = tmp_path / "t.toml"
    p.write_text(text)
    return p


BASE = '''title = "t"\npaper = "ke"\ntables = "Table 2"\nanalog = "a"\nseeds = [0]\nbaseline = "CE"
[[rows]]\nlabel = "CE"\nmethod = "ce"\n'''


@pytest.mark.parametrize("extra,says", [
    ('[[claims]]\nclaim = "x"\na = "KE"\nb = "CE"\n', "'KE' is not a row label"),
    ('[[claims]]\nclaim = "x"\na = "CE"\nb = "CE"\ndirection = ">="\n', "bad value for direction"),
    ('[[claims]]\nclaim = "x"\na = "CE"\nb = "CE"\npaper = { a = 1, b = 2 }\n', "need where"),
    ('color = 1\n', "unknown key 'color'"),
    ('[[rows]]\nlabel = "CE"\nmethod = "ls"\n', "used twice"),
    ('[[rows]]\nlabel = "KD"\nmethod = "kd"\nkeys = { teacher = "@t" }\n', "names no [depends.t]"),
    ('[[claims]]\nclaim = "x"\na = "CE:filters<0.1"\nb = "CE"\n', "the same thing"),
    ('[[claims]]\nclaim = "x"\na = "CE:filters<0.5"\nb = "CE:filters<0.5"\n', "filter shares are recorded"),
    ('[keys]\nprecision = "fp32"\n', "cannot set precision"),
    ('[[rows]]\nlabel = "CE bf16"\nmethod = "ce"\nkeys = { precision = "bf16" }\n', "cannot set precision"),
])
def test_bad_files_are_one_line(tmp_path, extra, says):
    text = BASE.replace('[[rows]]', extra + '[[rows]]', 1) if extra.startswith("color") else BASE + extra
    with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
        load_spec(write(tmp_path, text))


def test_the_precision_a_machine_resolved_is_not_part_of_a_results_fingerprint():
    """A run recorded where precision=auto resolved to fp32 is the same row on a machine where it resolves to bf16
    (the row's precision column says which); every other key still tells runs apart."""
    base = {"data": "digits", "model": "cnn", "epochs": 2, "seed": 0}
    fps = {p: res.portable_fingerprint({**base, "precision": p}) for p in ("fp32", "bf16", "auto")}
    assert len(set(fps.values())) == 1
    assert res.portable_fingerprint({**base, "precision": "bf16", "epochs": 3}) != fps["fp32"]


def test_the_repository_reproductions_build():
    """Every file under reproductions/ parses and builds its grid (every key checked as compare checks it)."""
    from benchmarks.reproduction.spec import load_all

    specs = load_all(reproduce.REPRODUCTIONS)
    assert {s.paper for s in specs} == {"ke", "nr", "grafting", "ktan"}
    for spec in specs:
        grid, current, _ = reproduce.current_fingerprints(spec, Path("/nonexistent"))
        assert {c.label for c in grid.cells} == {r.label for r in spec.rows}


# -- compare rows ------------------------------------------------------------------------------------------------------
def test_rows_carry_their_own_keys_and_labels():
    grid = build_grid(["method=ce", "row.noise=graft graft.scion=noise graft.peers=1", "row.ce-2x=ce epochs=2",
                       "data=digits", "epochs=1", "budget=per-method", "baseline=none", "seeds=0,1"])
    keys = {c.key: c for c in grid.cells}
    assert set(keys) == {"ce-1x1-s0", "ce-1x1-s1", "noise-1x1-s0", "noise-1x1-s1", "ce-2x-1x2-s0", "ce-2x-1x2-s1"}
    assert keys["noise-1x1-s0"].config.method_options["graft"]["scion"] == "noise"
    assert keys["ce-2x-1x2-s0"].config.epochs == 2 and keys["ce-1x1-s0"].config.epochs == 1
    assert "graft" not in keys["ce-1x1-s0"].config.method_options


def test_todays_command_line_names_the_same_runs():
    grid = build_grid(["method=ce,ke", "seeds=0", "data=digits", "epochs=1", "generations=2"])
    assert sorted(c.key for c in grid.cells) == ["ce-1x2-s0", "ke-2x1-s0"]


@pytest.mark.parametrize("args,says", [
    (["method=ce", "row.ce=ls"], "labelled"),
    (["method=ce", "row.x=ce seed=1"], "cannot set seed"),
    (["row.x=epochs=2"], "bad row"),
    (["method=ce", "row.x=ce graft.scion=noise"], "graft"),
])
def test_bad_rows_are_refused(args, says):
    with pytest.raises(ConfigError, match=says):
        build_grid(args + ["data=digits", "epochs=1"])


# -- the per-image record ----------------------------------------------------------------------------------------------
def test_per_image_record_matches_a_re_evaluation(tmp_path):
    from resprout.inputs import build_dataset
    from resprout.run import open_run, train

    out = tmp_path / "run"
    train(data="digits", per_class=20, model="cnn", width=0.5, epochs=2, generations=2, method="ke",
          batch_size=32, progress="none", out=out)
    rec = json.loads((out / "test-correct-model.json").read_text())
    trainer = open_run(out)  # the last checkpoint: generation 2's final weights
    ds = build_dataset(trainer.config)
    model = trainer.members["model"].model.eval()
    with torch.no_grad():  # batches of the run's own test loader, predicted here one by one
        pred = torch.cat([torch.stack([model(x[None]).argmax(1)[0] for x in xb])
                          for xb, _ in trainer.eval_loaders["test"]])
    expected = (pred == ds.test.labels).numpy()
    assert rec["images"] == len(ds.test.labels) and set(rec["generations"]) == {"1", "2"}
    assert (unpack_bits(rec["generations"]["2"], rec["images"]) == expected).all()


# -- a tiny table end to end -------------------------------------------------------------------------------------------
def run_main(tmp: Path, *extra: str) -> int:
    return reproduce.main([TINY.stem, CROSS.stem, "--jobs", "1", "--dir", str(tmp / "repro"),
                           "--results", str(tmp / "results"), "--work", str(tmp / "work"),
                           "--doc", str(tmp / "docs" / "reproduction.md"), "--readme", str(tmp / "README.md"),
                           "--figures", str(tmp / "docs" / "figures"), *extra])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repro")
    (tmp / "repro").mkdir()
    shutil.copy(TINY, tmp / "repro" / TINY.name)
    shutil.copy(CROSS, tmp / "repro" / CROSS.name)
    (tmp / "README.md").write_text("# resprout\n\nFirst paragraph.\n\n## More\n")
    assert run_main(tmp) == 0
    return tmp


def read_csv(path: Path) -> list[dict]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_results_hold_the_stores_numbers_and_the_bits_agree(tiny):
    rows = read_csv(tiny / "results" / f"{TINY.stem}.csv")
    bits = {(b["label"], b["seed"], b["generation"]): b
            for b in read_csv(tiny / "results" / f"{TINY.stem}.correct.csv")}
    assert {(r["label"], r["seed"]) for r in rows if r["final"] == "1"} == \
        {(lab, s) for lab in ("CE", "CE 2x", "KE", "KD") for s in ("0", "1")} | {("teacher", "0")}
    for r in rows:
        folder = tiny / "work" / (f"{TINY.stem}-depends" if r["role"] == "dependency" else f"{TINY.stem}/runs")
        info = json.loads((folder / r["run"] / "run.json").read_text())
        con = sqlite3.connect(info["store"])
        stored = dict(con.execute("SELECT metric, value FROM generation_metrics WHERE run_id=? AND member='model' "
                                  "AND generation=?", (info["run_id"], int(r["generation"]) - 1)).fetchall())
        con.close()
        assert float(r["top1"]) == stored["test_top1"]
        # KE's slim network, with the dense network's BN statistics (the paper's way) and with them re-estimated
        # and the mean |w| of its fit and reset hypotheses (the paper's Fig. 7)
        for column in ("slim_top1", "slim_bnfix_top1", "fit_abs", "reset_abs"):
            assert (float(r[column]) if r[column] else None) == stored.get(column)
        assert (r["label"] == "KE") is bool(r["slim_bnfix_top1"]) is bool(r["fit_abs"]) is bool(r["reset_abs"])
        assert r["cpu"] == cpu_name()
        b = bits[(r["label"], r["seed"], r["generation"])]
        assert unpack_bits(b["bits"], int(b["images"])).mean() == pytest.approx(stored["test_top1"], abs=1e-12)
        assert int(r["test_images"]) == 359  # the whole digits test split


@pytest.mark.slow
def test_a_fresh_clone_with_results_trains_nothing(tiny, tmp_path):
    clone = tmp_path / "clone"
    for part in ("repro", "results"):
        shutil.copytree(tiny / part, clone / part)
    (clone / "README.md").write_text((tiny / "README.md").read_text())
    before = (clone / "results" / f"{TINY.stem}.csv").read_text()
    assert run_main(clone) == 0
    assert not (clone / "work").exists()  # no store, no run directory: nothing trained
    assert (clone / "results" / f"{TINY.stem}.csv").read_text() == before
    assert (clone / "docs" / "reproduction.md").read_text() == (tiny / "docs" / "reproduction.md").read_text()


@pytest.mark.slow
def test_results_from_a_machine_of_another_precision_are_reused(tiny, tmp_path, monkeypatch):
    """The tiny table's runs trained where precision=auto is fp32; on a machine where it is bf16 a clone trains
    nothing and builds the same page."""
    from resprout import hardware

    resolve = hardware.resolve_precision
    monkeypatch.setattr(hardware, "resolve_precision", lambda v, d: "bf16" if v == "auto" else resolve(v, d))
    assert hardware.resolve_auto(reproduce.dependency_config(load_spec(TINY), "teacher"))["precision"] == "bf16"
    clone = tmp_path / "clone"
    for part in ("repro", "results"):
        shutil.copytree(tiny / part, clone / part)
    (clone / "README.md").write_text((tiny / "README.md").read_text())
    assert run_main(clone) == 0
    assert not (clone / "work").exists()
    assert (clone / "docs" / "reproduction.md").read_text() == (tiny / "docs" / "reproduction.md").read_text()


@pytest.mark.slow
def test_the_page_is_rebuilt_from_results_alone_and_follows_them(tiny, tmp_path):
    clone = tmp_path / "clone"
    for part in ("repro", "results"):
        shutil.copytree(tiny / part, clone / part)
    (clone / "README.md").write_text("# resprout\n\nFirst paragraph.\n")
    assert run_main(clone, "--from-results") == 0
    page = (clone / "docs" / "reproduction.md").read_text()
    assert page == (tiny / "docs" / "reproduction.md").read_text()
    # the slim network with its BN re-estimated (beyond the paper) sits under the paper's slim row
    fixed = [100 * float(r["slim_bnfix_top1"]) for r in read_csv(clone / "results" / f"{TINY.stem}.csv")
             if r["label"] == "KE" and r["generation"] == "2"]
    line = next(x for x in page.splitlines() if x.startswith("| KE slim H_2, BN re-estimated"))
    assert [c.strip() for c in line.strip("|").split("|")][5] == f"{np.mean(fixed):.2f} ± {np.std(fixed, ddof=1):.2f}"
    # change the stored CE numbers: the rows table and the claims follow, and the per-image records are dropped
    path = clone / "results" / f"{TINY.stem}.csv"
    rows = read_csv(path)
    for r in rows:
        if r["label"] == "CE":
            r["top1"] = "0.5" if r["seed"] == "0" else "0.6"
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    (clone / "results" / f"{TINY.stem}.correct.csv").unlink()
    assert run_main(clone, "--from-results") == 0
    page = (clone / "docs" / "reproduction.md").read_text()
    assert "55.00 ± 7.07" in page  # mean and std of 0.5 and 0.6
    ce2 = [float(r["top1"]) for r in rows if r["label"] == "CE 2x" and r["final"] == "1"]
    p = stats.paired_from_accuracies(ce2, [0.5, 0.6], 359)
    line = next(x for x in page.splitlines() if x.startswith("| doubling the epochs"))
    assert [c.strip() for c in line.strip("|").split("|")][4] == \
        f"{100 * p.diff:+.2f} ± {100 * p.se:.2f} (independent-test bound)"
    readme = (clone / "README.md").read_text()
    assert readme.startswith("# resprout\n\n<!-- reproduction:start -->") and "First paragraph." in readme


@pytest.mark.slow
def test_verdicts_in_the_page_are_the_statistics_of_the_stored_bits(tiny):
    rows, bits = res.read(TINY.stem, tiny / "results")
    ke = {(b["seed"], b["generation"]): unpack_bits(b["bits"], b["images"]) for b in bits if b["label"] == "KE"}
    p = stats.paired_from_bits(np.stack([ke[(0, 2)], ke[(1, 2)]]), np.stack([ke[(0, 1)], ke[(1, 1)]]))
    page = (tiny / "docs" / "reproduction.md").read_text()
    line = next(x for x in page.splitlines() if x.startswith("| KE improves on its first generation"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1] == "56.73 vs 53.57 top-1 (%) (Table 2, CUB-200)"
    assert cells[4] == f"{100 * p.diff:+.2f} ± {100 * p.se:.2f}"
    assert cells[5] == f"**{stats.verdict(p)}**"


@pytest.mark.slow
def test_a_changed_file_trains_again_and_keeps_the_old_runs_aside(tiny, tmp_path):
    clone = tmp_path / "clone"
    for part in ("repro", "results", "work"):
        shutil.copytree(tiny / part, clone / part)
    (clone / "README.md").write_text("# resprout\n\nFirst paragraph.\n")
    spec = clone / "repro" / CROSS.name
    spec.write_text(spec.read_text().replace("lr = 0.1", "lr = 0.05"))
    old = {r["seed"]: r["fingerprint"] for r in read_csv(clone / "results" / f"{CROSS.stem}.csv")}
    assert run_main(clone) == 0
    runs = clone / "work" / CROSS.stem / "runs"
    assert sorted(d.name.split(".old-")[0] for d in runs.iterdir() if ".old-" in d.name) == ["LS-1x2-s0", "LS-1x2-s1"]
    new = {r["seed"]: r["fingerprint"] for r in read_csv(clone / "results" / f"{CROSS.stem}.csv")}
    assert set(new) == set(old) and all(new[s] != old[s] for s in new)
    assert json.loads((runs / "LS-1x2-s0" / "run.json").read_text())["config"]["lr"] == 0.05


@pytest.mark.slow
def test_a_claim_reads_another_tables_rows(tiny):
    rows, bits = res.read(TINY.stem, tiny / "results")
    ls_rows, ls_bits = res.read(CROSS.stem, tiny / "results")
    assert {r["label"] for r in ls_rows} == {"LS"}  # the other table's CE was not trained again
    pick = lambda bs, label: np.stack([unpack_bits(b["bits"], b["images"]) for b in  # noqa: E731
                                       sorted(bs, key=lambda b: b["seed"]) if b["label"] == label])
    p = stats.paired_from_bits(pick(ls_bits, "LS"), pick(bits, "CE"))
    page = (tiny / "docs" / "reproduction.md").read_text()
    line = next(x for x in page.splitlines() if x.startswith("| label smoothing beats CE"))
    assert [c.strip() for c in line.strip("|").split("|")][4] == f"{100 * p.diff:+.2f} ± {100 * p.se:.2f}"


def test_code_changes_since_a_commit_are_told(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    (tmp_path / "resprout").mkdir()
    (tmp_path / "resprout" / "a.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("r\n")
    git("init", "-q")
    git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "one")
    first = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert res.code_changed_since(first, tmp_path) == ()
    (tmp_path / "README.md").write_text("changed outside the package\n")
    res.code_changed_since.cache_clear()
    assert res.code_changed_since(first, tmp_path) == ()
    (tmp_path / "resprout" / "a.py").write_text("x = 2\n")
    (tmp_path / "resprout" / "methods").mkdir()
    (tmp_path / "resprout" / "methods" / "b.py").write_text("y = 1\n")
    git("add", "resprout/methods/b.py")  # a new file counts once git knows it
    res.code_changed_since.cache_clear()
    assert res.code_changed_since(first, tmp_path) == ("a.py", "methods/b.py")
    assert res.code_changed_since("0" * 40, tmp_path) is None
    assert res.code_changed_since(None, tmp_path) is None


@pytest.mark.parametrize("same", [True, False])
def test_rows_that_answer_every_image_alike_are_told(same):
    """Two rows whose networks got every test image right or wrong alike at every seed (a method that changed
    nothing, such as noise scions on a network with no invalid filter) get a note; one image apart, none."""
    from benchmarks.reproduction import report
    from benchmarks.reproduction.spec import Claim, parse_ref

    rng = np.random.default_rng(0)
    rows, bits = [], {}
    for seed in (0, 1, 2):
        base = rng.random(200) < 0.8
        for label in ("baseline", "noise"):
            got = base.copy()
            if label == "noise" and not same and seed == 2:
                got[7] = not got[7]
            rows.append({"label": label, "seed": seed, "generation": 1, "final": 1, "member": "model",
                         "role": "row", "top1": float(got.mean()), "test_images": 200})
            bits[(label, seed, 1, "model")] = {"images": 200, "labels": "x", "bits": pack_bits(torch.from_numpy(got))}
    claim = Claim("noise scions beat the baseline", parse_ref("noise", "a"), parse_ref("baseline", "b"))
    out = report.judge_claim(claim, {"t": report.Recorded(rows, bits, [])}, "t")
    assert out.identical is same
    by = {(r["label"], r["seed"]): r["top1"] for r in rows}
    assert out.paired.diff == pytest.approx(np.mean([by[("noise", s)] - by[("baseline", s)] for s in (0, 1, 2)]))
    assert (out.paired.diff == 0) is same  # one image of 600 apart: +-1/600
    t = report.TableResult(load_spec(TINY), rows, [out], [], [], [])
    notes = report._code_note(t)
    assert any("got every test image right or wrong alike at each of the 3 seeds" in n for n in notes) is same


def test_a_slim_network_with_re_estimated_bn_is_an_operand_of_its_own():
    from benchmarks.reproduction.spec import Ref, parse_ref

    ref = parse_ref("KE@2:slim-bn", "claim")
    assert ref == Ref("KE", 2, slim=True, bnfix=True)
    assert (ref.column, ref.text()) == ("slim_bnfix_top1", "KE H_2 (BN re-estimated)")
    assert parse_ref("KE@2:slim", "claim").column == "slim_top1"


@pytest.mark.slow
def test_a_claim_on_the_slim_network_with_re_estimated_bn_reads_its_column(tiny):
    fixed = [100 * float(r["slim_bnfix_top1"]) for r in read_csv(tiny / "results" / f"{TINY.stem}.csv")
             if r["label"] == "KE" and r["generation"] == "2"]
    page = (tiny / "docs" / "reproduction.md").read_text()
    line = next(x for x in page.splitlines() if x.startswith("| the slim network of KE, its BN re-estimated"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0].endswith("(A = KE H_2 (BN re-estimated), B = KE N_2; A > B)")
    assert cells[2] == f"{np.mean(fixed):.2f} ± {np.std(fixed, ddof=1):.2f} (n=2)"


@pytest.mark.slow
def test_a_method_pages_claims_block_is_written_from_the_results(tiny, tmp_path, capsys):
    clone = tmp_path / "clone"
    for part in ("repro", "results"):
        shutil.copytree(tiny / part, clone / part)
    (clone / "README.md").write_text("# resprout\n\nFirst paragraph.\n")
    page = clone / "docs" / "method.md"
    page.parent.mkdir()
    page.write_text(f"# A method\n\nIts verdicts:\n\n<!-- reproduction:claims {TINY.stem} -->\nold words, typed\n"
                    "<!-- reproduction:claims end -->\n\nThe rest.\n")
    assert run_main(clone, "--from-results") == 0
    text = page.read_text()
    assert text.startswith("# A method\n\nIts verdicts:\n\n") and text.endswith("\n\nThe rest.\n")
    assert "old words" not in text
    block = text.split(f"<!-- reproduction:claims {TINY.stem} -->\n")[1].split("<!-- reproduction:claims end")[0]
    lines = block.splitlines()
    assert len(lines) == len(load_spec(TINY).claims)  # one line per claim of the table, in the file's order
    # the KE line against the statistics of the stored per-image bits, as the claims table of the page has them
    _, bits = res.read(TINY.stem, clone / "results")
    ke = {(b["seed"], b["generation"]): unpack_bits(b["bits"], b["images"]) for b in bits if b["label"] == "KE"}
    p = stats.paired_from_bits(np.stack([ke[(0, 2)], ke[(1, 2)]]), np.stack([ke[(0, 1)], ke[(1, 1)]]))
    assert lines[0] == (f"- KE improves on its first generation (A = KE N_2, B = KE N_1; A > B): A - B = "
                        f"{100 * p.diff:+.2f} ± {100 * p.se:.2f} points over 2 seeds, **{stats.verdict(p)}** "
                        f"([table](reproduction.md#tiny-ke-kd-and-a-teacher-on-digits))")
    heading = "### Tiny: KE, KD and a teacher on digits"
    assert heading in (clone / "docs" / "reproduction.md").read_text()  # the link's anchor is that heading's
    assert run_main(clone, "--from-results") == 0 and page.read_text() == text  # a second rebuild changes nothing
    # a block naming no reproduction, opened and never closed, or naming nothing is refused in one line before
    # anything is trained or written (here the table is set to train again: it must not start)
    doc = (clone / "docs" / "reproduction.md").read_text()
    (clone / "results" / f"{TINY.stem}.csv").rename(clone / "aside.csv")
    for broken, says in [("<!-- reproduction:claims ke-table99 -->\n<!-- reproduction:claims end -->\n",
                          "no reproduction named 'ke-table99' in its claims block"),
                         (f"<!-- reproduction:claims {TINY.stem} -->\ntyped words\n", "a claims block is "),
                         ("<!-- reproduction:claims  -->\n<!-- reproduction:claims end -->\n", "a claims block is ")]:
        page.write_text(broken)
        capsys.readouterr()
        assert run_main(clone) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"reproduce: error: method.md: {says}") and "\n" not in err
        assert page.read_text() == broken and (clone / "docs" / "reproduction.md").read_text() == doc
        assert not (clone / "work").exists()


def test_github_anchors_of_the_headings():
    assert rep.anchor("KTAN, Table I: DLN, KTAN and KD+KTAN") == "ktan-table-i-dln-ktan-and-kdktan"
    assert rep.anchor("Knowledge Evolution, Tables 2/3: N_g of KE on LS") == \
        "knowledge-evolution-tables-23-n_g-of-ke-on-ls"
    assert rep.anchor("Detectors: speed and memory") == "detectors-speed-and-memory"


def without_code_notes(page: str) -> str:
    """The page without its notes on runs from older code: they follow the checkout's history (every later change
    to resprout/ adds runs to them, a clone without history has none), not the results."""
    page = re.sub(r"(?m)^- .*(come from code older than this tree|record a code version this checkout cannot "
                  r"compare).*\n(  - .*\n)*", "", page)
    return re.sub(r"\nNotes:\n\n(?=\n|$)", "", page)  # a Notes block left empty goes too


def test_the_committed_pages_are_what_the_committed_results_give(monkeypatch):
    """docs/reproduction.md, the README's summary and every method page's claims blocks equal a rebuild from
    results/ alone: a hand edit of a generated section, or results committed without the rebuild, fails here."""
    # the files' channels_last=auto as a user's machine resolves it (the suite's portable mode turns it off)
    monkeypatch.delenv("RESPROUT_PORTABLE")
    specs = load_all(reproduce.REPRODUCTIONS)
    data = {s.name: rep.recorded(s.name, reproduce.current_fingerprints(s, reproduce.WORK)[1], res.RESULTS)
            for s in specs}
    tables = [rep.build(s, data) for s in specs]
    assert without_code_notes(rep.page(tables)) == without_code_notes(rep.DOC.read_text())
    assert rep.readme_block(tables) in rep.README.read_text()
    by_name = {t.spec.name: t for t in tables}
    pages = [p for p in sorted(rep.DOC.parent.glob("*.md")) if rep.CLAIMS_BLOCK.search(p.read_text())]
    assert {p.name for p in pages} >= {"distillation.md", "knowledge-evolution.md", "grafting.md", "rejuvenation.md"}
    for p in pages:
        assert rep.fill_claims_blocks(p.read_text(), by_name, p) == p.read_text(), p.name


def test_runs_from_older_code_are_named_with_the_files_changed_since():
    spec = load_spec(TINY)
    row = lambda label, seed, commit, dirty=0: {"label": label, "seed": seed, "git_commit": commit,  # noqa: E731
                                                "git_dirty": dirty, "final": 1}
    stale = [row("CE", 0, "a" * 40), row("KE", 0, "a" * 40), row("CE", 1, "b" * 40, dirty=1), row("KE", 2, "a" * 40)]
    files = tuple(f"m{i}.py" for i in range(rep.MAX_FILES + 2))
    t = rep.TableResult(spec, stale + [row("KE", 1, "c" * 40)], [], [], stale, [],
                        changed={"a" * 40: files, "b" * 40: (), "c" * 40: ()})
    assert rep._code_note(t) == [
        "- 4 of 5 runs come from code older than this tree (resprout/ changed since their commit):",
        f"  - aaaaaaaa: CE (seed 0) and KE (seeds 0, 2); changed since: {', '.join(files[:rep.MAX_FILES])} and 2 more.",
        "  - bbbbbbbb: CE (seed 1*) (*: with uncommitted changes); changed since: no file (the run had uncommitted "
        "changes)."]


@pytest.mark.slow
def test_the_status_counts_the_recorded_runs_and_writes_nothing(tiny, tmp_path, capsys):
    clone = tmp_path / "clone"
    for part in ("repro", "results"):
        shutil.copytree(tiny / part, clone / part)
    (clone / "results" / f"{CROSS.stem}.csv").unlink()  # the second table: nothing recorded
    (clone / "results" / f"{CROSS.stem}.correct.csv").unlink()
    before = {p.name: p.read_bytes() for p in (clone / "results").iterdir()}
    capsys.readouterr()
    assert run_main(clone, "--status") == 0
    lines = {cells[0]: cells for cells in ([c.strip() for c in x.strip("|").split("|")]
                                           for x in capsys.readouterr().out.splitlines()[2:])}
    finals = [r for r in read_csv(clone / "results" / f"{TINY.stem}.csv") if r["final"] == "1"]
    assert len(finals) == 9  # two seeds of four rows, and the teacher
    minutes = sum(float(r["train_seconds"]) for r in finals) / 60
    assert lines[TINY.stem] == [TINY.stem, f"{len(finals)} of 9", f"{len(load_spec(TINY).claims)} of 6",
                                f"{minutes:.0f}", "complete"]
    assert lines[CROSS.stem] == [CROSS.stem, "0 of 2", "0 of 1", "0", f"python -m benchmarks.reproduce {CROSS.stem}"]
    assert {p.name: p.read_bytes() for p in (clone / "results").iterdir()} == before
    assert not (clone / "work").exists() and not (clone / "docs").exists() and not (clone / "README.md").exists()


def test_the_hypotheses_of_a_ke_row_by_generation_are_told_from_its_rows():
    spec = load_spec(TINY)
    rows = [{"label": "KE", "seed": seed, "generation": g, "final": int(g == 2), "fit_abs": fit, "reset_abs": reset,
             "slim_top1": slim, "git_commit": None, "git_dirty": 0}
            for seed, g, fit, reset, slim in [(0, 1, 0.5, 0.5, 0.10), (1, 1, 0.7, 0.3, 0.12),
                                              (0, 2, 0.6, 0.2, 0.30), (1, 2, 0.8, 0.4, 0.50)]]
    rows.append({"label": "CE", "seed": 0, "generation": 1, "final": 1, "fit_abs": None, "reset_abs": None,
                 "slim_top1": None, "git_commit": None, "git_dirty": 0})
    t = rep.TableResult(spec, rows, [], [], [], [])
    assert rep._code_note(t) == [
        "- KE, at the end of each generation (mean of 2 seeds): the mean |w| inside the fit / the reset hypothesis "
        "(the paper's Fig. 7), and the slim network's top-1 (BN copied): 1: 0.600 / 0.400, 11.0%; "
        "2: 0.700 / 0.300, 40.0%."]


def test_the_channel_record_of_slimming_and_nr_is_read_from_their_results():
    """live_share: the channels alive over the channels judged (the judged groups only), from the first pruning or
    rejuvenation; paper_params: NR's count after its last rejuvenation."""
    slimming = {"slimming": {"live_before": {"a": 2, "b": 1}, "widths_before": {"a": 4, "b": 8, "c": 100}}}
    assert res.channel_record(slimming) == {"live_share": 3 / 12}
    nr = {"rejuvenation": {"rejuvenations": [
        {"epoch": 5.5, "live_before": {"a": 3, "b": 3}, "widths_before": {"a": 4, "b": 8},
         "counts_after": {"paper_params": 50}},
        {"epoch": 12.0, "live_before": {"a": 1, "b": 1}, "widths_before": {"a": 6, "b": 9},
         "counts_after": {"paper_params": 70}}]}}
    assert res.channel_record(nr) == {"live_share": 6 / 12, "paper_params": 70, "rejuvenated_at": "5.5;12"}
    assert res.channel_record({"rejuvenation": {"rejuvenations": []}, "slimming": {"note": "no pruning"}}) == {}
    assert res.channel_record({}) == {}


def test_the_channels_of_slimming_and_nr_rows_are_told_from_their_rows():
    spec = load_spec(TINY)
    base = {"generation": 1, "final": 1, "git_commit": None, "git_dirty": 0, "epochs": 40}
    rows = [{**base, "label": "KE", "seed": 0, "live_share": 0.25, "paper_params": 100, "params": 180,
             "rejuvenated_at": "5;12"},
            {**base, "label": "KE", "seed": 1, "live_share": 0.35, "paper_params": 110, "params": 200,
             "rejuvenated_at": "6"},
            {**base, "label": "KD", "seed": 0, "live_share": 0.1, "paper_params": None, "params": 90},
            {**base, "label": "CE", "seed": 0, "live_share": None, "paper_params": None, "params": 90},
            {**base, "label": "KD", "seed": 1, "final": 0, "live_share": 0.9}]  # not a run's last generation
    t = rep.TableResult(spec, rows, [], [], [], [])
    assert rep._code_note(t) == [
        "- Channels alive (BN scale above the liveness threshold) just before the first pruning (Network Slimming) "
        "or rejuvenation (NR), as a share of the channels the method judges, mean over seeds: KE: 30.0% (2 seeds); "
        "KD: 10.0% (1 seed).",
        "- The epochs at which NR rejuvenated (its first, second, ... rejuvenation; mean over the seeds that had it): "
        "KE: 5.5, 12.0 of 40 (2 seeds).",
        "- NR's own count of its rebuilt network's parameters (the count its target holds) beside the real weights "
        "of the params column, mean over seeds: KE: 105 counted, 190 real (2 seeds)."]


SHARED = """title = "Tiny: the runs of another table's configuration"
paper = "ke"
tables = "Table 2 (a test of runs shared between tables)"
analog = "sklearn digits, as tiny-reproduction."
seeds = [0, 1]
baseline = "plain CE"

[keys]
data = "digits"
per_class = 50
model = "cnn"
width = 0.5
epochs = 2
batch_size = 32
lr = 0.1
eval_every = 1000

[[rows]]
label = "plain CE"
method = "ce"

[[claims]]
claim = "CE against itself"
a = "plain CE"
b = "plain CE"
"""
# the same with a KD row: its teacher is its own (trained per table), so KD is never shared
SHARED_KD = SHARED.replace("[[rows]]", """[depends.teacher]
seed = 0
epochs = 4

[[rows]]
label = "KD again"
method = "kd"
keys = { teacher = "@teacher" }

[[rows]]""", 1)


@pytest.mark.slow
def test_a_run_another_table_trained_with_the_same_configuration_is_shared_not_trained(tiny, tmp_path):
    """tiny-shared's "plain CE" is tiny-reproduction's CE: read from its rows in results/, or from its finished run in
    the work folder when results/ lacks them, relabelled, nothing trained; its KD has a teacher of its own (trained
    per table), so it is never shared."""
    clone = tmp_path / "clone"
    for part in ("repro", "results", "work"):
        shutil.copytree(tiny / part, clone / part)
    (clone / "repro" / "tiny-shared.toml").write_text(SHARED_KD)
    (clone / "README.md").write_text("# resprout\n\nFirst paragraph.\n")
    spec = load_spec(clone / "repro" / "tiny-shared.toml")
    grid, current, _ = reproduce.current_fingerprints(spec, clone / "work")
    theirs = [r for r in read_csv(clone / "results" / f"{TINY.stem}.csv") if r["label"] == "CE"]
    their_bits = [b for b in read_csv(clone / "results" / f"{TINY.stem}.correct.csv") if b["label"] == "CE"]

    def check(found: dict) -> None:
        assert sorted(found) == sorted(c.key for c in grid.cells if c.label == "plain CE")  # not KD again
        rows = [r for rows, _ in found.values() for r in rows]
        assert sorted((r["seed"], r["top1"], r["fingerprint"]) for r in rows) == \
            sorted((int(r["seed"]), float(r["top1"]), r["fingerprint"]) for r in theirs)
        assert {r["label"] for r in rows} == {"plain CE"}
        assert all(r["run"].startswith(f"{TINY.stem}/") for r in rows)
        assert sorted(b["bits"] for _, bits in found.values() for b in bits) == sorted(b["bits"] for b in their_bits)

    cells = grid.cells
    check(reproduce.trained_elsewhere(spec, cells, current, clone / "work", clone / "results"))
    aside = tmp_path / "aside"
    aside.mkdir()
    for p in res.paths(TINY.stem, clone / "results"):
        p.rename(aside / p.name)
    check(reproduce.trained_elsewhere(spec, cells, current, clone / "work", clone / "results"))  # from its run
    for p in aside.iterdir():
        p.rename(clone / "results" / p.name)

    # the whole command: "plain CE" recorded from tiny-reproduction's rows, nothing of it trained
    (clone / "repro" / "tiny-shared.toml").write_text(SHARED)
    assert reproduce.main(["tiny-shared", "--jobs", "1", "--dir", str(clone / "repro"), "--results",
                           str(clone / "results"), "--work", str(clone / "work"), "--doc",
                           str(clone / "docs" / "reproduction.md"), "--readme", str(clone / "README.md"),
                           "--figures", str(clone / "docs" / "figures")]) == 0
    assert not (clone / "work" / "tiny-shared" / "runs").exists()
    ours = read_csv(clone / "results" / "tiny-shared.csv")
    assert sorted((r["seed"], r["top1"]) for r in ours) == sorted((r["seed"], r["top1"]) for r in theirs)
    assert "- plain CE (seeds 0, 1): the runs tiny-reproduction trained with the same configuration, shared rather " \
           "than trained again." in (clone / "docs" / "reproduction.md").read_text()

    # tiny-reproduction's CE rows lost from results/: they come back from its own work folder, not from
    # tiny-shared's copies of them
    rows, bits = res.read(TINY.stem, clone / "results")
    res.write(TINY.stem, [r for r in rows if r["label"] != "CE"], [b for b in bits if b["label"] != "CE"],
              clone / "results")
    assert reproduce.main([TINY.stem, "--jobs", "1", "--dir", str(clone / "repro"), "--results",
                           str(clone / "results"), "--work", str(clone / "work"), "--doc",
                           str(clone / "docs" / "reproduction.md"), "--readme", str(clone / "README.md"),
                           "--figures", str(clone / "docs" / "figures")]) == 0
    back = [r for r in read_csv(clone / "results" / f"{TINY.stem}.csv") if r["label"] == "CE"]
    assert sorted((r["seed"], r["top1"], r["run"]) for r in back) == sorted((r["seed"], r["top1"], r["run"])
                                                                           for r in theirs)
    assert "/" not in "".join(r["run"] for r in back)

    # a row renamed in its file: its runs are this table's, recorded under the old label; nothing is trained
    tiny_text = (clone / "repro" / TINY.name).read_text()
    (clone / "repro" / TINY.name).write_text(tiny_text.replace('"CE"', '"CE renamed"').replace('"CE:', '"CE renamed:'))
    (clone / "repro" / CROSS.name).unlink()  # its claim names tiny-reproduction/CE
    runs = sorted(p.name for p in (clone / "work" / TINY.stem / "runs").iterdir())
    assert reproduce.main([TINY.stem, "--jobs", "1", "--dir", str(clone / "repro"), "--results",
                           str(clone / "results"), "--work", str(clone / "work"), "--doc",
                           str(clone / "docs" / "reproduction.md"), "--readme", str(clone / "README.md"),
                           "--figures", str(clone / "docs" / "figures")]) == 0
    assert sorted(p.name for p in (clone / "work" / TINY.stem / "runs").iterdir()) == runs  # nothing trained
    renamed = [r for r in read_csv(clone / "results" / f"{TINY.stem}.csv") if r["label"] == "CE renamed"]
    assert sorted((r["seed"], r["top1"]) for r in renamed) == sorted((r["seed"], r["top1"]) for r in theirs)
    assert "- CE renamed (seeds 0, 1): the runs this table trained with the same " \
           "configuration, shared rather than trained again." in (clone / "docs" / "reproduction.md").read_text()
    assert "- 2 recorded runs are of a configuration the reproduction file no longer gives (rows it no longer has: " \
           "CE); they are left out." in (clone / "docs" / "reproduction.md").read_text()
