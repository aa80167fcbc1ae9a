"""``method=nr``: Neural Rejuvenation (Qiao et al., CVPR 2019, Algorithm 1) and the ablations of its Table 1.

Every Delta t the monitor computes the utilization ``r`` (:mod:`.monitor`); the adaptive lambda follows it
(:mod:`.sparsity`); when ``r < T_r`` the member is rebuilt through the engine's ``resize`` surgery (dead channels
removed, one shared expansion rate to the cost target, survivors first, :mod:`.rebuild`), then trained with mixed
neurons (:mod:`.mixed`). The surgery is recorded, so a resumed run replays it and gets the same shapes; everything
else the method needs (lambda, the S/R labels, the history) is in its ``state_dict``.

Modes (``nr.mode``): ``nr`` the method; ``ip`` NR-IP (no reallocation: every layer keeps its width, dead channels
are re-initialized in place); ``fs`` NR-FS (the architecture NR finds, every weight re-initialized at the
rejuvenation, then plain training); ``bl`` the baseline (no sparsity, no rejuvenation, utilization still
reported); with ``nr.scheme=ca`` it is BL-CA (every layer split in halves with cross attention from the start).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.rejuvenation import mixed
from resprout.methods.rejuvenation.monitor import Topology, topology, utilization, widths
from resprout.methods.rejuvenation.rebuild import (new_labels, real_cost, reinit_split, rejuvenation_plan, rescale,
                                                   solve_expansion, survivor_order)
from resprout.methods.rejuvenation.schedule import RejuvenationSchedule
from resprout.methods.rejuvenation.sparsity import (DELTA_LAMBDA, DELTA_R, add_l1_subgradient, next_lambda,
                                                    soft_threshold)
from resprout.seeding import derive_seed


@dataclass
class NROptions:
    target: float = option(1.0, "cost of the rebuilt network as a fraction of the original cost (1.0: keep it, "
                           "Tables 1/2/5; 0.5: compression, Table 4)", min=0.0, max=1.0, min_exclusive=True)
    threshold: float = option(0.5, "T_r: rejuvenate when the utilization falls below it (Sec. 4.1)", min=0.0,
                              max=1.0, min_exclusive=True)
    scheme: str = option("cr", "training with mixed neurons: nr (cross-connections kept, Eq. 5), cr (removed, "
                         "Eq. 6), ca (cross attention, Eq. 9-10)", choices=mixed.SCHEMES)
    resource: str = option("params", "what the utilization and the cost target count", choices=("params", "flops"))
    sparsity: str = option("adaptive", "lambda: adaptive (Sec. 3.1.3) or fixed at nr.lam",
                           choices=("adaptive", "fixed"))
    lam: float = option(1.5e-4, "the fixed lambda (nr.sparsity=fixed; the official CIFAR VGG-19 value)", min=0.0)
    l1: str = option("subgradient", "how the L1 term is applied: its sub-gradient added to the BN scales' "
                     "gradients (the official code) or a proximal soft-threshold after each step (exact zeros; for "
                     "short runs with a large lambda)", choices=("subgradient", "proximal"))
    lam_step: float = option(DELTA_LAMBDA, "Delta lambda of the adaptive lambda", min=0.0)
    r_step: float = option(DELTA_R, "Delta r of the adaptive lambda", min=0.0)
    every: float = option(1.0, "Delta t: epochs between utilization checks (fractions allowed)", min=0.0,
                          min_exclusive=True)
    rejuvenations: int = option(1, "how many rejuvenations at most (Table 5: several)", min=0)
    mainstream: str = option("exclude", "residual main-stream channels: excluded from the monitor and the penalty "
                             "(the paper) or included", choices=("exclude", "include"))
    expand_mainstream: bool = option(True, "grow the main stream by the shared rate too (the official code)")
    rescale: bool = option(False, "neural rescaling after a rejuvenation (NR-BR, Sec. 3.2)")
    gamma0: float = option(1.0, "gamma_0: the initial BN scale (R neurons, rescaling); the zoo initializes 1",
                           min=0.0, min_exclusive=True)
    mode: str = option("nr", "nr; ip (NR-IP: no reallocation); fs (NR-FS: found architecture from scratch); bl "
                       "(baseline; BL-CA with nr.scheme=ca)", choices=("nr", "ip", "fs", "bl"))
    lr: str = option("hold", "the learning rate: hold (at its initial value during the sparsity phase, then the "
                     "run's schedule restarted over the remaining epochs at each rejuvenation, as the official code "
                     "does) or run (the run's schedule untouched)", choices=("hold", "run"))
    hold: float = option(0.5, "nr.lr=hold: the longest sparsity phase, as a fraction of the epochs (the schedule "
                         "restarts there if no rejuvenation came)", min=0.0, max=1.0)
    member: str = option("model", "the member that is monitored and rejuvenated")


class NeuralRejuvenation(Method):
    """``method=nr``: monitor, adaptive sparsity, rejuvenation by real rebuild, mixed-neuron training."""

    name = "nr"
    Options = NROptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.lam = 0.0 if self.options.sparsity == "adaptive" or self.options.mode == "bl" else self.options.lam
        self.r_prev = 1.0
        self.count = 0
        self.labels: dict[str, list] = {}
        self.original_cost: int | None = None
        self.history: list[dict] = []  # every check: epoch, r, lambda
        self.accuracy: list[dict] = []  # every evaluation: epoch, test top1
        self.records: list[dict] = []  # every rejuvenation
        self._topo: Topology | None = None
        self._topo_of: int | None = None
        self._masks: dict[str, torch.Tensor] = {}
        self._hooks: list = []

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _model(self, trainer):
        return trainer.members[self.options.member].model

    def topo(self, trainer) -> Topology:
        model = self._model(trainer)
        if self._topo is None or self._topo_of != id(model):
            self._topo, self._topo_of = topology(model, self.input_shape), id(model)
        return self._topo

    def _cost_labels(self) -> dict | None:
        return self.labels if self.options.scheme == "cr" and self.labels else None

    def _install(self, trainer) -> None:
        """Masks (NR-CR) or cross-attention hooks (NR-CA) for the current labels."""
        for h in self._hooks:
            h.remove()
        self._hooks, self._masks = [], {}
        if not self.labels or self.options.scheme == "nr":
            return
        model = self._model(trainer)
        masks = mixed.cross_masks(model, self.topo(trainer), self.labels)
        if self.options.scheme == "cr":
            mixed.zero_cross(model, masks)
            self._masks = masks
        else:
            self._hooks = mixed.install_cross_attention(model, masks)

    # -- events ----------------------------------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        if self.options.member not in trainer.members:
            raise ConfigError(f"nr.member={self.options.member!r} is not a member of this run "
                              f"({', '.join(trainer.members)})")
        self.input_shape = trainer.input_shape
        topo = self.topo(trainer)  # refuses now a layer without BN or a model surgery cannot follow
        if not topo.monitored(self.options.mainstream):
            raise ConfigError(f"model {trainer.config.model!r} has no channel group Neural Rejuvenation can "
                              f"judge (every group is fixed or on the residual main stream)")

    def on_fit_start(self, trainer) -> None:
        topo = self.topo(trainer)
        if self.original_cost is None:
            if self.options.mode == "bl" and self.options.scheme == "ca":
                self.labels = mixed.half_labels(topo, topo.order)
            self.original_cost = self._utilization(trainer)["cost"]
        self._install(trainer)

    def _utilization(self, trainer) -> dict:
        o = self.options
        return utilization(self._model(trainer), self.topo(trainer), resource=o.resource, mainstream=o.mainstream,
                           labels=self._cost_labels())

    def _penalized(self, trainer):
        model, topo = self._model(trainer), self.topo(trainer)
        return [model.get_submodule(b) for k in topo.monitored(self.options.mainstream) for b in topo.units[k].bns]

    def on_batch_start(self, trainer) -> None:
        """Keep the member's schedule wrapped (``nr.lr=hold``): the trainer rebuilds it with every optimizer."""
        if self.options.lr != "hold" or self.options.mode == "bl":
            return
        member = trainer.members[self.options.member]
        restart = next((r["epoch"] for r in reversed(self.records) if r.get("generation", 0) == trainer.generation),
                       None)
        sched = member.schedule
        if not isinstance(sched, RejuvenationSchedule) or sched.restart != restart:
            inner = sched.inner if isinstance(sched, RejuvenationSchedule) else sched
            member.schedule = RejuvenationSchedule(inner, restart, self.options.hold)

    def on_after_backward(self, trainer) -> None:
        if self.lam and self.options.l1 == "subgradient":
            add_l1_subgradient(self._penalized(trainer), self.lam)
        if self._masks:
            mixed.mask_gradients(self._model(trainer), self._masks)

    def on_after_step(self, trainer) -> None:
        if self.lam and self.options.l1 == "proximal":
            lr = trainer.members[self.options.member].optimizer.param_groups[0]["lr"]
            soft_threshold(self._penalized(trainer), lr * self.lam)

    def on_batch_end(self, trainer) -> None:
        spe = trainer.train_loader.steps(trainer.generation, trainer.epoch)
        interval = max(1, round(self.options.every * spe))
        done = trainer.epoch * spe + trainer.step + 1
        if done % interval == 0:
            self.check(trainer, trainer.epoch + (trainer.step + 1) / spe)

    def check(self, trainer, epoch: float) -> None:
        """One utilization check (Algorithm 1, steps 6-8)."""
        o = self.options
        u = self._utilization(trainer)
        self.history.append({"epoch": epoch, "r": u["r"], "lambda": self.lam})
        if o.mode == "bl" or self.count >= o.rejuvenations:
            return
        if u["r"] < o.threshold:
            self.rejuvenate(trainer, u, epoch)
            return
        if o.sparsity == "adaptive":
            self.lam = next_lambda(self.lam, u["r"], self.r_prev, delta_r=o.r_step, delta_lambda=o.lam_step)
        self.r_prev = u["r"]

    def rejuvenate(self, trainer, u: dict, epoch: float) -> dict:
        """Step 8: rebuild the member to the cost target, re-initialize, rescale, install the scheme."""
        o = self.options
        model, topo = self._model(trainer), self.topo(trainer)
        judged = topo.monitored(o.mainstream)
        target = o.target * self.original_cost
        separate = o.scheme == "cr" and o.mode != "fs"
        gen, survivors = self.count + 1, survivor_order(model, topo, u["live"])
        labelling = {"survivors": survivors, "prior": self.labels or None, "gen": gen}
        sol = solve_expansion(topo, u["live"], target, judged=judged, separate=separate, resource=o.resource,
                              realloc="none" if o.mode == "ip" else "linear", expand_mainstream=o.expand_mainstream,
                              **labelling)
        plan = rejuvenation_plan(model, topo, u["live"], sol["split"], fresh=o.mode == "fs", survivors=survivors)
        labels = new_labels(sol["split"], survivors, self.labels or None, gen)
        before = widths(topo)
        for h in self._hooks:  # a deep copy would carry them into the new model
            h.remove()
        self._hooks = []
        trainer.apply_surgery(o.member, "resize", plan=plan, input_shape=list(self.input_shape), init="kaiming",
                              zero_outgoing=o.mode != "fs", seed=derive_seed(trainer.config.seed, 0x4E52, self.count))
        model, topo = self._model(trainer), self.topo(trainer)
        if o.mode == "fs":
            self.labels = {}
            with torch.no_grad():
                for key in topo.order:
                    for b in topo.units[key].bns:
                        model.get_submodule(b).weight.fill_(o.gamma0)
        else:
            self.labels = labels
            reinit_split(model, topo, sol["split"], o.gamma0, labels=labels, gen=gen)
        rescaled = rescale(model, topo, sol["split"], o.gamma0) if o.rescale and o.mode != "fs" else {}
        self._install(trainer)
        self.count += 1
        # back to 0 after a rejuvenation (Sec. 3.1.3); a fixed lambda returns while more rejuvenations may follow
        more = o.sparsity == "fixed" and self.count < o.rejuvenations
        self.lam, after = (o.lam if more else 0.0), self._utilization(trainer)
        self.r_prev = after["r"]
        record = {"epoch": epoch, "generation": trainer.generation, "step": trainer.step + 1,
                  "utilization_before": u["r"],
                  "lambda_before": self.history[-1]["lambda"] if self.history else 0.0,
                  "cost_before": u["cost"], "cost_used_before": u["used"], "target": target,
                  "cost_after": sol["cost"], "cost_after_counted": real_cost(model, topo, self._cost_labels(),
                                                                             o.resource),
                  "after_vs_target": sol["cost"] / target, "alpha": sol["alpha"],
                  "widths_before": before, "live_before": {k: int(u["live"][k].sum()) for k in before},
                  "widths_after": widths(topo),
                  "survivors": {k: s for k, (s, _) in sol["split"].items()}, "rescaled": rescaled}
        self.records.append(record)
        trainer.results["rejuvenation"] = self.report()
        return record

    def on_member_resized(self, trainer) -> None:
        if trainer.resized == self.options.member:
            self._topo = None

    def on_after_evaluate(self, trainer) -> None:
        test = trainer.last_eval.get(self.options.member, {}).get("test", {})
        if "top1" in test:
            self.accuracy.append({"epoch": trainer.epoch + 1, "top1": float(test["top1"])})

    def on_fit_end(self, trainer) -> None:
        trainer.results["rejuvenation"] = self.report()  # its plots: resprout.analysis.rejuvenation

    def report(self) -> dict:
        reached = self.history[-1]["r"] if self.history else None
        out = {"rejuvenations": self.records, "count": len(self.records), "utilization": self.history,
               "accuracy": self.accuracy, "original_cost": self.original_cost, "resource": self.options.resource,
               "scheme": self.options.scheme, "mode": self.options.mode, "threshold": self.options.threshold,
               "utilization_reached": reached}
        if not self.records and self.options.mode != "bl":
            out["note"] = (f"no rejuvenation in this run: the utilization reached {reached:.4f}, T_r is "
                           f"{self.options.threshold}" if reached is not None else
                           "no rejuvenation in this run: no utilization check ran")
        return out

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"lam": self.lam, "r_prev": self.r_prev, "count": self.count, "labels": self.labels,
                "original_cost": self.original_cost, "history": self.history, "accuracy": self.accuracy,
                "records": self.records}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.lam, self.r_prev, self.count = state["lam"], state["r_prev"], state["count"]
        self.labels, self.original_cost = state["labels"], state["original_cost"]
        self.history, self.accuracy, self.records = state["history"], state["accuracy"], state["records"]
