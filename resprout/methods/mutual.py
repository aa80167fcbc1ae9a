"""Deep mutual learning (Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning", CVPR 2018).

``K`` peers learn together from scratch, each on its task loss plus a KL term that pulls its predictions towards
the others'. For peer ``k`` (Sec. 3, the objective of a cohort of K networks)::

    L_k = L_C(k) + weight * 1/(K - 1) * sum_{l != k} T^2 * KL(p_l || p_k)

with ``p = softmax(logits / T)``; the paper uses ``T = 1`` and weight 1. The filter-grafting paper compares
against it with two ResNet-32 peers (Meng et al., Table 4: 92.80 on CIFAR-10 against 92.83 for one network).

Choices (options ``dml.<name>``):

* ``update``: ``sequential`` (default) is the paper's Algorithm 1: peers are updated in turn, and after peer ``l``
  steps its predictions are recomputed (a forward without gradient in train mode, so batch-norm statistics see
  that batch again), so peer ``k`` learns from the already updated peers ``1..k-1``. ``simultaneous`` computes
  every peer's loss on the same forward pass, with the others' predictions detached (targets), and steps every
  optimizer at once: one backward instead of K, the only form with ``placement=per_rank`` (``sequential`` needs
  every peer in one process).
* ``data``: ``shared`` (default; the paper's Algorithm 1 feeds one mini-batch to every peer) or ``own``: each peer
  has its own data order and augmentation (its ``data_seed``), and the others' predictions for peer ``k``'s batch
  come from an extra forward of each of them on that batch, in eval mode without gradient (a prediction of the same
  images is what the KL term needs).
* peers differ by their initialization: ``peer_1`` is the run's model (seeded by ``seed``), ``peer_k`` is drawn by
  the model factory under ``derive_seed(seed, 0xD31, k)``;
* ``placement=per_rank`` puts peer ``k`` on rank ``k - 1`` under torchrun (one peer per process, as many processes
  as peers); the others' logits are exchanged with an all-gather every step. The same run in one process with
  ``placement=replicated`` computes the same thing.

At the end of every generation the peers' *ensemble* (the mean of their probabilities) is evaluated on every split
and reported as the pseudo-member ``ensemble`` (``results["final"]["ensemble"]`` and per-generation metrics); not
on a run whose task does not score the split's labels as classes (re-identification, retrieval).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from resprout.config import option
from resprout.engine.distributed import all_gather_tensor, all_reduce_sum
from resprout.engine.members import UpdateStep
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.methods.distill import kd_loss
from resprout.seeding import derive_seed

_SEED_TAG, _DATA_TAG = 0xD31, 0xD32


# -- pure functions -------------------------------------------------------------------------------------------------
def mutual_kl(logits: torch.Tensor, others: list[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """``1/(K-1) * sum_l T^2 * KL(softmax(other_l / T) || softmax(logits / T))``, the mimicry term of one peer of a
    cohort (Zhang et al. 2018, Sec. 3); the other peers' logits are targets (detached)."""
    if not others:
        raise ValueError("mutual_kl needs the logits of at least one other peer")
    terms = [kd_loss(logits, o, temperature) for o in others]
    return terms[0] if len(terms) == 1 else torch.stack(terms).mean()


def dml_loss(logits: torch.Tensor, others: list[torch.Tensor], targets: torch.Tensor, *, weight: float = 1.0,
             temperature: float = 1.0) -> torch.Tensor:
    """One peer's whole loss: cross-entropy plus ``weight * mutual_kl`` (Zhang et al. 2018, Sec. 3)."""
    return F.cross_entropy(logits, targets) + weight * mutual_kl(logits, others, temperature)


def ensemble_probabilities(logits: list[torch.Tensor]) -> torch.Tensor:
    """The ensemble's prediction: the mean of the peers' softmax probabilities."""
    return torch.stack([F.softmax(z.float(), dim=1) for z in logits]).mean(0)


def peer_seed(run_seed: int, k: int) -> int:
    """The initialization seed of ``peer_{k+1}`` for ``k >= 1`` (``peer_1`` is the run's own model)."""
    return derive_seed(run_seed, _SEED_TAG, k) % (1 << 62)


def peer_data_seed(run_seed: int, k: int) -> int:
    """The data-order seed of ``peer_{k+1}`` with ``data=own``."""
    return derive_seed(run_seed, _DATA_TAG, k) % (1 << 62)


# -- the method -------------------------------------------------------------------------------------------------------
@dataclass
class DMLOptions:
    peers: int = option(2, "K: number of peers (peer_1 .. peer_K)", min=2)
    weight: float = option(1.0, "weight of the mimicry (KL) term (the paper: 1)", min=0.0)
    temperature: float = option(1.0, "T: softening temperature of the KL term (the paper: 1)", min=0.0,
                                min_exclusive=True)
    update: str = option("sequential", "sequential: the paper's Algorithm 1, peers updated in turn, each against "
                         "the already updated ones; simultaneous: one step, others detached (needed with "
                         "placement=per_rank)", choices=("sequential", "simultaneous"))
    data: str = option("shared", "shared: every peer sees the same batch (the paper); own: each peer its own "
                       "data order", choices=("shared", "own"))
    placement: str = option("replicated", "replicated: every peer in every process (DDP); per_rank: one peer per "
                            "torchrun process", choices=("replicated", "per_rank"))


class MutualLearning(Method):
    """``method=dml dml.peers=K``: K peers trained together, each on CE plus the mean KL to the others."""

    name = "dml"
    Options = DMLOptions

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.names: list[str] = []
        self._fresh: dict[str, torch.Tensor] = {}  # sequential: logits of the peers already updated in this batch

    def setup(self, trainer) -> None:
        opts = self.options
        k = opts.peers
        if "model" not in trainer.members:
            raise ConfigError(f"method=dml builds its peers from the member 'model'; this run has "
                              f"{', '.join(trainer.members)}")
        if trainer.model_factory is None:
            raise ConfigError("method=dml draws a fresh network for every peer after the first; pass a model factory "
                              "(e.g. module=MyNet instead of module=MyNet())")
        world = trainer.dist.world_size
        if opts.update == "sequential" and opts.placement == "per_rank":
            raise ConfigError("dml.update=sequential updates the peers in turn in one process; with "
                              "dml.placement=per_rank use dml.update=simultaneous")
        if opts.placement == "per_rank" and k != world:
            raise ConfigError(f"dml.peers={k} with dml.placement=per_rank needs {k} processes (one peer per rank), "
                              f"this run has {world}; start it with torchrun --nproc_per_node={k}")
        base = trainer.members["model"].model
        trainer.remove_member("model")
        seed = trainer.config.seed
        self.names = [f"peer_{i + 1}" for i in range(k)]
        for i, name in enumerate(self.names):
            net = base if i == 0 else trainer.new_model(peer_seed(seed, i))
            trainer.add_member(name, net, placement=opts.placement, rank=i if opts.placement == "per_rank" else None,
                               data_seed=peer_data_seed(seed, i) if opts.data == "own" else None)

    # -- the others' predictions --------------------------------------------------------------------------------------
    def _local(self, trainer) -> list[str]:
        return [n for n in self.names if trainer.members[n].local]

    def _predict(self, trainer, name: str, x: torch.Tensor) -> torch.Tensor:
        """Peer ``name``'s prediction of ``x`` as a target: eval mode, no gradient (``data=own``)."""
        model = trainer.members[name].model
        model.eval()
        try:
            with torch.no_grad():
                return model(x)
        finally:
            model.train()

    def _targets(self, trainer) -> dict[str, dict[str, torch.Tensor]]:
        """For every local peer k: {other peer l: l's detached logits on k's batch}, this step."""
        local = self._local(trainer)
        if self.options.data == "shared":
            mine = {n: trainer.outputs[n].detach() for n in local}
            if trainer.per_rank and trainer.dist.enabled:
                gathered = all_gather_tensor(mine[local[0]], trainer.dist)  # one peer per rank, in rank order
                every = dict(zip(self.names, gathered))
            else:
                every = mine
            return {k: {n: every[n] for n in self.names if n != k} for k in local}
        if trainer.per_rank and trainer.dist.enabled:
            # every rank's batch to every rank; each predicts every other rank's batch with its own peer
            me = local[0]
            batches = all_gather_tensor(trainer.inputs_of(me), trainer.dist)
            preds = torch.stack([self._predict(trainer, me, x) if n != me else torch.zeros_like(trainer.outputs[me])
                                 for n, x in zip(self.names, batches)])
            gathered = all_gather_tensor(preds, trainer.dist)  # [rank of predictor][batch owner]
            j = self.names.index(me)
            return {me: {n: gathered[i][j] for i, n in enumerate(self.names) if n != me}}
        return {k: {n: self._predict(trainer, n, trainer.inputs_of(k)) for n in self.names if n != k} for k in local}

    # -- events --------------------------------------------------------------------------------------------------------
    def update_steps(self, trainer):
        if self.options.update != "sequential":
            return None
        return [UpdateStep(n, [n]) for n in self.names]

    def on_batch_start(self, trainer) -> None:
        self._fresh = {}

    def on_loss(self, trainer) -> None:
        opts = self.options
        if opts.update == "sequential":
            k = trainer.update_step.name
            if opts.data == "own":
                others = [self._predict(trainer, n, trainer.inputs_of(k)) for n in self.names if n != k]
            else:
                others = [self._fresh.get(n, trainer.outputs[n].detach()) for n in self.names if n != k]
            trainer.add_loss(k, "dml", opts.weight * mutual_kl(trainer.outputs[k], others, opts.temperature))
            return
        targets = self._targets(trainer)
        for k, others in targets.items():
            term = opts.weight * mutual_kl(trainer.outputs[k], list(others.values()), opts.temperature)
            trainer.add_loss(k, "dml", term)

    def on_after_step(self, trainer) -> None:
        if self.options.update != "sequential" or self.options.data == "own":
            return
        name = trainer.update_step.name
        if name != self.names[-1]:  # the paper recomputes the updated peer's predictions for the next ones
            with torch.no_grad(), trainer.autocast():
                self._fresh[name] = trainer.members[name].model(trainer.inputs_of(name))

    def on_generation_end(self, trainer) -> None:
        if not trainer.task.class_scores:  # a re-id or retrieval run: its split labels are not the peers' classes
            return
        for split in trainer.eval_loaders:
            metrics = self.ensemble_metrics(trainer, split)
            trainer.log_generation("ensemble", {f"{split}_{k}": v for k, v in metrics.items()})
            if split == "test":
                trainer.results["final"]["ensemble"] = metrics

    def ensemble_metrics(self, trainer, split: str) -> dict[str, float]:
        """Loss and top-1 of the peers' mean probability on ``split`` (collective under torchrun)."""
        per_rank = trainer.per_rank and trainer.dist.enabled
        loader = trainer.full_eval_loaders[split] if trainer.per_rank else trainer.eval_loaders[split]
        local = self._local(trainer)
        probs: dict[str, list[torch.Tensor]] = {n: [] for n in local}
        labels = []
        for n in local:
            model = trainer.members[n].model
            was = model.training
            model.eval()
            with torch.no_grad():
                for x, y in loader:
                    probs[n].append(model(x).float())
                    if n == local[0]:
                        labels.append(y)
            model.train(was)
        logits = {n: torch.cat(v) for n, v in probs.items()}
        if per_rank:
            logits = dict(zip(self.names, all_gather_tensor(logits[local[0]], trainer.dist)))
        p = ensemble_probabilities([logits[n] for n in self.names])
        y = torch.cat(labels)
        count = torch.tensor(float(len(y)), device=p.device)
        sums = torch.stack([F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum"),
                            (p.argmax(1) == y).sum().to(p.dtype), count]).double()
        if trainer.dist.enabled and not per_rank:  # replicated: every rank evaluated its shard
            sums = all_reduce_sum(sums, trainer.dist)
        loss, hits, n = sums.tolist()
        return {"loss": loss / max(n, 1.0), "top1": hits / max(n, 1.0)}
