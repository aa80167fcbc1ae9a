"""``method=slimming``: Network Slimming (Liu et al., "Learning Efficient Convolutional Networks through Network
Slimming", ICCV 2017), the pruning method Neural Rejuvenation's Table 4 compares against.

1. Train with L1 on the BN scales (Liu et al. Eq. 1: ``sum l(f(x), y) + lambda * sum |gamma|``; lambda fixed,
   1e-4 per iteration in their CIFAR VGG runs at batch 64, 782 iterations per epoch) for the first
   ``slimming.prune_at`` of the epochs. Lambda is the paper's, per iteration (``slimming.lam_unit=iteration``):
   the pruning comes at a fixed epoch and to a cost target whatever the scales did, so the L1 term need not reach
   a sparsity by a deadline (unlike Neural Rejuvenation's, stated per epoch). ``slimming.lam_unit=epoch`` states it
   per epoch (:func:`~resprout.methods.rejuvenation.sparsity.per_iteration`), the default until the reproduction of
   NR's Table 4 showed it pulling the scales of a small dataset's few iterations per epoch so hard that most
   channels were dead before the pruning (docs/rejuvenation.md).
2. Prune channels globally by ``|gamma|`` (one threshold over all layers, Sec. 4.3), the smallest first, until the
   cost (parameters or FLOPs, counted like Neural Rejuvenation's monitor: conv and linear weights) is at most
   ``slimming.target`` of the original: :func:`prune_split`. Every layer keeps at least one channel. Residual
   main-stream channels are not pruned (as in Neural Rejuvenation's setting; Liu et al. prune ResNets with channel
   selection layers instead). The rebuild is the engine's ``resize`` surgery, so it is recorded and replayed.
3. Fine-tune the rest of the epochs without the penalty.

The record holds the paper's count and the real one of the pruned network (:func:`~resprout.methods.rejuvenation.
cost.model_counts`; equal here: a pruned network has no zero blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.rejuvenation.cost import model_counts
from resprout.methods.rejuvenation.monitor import Topology, group_liveness, layer_costs, topology, widths
from resprout.methods.rejuvenation.rebuild import counts_of, gamma_score
from resprout.methods.rejuvenation.sparsity import UNITS, add_l1_subgradient, per_iteration


def prune_split(model, topo: Topology, target: float, *, judged: list[str], resource: str = "params") -> dict:
    """Global |gamma| pruning to ``target`` cost: ``{"keep": {unit: [old channel, ...]}, "cost", "threshold"}``."""
    scores = {k: gamma_score(model, topo, k) for k in judged}
    ranked = sorted(((float(s), k, i) for k in judged for i, s in enumerate(scores[k].tolist())))

    def keep_after(n: int) -> dict[str, list[int]]:
        keep = {k: set(range(topo.units[k].channels)) for k in judged}
        for _, k, i in ranked[:n]:
            if len(keep[k]) > 1:
                keep[k].discard(i)
        return {k: sorted(v) for k, v in keep.items()}

    def cost(keep: dict[str, list[int]]) -> int:
        split = {k: (len(v), 0) for k, v in keep.items()}
        return sum(layer_costs(topo, counts_of(topo, split, separate=False), resource).values())

    lo, hi = 0, len(ranked)  # cost(keep_after(n)) does not grow with n: the smallest n at the target
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(keep_after(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    keep = keep_after(lo)
    return {"keep": keep, "cost": cost(keep), "threshold": ranked[lo - 1][0] if lo else 0.0, "pruned": lo}


@dataclass
class SlimmingOptions:
    target: float = option(0.5, "cost after pruning, as a fraction of the original cost", min=0.0, max=1.0,
                           min_exclusive=True)
    lam: float = option(1e-4, "lambda of the L1 penalty on BN scales, per slimming.lam_unit (Liu et al.: 1e-4 per "
                        "iteration for VGG)", min=0.0)
    lam_unit: str = option("iteration", "unit of slimming.lam: iteration (applied as given, the paper's number) or "
                           "epoch (lambda times the iterations of an epoch, applied as value / iterations; NR's "
                           "unit)", choices=UNITS)
    prune_at: float = option(0.5, "share of the epochs trained with the penalty before pruning; the rest "
                             "fine-tunes", min=0.0, max=1.0, min_exclusive=True)
    resource: str = option("params", "what the cost target counts", choices=("params", "flops"))
    mainstream: str = option("exclude", "residual main-stream channels: not pruned (exclude) or pruned too",
                             choices=("exclude", "include"))
    member: str = option("model", "the member that is pruned")


class NetworkSlimming(Method):
    """``method=slimming``: sparsity training, global |gamma| pruning to a cost target, fine-tuning."""

    name = "slimming"
    Options = SlimmingOptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.record: dict = {}
        self.original_cost: int | None = None
        self.original_counts: dict | None = None
        self._topo: Topology | None = None
        self._topo_of: int | None = None

    def topo(self, trainer) -> Topology:
        model = trainer.members[self.options.member].model
        if self._topo is None or self._topo_of != id(model):
            self._topo, self._topo_of = topology(model, self.input_shape), id(model)
        return self._topo

    def setup(self, trainer) -> None:
        if self.options.member not in trainer.members:
            raise ConfigError(f"slimming.member={self.options.member!r} is not a member of this run "
                              f"({', '.join(trainer.members)})")
        self.input_shape = trainer.input_shape
        if not self.topo(trainer).monitored(self.options.mainstream):
            raise ConfigError(f"model {trainer.config.model!r} has no channel group Network Slimming can prune")
        self.prune_epoch = max(1, round(self.options.prune_at * trainer.config.epochs))

    def on_fit_start(self, trainer) -> None:
        if self.original_cost is None:
            topo = self.topo(trainer)
            full = {k: {None: g.channels} for k, g in topo.groups.items()}
            self.original_cost = sum(layer_costs(topo, full, self.options.resource).values())
            self.original_counts = model_counts(trainer.members[self.options.member].model, topo, None,
                                                self.input_shape)

    def on_after_backward(self, trainer) -> None:
        if not self.record and self.options.lam:
            model, topo = trainer.members[self.options.member].model, self.topo(trainer)
            lam = per_iteration(self.options.lam, self.options.lam_unit,
                                trainer.train_loader.steps(trainer.generation, trainer.epoch))
            add_l1_subgradient([model.get_submodule(b) for k in topo.monitored(self.options.mainstream)
                                for b in topo.units[k].bns], lam)

    def on_epoch_end(self, trainer) -> None:
        if self.record or trainer.epoch + 1 != self.prune_epoch:
            return
        o = self.options
        model, topo = trainer.members[o.member].model, self.topo(trainer)
        judged = topo.monitored(o.mainstream)
        live = group_liveness(model, topo, o.mainstream)
        target = o.target * self.original_cost
        res = prune_split(model, topo, target, judged=judged, resource=o.resource)
        before = widths(topo)
        trainer.apply_surgery(o.member, "resize", plan=res["keep"], input_shape=list(self.input_shape))
        self.record = {"epoch": trainer.epoch + 1, "cost_before": self.original_cost, "target": target,
                       "cost_after": res["cost"], "after_vs_target": res["cost"] / target,
                       "threshold": res["threshold"], "pruned_channels": res["pruned"],
                       "live_before": {k: int(live[k].sum()) for k in before}, "widths_before": before,
                       "widths_after": widths(self.topo(trainer))}
        trainer.results["slimming"] = self.record

    def on_member_resized(self, trainer) -> None:
        if trainer.resized == self.options.member:
            self._topo = None

    def on_fit_end(self, trainer) -> None:
        model = trainer.members[self.options.member].model
        counts = {"original": self.original_counts,
                  "final": model_counts(model, self.topo(trainer), None, self.input_shape)}
        trainer.results["slimming"] = {**self.record, "counts": counts} if self.record else {
            "note": "no pruning happened in this run", "counts": counts}

    def state_dict(self) -> dict:
        return {"record": self.record, "original_cost": self.original_cost, "original_counts": self.original_counts}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.record, self.original_cost = state["record"], state["original_cost"]
            self.original_counts = state.get("original_counts")


__all__ = ["NetworkSlimming", "SlimmingOptions", "prune_split"]
