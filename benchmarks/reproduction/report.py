"""Tables, verdicts, figures and ``docs/reproduction.md``, rebuilt from ``results/`` alone (no store, no training).

Every sentence with a number is produced here from the stored rows: the claims table (the paper's numbers as typed
in the reproduction file, ours as mean ± std over seeds, the paired difference ± its standard error, the verdict of
:func:`benchmarks.reproduction.stats.verdict`), the rows table, the notes on rows that come from older code or from
another configuration, the one-line-per-paper summary of the README, and the claims blocks of the method pages
(:func:`write_claims_blocks`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.reproduction import stats
from benchmarks.reproduction.results import code_changed_since, read
from benchmarks.reproduction.spec import PAPERS, Claim, Ref, Spec, parse_ref
from resprout.analysis.tables import format_table
from resprout.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reproduction.md"
FIGURES = ROOT / "docs" / "figures" / "reproduction"
README = ROOT / "README.md"
VERDICTS = (stats.HOLDS, stats.REVERSED, stats.UNRESOLVED)
MAX_FILES = 8  # changed files named per commit in a page's note on older code


@dataclass
class Outcome:
    """A claim tested on the rows of one table."""

    claim: Claim
    a: list[float] = field(default_factory=list)  # fractions, per paired seed
    b: list[float] = field(default_factory=list)
    paired: stats.Paired | None = None
    verdict: str = stats.UNRESOLVED
    missing: str = ""  # why it could not be computed
    single: str = ""  # "a" or "b": that operand is one run (a dependency) paired with every seed of the other
    identical: bool = False  # A and B got every test image alike at every seed (one of them changed nothing)


@dataclass
class Recorded:
    """A table's recorded runs that match the configuration its file now gives."""

    rows: list[dict]  # finished, current rows
    bits: dict  # (label, seed, generation, member) -> bit row
    other_config: list[dict]  # final rows of runs recorded for another configuration (left out)


def recorded(name: str, current: dict[tuple[str, int], str], folder: Path | None = None) -> Recorded:
    """``results/<name>.csv`` restricted to ``current``: (label, seed) -> the fingerprint the file now asks for."""
    rows, bit_rows = read(name, folder) if folder else read(name)
    keep = [r for r in rows if current.get((r["label"], r["seed"])) == r["fingerprint"]]
    other = [r for r in rows if r not in keep and r["final"] == 1]
    bits = {(b["label"], b["seed"], b["generation"], b["member"]): b for b in bit_rows
            if current.get((b["label"], b["seed"])) == b["fingerprint"]}
    return Recorded([r for r in keep if r["status"] == "finished"], bits, other)


@dataclass
class TableResult:
    spec: Spec
    rows: list[dict]  # the current rows (matching fingerprints)
    outcomes: list[Outcome]
    other_config: list[dict]  # rows recorded for another configuration (left out)
    stale: list[dict]  # current rows from older code
    unknown_code: list[dict]  # current rows whose code version cannot be told
    baseline: list[float] = field(default_factory=list)  # the baseline row's top-1 per seed (maybe another table's)
    changed: dict = field(default_factory=dict)  # commit -> the files of resprout/ changed since it (None: unknown)


def _value(row: dict, ref: Ref) -> float | None:
    return row.get(ref.column)


def _select(rows: list[dict], ref: Ref) -> dict[int, dict]:
    """seed -> the row a reference names (its generation, else the run's last)."""
    out = {}
    for r in rows:
        if r["label"] != ref.label:
            continue
        if (ref.generation is None and r["final"] == 1) or r["generation"] == ref.generation:
            out[r["seed"]] = r
    return out


def _bits_of(bits: dict, row: dict):
    return bits.get((row["label"], row["seed"], row["generation"], row["member"]))


def judge_claim(claim: Claim, data: dict[str, Recorded], home: str) -> Outcome:
    """The paired difference of a claim on the recorded rows of its table ``home`` (or of the table a reference
    names); a dependency's single run is paired with every seed of the other operand; per-image records when both
    operands have them for every seed, else the accuracies alone."""
    from resprout.engine.evaluation import unpack_bits

    out = Outcome(claim)
    empty = Recorded([], {}, [])
    da, db = data.get(claim.a.table or home, empty), data.get(claim.b.table or home, empty)
    sa, sb = _select(da.rows, claim.a), _select(db.rows, claim.b)
    if len(sa) == 1 and len(sb) > 1 and next(iter(sa.values()))["role"] == "dependency":
        sa, out.single = {s: next(iter(sa.values())) for s in sb}, "a"
    if len(sb) == 1 and len(sa) > 1 and next(iter(sb.values()))["role"] == "dependency":
        sb, out.single = {s: next(iter(sb.values())) for s in sa}, "b"
    seeds = sorted(s for s in set(sa) & set(sb) if _value(sa[s], claim.a) is not None
                   and _value(sb[s], claim.b) is not None)
    if not seeds:
        names = {(r.table + "/" if r.table else "") + r.label: bool(sel) for r, sel in ((claim.a, sa), (claim.b, sb))}
        out.missing = "no runs yet of " + " and ".join(sorted(n for n, has in names.items() if not has) or names)
        return out
    out.a = [_value(sa[s], claim.a) for s in seeds]
    out.b = [_value(sb[s], claim.b) for s in seeds]
    if claim.a.filters is not None:  # a property of the weights: the seeds are the only sample
        out.paired = stats.paired_from_values(out.a, out.b)
        out.verdict = stats.verdict(out.paired, claim.direction, claim.margin / 100)
        return out
    pairs = [(_bits_of(da.bits, sa[s]), _bits_of(db.bits, sb[s])) for s in seeds]
    images = sa[seeds[0]].get("test_images") or sb[seeds[0]].get("test_images")
    exact = not claim.a.slim and not claim.b.slim and all(
        x and y and x["labels"] == y["labels"] and x["images"] == y["images"] for x, y in pairs)
    if exact:
        n = pairs[0][0]["images"]
        A = np.stack([unpack_bits(x["bits"], n) for x, _ in pairs])
        B = np.stack([unpack_bits(y["bits"], n) for _, y in pairs])
        out.paired = stats.paired_from_bits(A, B)
        out.identical = bool((A == B).all())
    elif images:
        out.paired = stats.paired_from_accuracies(out.a, out.b, images)
    else:
        out.missing = "the test-set size is not recorded"
        return out
    out.verdict = stats.verdict(out.paired, claim.direction, claim.margin / 100)
    return out


def build(spec: Spec, data: dict[str, Recorded]) -> TableResult:
    """The table's outcomes from the recorded runs of every table (``data``: name -> :func:`recorded`)."""
    mine = data[spec.name]
    finals = [r for r in mine.rows if r["final"] == 1]
    changed = {r["git_commit"]: code_changed_since(r["git_commit"]) for r in finals}
    stale = [r for r in finals if changed[r["git_commit"]] or r.get("git_dirty")]
    unknown = [r for r in finals if changed[r["git_commit"]] is None and r not in stale]
    ref = parse_ref(spec.baseline, "baseline")
    base = _select(data.get(ref.table or spec.name, Recorded([], {}, [])).rows, ref)
    return TableResult(spec, mine.rows, [judge_claim(c, data, spec.name) for c in spec.claims], mine.other_config,
                       stale, unknown, [r["top1"] for _, r in sorted(base.items()) if r["top1"] is not None],
                       changed)


# -- text --------------------------------------------------------------------------------------------------------------
def _pm(values: list[float]) -> str:
    if not values:
        return "-"
    m, s = stats.mean_std(values)
    return f"{100 * m:.2f} ± {100 * s:.2f}" if len(values) > 1 else f"{100 * m:.2f}"


def _paper_text(c: Claim) -> str:
    p = c.paper
    if not p:
        return "-"
    nums = f"{p['a']} vs {p['b']}" if "a" in p and "b" in p else f"A {p['a']}" if "a" in p else \
        f"B {p['b']}" if "b" in p else ""
    return f"{nums} {p.get('metric', '')} ({p['where']})".strip()


def claim_name(c: Claim) -> str:
    """The claim, its operands and the relation it tests."""
    rel = (f"A - B {c.direction} {c.margin:g}" if c.margin else f"A {c.direction} B")
    return f"{c.claim} (A = {c.a.text()}, B = {c.b.text()}; {rel})"


def claims_table(t: TableResult) -> str:
    headers = ["claim", "paper", "ours: A (mean ± std, n)", "ours: B", "A - B (points, ± SE)", "verdict"]
    body = []
    for o in t.outcomes:
        c = o.claim
        name = claim_name(c)
        if o.paired is None:
            body.append([name, _paper_text(c), "-", "-", "-", f"({o.missing})"])
            continue
        p = o.paired
        se = f"{100 * p.se:.2f}" + ("" if p.exact else " (seeds only)" if not p.images
                                     else " (independent-test bound)")
        one = "{:.2f} (one run, paired with each seed)"
        a = one.format(100 * o.a[0]) if o.single == "a" else f"{_pm(o.a)} (n={p.n})"
        b = one.format(100 * o.b[0]) if o.single == "b" else _pm(o.b)
        body.append([name, _paper_text(c), a, b, f"{100 * p.diff:+.2f} ± {se}", f"**{o.verdict}**"])
    return format_table(headers, body)


def rows_table(t: TableResult) -> str:
    headers = ["row", "method", "generation", "seeds", "test images", "top-1 (mean ± std)", "epochs in all",
               "params", "MMACs", "train min / run"]
    body = []
    labels = [r.label for r in t.spec.rows] + list(t.spec.depends)
    for label in labels:
        rows = [r for r in t.rows if r["label"] == label]
        for g in sorted({r["generation"] for r in rows}):
            rs = [r for r in rows if r["generation"] == g]
            final = rs[0]["final"] == 1
            if not final and not _referenced(t.spec, label, g):
                continue
            params = {r["params"] for r in rs if r["params"] is not None}
            macs = [r["macs"] for r in rs if r["macs"] is not None]
            name = f"**{label}** (baseline)" if t.spec.baseline in (label, f"{label}@{g}") else label
            body.append([name, rs[0]["method"], f"{g} of {rs[0]['generations']}", len(rs),
                         rs[0]["test_images"] or "-", _pm([r["top1"] for r in rs]), rs[0]["total_epochs"],
                         "/".join(f"{p:,}" for p in sorted(params)) if final and params else "",
                         f"{np.mean(macs) / 1e6:.2f}" if final and macs else "",
                         f"{np.mean([r['train_seconds'] for r in rs]) / 60:.1f}"])
            slim = [r["slim_top1"] for r in rs if r["slim_top1"] is not None]
            if slim and (final or _referenced(t.spec, label, g, slim=True)):  # a KE run's last H_g, always
                sp = {r["slim_params"] for r in rs if r["slim_params"] is not None}
                sm = [r["slim_macs"] for r in rs if r["slim_macs"] is not None]
                cost = ["/".join(f"{p:,}" for p in sorted(sp)), f"{np.mean(sm) / 1e6:.2f}" if sm else "", ""]
                body.append([f"{label} slim H_{g}", rs[0]["method"], f"{g} of {rs[0]['generations']}", len(slim),
                             rs[0]["test_images"] or "-", _pm(slim), rs[0]["total_epochs"], *cost])
                # beyond the paper: the same slim network with its BN statistics re-estimated on training batches
                fixed = [r.get("slim_bnfix_top1") for r in rs if r.get("slim_bnfix_top1") is not None]
                if fixed:
                    body.append([f"{label} slim H_{g}, BN re-estimated", rs[0]["method"],
                                 f"{g} of {rs[0]['generations']}", len(fixed), rs[0]["test_images"] or "-",
                                 _pm(fixed), rs[0]["total_epochs"], *cost])
    return format_table(headers, body) if body else ""


def _referenced(spec: Spec, label: str, g: int, slim: bool = False) -> bool:
    return any(r.label == label and r.table is None and r.generation == g and r.slim == slim
               for c in spec.claims for r in (c.a, c.b))


def _code_note(t: TableResult) -> list[str]:
    lines = []
    if t.stale:
        lines.append(f"- {len(t.stale)} of {len([r for r in t.rows if r['final'] == 1])} runs come from code older "
                     f"than this tree (resprout/ changed since their commit):")
        for commit in dict.fromkeys(r["git_commit"] for r in t.stale):
            rows = [r for r in t.stale if r["git_commit"] == commit]
            by_label: dict[str, list[dict]] = {}
            for r in rows:
                by_label.setdefault(r["label"], []).append(r)
            marked = {label: [str(r["seed"]) + ("*" if r.get("git_dirty") else "") for r in rs]
                      for label, rs in by_label.items()}
            runs = " and ".join(f"{label} ({_seed_list(seeds)})" for label, seeds in marked.items())
            if any(r.get("git_dirty") for r in rows):
                runs += " (*: with uncommitted changes)"
            files = t.changed.get(commit) or ()
            shown = ", ".join(files[:MAX_FILES]) + (f" and {len(files) - MAX_FILES} more" if len(files) > MAX_FILES
                                                    else "")
            shown = shown or "no file (the run had uncommitted changes)"
            lines.append(f"  - {(commit or '?')[:8]}: {runs}; changed since: {shown}.")
    if t.unknown_code:
        lines.append(f"- {len(t.unknown_code)} runs record a code version this checkout cannot compare "
                     f"(no commit, or a commit it lacks).")
    if t.other_config:
        gone = sorted({r["label"] for r in t.other_config} - {r.label for r in t.spec.rows} - set(t.spec.depends))
        lines.append(f"- {len(t.other_config)} recorded runs are of a configuration the reproduction file no longer "
                     "gives" + (f" (rows it no longer has: {', '.join(gone)})" if gone else "") + "; they are left "
                     "out.")
    lines += _shared_note(t) + _hypotheses_note(t) + _channels_note(t)
    for o in t.outcomes:
        if o.identical:
            lines.append(f"- {o.claim.a.text()} and {o.claim.b.text()} got every test image right or wrong alike "
                         f"at each of the {o.paired.n} seeds (the claim \"{o.claim.claim}\"): the difference between "
                         f"the two rows turned no test image from right to wrong or back.")
    return lines


def _shared_note(t: TableResult) -> list[str]:
    """The rows whose runs another table, or this one under another label, trained with the same configuration
    (their ``run`` names the table)."""
    shared: dict[tuple[str, str], list[int]] = {}
    for r in t.rows:
        if r["final"] == 1 and "/" in (r.get("run") or ""):
            shared.setdefault((r["label"], r["run"].split("/")[0]), []).append(r["seed"])
    return [f"- {label} ({_seed_list([str(s) for s in sorted(seeds)])}): the runs "
            + ("this table trained" if table == t.spec.name else f"{table} trained")
            + " with the same configuration, shared rather than trained again."
            for (label, table), seeds in shared.items()]


def _hypotheses_note(t: TableResult) -> list[str]:
    """Per KE row: the fit and reset hypotheses' mean |w| and the slim network's top-1 at the end of each generation,
    means over the seeds (the paper's Fig. 7 next to its Table 5), from the rows that recorded them."""
    lines = []
    for label in [r.label for r in t.spec.rows]:
        rows = [r for r in t.rows if r["label"] == label and r.get("fit_abs") is not None]
        if not rows:
            continue
        parts = []
        for g in sorted({r["generation"] for r in rows}):
            at = [r for r in rows if r["generation"] == g]
            slim = [r["slim_top1"] for r in at if r.get("slim_top1") is not None]
            parts.append(f"{g}: {np.mean([r['fit_abs'] for r in at]):.3f} / "
                         f"{np.mean([r['reset_abs'] for r in at]):.3f}" + (f", {100 * np.mean(slim):.1f}%" if slim
                                                                             else ""))
        seeds = len({r["seed"] for r in rows})
        lines.append(f"- {label}, at the end of each generation (mean of {_seeds(seeds)}): "
                     f"the mean |w| inside the fit / the reset hypothesis (the paper's Fig. 7), and the slim "
                     f"network's top-1 (BN copied): " + "; ".join(parts) + ".")
    return lines


def _channels_note(t: TableResult) -> list[str]:
    """Per Network Slimming or NR row, means over its seeds' final rows: the share of channels alive just before
    the first pruning or rejuvenation, and NR's own count of its rebuilt network's parameters beside the real ones."""
    live, counted, when = [], [], []
    for label in [r.label for r in t.spec.rows]:
        rows = [r for r in t.rows if r["label"] == label and r["final"] == 1]
        epochs = [[float(e) for e in r["rejuvenated_at"].split(";")] for r in rows if r.get("rejuvenated_at")]
        if epochs:
            firsts = [np.mean([e[i] for e in epochs if len(e) > i]) for i in range(max(map(len, epochs)))]
            when.append(f"{label}: " + ", ".join(f"{e:.1f}" for e in firsts) + f" of {rows[0]['epochs']} "
                        f"({_seeds(len(epochs))})")
        shares = [r["live_share"] for r in rows if r.get("live_share") is not None]
        if shares:
            live.append(f"{label}: {100 * np.mean(shares):.1f}% ({_seeds(len(shares))})")
        both = [r for r in rows if r.get("paper_params") is not None and r.get("params") is not None]
        if both:
            counted.append(f"{label}: {np.mean([r['paper_params'] for r in both]):,.0f} counted, "
                           f"{np.mean([r['params'] for r in both]):,.0f} real ({_seeds(len(both))})")
    lines = []
    if live:
        lines.append("- Channels alive (BN scale above the liveness threshold) just before the first pruning "
                     "(Network Slimming) or rejuvenation (NR), as a share of the channels the method judges, mean "
                     "over seeds: " + "; ".join(live) + ".")
    if when:
        lines.append("- The epochs at which NR rejuvenated (its first, second, ... rejuvenation; mean over the seeds "
                     "that had it): " + "; ".join(when) + ".")
    if counted:
        lines.append("- NR's own count of its rebuilt network's parameters (the count its target holds) beside the "
                     "real weights of the params column, mean over seeds: " + "; ".join(counted) + ".")
    return lines


def _seeds(n: int) -> str:
    return f"{n} seed{'s' if n > 1 else ''}"


def _seed_list(seeds: list[str]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}"


def figure(t: TableResult, path: Path) -> Path | None:
    """Means with ± 1 std error bars over seeds, one point per row (and per generation the claims name); the
    baseline's mean is a dashed line."""
    points = []
    base_ref = parse_ref(t.spec.baseline, "baseline")
    if base_ref.table and t.baseline:  # another table's row: shown first
        points.append((t.spec.baseline, t.baseline, True))
    for label in [r.label for r in t.spec.rows] + list(t.spec.depends):
        named = {(r.generation, r.slim, r.bnfix) for c in t.spec.claims for r in (c.a, c.b)
                 if r.label == label and r.table is None and r.generation and r.filters is None}
        refs = [Ref(label)] + [Ref(label, g, s, bnfix=b)
                               for g, s, b in sorted(named, key=lambda x: (x[1], x[2], x[0]))]
        for ref in refs:
            vals = [_value(r, ref) for r in _select(t.rows, ref).values()]
            vals = [v for v in vals if v is not None]
            if vals:
                points.append((ref.text() if ref.generation or ref.slim else label, vals, base_ref.table is None
                               and (label, ref.generation, ref.slim, ref.bnfix) == (
                                   base_ref.label, base_ref.generation, base_ref.slim, base_ref.bnfix)))
    if not points or all(base for *_, base in points):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # rows trained over several generations (KE, Born-Again, ...) also get their curve: top-1 at the end of each
    # generation, on its own axis, where a gain of a point is not flattened by the other rows' spread
    curves = {}
    for label in [r.label for r in t.spec.rows]:
        by_gen: dict[int, list[float]] = {}
        for r in t.rows:
            if r["label"] == label and r["top1"] is not None and r["generations"] > 1:
                by_gen.setdefault(r["generation"], []).append(r["top1"])
        if len(by_gen) > 1:
            curves[label] = by_gen
    width = max(6.0, 0.75 * len(points) + 2)
    if curves:
        fig, (ax, gx) = plt.subplots(1, 2, figsize=(width + 5, 4.5), gridspec_kw={"width_ratios": [width, 5]})
        for label, by_gen in curves.items():
            gens = sorted(by_gen)
            m = np.array([100 * np.mean(by_gen[g]) for g in gens])
            sd = np.array([100 * np.std(by_gen[g], ddof=1) if len(by_gen[g]) > 1 else 0.0 for g in gens])
            gx.plot(gens, m, marker="o", label=f"{label} N_g")
            gx.fill_between(gens, m - sd, m + sd, alpha=0.2)
        for name, vals, _ in points:
            if name in {r.label for r in t.spec.rows} and name not in curves:
                gx.axhline(100 * np.mean(vals), ls=":", lw=1, color="gray")
                gx.annotate(name, (1, 100 * np.mean(vals)), fontsize=7, color="gray", va="bottom")
        gx.set(xlabel="generation", ylabel="test top-1 (%)", title="by generation (band: ± 1 std)")
        gx.grid(alpha=0.3)
        gx.legend(fontsize=7, loc="lower right")
    else:
        fig, ax = plt.subplots(figsize=(width, 4.5))
    x = np.arange(len(points))
    means = np.array([100 * np.mean(v) for _, v, _ in points])
    sds = np.array([100 * np.std(v, ddof=1) if len(v) > 1 else 0.0 for _, v, _ in points])
    is_base = np.array([base for *_, base in points])
    ax.errorbar(x, means, yerr=sds, fmt="none", ecolor="black", capsize=4, lw=1)
    ax.scatter(x[~is_base], means[~is_base], color="tab:blue", zorder=3,
               label="mean of the seeds (error bar: ± 1 std)")
    ax.scatter(x[is_base], means[is_base], color="tab:red", zorder=3)
    for m in means[is_base][:1]:
        ax.axhline(m, color="tab:red", ls="--", lw=1, label=f"baseline ({t.spec.baseline})")
    ax.set_xticks(x, [p[0] for p in points], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="test top-1 (%)", title=t.spec.title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def counts(outcomes: list[Outcome]) -> dict[str, int]:
    return {v: sum(o.verdict == v for o in outcomes if o.paired is not None) for v in VERDICTS}


def section(t: TableResult, doc: Path = DOC, figures: Path = FIGURES) -> list[str]:
    s = t.spec
    rel = os.path.relpath(s.path, doc.parent)
    lines = [f"### {s.title}", "", f"Paper: {PAPERS[s.paper]}, {s.tables}. Configuration: [`{s.path.name}`]({rel}); "
             f"seeds {', '.join(map(str, s.seeds))}.", "", f"**What the analog changes.** {s.analog.strip()}", ""]
    finals = [r for r in t.rows if r["final"] == 1]
    if not finals:
        lines += [f"No runs recorded yet in `results/{s.name}.csv`: `python -m benchmarks.reproduce {s.name}` "
                  f"trains them.", ""]
    else:
        threads = sorted({r["threads"] for r in finals if r["threads"]})
        prec = sorted({r["precision"] for r in finals if r["precision"]})
        if len(prec) > 1:  # trained on machines that resolve precision=auto differently: say how many of each
            prec = [f"{p} ({sum(r['precision'] == p for r in finals)} runs)" for p in prec]
        lines += [f"{len(finals)} runs recorded ({', '.join(map(str, threads)) or '?'} thread(s) per run, "
                  f"precision {', '.join(prec) or '?'}). Top-1 on the whole test set at the last epoch of a run "
                  f"(or of a generation), as the papers report it.", "", rows_table(t), ""]
    lines += ["Claims (A - B: the paired difference over seeds on the same test images; SE combines the seeds' "
              "variance with the test-set sampling; a verdict needs 2 SE):", "", claims_table(t), ""]
    fig = figures / f"{s.name}.png"
    if finals and fig.exists():
        lines += [f"![{s.title}]({os.path.relpath(fig, doc.parent)})", ""]
    notes = _code_note(t)
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return lines


def summary_line(paper: str, tables: list[TableResult]) -> str:
    """One generated line per paper: how many of its claims hold, are reversed, are not resolved."""
    outcomes = [o for t in tables for o in t.outcomes]
    tested = [o for o in outcomes if o.paired is not None]
    if not tested:
        return f"- **{PAPERS[paper]}**: no claim tested yet ({len(outcomes)} configured)."
    c = counts(outcomes)

    def n(k: int, one: str, many: str) -> str:
        return f"{k} {one if k == 1 else many}"

    untested = len(outcomes) - len(tested)
    return (f"- **{PAPERS[paper]}**: of {len(outcomes)} claims, {n(c[stats.HOLDS], 'holds', 'hold')}, "
            f"{n(c[stats.REVERSED], 'is reversed', 'are reversed')}, "
            f"{n(c[stats.UNRESOLVED], 'is not resolved', 'are not resolved')}"
            + (f", {n(untested, 'has no runs yet', 'have no runs yet')}" if untested else "") + ".")


def page(tables: list[TableResult], doc: Path = DOC, figures: Path = FIGURES) -> str:
    lines = ["# Reproducing the four papers", "",
             "<!-- generated by `python -m benchmarks.reproduce --from-results` from results/*.csv: do not edit -->",
             "", "Each paper's claims, tested on a small-data analog of its tables, one configuration per table in "
             "[`reproductions/`](../reproductions). `make reproduce` (or `python -m benchmarks.reproduce [NAME ...] "
             "--jobs 2`) trains what `results/` does not hold yet; `python -m benchmarks.reproduce --from-results` "
             "rebuilds this page from `results/` alone. A verdict is **holds** or **reversed** when the paired "
             "difference lies more than 2 standard errors from the claim's margin, and **not resolved** otherwise; the "
             "standard error combines the seeds' variance with the sampling of the test images "
             "([`stats.py`](../benchmarks/reproduction/stats.py)). The file format (rows with their own keys, seeds, "
             "claims with the paper's numbers, dependencies such as a teacher) is described in "
             "[`spec.py`](../benchmarks/reproduction/spec.py); the stored columns in "
             "[`results/README.md`](../results/README.md). The method pages quote these verdicts in blocks "
             "(`<!-- reproduction:claims NAME ... -->`) that the same rebuild writes, never in typed words.",
             "", "## Summary", ""]
    papers = [p for p in PAPERS if any(t.spec.paper == p for t in tables)]
    lines += [summary_line(p, [t for t in tables if t.spec.paper == p]) for p in papers] + [""]
    for p in papers:
        lines += [f"## {PAPERS[p]}", ""]
        for t in [t for t in tables if t.spec.paper == p]:
            lines += section(t, doc, figures)
    return "\n".join(lines).rstrip() + "\n"


README_START, README_END = "<!-- reproduction:start -->", "<!-- reproduction:end -->"


def readme_block(tables: list[TableResult]) -> str:
    papers = [p for p in PAPERS if any(t.spec.paper == p for t in tables)]
    lines = ["**Do the papers' claims hold here?** [docs/reproduction.md](docs/reproduction.md) tests them on "
             "small-data analogs:", "", *[summary_line(p, [t for t in tables if t.spec.paper == p]) for p in papers]]
    return README_START + "\n" + "\n".join(lines) + "\n" + README_END


def write_readme(tables: list[TableResult], readme: Path = README) -> None:
    """Replace the block between the markers (or add it after the first paragraph that follows the title)."""
    text = readme.read_text()
    block = readme_block(tables)
    if README_START in text:
        head, _, rest = text.partition(README_START)
        _, _, tail = rest.partition(README_END)
        text = head + block + tail
    else:
        title, sep, rest = text.partition("\n\n")
        text = title + sep + block + "\n\n" + rest
    readme.write_text(text)


# -- verdicts quoted in the method pages -------------------------------------------------------------------------------
# A method page (docs/*.md) that speaks of a table's verdicts holds them in a block the rebuild writes, never in typed
# words: "<!-- reproduction:claims NAME [NAME ...] -->" ... "<!-- reproduction:claims end -->".
CLAIMS_OPEN, CLAIMS_END = "<!-- reproduction:claims ", "<!-- reproduction:claims end -->"
CLAIMS_BLOCK = re.compile(r"<!-- reproduction:claims (?!end -->)([^>]*?) -->\n.*?<!-- reproduction:claims end -->",
                          re.S)


def anchor(title: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def claim_line(o: Outcome, link: str) -> str:
    what = claim_name(o.claim)
    if o.paired is None:
        return f"- {what}: {o.missing} ([table]({link}))"
    p = o.paired
    return (f"- {what}: A - B = {100 * p.diff:+.2f} ± {100 * p.se:.2f} points over {p.n} "
            f"seed{'s' if p.n != 1 else ''}, **{o.verdict}** ([table]({link}))")


def block_names(text: str, page: Path, known: set[str] | dict) -> list[list[str]]:
    """The reproductions each claims block of ``text`` names; a block opened and not closed, naming nothing, or
    naming a reproduction not in ``known`` is refused."""
    blocks = [names.split() for names in CLAIMS_BLOCK.findall(text)]
    if text.count(CLAIMS_OPEN) != 2 * len(blocks) or not all(blocks):
        raise ConfigError(f"{page.name}: a claims block is '{CLAIMS_OPEN}NAME [NAME ...] -->' on its own line, "
                          f"then '{CLAIMS_END}' (one is missing, or names no reproduction)")
    unknown = [n for names in blocks for n in names if n not in known]
    if unknown:
        raise ConfigError(f"{page.name}: no reproduction named {unknown[0]!r} in its claims block "
                          f"(one of: {', '.join(sorted(known))})")
    return blocks


def block_pages(doc: Path = DOC) -> list[Path]:
    """The pages beside ``doc`` that hold a claims block (or a broken one)."""
    return [p for p in sorted(doc.parent.glob("*.md")) if p != doc and CLAIMS_OPEN in p.read_text()]


def check_claims_blocks(names: set[str], doc: Path = DOC) -> None:
    """Refuse a broken claims block in the pages beside ``doc`` before anything trains."""
    for page in block_pages(doc):
        block_names(page.read_text(), page, names)


def claims_block(names: list[str], tables: dict[str, TableResult], page: Path, doc: Path = DOC) -> str:
    lines = [f"{CLAIMS_OPEN}{' '.join(names)} -->"]
    for name in names:
        t = tables[name]
        link = f"{os.path.relpath(doc, page.parent)}#{anchor(t.spec.title)}"
        lines += [claim_line(o, link) for o in t.outcomes]
    return "\n".join(lines + [CLAIMS_END])


def fill_claims_blocks(text: str, tables: dict[str, TableResult], page: Path, doc: Path = DOC) -> str:
    """``text`` with every claims block rewritten from the tables' outcomes (:func:`block_names` refuses a broken
    one)."""
    block_names(text, page, tables)
    return CLAIMS_BLOCK.sub(lambda m: claims_block(m.group(1).split(), tables, page, doc), text)


def write_claims_blocks(tables: list[TableResult], doc: Path = DOC) -> list[Path]:
    """Rewrite the claims blocks of every page beside ``doc``; returns the pages that hold one."""
    by_name = {t.spec.name: t for t in tables}
    pages = block_pages(doc)
    for page in pages:
        text = page.read_text()
        new = fill_claims_blocks(text, by_name, page, doc)
        if new != text:
            page.write_text(new)
    return pages


__all__ = ["Outcome", "Recorded", "TableResult", "anchor", "block_names", "block_pages", "build",
           "check_claims_blocks", "claim_line", "claim_name", "claims_block", "claims_table", "fill_claims_blocks",
           "figure", "judge_claim", "page", "readme_block", "recorded", "rows_table", "section", "summary_line",
           "write_claims_blocks", "write_readme"]
