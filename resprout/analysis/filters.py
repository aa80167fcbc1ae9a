"""Filter analyses of a trained run (Cheng et al., "Filter Grafting ...: Reason, Method, and Cultivation",
Sec. 4.2-4.4), read from its stored weights, never by training.

* invalid-filter ratio: the share of conv filters whose l1 norm (Eq. 3) is below each threshold (Fig. 7);
* valid and invalid filters classified by a *baseline's* filters (``baseline=DIR``): a filter is invalid when the
  baseline's filter at the same place (layer, index) is below the threshold; then the average l1 norm of the
  valid and of the invalid filters of every network (Tables 8 and 10). The classification is fixed by the
  baseline, so every method is measured on the same filters;
* a network's information: the sum of its layers' entropies (Eq. 6) over every conv and linear weight (Fig. 8);
* a per-layer picture of the filter norms (Fig. 9/11): one row per conv layer, one cell per filter.

``resprout analyze DIR [baseline=DIR] [--out DIR]`` prints the markdown tables and writes them with the PNGs.
The networks analyzed are the run's task members (``model``, ``student``, ``peer_k``), at their last weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from resprout.errors import ConfigError
from resprout.methods.grafting.criteria import filter_l1, layer_entropy

THRESHOLDS = (1e-3, 1e-2, 1e-1, 1.0)
TABLE_THRESHOLDS = (0.1, 1.0)
FILES = ("filters.md", "invalid_ratio.png", "information.png", "filter_norms.png")


# -- reading a run ------------------------------------------------------------------------------------------------------
def load_networks(run_dir: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float], dict]:
    """(member -> state dict, member -> final test top-1, run info) of a run's task members (last weights)."""
    from resprout.engine.rundir import SavedRun

    saved = SavedRun.open(run_dir, what="analyze:")
    info, state = saved.info, saved.checkpoint()
    nets = {name: m["model"] for name, m in state["members"].items() if _is_task_member(name)}
    if not nets:
        raise ConfigError(f"analyze: {saved.path} has no task network (members: {', '.join(state['members'])})")
    final = state.get("results", {}).get("final", {})
    top1 = {name: final[name]["top1"] for name in nets if name in final and "top1" in final[name]}
    if "ensemble" in final:
        top1["ensemble"] = final["ensemble"]["top1"]
    return nets, top1, info


def _is_task_member(name: str) -> bool:
    return name in ("model", "student") or name.startswith("peer_")


def conv_filters(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per conv layer (weights of 3 or more dims) the l1 norm of every output filter."""
    return {k: filter_l1(v.float()) for k, v in state.items()
            if k.endswith("weight") and v.is_floating_point() and v.dim() >= 3}


# -- the analyses --------------------------------------------------------------------------------------------------------
def invalid_ratio(state: dict[str, torch.Tensor], thresholds=THRESHOLDS) -> dict[float, float]:
    """Fig. 7: the share of all conv filters whose l1 norm is below each threshold."""
    norms = torch.cat(list(conv_filters(state).values()))
    return {t: float((norms < t).float().mean()) for t in thresholds}


def information(state: dict[str, torch.Tensor], bins: int = 10) -> float:
    """Fig. 8: the sum of the entropies (Eq. 6) of every conv and linear weight."""
    return sum(layer_entropy(v, bins) for k, v in state.items()
               if k.endswith("weight") and v.is_floating_point() and v.dim() >= 2)


def by_baseline(baseline: dict[str, torch.Tensor], nets: dict[str, dict[str, torch.Tensor]],
                threshold: float) -> dict:
    """Tables 8/10: filters classified by the baseline's l1 norms at ``threshold``; per network the average l1
    norm of the valid and of the invalid filters (None when a class is empty)."""
    base = conv_filters(baseline)
    mask = torch.cat([base[k] < threshold for k in base])
    out = {"threshold": threshold, "valid": int((~mask).sum()), "invalid": int(mask.sum()), "networks": {}}
    for name, state in nets.items():
        own = conv_filters(state)
        missing = [k for k in base if k not in own or own[k].shape != base[k].shape]
        if missing:
            raise ConfigError(f"analyze: {name} does not have the baseline's conv layers (e.g. {missing[0]}); "
                              f"the baseline must be the same architecture")
        norms = torch.cat([own[k] for k in base])
        out["networks"][name] = {"valid_l1": _mean(norms[~mask]), "invalid_l1": _mean(norms[mask])}
    return out


def _mean(t: torch.Tensor) -> float | None:
    return float(t.mean()) if t.numel() else None


# -- the command ---------------------------------------------------------------------------------------------------------
def analyze(run_dir: str | Path, baseline: str | Path | None = None, out: str | Path | None = None) -> tuple[str, dict]:
    """The analyses of a run (and of a baseline run) as markdown text and a dict; with ``out`` the text is also
    written to ``out/filters.md`` beside the PNGs."""
    nets, top1, _ = load_networks(run_dir)
    labelled = dict(nets)
    base_nets, base_top1 = {}, {}
    if baseline is not None:
        base_nets, base_top1, _ = load_networks(baseline)
    all_nets = {**{f"baseline:{k}": v for k, v in base_nets.items()}, **labelled}
    all_top1 = {**{f"baseline:{k}": v for k, v in base_top1.items()}, **top1}
    result = {"run": str(run_dir), "baseline": str(baseline) if baseline else None, "networks": {}}
    for name, state in all_nets.items():
        norms = conv_filters(state)
        result["networks"][name] = {"filters": int(sum(len(v) for v in norms.values())),
                                    "invalid_ratio": invalid_ratio(state), "information": information(state),
                                    "top1": all_top1.get(name)}
    if "ensemble" in all_top1:
        result["ensemble_top1"] = all_top1["ensemble"]
    if base_nets:
        ref = next(iter(base_nets.values()))
        result["by_baseline"] = [by_baseline(ref, all_nets, t) for t in TABLE_THRESHOLDS]
    text = to_markdown(result)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "filters.md").write_text(text)
        plot(all_nets, result, out)
    return text, result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def to_markdown(result: dict) -> str:
    head = ["network", "filters"] + [f"l1 < {t:g}" for t in THRESHOLDS] + ["information (sum H)", "test top1"]
    lines = [f"Filters of {result['run']}" + (f" (baseline {result['baseline']})" if result["baseline"] else ""),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in result["networks"].items():
        cells = [name, str(r["filters"])] + [_pct(r["invalid_ratio"][t]) + "%" for t in THRESHOLDS] + \
            [_num(r["information"]), _pct(r["top1"])]
        lines.append("| " + " | ".join(cells) + " |")
    if "ensemble_top1" in result:
        lines += ["", f"Ensemble of the peers (mean probability): test top1 {_pct(result['ensemble_top1'])}"]
    if "by_baseline" in result:
        lines += ["", "Filters classified by the baseline's l1 norms (Tables 8/10):", "",
                  "| threshold | valid | invalid | network | avg l1 valid | avg l1 invalid | test top1 |",
                  "|---|---|---|---|---|---|---|"]
        for t in result["by_baseline"]:
            for name, r in t["networks"].items():
                lines.append(f"| {t['threshold']:g} | {t['valid']} | {t['invalid']} | {name} | "
                             f"{_num(r['valid_l1'])} | {_num(r['invalid_l1'])} | "
                             f"{_pct(result['networks'][name]['top1'])} |")
    return "\n".join(lines) + "\n"


def plot(nets: dict[str, dict[str, torch.Tensor]], result: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(nets)
    files = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        r = result["networks"][name]["invalid_ratio"]
        ax.plot([f"{t:g}" for t in THRESHOLDS], [100 * r[t] for t in THRESHOLDS], marker="o", label=name)
    ax.set_xlabel("l1 threshold")
    ax.set_ylabel("filters below it (%)")
    ax.set_title("Invalid filters (Fig. 7)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    files.append(out / "invalid_ratio.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(range(len(names)), [result["networks"][n]["information"] for n in names])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("sum of layer entropies (nats)")
    ax.set_title("Information of a network (Fig. 8)")
    fig.tight_layout()
    files.append(out / "information.png")
    fig.savefig(files[-1], dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(len(names), 1, figsize=(8, 1.6 + 1.4 * len(names)), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        layers = list(conv_filters(nets[name]).values())
        width = max(len(v) for v in layers)
        grid = torch.full((len(layers), width), math.nan)
        for i, v in enumerate(layers):
            grid[i, :len(v)] = torch.log10(v + 1e-6)
        im = ax.imshow(grid.numpy(), aspect="auto", cmap="magma", interpolation="nearest", vmin=-3)
        ax.set_title(f"{name}: log10 l1 norm per filter (black: near 0)", fontsize=8)
        ax.set_ylabel("conv layer", fontsize=7)
        fig.colorbar(im, ax=ax)
    axes[-1, 0].set_xlabel("filter")
    fig.tight_layout()
    files.append(out / "filter_norms.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files
