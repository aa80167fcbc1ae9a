"""``method=nr``: Neural Rejuvenation (Qiao et al., CVPR 2019, Algorithm 1) and the ablations of its Table 1.

Every Delta t the monitor computes the utilization ``r`` (:mod:`.monitor`); the adaptive lambda follows it
(:mod:`.sparsity`); when ``r < T_r`` the member is rebuilt through the engine's ``resize`` surgery (dead channels
removed, one shared expansion rate to the cost target, survivors first, :mod:`.rebuild`), then trained with mixed
neurons (:mod:`.mixed`). The surgery is recorded, so a resumed run replays it and gets the same shapes; everything
else the method needs (lambda, the S/R labels, the history) is in its ``state_dict``.

**The sparsity window.** A run has a fixed number of epochs, so every sparsity phase has a window: it opens at the
start (and again at each rebuild while more rejuvenations are allowed) and lasts at most ``nr.hold`` of the epochs
that remain. With ``nr.ramp=window`` the paper's ``nr.ramp_epochs`` epochs of adaptive lambda (Delta lambda and
Delta r per epoch, :func:`~.sparsity.ramp_stretch`) fill it. If ``r`` has not fallen below T_r when it ends, the
run rejuvenates the channels that are dead by then (``nr.deadline=rebuild``; ``stop``: lambda goes back to 0 and
the run trains on without a rebuild), so a sparsity phase never runs into the end of the run with its penalty on.

Modes (``nr.mode``): ``nr`` the method; ``ip`` NR-IP (no reallocation: every layer keeps its width, dead channels
are re-initialized in place); ``fs`` NR-FS (the architecture NR finds, every weight re-initialized at the
rejuvenation, then plain training); ``bl`` the baseline (no sparsity, no rejuvenation, utilization still
reported); with ``nr.scheme=ca`` it is BL-CA (every layer split in halves with cross attention from the start).
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import torch

from resprout.config import option
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.rejuvenation import mixed
from resprout.methods.rejuvenation.cost import model_counts
from resprout.methods.rejuvenation.monitor import Topology, bridges, topology, utilization, widths
from resprout.methods.rejuvenation.rebuild import (new_labels, real_cost, reinit_split, rejuvenation_plan, rescale,
                                                   solve_expansion, survivor_order)
from resprout.methods.rejuvenation.schedule import RejuvenationSchedule
from resprout.methods.rejuvenation.sparsity import (CIFAR_ITERATIONS, DELTA_LAMBDA, DELTA_R, IMAGENET_ITERATIONS,
                                                    UNITS, add_l1_subgradient, next_lambda, per_iteration,
                                                    proximal_amount, ramp_stretch, soft_threshold,
                                                    window_end)
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
    lam_unit: str = option("epoch", "unit of nr.lam and nr.lam_step: epoch (lambda times the iterations of an "
                           "epoch, applied as value / iterations, so its effect per epoch does not depend on the "
                           "dataset's size) or iteration (applied as given, the papers' numbers on their data)",
                           choices=UNITS)
    lam: float = option(round(1.5e-4 * CIFAR_ITERATIONS, 12), "the fixed lambda (nr.sparsity=fixed), per "
                        "nr.lam_unit: the official CIFAR VGG-19 value, 1.5e-4 per iteration at 782 iterations per "
                        "epoch", min=0.0)
    l1: str = option("proximal", "how the L1 term is applied: a proximal soft-threshold after each step, by the "
                     "sub-gradient's steady drift lr * lambda / (1 - momentum) (exact zeros), or its sub-gradient "
                     "added to the BN scales' gradients (the official code; with a large lambda per iteration "
                     "every scale oscillates around 0 and none passes the dead test)",
                     choices=("proximal", "subgradient"))
    lam_step: float = option(round(DELTA_LAMBDA * IMAGENET_ITERATIONS, 12), "Delta lambda of the adaptive lambda "
                             "per epoch of the ramp, per nr.lam_unit: the paper's 5e-5 per iteration at 5,005 "
                             "iterations per epoch (ImageNet, Sec. 4.1)", min=0.0)
    r_step: float = option(DELTA_R, "Delta r: lambda rises unless the utilization falls this much per epoch of the "
                           "ramp (the paper: 0.01 per epoch)", min=0.0)
    every: float = option(0.25, "Delta t: epochs between utilization checks (the paper: 1); lambda and Delta r are "
                          "per epoch, so this sets only how finely the run follows them", min=0.0,
                          min_exclusive=True)
    ramp: str = option("epoch", "the time axis of the adaptive lambda: epoch (one epoch of the run is one of the "
                       "paper's) or window (the paper's nr.ramp_epochs epochs of it fill a shorter sparsity window; "
                       "on runs of a few epochs it collapses every scale at once)", choices=("epoch", "window"))
    ramp_epochs: float = option(20.0, "nr.ramp=window: the paper's epochs the sparsity window stands for (its "
                                "ImageNet runs reached T_r within 10-20 epochs, Sec. 4.1)", min=0.0,
                                min_exclusive=True)
    hold: float = option(0.5, "the sparsity window: at most this fraction of the epochs that remain when a "
                         "sparsity phase starts (the rate is held in it with nr.lr=hold)", min=0.0, max=1.0,
                         min_exclusive=True)
    deadline: str = option("rebuild", "when a window ends with r >= T_r: rebuild (rejuvenate the channels dead by "
                           "then, if any) or stop (lambda back to 0, no rejuvenation, as the paper's flag is off "
                           "after its window)", choices=("rebuild", "stop"))
    rejuvenations: int = option(1, "how many rejuvenations at most (Table 5: several)", min=0)
    mainstream: str = option("exclude", "residual main-stream channels: excluded from the monitor and the penalty "
                             "(the paper) or included", choices=("exclude", "include"))
    expand_mainstream: bool = option(True, "grow the main stream by the shared rate too (the official code)")
    rescale: bool = option(False, "neural rescaling after a rejuvenation (NR-BR, Sec. 3.2)")
    gamma0: float = option(1.0, "gamma_0: the initial BN scale (R neurons, rescaling); the zoo initializes 1",
                           min=0.0, min_exclusive=True)
    mode: str = option("nr", "nr; ip (NR-IP: no reallocation); fs (NR-FS: found architecture from scratch); bl "
                       "(baseline; BL-CA with nr.scheme=ca)", choices=("nr", "ip", "fs", "bl"))
    lr: str = option("hold", "the learning rate: hold (at its initial value while a sparsity window is open, "
                     "then the run's schedule restarted over the remaining epochs, as the official code spends no "
                     "schedule on the sparsity phase) or run (the run's schedule untouched)",
                     choices=("hold", "run"))
    count: str = option("paper", "what the cost target counts: paper (conv and linear weights, NR-CR's zero cross "
                        "blocks left out, as the paper counts) or real (the weights its tensors hold)",
                        choices=("paper", "real"))
    member: str = option("model", "the member that is monitored and rejuvenated")


class NeuralRejuvenation(Method):
    """``method=nr``: monitor, adaptive sparsity, rejuvenation by real rebuild, mixed-neuron training."""

    name = "nr"
    Options = NROptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        o = self.options
        if o.mode == "ip" and o.scheme == "cr":
            raise ConfigError("nr.mode=ip keeps every layer's width, so with nr.scheme=cr its removed cross blocks "
                              "cut its cost below the target; NR-IP is compared at equal cost with nr.scheme=nr or "
                              "ca")
        if o.mode == "ip" and o.target != 1.0:
            raise ConfigError(f"nr.mode=ip keeps every layer's width (no reallocation), so it cannot meet "
                              f"nr.target={o.target}; allowed with nr.mode=ip: nr.target=1.0")
        if o.count == "real" and o.resource == "flops" and o.scheme == "ca":
            raise ConfigError("nr.count=real with nr.resource=flops cannot hold NR-CA's cost: its cross attention "
                              "computes the cross blocks a second time; use nr.count=paper or nr.resource=params")
        self.window_start: float | None = 0.0 if o.mode != "bl" and o.rejuvenations > 0 else None
        self.closed_at: float | None = None  # when the latest sparsity window closed (run time, over generations)
        self.lam = o.lam if o.sparsity == "fixed" and self.window_start is not None else 0.0  # in nr.lam_unit
        self.r_prev = 1.0
        self.count = 0
        self.labels: dict[str, list] = {}
        self.original_cost: int | None = None
        self.original_counts: dict | None = None
        self.history: list[dict] = []  # every check: epoch, r, lambda
        self.accuracy: list[dict] = []  # every evaluation: epoch, test top1
        self.records: list[dict] = []  # every rejuvenation
        self.notes: list[str] = []
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
        """The labels whose cross blocks the utilization leaves out (NR-CR: they are not part of the network)."""
        return self.labels if self.options.scheme == "cr" and self.labels else None

    def _target_labels(self) -> dict | None:
        """The labels the cost target leaves out: NR-CR's with ``nr.count=paper``, none with ``real``."""
        return self._cost_labels() if self.options.count == "paper" else None

    def _iterations(self, trainer) -> int:
        return trainer.train_loader.steps(trainer.generation, trainer.epoch)

    def lam_per_iteration(self, trainer) -> float:
        """The lambda applied at this iteration (:func:`~.sparsity.per_iteration`)."""
        return per_iteration(self.lam, self.options.lam_unit, self._iterations(trainer))

    def _run_time(self, trainer, epoch: float) -> float:
        """Epochs since the run began (over generations), for the sparsity windows."""
        return trainer.generation * trainer.config.epochs + epoch

    def deadline(self, trainer) -> float | None:
        """The end of the open sparsity window (run time), or None when none is open."""
        if self.window_start is None:
            return None
        end = trainer.config.generations * trainer.config.epochs
        return window_end(self.window_start, end, self.options.hold)

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

    def _counts(self, trainer) -> dict:
        return model_counts(self._model(trainer), self.topo(trainer), self._cost_labels(), self.input_shape)

    # -- events ----------------------------------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        if self.options.member not in trainer.members:
            raise ConfigError(f"nr.member={self.options.member!r} is not a member of this run "
                              f"({', '.join(trainer.members)})")
        self.input_shape = trainer.input_shape
        if self.options.lr == "hold" and self.options.mode != "bl":
            trainer.rates.modify(self.options.member, functools.partial(self.held_factor, trainer), stage="factor")
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
            self.original_counts = model_counts(self._model(trainer), topo, None, self.input_shape)
        self._install(trainer)

    def _utilization(self, trainer) -> dict:
        o = self.options
        return utilization(self._model(trainer), self.topo(trainer), resource=o.resource, mainstream=o.mainstream,
                           labels=self._cost_labels())

    def _penalized(self, trainer):
        model, topo = self._model(trainer), self.topo(trainer)
        return [model.get_submodule(b) for k in topo.monitored(self.options.mainstream) for b in topo.units[k].bns]

    def _lr_start(self, trainer) -> float | None:
        """Where the rate stops being held, in this generation's epochs: the open window's deadline, else the time
        the last window closed; None when no window touches this generation."""
        deadline = self.deadline(trainer)
        at = deadline if deadline is not None else self.closed_at
        if at is None:
            return None
        local = at - trainer.generation * trainer.config.epochs
        return local if local > 0 else None

    def held_factor(self, trainer, member, position, factor: float) -> float:
        """The factor modifier of ``nr.lr=hold`` (:mod:`resprout.engine.rates`): the member's schedule wrapped in
        :class:`RejuvenationSchedule` while a window touches this generation, else the schedule's own factor."""
        start = self._lr_start(trainer)
        if start is None:
            return factor
        return RejuvenationSchedule(member.schedule, start).factor(position.t, position.dt)

    def on_after_backward(self, trainer) -> None:
        if self.lam and self.options.l1 == "subgradient":
            add_l1_subgradient(self._penalized(trainer), self.lam_per_iteration(trainer))
        if self._masks:
            mixed.mask_gradients(self._model(trainer), self._masks)

    def on_after_step(self, trainer) -> None:
        if self.lam and self.options.l1 == "proximal":
            group = trainer.members[self.options.member].optimizer.param_groups[0]
            amount = proximal_amount(group["lr"], self.lam_per_iteration(trainer), group.get("momentum", 0.0))
            soft_threshold(self._penalized(trainer), amount)

    def on_batch_end(self, trainer) -> None:
        spe = trainer.train_loader.steps(trainer.generation, trainer.epoch)
        interval = max(1, round(self.options.every * spe))
        done = trainer.epoch * spe + trainer.step + 1
        if done % interval == 0:
            self.check(trainer, trainer.epoch + (trainer.step + 1) / spe, interval / spe)

    def check(self, trainer, epoch: float, dt: float | None = None) -> None:
        """One utilization check (Algorithm 1, steps 6-8), ``dt`` epochs after the previous one."""
        o = self.options
        u = self._utilization(trainer)
        lam = self.lam_per_iteration(trainer)
        self.history.append({"epoch": epoch, "r": u["r"], "lambda": lam,
                             "lambda_epoch": lam * self._iterations(trainer)})
        deadline = self.deadline(trainer)
        if deadline is None or self.count >= o.rejuvenations:
            return
        if u["r"] < o.threshold:
            self.rejuvenate(trainer, u, epoch)
            return
        if self._run_time(trainer, epoch) >= deadline - 1e-9:
            self._window_ends(trainer, u, epoch)
            return
        if o.sparsity == "adaptive":
            # Delta lambda and Delta r are per epoch of the ramp; the ramp's epochs per run epoch is the stretch
            per = ramp_stretch(o.ramp, o.ramp_epochs, self.window_start, deadline) * (o.every if dt is None else dt)
            self.lam = next_lambda(self.lam, u["r"], self.r_prev, delta_r=o.r_step * per,
                                   delta_lambda=o.lam_step * per)
        self.r_prev = u["r"]

    def _window_ends(self, trainer, u: dict, epoch: float) -> None:
        """The window's deadline with ``r >= T_r``: rebuild what is dead (``nr.deadline=rebuild``; a compression
        target is met in any case) or close the window without a rebuild."""
        o = self.options
        if o.deadline == "rebuild" and (u["used"] < u["cost"] or o.target < 1.0):
            self.rejuvenate(trainer, u, epoch, trigger="deadline")
            return
        self._close(trainer, epoch, f"the sparsity window closed at epoch {epoch:.2f} with r = {u['r']:.4f} >= "
                                    f"T_r = {o.threshold}" + (" and no dead channel" if o.deadline == "rebuild" else
                                                              "") + ": lambda back to 0, no rejuvenation")

    def _close(self, trainer, epoch: float, note: str) -> None:
        """End the sparsity phase without a rebuild: lambda 0, no further window (the rate restarts now)."""
        self.notes.append(note)
        self.window_start, self.closed_at = None, self._run_time(trainer, epoch)
        self.lam = 0.0

    def rejuvenate(self, trainer, u: dict, epoch: float, trigger: str = "threshold") -> dict:
        """Step 8: rebuild the member to the cost target, re-initialize, rescale, install the scheme."""
        o = self.options
        model, topo = self._model(trainer), self.topo(trainer)
        judged = topo.monitored(o.mainstream)
        target = o.target * self.original_cost
        separate = o.scheme == "cr" and o.mode != "fs" and o.count == "paper"
        gen, survivors = self.count + 1, survivor_order(model, topo, u["live"])
        labelling = {"survivors": survivors, "prior": self.labels or None, "gen": gen}
        sol = solve_expansion(topo, u["live"], target, judged=judged, separate=separate, resource=o.resource,
                              realloc="none" if o.mode == "ip" else "linear", expand_mainstream=o.expand_mainstream,
                              reinit_dead=bridges(topo, o.mainstream), **labelling)
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
        # lambda back to 0 (Sec. 3.1.3); while more rejuvenations are allowed a new window opens, where the
        # adaptive lambda grows again from 0 (a fixed one returns)
        now = self._run_time(trainer, epoch)
        self.closed_at = now
        self.window_start = now if self.count < o.rejuvenations else None
        self.lam = o.lam if o.sparsity == "fixed" and self.window_start is not None else 0.0
        after = self._utilization(trainer)
        self.r_prev = after["r"]
        record = {"epoch": epoch, "generation": trainer.generation, "step": trainer.step + 1, "trigger": trigger,
                  "utilization_before": u["r"],
                  "lambda_before": self.history[-1]["lambda"] if self.history else 0.0,
                  "cost_before": u["cost"], "cost_used_before": u["used"], "target": target,
                  "cost_after": sol["cost"], "cost_after_counted": real_cost(model, topo, self._target_labels(),
                                                                             o.resource),
                  "after_vs_target": sol["cost"] / target, "alpha": sol["alpha"],
                  "widths_before": before, "live_before": {k: int(u["live"][k].sum()) for k in before},
                  "widths_after": widths(topo), "counts_after": self._counts(trainer),
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
        report = self.report()
        report["counts"] = {"original": self.original_counts, "final": self._counts(trainer)}
        trainer.results["rejuvenation"] = report  # its plots: resprout.analysis.plots, after the run

    def report(self) -> dict:
        reached = self.history[-1]["r"] if self.history else None
        out = {"rejuvenations": self.records, "count": len(self.records), "utilization": self.history,
               "accuracy": self.accuracy, "original_cost": self.original_cost, "resource": self.options.resource,
               "count_target": self.options.count, "scheme": self.options.scheme, "mode": self.options.mode,
               "threshold": self.options.threshold, "utilization_reached": reached, "notes": list(self.notes)}
        if not self.records and self.options.mode != "bl":
            out["note"] = (f"no rejuvenation in this run: the utilization reached {reached:.4f}, T_r is "
                           f"{self.options.threshold}" if reached is not None else
                           "no rejuvenation in this run: no utilization check ran")
        return out

    # -- state -----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"lam": self.lam, "r_prev": self.r_prev, "count": self.count, "labels": self.labels,
                "original_cost": self.original_cost, "original_counts": self.original_counts,
                "history": self.history, "accuracy": self.accuracy, "records": self.records, "notes": self.notes,
                "window_start": self.window_start, "closed_at": self.closed_at}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.lam, self.r_prev, self.count = state["lam"], state["r_prev"], state["count"]
        self.labels, self.original_cost = state["labels"], state["original_cost"]
        self.history, self.accuracy, self.records = state["history"], state["accuracy"], state["records"]
        self.original_counts, self.notes = state.get("original_counts"), state.get("notes", [])
        self.window_start, self.closed_at = state.get("window_start", self.window_start), state.get("closed_at")
