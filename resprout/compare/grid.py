"""The grid of a comparison: which runs (cells) ``resprout compare`` trains, with what budget, validated up front.

A cell is one method (or composition, ``ke+ls``) at one seed. Every cell shares the data, split, model and every
other key; only ``method``, ``seed``, ``generations`` and ``epochs`` differ, and the last two follow from the
budget:

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

from resprout.config import Config, config_from_dict, make_config, parse_overrides, split_pairs
from resprout.errors import ConfigError

COMPARE_KEYS = ("method", "seeds", "budget", "jobs", "baseline")
BUDGETS = ("equal", "per-method")
# methods whose idea lives between the trainer's generations (a class may say so itself: ``uses_generations``)
GENERATIONAL = {"ke", "ban", "nr"}
# an option with this value puts a method's phases on the generations (dsd.phases, repr.schedule)
_PHASE_OPTIONS = ("phases", "schedule")


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

    @property
    def key(self) -> str:
        """The run directory's name: method, shape and seed (``ke+ls-3x5-s0``)."""
        return f"{_slug(self.method)}-{self.generations}x{self.epochs}-s{self.seed}"

    @property
    def group(self) -> str:
        """Cells that differ only by seed share a group (one row of the table)."""
        return f"{_slug(self.method)}-{self.generations}x{self.epochs}"

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


def parse_args(args: list[str]) -> tuple[dict, dict]:
    """(compare keys, the other keys as raw config values) of ``key=value`` arguments."""
    pairs = split_pairs(args)
    if "seed" in pairs:
        raise ConfigError("compare takes seeds=0,1,2 (a list), not seed=")
    ours = {k: pairs.pop(k) for k in COMPARE_KEYS if k in pairs}
    if "method" not in ours:
        raise ConfigError("compare needs method=A,B,... (e.g. method=ce,ke; a composition is ke+ls)")
    rest = parse_overrides([f"{k}={v}" for k, v in pairs.items()])
    return ours, rest


def build_grid(args: list[str], *, cpu_count: int | None = None) -> Grid:
    """The validated grid of ``resprout compare`` arguments (no model or data is built here; see
    :func:`resprout.compare.probe.probe_grid`)."""
    from resprout.methods import build_methods, canonical_name, resolved_options

    ours, rest = parse_args(args)
    methods = [m.strip() for m in ours["method"].split(",") if m.strip()]
    if not methods:
        raise ConfigError("bad value for method: give one or more methods separated by commas, e.g. method=ce,ke")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"bad value for method: {ours['method']!r} names a method twice")
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
    used = {canonical_name(n) for spec in methods + ([baseline] if baseline else [])
            for n in spec.split("+") if n.strip()}
    for family in options:
        if canonical_name(family) not in used:
            raise ConfigError(f"options {family}.* given but no method of the comparison uses {family!r} "
                              f"(method={','.join(methods)})")

    def cell_config(spec: str, seed: int, generations: int, epochs: int) -> tuple[Config, list]:
        names = {canonical_name(n.strip()) for n in spec.split("+")}
        raw = {**rest, "method": spec, "seed": seed, "generations": generations, "epochs": epochs,
               "progress": "none", "threads": threads,
               "method_options": {f: o for f, o in options.items() if canonical_name(f) in names}}
        try:
            cfg = make_config(raw)
            built = build_methods(cfg)
            cfg = make_config({**cfg.to_dict(), "method_options": resolved_options(built)})
        except ConfigError as e:
            raise ConfigError(f"method={spec}: {e}") from None
        return cfg, built

    def shape(spec: str) -> tuple[int, int]:
        _, built = cell_config(spec, seeds[0], G, E)
        if uses_generations(built):
            return G, E
        return (1, E * G) if budget == "equal" else (1, E)

    cells: list[Cell] = []
    for spec in methods:
        g, e = shape(spec)
        for seed in seeds:
            cfg, _ = cell_config(spec, seed, g, e)
            cells.append(Cell(spec, seed, g, e, cfg, threads=threads))
    if baseline:
        _, built = cell_config(baseline, seeds[0], 1, E * G)
        if uses_generations(built):
            raise ConfigError(f"bad value for baseline: {baseline!r} uses generations; the equal-compute baseline "
                              f"is a single-run method (e.g. baseline=ce or baseline=ls)")
        marked = [c for c in cells if c.method == baseline and (c.generations, c.epochs) == (1, E * G)]
        if not marked:
            for seed in seeds:
                cfg, _ = cell_config(baseline, seed, 1, E * G)
                marked.append(Cell(baseline, seed, 1, E * G, cfg, threads=threads))
            cells += marked
        for c in marked:
            c.baseline = True
    return Grid(cells, methods, seeds, budget, jobs, threads, E, G, baseline, base=rest)


def check_run_dirs(grid: Grid, runs_dir: Path) -> None:
    """Refuse a grid whose run directories hold runs of another configuration (nothing is changed)."""
    from resprout.engine.rundir import RUN_FILE, read_run_file

    for c in grid.cells:
        d = runs_dir / c.key
        if not (d / RUN_FILE).exists():
            continue
        saved = config_from_dict(read_run_file(d)["config"])
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
            "cells": [{"key": c.key, "method": c.method, "seed": c.seed, "generations": c.generations,
                       "epochs": c.epochs, "baseline": c.baseline, "fingerprint": c.config.fingerprint()}
                      for c in grid.cells]}


__all__ = ["BUDGETS", "COMPARE_KEYS", "Cell", "Grid", "build_grid", "check_run_dirs", "grid_summary",
           "uses_generations"]
