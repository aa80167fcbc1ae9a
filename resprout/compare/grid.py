"""The grid of a comparison: which runs (cells) ``resprout compare`` trains, with what budget, validated up front.

A cell is one *row* at one seed. A row is a method (or composition, ``ke+ls``) with a label and, optionally, keys
of its own: ``method=ce,ke`` gives the rows ``ce`` and ``ke`` with no keys of their own; ``row.<label>=<method>
[key=value ...]`` (one argument, the row's own keys separated by spaces) adds a row that differs by options, e.g.
``row.noise="graft graft.scion=noise"`` or ``row.ce-60="ce epochs=60"``. Every cell shares the data, split, model
and every other key, except the keys its row overrides; ``seed``, ``generations`` and ``epochs`` then follow from
the budget, applied to the row's own ``epochs`` and ``generations`` when it sets them:

* ``E = epochs`` and ``G = generations`` as given; the total budget is ``T = E x G`` epochs.
* A method that *uses generations* (KE re-initializes between them, Born-Again draws a new student, Neural
  Rejuvenation restarts; RePr with ``repr.schedule=generations``, DSD with ``dsd.phases=generations``) runs
  ``G x E``. Phases *inside* a generation (DSD's default dense/sparse/re-dense thirds, RePr's default cycles of
  ``S1 + S2`` epochs within one run, as the KE paper ran it) are part of its epochs: they cost what they take,
  nothing is added.
* ``budget=equal`` (default): every other method runs one generation of ``T`` epochs, so every cell trains the
  same number of epochs (forward/backward passes over the training set; Born-Again's teacher forward and CS-KD's
  second view are extra work per epoch that the budget does not count).
* ``budget=per-method``: every other method runs one generation of ``E`` epochs (the papers' protocol: a baseline
  ``N_1`` of one generation against ``N_G`` of a multi-generation method).
* The **equal-compute baseline** is ``baseline`` (default ``ce``) trained one generation of ``T`` epochs under one
  schedule. Under ``budget=equal`` the grid's own ``ce`` cell is it; otherwise it is added. ``baseline=none``
  leaves it out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from resprout.config import Config, make_config, merge, parse_overrides, split_pairs
from resprout.config import _set as route_key  # routes a dotted key (graft.scion) to its option family
from resprout.errors import ConfigError

COMPARE_KEYS = ("method", "seeds", "budget", "jobs", "baseline")
ROW_PREFIX = "row."
BUDGETS = ("equal", "per-method")
# methods whose idea lives between the trainer's generations (a class may say so itself: ``uses_generations``)
GENERATIONAL = {"ke", "ban", "nr"}
# an option with this value puts a method's phases on the generations (dsd.phases, repr.schedule)
_PHASE_OPTIONS = ("phases", "schedule")


@dataclass
class RowSpec:
    """One row of a comparison: a label, a method (``ke+ls``) and the keys this row sets for itself: typed values
    (as a TOML file gives them), or command-line text with ``text=True``."""

    label: str
    method: str
    keys: dict = field(default_factory=dict)
    text: bool = False  # the values are command-line text (parsed as on the command line), not typed values


@dataclass
class Cell:
    """One run of the grid."""

    method: str  # "ke+ls"
    seed: int
    generations: int
    epochs: int
    config: Config  # the resolved configuration (method options filled in), as run.json will hold it
    baseline: bool = False  # the equal-compute baseline
    threads: int = 1
    label: str = ""  # the row's label (the method when the row has no keys of its own)

    def __post_init__(self) -> None:
        self.label = self.label or self.method

    @property
    def key(self) -> str:
        """The run directory's name: row label, shape and seed (``ke+ls-3x5-s0``)."""
        return f"{self.group}-s{self.seed}"

    @property
    def group(self) -> str:
        """Cells that differ only by seed share a group (one row of the table)."""
        return f"{_slug(self.label)}-{self.generations}x{self.epochs}"

    @property
    def total_epochs(self) -> int:
        return self.generations * self.epochs


@dataclass
class Grid:
    cells: list[Cell]
    methods: list[str]
    seeds: list[int]
    budget: str
    jobs: int
    threads: int  # per run
    epochs: int  # E as given
    generations: int  # G as given
    baseline: str | None
    base: dict = field(default_factory=dict)  # the shared keys as given

    def groups(self) -> dict[str, list[Cell]]:
        out: dict[str, list[Cell]] = {}
        for c in self.cells:
            out.setdefault(c.group, []).append(c)
        return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9+._-]", "-", text)


def _int_list(key: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"bad value for {key}: {text!r} (comma-separated integers, e.g. {key}=0,1,2)") from None
    if not values or any(v < 0 for v in values):
        raise ConfigError(f"bad value for {key}: {text!r} (comma-separated integers >= 0, e.g. {key}=0,1,2)")
    if len(set(values)) != len(values):
        raise ConfigError(f"bad value for {key}: {text!r} names a value twice")
    return values


def uses_generations(methods: list) -> bool:
    """Whether a composition of built methods spends the trainer's generations (see the module docstring)."""
    for m in methods:
        own = getattr(m, "uses_generations", None)
        if own is not None:
            if own() if callable(own) else own:
                return True
            continue
        if m.name in GENERATIONAL or any(getattr(m.options, o, None) == "generations" for o in _PHASE_OPTIONS):
            return True
    return False


def parse_args(args: list[str], *, rows_given: bool = False) -> tuple[dict, dict]:
    """(compare keys with ``rows``: the ``row.`` arguments as (label, text), the other keys as raw config values) of
    ``key=value`` arguments."""
    pairs = split_pairs(args)
    if "seed" in pairs:
        raise ConfigError("compare takes seeds=0,1,2 (a list), not seed=")
    ours = {k: pairs.pop(k) for k in COMPARE_KEYS if k in pairs}
    ours["rows"] = [(k[len(ROW_PREFIX):], pairs.pop(k)) for k in list(pairs) if k.startswith(ROW_PREFIX)]
    if "method" not in ours and not ours["rows"] and not rows_given:
        raise ConfigError("compare needs method=A,B,... (e.g. method=ce,ke; a composition is ke+ls) or rows "
                          "row.<label>=\"<method> key=value ...\"")
    rest = parse_overrides([f"{k}={v}" for k, v in pairs.items()])
    return ours, rest


def parse_row(label: str, text: str) -> RowSpec:
    """``row.<label>=<method> key=value ...``: the method, then the row's own keys, separated by spaces."""
    words = text.split()
    if not label.strip() or not words or "=" in words[0]:
        raise ConfigError(f"bad row {ROW_PREFIX}{label}={text!r}: expected {ROW_PREFIX}<label>=\"<method> "
                          f"[key=value ...]\", e.g. row.noise=\"graft graft.scion=noise\"")
    keys = split_pairs(words[1:])
    for k in keys:
        if k in ("method", "seed", "seeds") or k in COMPARE_KEYS:
            raise ConfigError(f"bad row {ROW_PREFIX}{label}: a row cannot set {k}= (the method comes first; "
                              f"seeds, budget, jobs and baseline belong to the whole comparison)")
    return RowSpec(label.strip(), words[0], dict(keys), text=True)


def _rows(ours: dict, rows: list[RowSpec] | None) -> list[RowSpec]:
    """Every row of the grid: ``method=`` first (one row per method, no keys of its own), then the ``row.`` keys,
    then ``rows`` given from Python; labels must be unique (also as run directory names)."""
    specs = []
    if "method" in ours:
        methods = [m.strip() for m in ours["method"].split(",") if m.strip()]
        if not methods:
            raise ConfigError("bad value for method: give one or more methods separated by commas, e.g. "
                              "method=ce,ke")
        if len(set(methods)) != len(methods):
            raise ConfigError(f"bad value for method: {ours['method']!r} names a method twice")
        specs += [RowSpec(m, m) for m in methods]
    specs += [parse_row(label, text) for label, text in ours.get("rows", [])]
    specs += list(rows or [])
    slugs: dict[str, str] = {}
    for r in specs:
        if not r.method.strip():
            raise ConfigError(f"row {r.label!r} names no method")
        if _slug(r.label) in slugs:
            raise ConfigError(f"two rows are labelled {r.label!r} and {slugs[_slug(r.label)]!r} (as run directory "
                              f"names they are the same); give every row its own label")
        slugs[_slug(r.label)] = r.label
    return specs


def build_grid(args: list[str], *, cpu_count: int | None = None, rows: list[RowSpec] | None = None,
               shared: dict | None = None) -> Grid:
    """The validated grid of ``resprout compare`` arguments, plus ``rows`` and ``shared`` keys (typed values, as a
    TOML file gives them) from Python (no model or data is built here; see
    :func:`resprout.compare.probe.probe_grid`)."""
    from resprout.methods import build_methods, canonical_name, resolved_options

    ours, rest = parse_args(args, rows_given=bool(rows))
    for k, v in (shared or {}).items():  # typed values: "none" stays the string none
        layer: dict = {}
        route_key(layer, k, v, from_text=False)
        rest = merge(rest, layer)
    specs = _rows(ours, rows)
    seeds = _int_list("seeds", ours.get("seeds", "0"))
    budget = ours.get("budget", "equal")
    if budget not in BUDGETS:
        raise ConfigError(f"bad value for budget: {budget!r} (allowed: {', '.join(BUDGETS)})")
    try:
        jobs = int(ours.get("jobs", "1"))
    except ValueError:
        raise ConfigError(f"bad value for jobs: {ours['jobs']!r} (an integer >= 1)") from None
    if jobs < 1:
        raise ConfigError(f"bad value for jobs: {jobs} (an integer >= 1)")
    baseline = ours.get("baseline", "ce").strip()
    baseline = None if baseline in ("none", "") else baseline

    base = make_config(rest)  # the shared keys alone: a bad key or value is refused here, once
    E, G = base.epochs, base.generations
    total_threads = base.threads or cpu_count or os.cpu_count() or 1
    threads = max(1, total_threads // jobs)  # threads= is the comparison's total, split between the jobs

    options = dict(rest.pop("method_options", {}))
    used = {canonical_name(n) for spec in [r.method for r in specs] + ([baseline] if baseline else [])
            for n in spec.split("+") if n.strip()}
    for family in options:
        if canonical_name(family) not in used:
            raise ConfigError(f"options {family}.* given but no method of the comparison uses {family!r} "
                              f"(method={','.join(r.method for r in specs)})")

    def own_keys(row: RowSpec) -> dict:
        """The row's own keys as raw config values (text values parsed as on the command line)."""
        raw: dict = {}
        for k, v in row.keys.items():
            layer: dict = {}
            route_key(layer, k, v, from_text=row.text)
            raw = merge(raw, layer)
        return raw

    def cell_config(row: RowSpec, seed: int, generations: int, epochs: int) -> tuple[Config, list]:
        spec = row.method
        names = {canonical_name(n.strip()) for n in spec.split("+")}
        mine = own_keys(row)
        common = {f: o for f, o in options.items() if canonical_name(f) in names}
        raw = merge({**rest, "method_options": common}, mine,
                    {"method": spec, "seed": seed, "generations": generations, "epochs": epochs,
                     "progress": "none", "threads": threads})
        what = f"row {row.label!r} (method={spec})" if row.label != spec or row.keys else f"method={spec}"
        try:
            cfg = make_config(raw)
            built = build_methods(cfg)
            cfg = make_config({**cfg.to_dict(), "method_options": resolved_options(built)})
        except ConfigError as e:
            raise ConfigError(f"{what}: {e}") from None
        return cfg, built

    def shape(row: RowSpec) -> tuple[int, int]:
        own = make_config(merge(rest, own_keys(row), {"method": row.method}))
        e, g = own.epochs, own.generations
        _, built = cell_config(row, seeds[0], g, e)
        if uses_generations(built):
            return g, e
        return (1, e * g) if budget == "equal" else (1, e)

    cells: list[Cell] = []
    for row in specs:
        g, e = shape(row)
        for seed in seeds:
            cfg, _ = cell_config(row, seed, g, e)
            cells.append(Cell(row.method, seed, g, e, cfg, threads=threads, label=row.label))
    if baseline:
        plain = RowSpec(baseline, baseline)
        _, built = cell_config(plain, seeds[0], 1, E * G)
        if uses_generations(built):
            raise ConfigError(f"bad value for baseline: {baseline!r} uses generations; the equal-compute baseline "
                              f"is a single-run method (e.g. baseline=ce or baseline=ls)")
        own = {r.label for r in specs if not r.keys}
        marked = [c for c in cells if c.method == baseline and c.label in own and
                  (c.generations, c.epochs) == (1, E * G)]
        if not marked:
            if f"{_slug(baseline)}-1x{E * G}" in {c.group for c in cells}:  # a row of that name with its own keys
                plain = RowSpec(f"{baseline} (equal compute)", baseline)
            for seed in seeds:
                cfg, _ = cell_config(plain, seed, 1, E * G)
                marked.append(Cell(baseline, seed, 1, E * G, cfg, threads=threads, label=plain.label))
            cells += marked
        for c in marked:
            c.baseline = True
    return Grid(cells, [r.label for r in specs], seeds, budget, jobs, threads, E, G, baseline, base=rest)


def check_run_dirs(grid: Grid, runs_dir: Path) -> None:
    """Refuse a grid whose run directories hold runs of another configuration (nothing is changed)."""
    from resprout.engine.rundir import SavedRun

    for c in grid.cells:
        d = runs_dir / c.key
        if not SavedRun.exists(d):
            continue
        saved = SavedRun.open(d).config
        if saved.fingerprint() != c.config.fingerprint():
            a, b = saved.identity(), c.config.identity()
            diff = [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            raise ConfigError(f"{d} holds a run with another configuration ({'; '.join(diff[:3])}); nothing was "
                              f"changed: choose another --out")


def grid_summary(grid: Grid) -> dict:
    """What compare.json records about the grid."""
    return {"methods": grid.methods, "seeds": grid.seeds, "budget": grid.budget, "jobs": grid.jobs,
            "threads_per_run": grid.threads, "epochs": grid.epochs, "generations": grid.generations,
            "baseline": grid.baseline,
            "cells": [{"key": c.key, "label": c.label, "method": c.method, "seed": c.seed, "generations": c.generations,
                       "epochs": c.epochs, "baseline": c.baseline, "fingerprint": c.config.fingerprint()}
                      for c in grid.cells]}


__all__ = ["BUDGETS", "COMPARE_KEYS", "Cell", "Grid", "RowSpec", "build_grid", "check_run_dirs", "grid_summary",
           "parse_row", "uses_generations"]
