"""The reproduction file: one TOML file per paper table under ``reproductions/``, read and checked in full before
anything runs (a bad key or value is one ``ConfigError`` line naming the file, the key and what is allowed).

::

    title = "Knowledge Evolution, Table 2: N_g of KE on CE"   # what the page calls it
    paper = "ke"                    # ke, nr, grafting or ktan
    tables = "Table 2"              # the paper's tables and sections it tests
    analog = "Fashion-MNIST, 100 images per class, ..."  # what the analog changes: data, model width, epochs
    seeds = [0, 1, 2]
    budget = "per-method"           # resprout compare's budget (default per-method: every row as configured)
    baseline = "CE"                 # the row the figure marks as the baseline (a reference, as in the claims)

    [keys]                          # keys every row shares: any `resprout train` key, [keys.ke] for ke.* options
    data = "fashion-mnist"
    epochs = 30

    [depends.teacher]               # optional: single runs trained first (with their own seed key);
    model = "resnet20"              # a row refers to one as teacher = "@teacher"

    [[rows]]                        # one row of the table: a label, a method, and keys of its own
    label = "KE"
    method = "ke"
    keys = { generations = 10 }
    member = "model"                # optional: the member whose accuracy the row reports (default model,
                                    # or peer_1 for runs whose model became peers, the grafting paper's choice)

    [[claims]]                      # a claim of the paper, tested on the rows
    claim = "KE improves on its first generation"
    a = "KE@10"                     # LABEL (its last generation), LABEL@g (generation g), LABEL@g:slim (KE's H_g),
                                    # LABEL@g:slim-bn (H_g with its BN statistics re-estimated, beyond the paper),
                                    # LABEL:filters<0.1 (share of the final network's filters with l1 < 0.1),
                                    # LABEL:map (a re-id run's mAP; its top-1 is rank-1);
                                    # OTHER/LABEL...: a row of the reproduction OTHER (its runs, not trained here)
    b = "KE@1"
    direction = ">"                 # ">" or "<"
    margin = 0.0                    # points: the claim is a - b > margin (or < margin)
    paper = { a = 58.11, b = 53.57, metric = "top-1 (%)", where = "Table 2, CUB-200" }

The paper's numbers are data typed from the paper, with the table cited in ``where``.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from resprout.compare.grid import BUDGETS, RowSpec
from resprout.errors import ConfigError

PAPERS = {"ke": "Knowledge Evolution (Taha et al., CVPR 2021)",
          "nr": "Neural Rejuvenation (Qiao et al., CVPR 2019)",
          "grafting": "Filter Grafting (Meng et al.; Cheng et al., Grafting+)",
          "ktan": "KTAN (Liu et al.)"}
TOP_KEYS = {"title", "paper", "tables", "analog", "seeds", "budget", "baseline", "keys", "depends", "rows", "claims"}
ROW_KEYS = {"label", "method", "keys", "member"}
CLAIM_KEYS = {"claim", "a", "b", "direction", "margin", "paper"}
PAPER_KEYS = {"a", "b", "metric", "where"}
_REF = re.compile(r"^(?:(?P<table>[A-Za-z0-9_.-]+)/)?(?P<label>[^@:/]+?)(?:@(?P<gen>\d+))?"
                  r"(?::(?P<what>slim-bn|slim|map|filters<[0-9.e-]+))?$")
FILTER_THRESHOLDS = (1e-3, 1e-2, 0.1, 1.0)  # as benchmarks.reproduction.results records them
DEP_PREFIX = "@"


@dataclass
class Ref:
    """A claim's operand: a row (or dependency), a generation (None: the last) and what is measured: the dense
    network's top-1 (default; rank-1 of a re-identification run), KE's slim network's top-1 (``slim``; with
    ``bnfix``, with its BN statistics re-estimated on training batches instead of the dense network's), a re-id
    run's mAP (``map``), or the share of filters whose l1 norm is below a threshold (``filters<0.1``; of the final
    network)."""

    label: str
    generation: int | None = None
    slim: bool = False
    filters: float | None = None  # the threshold of a filter share
    table: str | None = None  # another reproduction's row (its runs are reused, not trained again)
    map: bool = False  # a re-identification run's mAP instead of its top-1 (rank-1)
    bnfix: bool = False  # with slim: the slim network with its BN re-estimated (beyond the paper)

    def text(self) -> str:
        name = f"{self.table}/{self.label}" if self.table else self.label
        if self.filters is not None:
            return f"{name} filters with l1 < {self.filters:g}"
        return name + (f" N_{self.generation}" if self.generation and not self.slim else "") + \
            (f" H_{self.generation or 'G'}" if self.slim else "") + (" (BN re-estimated)" if self.bnfix else "") + \
            (" mAP" if self.map else "")

    @property
    def column(self) -> str:
        if self.filters is not None:
            return f"filters_lt_{self.filters:g}"
        if self.slim:
            return "slim_bnfix_top1" if self.bnfix else "slim_top1"
        return "map" if self.map else "top1"


@dataclass
class Claim:
    claim: str
    a: Ref
    b: Ref
    direction: str = ">"
    margin: float = 0.0  # points
    paper: dict = field(default_factory=dict)


@dataclass
class Row:
    label: str
    method: str
    keys: dict = field(default_factory=dict)
    member: str | None = None


@dataclass
class Spec:
    name: str  # the file's stem
    path: Path
    title: str
    paper: str
    tables: str
    analog: str
    seeds: list[int]
    budget: str
    baseline: str
    keys: dict
    depends: dict[str, dict]
    rows: list[Row]
    claims: list[Claim]

    def row(self, label: str) -> Row | None:
        return next((r for r in self.rows if r.label == label), None)

    def row_specs(self, teachers: dict[str, str] | None = None) -> list[RowSpec]:
        """The compare rows, with ``teacher = "@dep"`` replaced by that dependency's run directory (``teachers``)."""
        out = []
        for r in self.rows:
            keys = dict(r.keys)
            if isinstance(keys.get("teacher"), str) and keys["teacher"].startswith(DEP_PREFIX):
                dep = keys["teacher"][1:]
                keys["teacher"] = (teachers or {}).get(dep, f"<the run of dependency {dep}>")
            out.append(RowSpec(r.label, r.method, keys))
        return out

    def uses_dependency(self, row: Row) -> str | None:
        t = row.keys.get("teacher")
        return t[1:] if isinstance(t, str) and t.startswith(DEP_PREFIX) else None


def _flatten(table: dict, prefix: str = "") -> dict:
    """``{"ke": {"split_rate": 0.8}}`` -> ``{"ke.split_rate": 0.8}`` (model and data options as ``model.x``)."""
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if not prefix and k in ("model_options", "data_options") and isinstance(v, dict):
            key = k.split("_")[0]  # [model_options] head = "gap" is model.head, as in a run's config file
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _need(raw: dict, key: str, kind, where: str):
    if key not in raw:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"{where}: bad value for {key}: {value!r} (expected {getattr(kind, '__name__', kind)})")
    return value


def _unknown(raw: dict, allowed: set, where: str) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r}; allowed: {', '.join(sorted(allowed))}")


def parse_ref(text: str, where: str) -> Ref:
    m = _REF.match(text.strip()) if isinstance(text, str) else None
    if not m:
        raise ConfigError(f"{where}: bad row reference {text!r} (LABEL, LABEL@g, LABEL@g:slim, LABEL@g:slim-bn, "
                          f"LABEL:map or LABEL:filters<0.1)")
    gen = int(m["gen"]) if m["gen"] else None
    if gen is not None and gen < 1:
        raise ConfigError(f"{where}: bad row reference {text!r}: generations count from 1")
    what = m["what"] or ""
    if what.startswith("filters<"):
        try:
            threshold = float(what[len("filters<"):])
        except ValueError:
            threshold = None
        if threshold not in FILTER_THRESHOLDS or gen is not None:
            raise ConfigError(f"{where}: bad row reference {text!r}: filter shares are recorded for the final "
                              f"network at l1 < {', '.join(f'{t:g}' for t in FILTER_THRESHOLDS)}")
        return Ref(m["label"].strip(), None, False, threshold, m["table"])
    return Ref(m["label"].strip(), gen, what in ("slim", "slim-bn"), None, m["table"], what == "map",
               what == "slim-bn")


def _machine_keys(keys: dict, where: str) -> None:
    """Refuse ``precision``: a table runs at the machine's ``precision=auto`` and each run records what it resolved
    to, so that a table's results stay valid on another machine (the results' fingerprint leaves it out,
    :func:`benchmarks.reproduction.results.portable_fingerprint`); a file that pinned it could not be told apart."""
    if "precision" in keys:
        raise ConfigError(f"{where} cannot set precision (a reproduction runs at the machine's precision=auto; each "
                          f"run's precision is recorded in results/)")


def load_spec(path: str | Path) -> Spec:
    """Read and check one reproduction file (rows, references and claims; the keys themselves are checked by
    :func:`resprout.compare.grid.build_grid`, as ``resprout compare`` checks them)."""
    path = Path(path)
    where = str(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"reproduction file {where} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"cannot parse {where}: {e}") from None
    _unknown(raw, TOP_KEYS, where)
    paper = _need(raw, "paper", str, where)
    if paper not in PAPERS:
        raise ConfigError(f"{where}: bad value for paper: {paper!r} (allowed: {', '.join(PAPERS)})")
    seeds = _need(raw, "seeds", list, where)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: bad value for seeds: {seeds!r} (distinct integers >= 0)")
    budget = raw.get("budget", "per-method")
    if budget not in BUDGETS:
        raise ConfigError(f"{where}: bad value for budget: {budget!r} (allowed: {', '.join(BUDGETS)})")
    keys = _flatten(raw.get("keys", {}))
    for k in ("seed", "seeds", "method", "budget", "jobs", "baseline", "threads", "teacher"):
        if k in keys:
            raise ConfigError(f"{where}: [keys] cannot set {k} (seeds and the rows' methods are top-level; jobs "
                              f"and threads are the command's; a teacher is a row's key)")
    _machine_keys(keys, f"{where}: [keys]")
    depends = {}
    for name, dep in raw.get("depends", {}).items():
        if not isinstance(dep, dict) or "seed" not in dep:
            raise ConfigError(f"{where}: [depends.{name}] must be a table of run keys with its own seed")
        depends[name] = _flatten(dep)
        _machine_keys(depends[name], f"{where}: [depends.{name}]")
    rows = []
    for i, r in enumerate(raw.get("rows", [])):
        w = f"{where}: rows[{i}]"
        _unknown(r, ROW_KEYS, w)
        row = Row(_need(r, "label", str, w), _need(r, "method", str, w), _flatten(r.get("keys", {})),
                  r.get("member"))
        for k in ("seed", "seeds", "method"):
            if k in row.keys:
                raise ConfigError(f"{w}: keys cannot set {k}")
        _machine_keys(row.keys, f"{w}: keys")
        dep = row.keys.get("teacher")
        if isinstance(dep, str) and dep.startswith(DEP_PREFIX) and dep[1:] not in depends:
            raise ConfigError(f"{w}: teacher {dep!r} names no [depends.{dep[1:]}] of this file")
        rows.append(row)
    if not rows:
        raise ConfigError(f"{where}: no [[rows]]")
    labels = [r.label for r in rows] + list(depends)
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"{where}: the label {dup[0]!r} is used twice (rows and dependencies need their own)")
    baseline = _need(raw, "baseline", str, where)
    base = parse_ref(baseline, f"{where}: baseline")
    if base.table is None and base.label not in labels:
        raise ConfigError(f"{where}: baseline {baseline!r} is not a row label (rows: {', '.join(labels)})")
    claims = []
    for i, c in enumerate(raw.get("claims", [])):
        w = f"{where}: claims[{i}]"
        _unknown(c, CLAIM_KEYS, w)
        a, b = parse_ref(_need(c, "a", str, w), w), parse_ref(_need(c, "b", str, w), w)
        for ref in (a, b):
            if ref.table is None and ref.label not in labels:
                raise ConfigError(f"{w}: {ref.label!r} is not a row label (rows: {', '.join(labels)})")
        if (a.filters is None) != (b.filters is None) or a.map != b.map:
            raise ConfigError(f"{w}: a and b must measure the same thing (two accuracies, two mAPs, or two filter "
                              f"shares)")
        direction = c.get("direction", ">")
        if direction not in (">", "<"):
            raise ConfigError(f"{w}: bad value for direction: {direction!r} (allowed: >, <)")
        margin = c.get("margin", 0.0)
        if not isinstance(margin, (int, float)) or isinstance(margin, bool):
            raise ConfigError(f"{w}: bad value for margin: {margin!r} (points, a number)")
        pap = c.get("paper", {})
        if not isinstance(pap, dict):
            raise ConfigError(f"{w}: paper must be a table {{a, b, metric, where}}")
        _unknown(pap, PAPER_KEYS, f"{w}.paper")
        if pap and not isinstance(pap.get("where"), str):
            raise ConfigError(f"{w}.paper: the paper's numbers need where = \"Table N, ...\" (the table cited)")
        claims.append(Claim(_need(c, "claim", str, w), a, b, direction, float(margin), pap))
    return Spec(path.stem, path, _need(raw, "title", str, where), paper, _need(raw, "tables", str, where),
                _need(raw, "analog", str, where), seeds, budget, baseline, keys, depends, rows, claims)


def load_all(folder: Path, names: list[str] | None = None) -> list[Spec]:
    """Every reproduction file of ``folder`` in name order, or the named ones in the order given; a claim's
    reference to another reproduction's row is checked against that file."""
    files = {p.stem: p for p in sorted(folder.glob("*.toml"), key=lambda p: p.stem)}
    unknown = [n for n in names or [] if n not in files]
    if unknown:
        raise ConfigError(f"no reproduction named {unknown[0]!r}; available: {', '.join(files) or 'none'}")
    specs = [load_spec(files[n]) for n in (names or list(files))]
    loaded = {s.name: s for s in specs}
    for spec in specs:
        base = [parse_ref(spec.baseline, f"{spec.path}: baseline")]
        for c in spec.claims + [Claim("baseline", b, b) for b in base]:
            for ref in (c.a, c.b):
                if ref.table is None:
                    continue
                if ref.table not in files:
                    raise ConfigError(f"{spec.path}: claim {c.claim!r} names the reproduction {ref.table!r}, which "
                                      f"does not exist (available: {', '.join(files)})")
                other = loaded.get(ref.table) or load_spec(files[ref.table])
                if ref.label not in [r.label for r in other.rows] + list(other.depends):
                    raise ConfigError(f"{spec.path}: claim {c.claim!r}: {ref.label!r} is not a row of "
                                      f"{ref.table}")
    return specs


__all__ = ["Claim", "PAPERS", "Ref", "Row", "Spec", "load_all", "load_spec", "parse_ref"]
