"""``results/``: every run of the reproductions as CSV rows that outlive the machine and the results store.

``results/<table>.csv`` holds one row per run and generation (generation 1..G of a run with several; the last has
``final = 1``): the configuration's fingerprint, seed, row label, the last-epoch and best top-1 on the full test set
(rank-1 for a re-identification run, whose mAP is ``map`` and whose ``test_images`` are its queries), the slim
network's top-1 where KE measured one (with the dense network's BN statistics, the paper's way, and with them
re-estimated) and the mean absolute weight of its fit and reset hypotheses, the cost (epochs, parameters, MACs of the
final network), the durations, threads, precision, the CPU (in bf16 two CPUs' kernels may round differently), the code
version (git commit, and whether the package differed from it) and status. ``results/<table>.correct.csv`` holds, for
the same runs and generations, the per-image top-1 correctness on the test set (a packed bitmask in base64, with the
test labels' fingerprint), from which the claims get the exact variance of a paired difference
(:mod:`benchmarks.reproduction.stats`).

The fingerprint is the run's configuration fingerprint made portable: a teacher given as a run directory (a path
of one machine) is replaced by the name and fingerprint of the dependency that trained it, and the precision (what
``precision=auto`` resolved to on the machine that trained the run: bf16 where the CPU computes it natively, fp32
elsewhere) is left out, since it is recorded in its own column and the report states it. A row is reused only
when its label, seed and fingerprint match the current configuration.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import subprocess
import time
from pathlib import Path

from resprout.config import Config

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "results"

# thresholds of the share of small filters (Filter Grafting, Fig. 7: the ratio of filters whose l1 norm is below one)
FILTER_THRESHOLDS = (1e-3, 1e-2, 0.1, 1.0)
FILTER_COLUMNS = [f"filters_lt_{t:g}" for t in FILTER_THRESHOLDS]
COLUMNS = ["label", "role", "seed", "generation", "generations", "final", "member", "fingerprint", "method",
           "top1", "best_top1", "slim_top1", "slim_bnfix_top1", "fit_abs", "reset_abs", "map", "test_images",
           "test_labels", "epochs", "total_epochs", "params", "macs", "paper_params", "slim_params", "slim_macs",
           "live_share", "rejuvenated_at", "filters",
           *FILTER_COLUMNS, "train_seconds", "wall_seconds", "threads", "precision", "cpu", "resprout", "git_commit",
           "git_dirty", "status", "finished", "run"]
BIT_COLUMNS = ["label", "seed", "generation", "member", "fingerprint", "images", "labels", "bits"]
_INT = {"seed", "generation", "generations", "final", "test_images", "epochs", "total_epochs", "params", "macs",
        "paper_params", "slim_params", "slim_macs", "threads", "images", "filters"}
_FLOAT = {"top1", "best_top1", "slim_top1", "slim_bnfix_top1", "fit_abs", "reset_abs", "map", "live_share",
          "train_seconds", "wall_seconds", *FILTER_COLUMNS}


def portable_fingerprint(config: dict, teachers: dict[str, str] | None = None) -> str:
    """The configuration fingerprint (:meth:`resprout.config.Config.fingerprint`) with every teacher run directory
    replaced by ``teachers[path]`` (``"@name:<its fingerprint>"``) and without the precision (the machine's: see
    the module's docstring)."""
    from resprout.config import config_from_dict

    ident = config_from_dict(config).identity() if not isinstance(config, Config) else config.identity()
    ident.pop("precision", None)  # Config.identity already leaves out fp32, so fp32 rows keep their fingerprints
    if ident.get("teacher"):
        ident["teacher"] = [(teachers or {}).get(str(t), (teachers or {}).get(str(Path(t).resolve()), str(t)))
                            for t in ident["teacher"]]
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- reading and writing ---------------------------------------------------------------------------------------------
def paths(name: str, folder: Path = RESULTS) -> tuple[Path, Path]:
    return folder / f"{name}.csv", folder / f"{name}.correct.csv"


def _typed(row: dict) -> dict:
    out = {}
    for k, v in row.items():
        if v in ("", None):
            out[k] = None
        elif k in _INT:
            out[k] = int(v)
        elif k in _FLOAT:
            out[k] = float(v)
        elif k == "git_dirty":
            out[k] = {"True": True, "False": False}.get(v)
        else:
            out[k] = v
    return out


def read(name: str, folder: Path = RESULTS) -> tuple[list[dict], list[dict]]:
    """(rows, bit rows) of ``results/<name>.csv`` and its companion; empty when not written yet."""
    out = []
    for path in paths(name, folder):
        if not path.is_file():
            out.append([])
            continue
        with path.open(newline="") as fh:
            out.append([_typed(r) for r in csv.DictReader(fh)])
    return out[0], out[1]


def write(name: str, rows: list[dict], bits: list[dict], folder: Path = RESULTS, order: list[str] | None = None
          ) -> None:
    """Write both files, rows sorted by label (in ``order``), seed and generation."""
    rank = {label: i for i, label in enumerate(order or [])}

    def key(r: dict) -> tuple:
        return rank.get(r["label"], len(rank)), str(r["label"]), r["seed"], r["generation"]

    folder.mkdir(parents=True, exist_ok=True)
    for path, columns, body in zip(paths(name, folder), (COLUMNS, BIT_COLUMNS), (rows, bits)):
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns, lineterminator="\n")
            w.writeheader()
            for r in sorted(body, key=key):
                w.writerow({c: ("" if r.get(c) is None else (repr(r[c]) if isinstance(r[c], float) else r[c]))
                            for c in columns})
        tmp.replace(path)


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` rows with every (label, seed) that ``new`` holds replaced by ``new``'s rows."""
    replaced = {(r["label"], r["seed"]) for r in new}
    return [r for r in old if (r["label"], r["seed"]) not in replaced] + list(new)


def finished_runs(rows: list[dict]) -> dict[tuple[str, int], str]:
    """(label, seed) -> fingerprint of the finished runs recorded (their ``final`` row)."""
    return {(r["label"], r["seed"]): r["fingerprint"] for r in rows if r["final"] == 1 and r["status"] == "finished"}


# -- exporting a run ---------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _data_shape(data_keys: str) -> tuple[tuple[int, int, int], int, int | None]:
    """(input shape, classes, and the images a run scored without a per-image record: the queries of a
    re-identification set, the test images of a detection set; else None) of a run's data keys (JSON)."""
    from resprout.config import make_config
    from resprout.data.detection.loaders import DetectionData
    from resprout.inputs import build_dataset

    ds = build_dataset(make_config(json.loads(data_keys)))
    return ds.input_shape, ds.num_classes, len(ds.test) if isinstance(ds, DetectionData) else getattr(ds, "queries",
                                                                                                        None)


def _data_keys(config: dict) -> str:
    return json.dumps({k: config[k] for k in ("data", "data_path", "per_class", "val_split", "data_seed",
                                              "image_size", "image_fit", "channels", "data_options") if k in config},
                      sort_keys=True)


def filter_shares(model) -> dict:
    """The number of convolution filters (every output channel of every conv, depthwise included) and the share
    whose l1 norm lies below each of :data:`FILTER_THRESHOLDS` (Filter Grafting, Fig. 7)."""
    import torch
    from torch import nn

    norms = [m.weight.detach().abs().flatten(1).sum(1) for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not norms:
        return {}
    l1 = torch.cat(norms)
    return {"filters": len(l1), **{c: float((l1 < t).float().mean()) for c, t in zip(FILTER_COLUMNS,
                                                                                     FILTER_THRESHOLDS)}}


def _final_network(run_dir: Path, config: dict, member: str) -> dict:
    """Parameters, MACs and filter shares of ``member``'s final network (its surgery replayed); nothing for a
    pseudo-member without weights (an ensemble)."""
    from resprout.errors import ResproutError
    from resprout.methods.teachers import load_run_model
    from resprout.surgery.profile import profile_model

    shape, classes, _ = _data_shape(_data_keys(config))
    try:
        model, _ = load_run_model(run_dir, in_channels=shape[0], num_classes=classes, member=member,
                                  what="reproduction run")
    except ResproutError:
        return {}
    prof = profile_model(model, shape)
    return {"params": prof.params, "macs": prof.macs, **filter_shares(model)}


def channel_record(results: dict) -> dict:
    """From a run's results (its checkpoint's): ``live_share``, of the channels Network Slimming judges or Neural
    Rejuvenation monitors, the share alive (BN scale above the liveness threshold) just before the first pruning or
    rejuvenation; ``paper_params``, NR's own count of its last rebuilt network's parameters (the count its target
    holds; the real weights are ``params``); ``rejuvenated_at``, the epochs of NR's rejuvenations, joined by ``;``.
    Nothing for a run that pruned or rejuvenated nothing."""
    nr = (results.get("rejuvenation") or {}).get("rejuvenations") or []
    first = results.get("slimming") if (results.get("slimming") or {}).get("live_before") else (nr[0] if nr else {})
    out = {}
    if first.get("live_before"):
        live = first["live_before"]
        out["live_share"] = sum(live.values()) / sum(first["widths_before"][k] for k in live)
    if nr:
        out["rejuvenated_at"] = ";".join(f"{x['epoch']:g}" for x in nr)
    if nr and (nr[-1].get("counts_after") or {}).get("paper_params") is not None:
        out["paper_params"] = int(nr[-1]["counts_after"]["paper_params"])
    return out


def _run_results(run_dir: Path) -> dict:
    from resprout.engine.rundir import SavedRun
    from resprout.errors import ResproutError

    try:
        return SavedRun.open(run_dir).checkpoint().get("results") or {}
    except ResproutError:  # no checkpoint (a run kept only its best weights): nothing to read
        return {}


def choose_member(curves: dict, wanted: str | None) -> str:
    """The member a row reports: ``wanted``, else ``model``, else ``peer_1`` (a run whose model became peers: the
    grafting paper records the first network)."""
    for m in ([wanted] if wanted else ["model", "peer_1"]):
        if (m, "test", "top1") in curves:
            return m
    have = sorted({m for (m, split, metric) in curves if split == "test" and metric == "top1"})
    raise ValueError(f"no test top-1 of member {wanted or 'model or peer_1'} (members: {', '.join(have)})")


def export_run(run_dir: Path, label: str, *, role: str = "row", member: str | None = None,
               teachers: dict[str, str] | None = None) -> tuple[list[dict], list[dict]]:
    """(rows, bit rows) of a finished run: one per generation."""
    from resprout.analysis.report import load_run
    from resprout.engine.evaluation import CORRECT_FILE

    run = load_run(run_dir)
    rec = run.record
    cfg = rec.config
    member = choose_member(run.curves, member)
    fp = portable_fingerprint(cfg, teachers)
    gens = run.generations.get(member, {})
    G = cfg.get("generations", 1)
    test = run.curves.get((member, "test", "top1"), [])
    maps = run.curves.get((member, "test", "map"), [])  # a re-identification or a detection run's
    queries = _data_shape(_data_keys(cfg))[2] if maps else None
    seconds = run.curves.get((member if (member, "train", "seconds") in run.curves else "peer_1", "train",
                              "seconds"), [])
    correct_path = run_dir / CORRECT_FILE.format(member=member)
    correct = json.loads(correct_path.read_text()) if correct_path.is_file() else {}
    network = _final_network(run_dir, cfg, member)
    channels = channel_record(_run_results(run_dir)) if member == "model" else {}
    env = rec.env
    precision = env.get("precision") or cfg.get("precision") or "fp32"
    rows, bits = [], []
    for g in range(G):
        metrics = gens.get(g, {})
        last = [v for gg, _, v in test if gg == g]
        top1 = metrics.get("test_top1", last[-1] if last else None)
        last_map = [v for gg, _, v in maps if gg == g]
        upto = [v for gg, _, v in test if gg <= g]
        row = {"label": label, "role": role, "seed": cfg["seed"], "generation": g + 1, "generations": G,
               "final": int(g == G - 1), "member": member, "fingerprint": fp, "method": cfg["method"],
               "top1": top1, "best_top1": max(upto) if upto else None, "slim_top1": metrics.get("slim_top1"),
               "slim_bnfix_top1": metrics.get("slim_bnfix_top1"), "fit_abs": metrics.get("fit_abs"),
               "reset_abs": metrics.get("reset_abs"),
               "map": last_map[-1] if last_map else None,
               "test_images": correct.get("images", queries), "test_labels": correct.get("labels"),
               "epochs": cfg["epochs"], "total_epochs": cfg["epochs"] * (g + 1),
               **(network if g == G - 1 else {}), **(channels if g == G - 1 else {}),
               "slim_params": _int(metrics.get("slim_params")), "slim_macs": _int(metrics.get("slim_macs")),
               "train_seconds": sum(v for gg, _, v in seconds if gg <= g),
               "wall_seconds": rec.updated - rec.created if g == G - 1 else None,
               "threads": env.get("threads"), "precision": precision, "cpu": env.get("cpu"),
               "resprout": env.get("resprout"),
               "git_commit": env.get("git_commit"), "git_dirty": env.get("git_dirty"), "status": rec.status,
               "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(rec.updated)), "run": run_dir.name}
        rows.append(row)
        packed = correct.get("generations", {}).get(str(g + 1))
        if packed:
            bits.append({"label": label, "seed": cfg["seed"], "generation": g + 1, "member": member,
                         "fingerprint": fp, "images": correct["images"], "labels": correct["labels"],
                         "bits": packed})
    return rows, bits


def _int(v) -> int | None:
    return None if v is None else int(round(v))


# -- the code a result came from -------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=256)
def code_changed_since(commit: str | None, root: Path = ROOT, package: str = "resprout") -> tuple[str, ...] | None:
    """The files of ``package/`` in the tree at ``root`` (its working tree, uncommitted changes included) that differ
    from ``commit``, relative to ``package/`` (empty: the same code); None when it cannot be told (no commit
    recorded, not a git checkout, a commit this clone lacks)."""
    if not commit:
        return None
    try:
        out = subprocess.run(["git", "diff", "--name-only", "--relative=" + package, commit, "--", package], cwd=root,
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(sorted(out.stdout.split())) if out.returncode == 0 else None


__all__ = ["BIT_COLUMNS", "COLUMNS", "FILTER_COLUMNS", "FILTER_THRESHOLDS", "RESULTS", "channel_record",
           "choose_member", "code_changed_since", "export_run", "filter_shares", "finished_runs", "merge", "paths",
           "portable_fingerprint", "read", "write"]
