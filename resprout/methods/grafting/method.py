"""``method=graft``: Filter Grafting among K networks (Cheng et al., "Filter Grafting for Deep Neural Networks:
Reason, Method, and Cultivation", Algorithm 1), and with ``method=graft+kd`` Grafting+ (Sec. 3.5, Eq. 8-12).

The run trains K peers ``peer_1..peer_K``. After every epoch each peer grafts: with external scions (the default)
peer k mixes every layer with peer k-1's pre-graft layer of the same epoch (Eq. 2, alpha from Eq. 7); with noise
or internal scions each peer grafts into its own invalid filters. Diversity between the peers comes from their
initial weights (peer 1 has the run's, peer k a draw under its own seed), their data order (peer 1 the run's,
peer k its own ``data_seed``) and their learning rates: by default the official per-network factors
``(1 + cos(pi (K - k) / K)) / 2`` (``--difflr``, on by default in the official code; the paper names different
learning rates as a source of diversity, Sec. 3.1.3), ``lr_factors=same`` for one rate.

After a graft (:mod:`.aftergraft`): ``bn=mix`` (default, the official behaviour) keeps the mixed BN running
statistics, ``bn=reestimate`` recomputes them on ``bn_batches`` of the peer's own training batches of the current
epoch; ``momentum=keep`` (default, official: each process keeps its optimizer) keeps the SGD velocity,
``momentum=reset`` zeroes the momentum buffers of the grafted entries (every parameter for external scions, the
grafted filters for noise and internal ones). Both apply to every peer that grafted.

Two placements with the same semantics: in one process all K peers are members of the run; under
``torchrun --nproc_per_node=K`` peer k lives on rank k-1 (``placement="per_rank"``) and the ring goes through
:func:`resprout.engine.distributed.ring_exchange`. The same seeds give the same weights either way.

When the graft happens (``timing``): ``after_eval`` (default, as the official code) evaluates and checkpoints the
pre-graft weights of an epoch and grafts at the start of the next one, so the last epoch ends un-grafted;
``before_eval`` grafts at the end of every epoch, the last one included, and evaluates the grafted weights.

Grafting+ is this method composed with ``kd`` (``method=graft+kd teacher=DIR kd.temperature=2``): KD trains every
peer against the mean teacher probability, grafting mixes the peers. The official Grafting+ script's bug (it
compared a network's entropy with itself, so alpha was always 0.5 and the peers swapped weights) is not repeated:
alpha always compares the peer with its predecessor.
"""

from __future__ import annotations

import functools

import os
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resprout.config import option
from resprout.engine.distributed import all_gather_object, ring_exchange
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.grafting.aftergraft import reestimate_bn, reset_momentum
from resprout.methods.grafting.criteria import EDGES
from resprout.methods.grafting.ring import (
    RINGS, RULES, graft_ring, grafts_at, group_alphas, layer_groups, mix_states, predecessor)
from resprout.methods.grafting.scions import (
    NOISE_SCALES, SCIONS, conv_weights, internal_scion, noise_scion, noise_sigma)
from resprout.methods.grafting.weighting import lr_factors
from resprout.seeding import derive_seed, generator

_SALT = 0x6A1F7  # separates the peers' seeds from every other derived stream
TIMINGS = ("after_eval", "before_eval")


@dataclass
class GraftOptions:
    peers: int = option(2, "K: networks grafted in a ring (members peer_1..peer_K)", min=1)
    scion: str = option("external", "what is grafted: external (other networks' layers), internal (a network's "
                        "own large filters), noise, or none (independent peers: an ensemble)", choices=SCIONS)
    criterion: str = option("entropy", "information of a layer for the adaptive alpha: entropy (Eq. 6) or l1",
                            choices=("entropy", "l1"))
    bins: int = option(10, "bins of the entropy over each layer's value range", min=2)
    edge: str = option("official", "entropy bins: official (the maximum falls in no bin) or inclusive",
                       choices=EDGES)
    a: float = option(0.4, "A of Eq. 7: alpha lies in (0.5 - A/2, 0.5 + A/2)", min=0.0, max=1.0)
    c: float = option(500.0, "c of Eq. 7: how fast alpha saturates with the information difference", min=0.0)
    round_alpha: bool = option(True, "round alpha to 0.01 (as the official code)")
    rule: str = option("own", "alpha of the classifier and shortcut convs: own, or official (the preceding "
                       "conv's)", choices=RULES)
    ring: str = option("simultaneous", "simultaneous (every peer grafts every epoch) or staggered (half of the "
                       "peers at a time: with 2 peers one direction per epoch)", choices=RINGS)
    timing: str = option("after_eval", "after_eval (evaluate pre-graft weights, graft at the next epoch's start) or "
                         "before_eval (graft at every epoch's end, evaluate grafted weights)", choices=TIMINGS)
    lr_factors: str = option("cosine", "per-peer learning rates: cosine (the official --difflr factors "
                             "(1 + cos(pi (K - k) / K)) / 2: K=2 gives 0.5 and 1), or same", choices=("cosine", "same"))
    data_order: str = option("own", "own (peer k > 1 has its own data order) or shared", choices=("own", "shared"))
    init: str = option("own", "own (peer k > 1 starts from its own draw) or shared (every peer starts as peer 1)",
                       choices=("own", "shared"))
    threshold: float = option(0.1, "gamma: a filter whose l1 norm is below it is invalid (noise, internal)",
                              min=0.0)
    noise_base: float = option(0.975, "a of sigma_t = a^t (noise scions)", min=0.0, max=1.0, min_exclusive=True)
    noise_scale: str = option("layer", "sigma of the noise scion: layer (a^t times the std of the layer's weights) "
                              "or absolute (a^t, the paper's)", choices=NOISE_SCALES)
    bn: str = option("mix", "BN running statistics after a graft: mix (the official blend) or reestimate (recomputed "
                     "on training batches)", choices=("mix", "reestimate"))
    bn_batches: int = option(20, "training batches of the peer's current epoch that bn=reestimate averages over "
                             "(at most the epoch's)", min=1)
    momentum: str = option("keep", "SGD momentum after a graft: keep (official) or reset (zero the buffers of "
                           "the grafted entries)", choices=("keep", "reset"))


def peer_names(count: int) -> list[str]:
    return [f"peer_{k}" for k in range(1, count + 1)]


class Grafting(Method):
    """``method=graft``: K peers, grafted after every epoch (see the module docstring)."""

    name = "graft"
    Options = GraftOptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.history: list[dict] = []  # one record per graft and local peer
        self._groups = None
        self.epoch_seconds: list[float] = []  # training time of every epoch (a resumed epoch is not counted)
        self._epoch_t0: float | None = None
        # refused when the method is built, before a run directory is claimed or a process group joined
        _check_peers(self.options.peers, self.options.scion, int(os.environ.get("WORLD_SIZE", "1")))

    # -- setup --------------------------------------------------------------------------------------------------
    def setup(self, trainer) -> None:
        opts, cfg, dist = self.options, trainer.config, trainer.dist
        k = opts.peers
        _check_peers(k, opts.scion, dist.world_size)
        if "model" not in trainer.members:
            raise ConfigError("method=graft needs the run's single member 'model' to make its peers from")
        base = trainer.members["model"].model
        if opts.init == "own" and k > 1 and trainer.model_factory is None:
            raise ConfigError("graft.init=own draws a fresh network per peer; this run has no model factory "
                              "(pass a factory, e.g. module=MyNet, or use graft.init=shared)")
        factors = lr_factors(k) if opts.lr_factors == "cosine" else [1.0] * k
        trainer.remove_member("model")
        for i, name in enumerate(peer_names(k), start=1):
            if i == 1:
                model = base
            elif opts.init == "own":
                model = trainer.new_model(seed=derive_seed(cfg.seed, _SALT, i))
            else:
                model = _copy(base)
            data_seed = derive_seed(cfg.seed, _SALT, i, 1) if (i > 1 and opts.data_order == "own") else None
            trainer.add_member(name, model, placement="per_rank", rank=i - 1, data_seed=data_seed)
            if opts.lr_factors == "cosine":
                trainer.rates.modify(name, functools.partial(_peer_rate, factors[i - 1]))

    def _peers(self, trainer):
        return [trainer.members[n] for n in peer_names(self.options.peers)]

    def on_fit_start(self, trainer) -> None:
        # the members' optimizer keys are final only after every setup (member.<name>.optimizer overrides)
        if self.options.momentum == "reset":
            for p in self._peers(trainer):
                if p.local and trainer.optim_spec(p)["optimizer"] != "sgd":
                    raise ConfigError(f"graft.momentum=reset zeroes SGD momentum buffers; {p.name} uses optimizer="
                                      f"{trainer.optim_spec(p)['optimizer']}, whose per-weight moments and step "
                                      f"count a zeroing would not reset consistently (use graft.momentum=keep)")

    # -- when -----------------------------------------------------------------------------------------------------
    def on_epoch_start(self, trainer) -> None:
        if self.options.timing == "after_eval" and (trainer.generation, trainer.epoch) != (0, 0):
            self.graft(trainer, trainer.generation * trainer.config.epochs + trainer.epoch - 1)
        self._epoch_t0 = time.perf_counter()  # the epoch's training time, the graft excluded (for its cost)

    def on_epoch_end(self, trainer) -> None:
        if self._epoch_t0 is not None:
            self.epoch_seconds.append(time.perf_counter() - self._epoch_t0)
            self._epoch_t0 = None
        if self.options.timing == "before_eval":
            self.graft(trainer, trainer.generation * trainer.config.epochs + trainer.epoch)

    # -- the graft ----------------------------------------------------------------------------------------------
    def graft(self, trainer, n: int) -> None:
        """Graft number ``n`` (0-based: after epoch n + 1 of the run) of every local peer."""
        opts = self.options
        if opts.scion == "none":
            return
        peers = self._peers(trainer)
        t0 = time.perf_counter()
        records, grafted = [], []
        with torch.no_grad():
            if opts.scion == "external":
                records = self._graft_external(trainer, peers, n)
                grafted = [(peers[r["peer"] - 1], None) for r in records]  # every entry of the peer was mixed
            else:
                for k, p in enumerate(peers, start=1):
                    if p.local:
                        rec, rows = self._graft_own(trainer, p, k, n)
                        records.append(rec)
                        if rows:
                            grafted.append((p, rows))
            for p, rows in grafted:
                self._after_graft(trainer, p, rows)
        seconds = time.perf_counter() - t0
        for r in records:
            r["seconds"] = seconds
        self.history.extend(records)

    def _alpha_options(self) -> dict:
        o = self.options
        return dict(criterion=o.criterion, bins=o.bins, edge=o.edge, a=o.a, c=o.c,
                    round_to=0.01 if o.round_alpha else None)

    def _graft_external(self, trainer, peers, n: int) -> list[dict]:
        opts = self.options
        if self._groups is None:
            self._groups = layer_groups(peers[0].model, opts.rule)
        groups = self._groups
        local = [(k, p) for k, p in enumerate(peers, start=1) if p.local]
        records = []
        if trainer.per_rank and trainer.dist.enabled:  # one peer here; its predecessor on rank r - 1
            (k, p), = local
            own = p.model.state_dict()
            other = ring_exchange(own, trainer.dist)  # every rank takes part, grafting or not
            if grafts_at(k, n, opts.ring):
                alphas = group_alphas(own, other, groups, **self._alpha_options())
                p.model.load_state_dict(mix_states(own, other, groups, alphas))
                records.append(_record(n, k, predecessor(k, len(peers)), alphas))
            return records
        # pre-graft: every new state is computed (into new tensors) before any peer is loaded
        states = [p.model.state_dict() for p in peers]
        new, alphas = graft_ring(states, groups, n=n, ring=opts.ring, **self._alpha_options())
        for k, p in local:
            if alphas[k - 1]:
                p.model.load_state_dict(new[k - 1])
                records.append(_record(n, k, predecessor(k, len(peers)), alphas[k - 1]))
        return records

    def _graft_own(self, trainer, peer, k: int, n: int) -> tuple[dict, dict[str, torch.Tensor]]:
        """A noise or internal graft of one peer: its record, and the filters it changed per weight."""
        opts = self.options
        grafted = 0
        rows = {}
        gen = generator(trainer.config.seed, _SALT, k, n, 2)
        for key, w in conv_weights(peer.model).items():
            if opts.scion == "noise":
                new, count = noise_scion(w, opts.threshold, noise_sigma(opts.noise_base, n, w, opts.noise_scale),
                                         gen)
            else:
                new, count = internal_scion(w, opts.threshold)
            if count:
                rows[key] = (new != w).reshape(len(w), -1).any(1).nonzero().flatten()
                w.copy_(new)
            grafted += count
        rec = {"graft": n, "peer": k, "filters": grafted}
        if opts.scion == "noise":
            rec["sigma"] = noise_sigma(opts.noise_base, n)  # a^t; times each layer's std with noise_scale=layer
        return rec, rows

    def _after_graft(self, trainer, peer, rows: dict[str, torch.Tensor] | None) -> None:
        """BN statistics and momentum of a peer that just grafted (``rows``: the filters changed, None: all)."""
        opts = self.options
        if opts.momentum == "reset":
            reset_momentum(peer.optimizer, peer.model, rows)
        if opts.bn == "reestimate":
            # the peer's own batches of the current epoch, position-seeded: a resumed run sees the same ones
            loader = trainer.train_loader if peer.data_seed is None else trainer.train_loader.stream(peer.data_seed)
            g, e = trainer.generation, trainer.epoch
            count = min(opts.bn_batches, loader.steps(g, e))
            reestimate_bn(peer.model, (loader.batch(g, e, s)[0] for s in range(count)))

    # -- the ensemble -------------------------------------------------------------------------------------------
    def on_after_evaluate(self, trainer) -> None:
        """The peers' ensemble (mean probability) on the test split, as the member ``ensemble`` of the results; none
        when the task's test labels are not the network's classes (a re-id run: its test identities are not the
        train identities the peers classify; each peer is evaluated by the task alone)."""
        if self.options.peers < 2 or "test" not in trainer.full_eval_loaders or not trainer.task.class_scores:
            return
        loader = trainer.full_eval_loaders["test"]
        mine, labels = {}, None
        for p in self._peers(trainer):
            if p.local:
                mine[p.name], labels = _probabilities(p.model, loader)
        if trainer.per_rank and trainer.dist.enabled:
            merged = {}
            for part in all_gather_object({k: v.cpu() for k, v in mine.items()}, trainer.dist):
                merged.update(part)
            mine = merged
        probs = torch.stack([mine[n].to(labels.device) for n in peer_names(self.options.peers)]).mean(0)
        metrics = ensemble_metrics(probs, labels)
        trainer.results["final"]["ensemble"] = metrics
        if trainer.store is not None:
            trainer.store.log_epoch(trainer.run_id, "ensemble", trainer.generation, trainer.epoch, "test", metrics)

    def on_fit_end(self, trainer) -> None:
        history, epochs = self.history, self.epoch_seconds
        if trainer.per_rank and trainer.dist.enabled:
            parts = all_gather_object((self.history, self.epoch_seconds), trainer.dist)
            history = [r for h, _ in parts for r in h]
            epochs = [max(e) for e in zip(*(e for _, e in parts))]  # an epoch lasts as long as its slowest rank
        trainer.results["grafting"] = summarize(history, self.options, epochs)

    # -- resume -------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": [dict(r) for r in self.history], "epoch_seconds": list(self.epoch_seconds)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [dict(r) for r in state.get("history", [])]
        self.epoch_seconds = list(state.get("epoch_seconds", []))


# -- helpers ---------------------------------------------------------------------------------------------------------
def _peer_rate(factor: float, member, position, lr: float) -> float:
    """The base-rate modifier (:mod:`resprout.engine.rates`) of a peer: the official per-network factor times the
    run's rate (``--difflr``); a peer given its own rate (``member.peer_k.lr``) keeps that rate."""
    return lr if "lr" in member.optim else lr * factor


def _check_peers(k: int, scion: str, world_size: int) -> None:
    if scion == "external" and k < 2:
        raise ConfigError(f"graft.scion=external grafts between networks: graft.peers must be at least 2 "
                          f"(got {k}); noise and internal scions work with one")
    if world_size > 1 and k != world_size:
        raise ConfigError(f"graft.peers={k} but torchrun started {world_size} processes; one peer lives "
                          f"on each process: use --nproc_per_node={k} (or graft.peers={world_size})")


def _copy(model):
    import copy

    return copy.deepcopy(model)


def _record(n: int, k: int, source: int, alphas: list[float]) -> dict:
    return {"graft": n, "peer": k, "from": source, "alpha_mean": sum(alphas) / len(alphas),
            "alpha_min": min(alphas), "alpha_max": max(alphas), "alphas": list(alphas)}


@torch.no_grad()
def _probabilities(model, loader) -> tuple[torch.Tensor, torch.Tensor]:
    was = model.training
    model.eval()
    probs, labels = [], []
    try:
        for x, y in loader:
            probs.append(F.softmax(model(x).float(), dim=1))
            labels.append(y)
    finally:
        model.train(was)
    return torch.cat(probs), torch.cat(labels)


def ensemble_metrics(probs: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Loss (NLL of the mean probability), top-1 and top-5 of an ensemble's mean probabilities."""
    nll = -probs.gather(1, labels[:, None]).clamp_min(1e-12).log().mean()
    k = min(5, probs.shape[1])
    top = probs.topk(k, dim=1).indices == labels[:, None]
    return {"loss": float(nll), "top1": float(top[:, 0].float().mean()), "top5": float(top.any(1).float().mean())}


def _spread(values: list[float]) -> dict[str, float]:
    v = sorted(values)
    return {"min": v[0], "median": v[len(v) // 2], "max": v[-1]}


def summarize(history: list[dict], options: GraftOptions, epoch_seconds: list[float] | None = None) -> dict:
    """What the run's results say about its grafts: counts, alphas per peer, time per graft and its share of a
    training epoch."""
    out: dict = {"peers": options.peers, "scion": options.scion, "criterion": options.criterion,
                 "ring": options.ring, "timing": options.timing, "lr_factors": options.lr_factors,
                 "bn": options.bn, "momentum": options.momentum}
    if options.scion == "noise":
        out["noise_scale"] = options.noise_scale
    grafts = sorted({r["graft"] for r in history})
    out["grafts"] = len(grafts)
    per_graft = {}
    for r in history:
        per_graft[r["graft"]] = max(per_graft.get(r["graft"], 0.0), r.get("seconds", 0.0))
    if per_graft:
        out["seconds_per_graft"] = _spread(list(per_graft.values()))
    if epoch_seconds:
        out["seconds_per_epoch"] = _spread(epoch_seconds)
        if per_graft:
            mean_epoch = sum(epoch_seconds) / len(epoch_seconds)
            out["graft_share_of_epoch"] = _spread([s / mean_epoch for s in per_graft.values()])
    peers = {}
    for r in sorted(history, key=lambda r: (r["graft"], r["peer"])):
        p = peers.setdefault(f"peer_{r['peer']}", {"grafts": 0})
        p["grafts"] += 1
        if "alpha_mean" in r:
            p.setdefault("alpha_means", []).append(r["alpha_mean"])
            p["last_alphas"] = r["alphas"]
        if "filters" in r:
            p["filters"] = p.get("filters", 0) + r["filters"]
    for p in peers.values():
        if "alpha_means" in p:
            means = p.pop("alpha_means")
            p["alpha_mean"] = sum(means) / len(means)
    out["by_peer"] = peers
    return out


__all__ = ["GraftOptions", "Grafting", "ensemble_metrics", "peer_names", "summarize"]
