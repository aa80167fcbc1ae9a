"""Metric learning: triplet loss with semi-hard negatives, an L2-normalized embedding head, and retrieval metrics.

This reproduces the metric-learning setting of Knowledge Evolution (Taha et al., "Knowledge Evolution in Neural
Networks", CVPR 2021, Sec. 3.4 and 4.2, Table 4):

* The network's classifier is replaced by ``Linear(in_features, 128)`` and the output is L2-normalized, so every
  embedding lies on the unit sphere (:func:`attach_embedding_head`).
* Training uses the triplet loss, Eq. 3: ``TL(a, p, n) = [D(a, p) - D(a, n) + m]_+`` with ``D`` the Euclidean
  distance between embeddings and ``m`` the margin (:func:`semi_hard_triplet_loss`).
* Negatives are sampled semi-hard (Schroff et al., "FaceNet", CVPR 2015, Sec. 3.2): every anchor-positive pair of
  the mini-batch is used, each with a negative that satisfies Eq. 4, ``D(a, p) < D(a, n) < D(a, p) + m``
  (:func:`select_semi_hard_triplets`).
* Mini-batches are P x K (25 classes x 5 images, b = 125 in the paper); the sampler lives with the data loader,
  not here.
* Evaluation is retrieval Recall@K (K = 1, 2, 4, 8) and NMI of a k-means clustering on the test split
  (:func:`retrieval_metrics`): the run's task, :class:`resprout.engine.task.RetrievalTask`, whose metrics live in
  :mod:`resprout.engine.retrieval` (re-exported here).

Every function here is pure (apart from :func:`attach_embedding_head`, which edits the model it is given, and
:func:`embed`, which runs it). :class:`TripletMetric` (``method=triplet``) uses them in the trainer: it puts the
embedding head on every task member, trains with P x K batches and sets the retrieval task (its ``top1`` is
Recall@1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resprout.config import option
from resprout.engine.method import Method
from resprout.engine.retrieval import (DEFAULT_KS, check_batch as _check_batch, embed, nmi,  # noqa: F401 (re-exported)
                                       recall_at_k, retrieval_metrics)
from resprout.engine.task import RetrievalTask
from resprout.errors import ConfigError

__all__ = [
    "EmbeddingHead",
    "attach_embedding_head",
    "embedding_head_op",
    "embed",
    "nmi",
    "pairwise_distances",
    "recall_at_k",
    "retrieval_metrics",
    "select_semi_hard_triplets",
    "semi_hard_triplet_loss",
    "TripletMetric",
]

# --------------------------------------------------------------------------------------------------------------
# Distances and the triplet loss
# --------------------------------------------------------------------------------------------------------------


def pairwise_distances(embeddings: torch.Tensor) -> torch.Tensor:
    """The (N, N) matrix of Euclidean distances ``D(i, j) = ||e_i - e_j||_2`` between the rows of ``embeddings``.

    Computed from the explicit differences, not from the ``|a|^2 + |b|^2 - 2ab`` expansion, so that coincident
    embeddings get a distance of exactly 0 (the diagonal is exactly 0) and small distances keep full precision --
    the semi-hard test of Eq. 4 compares distances directly. This costs O(N^2 * dim) memory, which is nothing for a
    mini-batch (125 x 125 x 128 floats is 8 MB); for whole test sets use :func:`recall_at_k`, which works in blocks.

    The square root is safe: where the squared distance is 0 the distance is 0 and its gradient is 0 (a
    subgradient of the norm at 0) instead of ``0 / 0 = NaN``.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"pairwise_distances: embeddings must be 2-D (N, dim); got shape {tuple(embeddings.shape)}")
    diff = embeddings[:, None, :] - embeddings[None, :, :]
    squared = diff.pow(2).sum(dim=-1)
    positive = squared > 0
    # sqrt only sees positive values, so neither its value nor its gradient (1 / (2 sqrt)) can be inf or NaN.
    safe = torch.where(positive, squared, torch.ones_like(squared))
    return torch.where(positive, safe.sqrt(), torch.zeros_like(squared))


def select_semi_hard_triplets(
    distances: torch.Tensor, labels: torch.Tensor | Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (anchor, positive, negative) index triplets that :func:`semi_hard_triplet_loss` uses.

    One triplet per anchor-positive pair ``(a, p)`` (same label, ``a != p``; both orders are pairs) that has at
    least one negative (a different label) in the batch. Its negative is chosen from ``distances`` (an (N, N)
    matrix, e.g. from :func:`pairwise_distances`; the choice is not differentiated):

    1. the semi-hard negative (Eq. 4, ``D(a, p) < D(a, n) < D(a, p) + m``) closest to the anchor, if there is one;
    2. otherwise, if some negative is farther than the positive, the closest such negative. It lies beyond the
       margin, so the triplet's loss is 0: the pair is already satisfied (an "easy" pair);
    3. otherwise -- every negative is at most as far from the anchor as the positive, i.e. all are hard -- the
       farthest negative, the least hard one.

    Rules 1 and 2 are one rule, "the closest negative farther than the positive", which is the FaceNet convention as
    implemented in TensorFlow (``tfa.losses.TripletSemiHardLoss``); it needs no margin, because the closest negative
    beyond ``D(a, p)`` is semi-hard exactly when one exists. Rule 3 is the fallback. We keep such pairs
    instead of dropping them because at initialization, when the embeddings have not yet spread out, most pairs
    have only hard negatives; dropping them would leave no gradient to start training. We take the *least* hard
    negative rather than the hardest because FaceNet (Sec. 3.2) reports that the hardest negatives lead to bad local
    minima early in training (a collapsed model); the least hard one still gives a loss of at least ``m`` and a
    gradient that separates the pair.

    Returns three int64 tensors of equal length T (possibly 0) on ``distances``' device.
    """
    if distances.dim() != 2 or distances.shape[0] != distances.shape[1]:
        raise ValueError(f"select_semi_hard_triplets: distances must be a square (N, N) matrix; got shape "
                         f"{tuple(distances.shape)}")
    labels = torch.as_tensor(labels, device=distances.device)
    if labels.dim() != 1 or len(labels) != len(distances):
        raise ValueError(f"select_semi_hard_triplets: labels must be 1-D with {len(distances)} entries; got shape "
                         f"{tuple(labels.shape)}")
    with torch.no_grad():
        dist = distances.detach()
        same = labels[:, None] == labels[None, :]
        negative_mask = ~same
        positive_mask = same & ~torch.eye(len(labels), dtype=torch.bool, device=dist.device)
        # Pairs whose anchor has no negative in the batch cannot form a triplet.
        positive_mask &= negative_mask.any(dim=1, keepdim=True)
        anchor, positive = positive_mask.nonzero(as_tuple=True)
        if len(anchor) == 0:
            empty = anchor.new_empty(0)
            return empty, empty.clone(), empty.clone()

        d_an = dist[anchor]  # (T, N): distance from each pair's anchor to every sample
        d_ap = dist[anchor, positive][:, None]  # (T, 1)
        is_negative = negative_mask[anchor]  # (T, N)
        inf = torch.tensor(float("inf"), dtype=dist.dtype, device=dist.device)

        # Rules 1 + 2: the closest negative farther than the positive.
        outside = is_negative & (d_an > d_ap)
        closest_outside = torch.where(outside, d_an, inf).argmin(dim=1)
        # Rule 3: the farthest negative (all negatives are within D(a, p)).
        farthest = torch.where(is_negative, d_an, -inf).argmax(dim=1)

        negative = torch.where(outside.any(dim=1), closest_outside, farthest)
    return anchor, positive, negative


def semi_hard_triplet_loss(
    embeddings: torch.Tensor, labels: torch.Tensor | Sequence[int], margin: float = 0.2
) -> torch.Tensor:
    """Triplet loss (Eq. 3) with semi-hard negatives (Eq. 4), averaged over all anchor-positive pairs of the batch.

    ``mean over triplets of max(D(a, p) - D(a, n) + margin, 0)`` with ``D`` the Euclidean distance
    (:func:`pairwise_distances`) and one triplet per anchor-positive pair, its negative chosen by
    :func:`select_semi_hard_triplets` (the closest semi-hard negative; see there for the fallback when a pair has
    none). Pairs that are already separated by more than the margin contribute 0 and still count in the mean, so
    the loss falls as the batch becomes easy, as in FaceNet. The negative choice is not differentiated; the
    gradient flows through ``D(a, p)`` and ``D(a, n)``.

    ``embeddings`` is (N, dim) (L2-normalized in the paper, but any embedding works), ``labels`` (N,) class ids.
    Returns a scalar tensor; it is 0 -- with a gradient path to ``embeddings``, so ``backward()`` works and gives
    zero gradients -- when the batch has no anchor-positive pair with a negative (every label distinct, or a single
    label). Vectorized: O(N^2) pairs, no Python loop.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0 or margin == float("inf"):
        raise ConfigError(f"triplet margin must be a finite number >= 0; got {margin!r}")
    labels = _check_batch(embeddings, labels, "semi_hard_triplet_loss")
    distances = pairwise_distances(embeddings)
    anchor, positive, negative = select_semi_hard_triplets(distances, labels)
    if len(anchor) == 0:
        return embeddings.sum() * 0.0
    losses = F.relu(distances[anchor, positive] - distances[anchor, negative] + margin)
    return losses.mean()


# --------------------------------------------------------------------------------------------------------------
# The embedding head
# --------------------------------------------------------------------------------------------------------------


class EmbeddingHead(nn.Module):
    """Wraps a network whose output is an embedding and L2-normalizes it: ``F.normalize(net(x), dim=1)``.

    The wrapped network is ``self.net``, so its modules keep their paths under ``net.`` (``net.fc``,
    ``net.layer1.0.conv1``, ...).
    """

    def __init__(self, net: nn.Module, dim: int) -> None:
        super().__init__()
        self.net = net
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), p=2, dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, L2-normalized"


def _output_linear(model: nn.Module, example_input: torch.Tensor) -> nn.Linear | None:
    """The ``nn.Linear`` whose output tensor is the model's output on ``example_input``, or None.

    Runs the model once in eval mode without gradients (so batch-norm statistics and dropout RNG are untouched) and
    restores every module's mode.
    """
    outputs: dict[int, list[torch.Tensor]] = {}
    linears = {id(m): m for m in model.modules() if isinstance(m, nn.Linear)}

    def hook(module: nn.Module, _inputs, output) -> None:
        outputs.setdefault(id(module), []).append(output)

    handles = [m.register_forward_hook(hook) for m in linears.values()]
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            result = model(example_input)
    finally:
        for h in handles:
            h.remove()
        for m, training in modes.items():
            m.training = training
    if not isinstance(result, torch.Tensor):
        return None
    for key, outs in outputs.items():
        if any(out is result for out in outs):
            return linears[key]  # type: ignore[return-value]
    return None


def attach_embedding_head(model: nn.Module, dim: int = 128, *, example_input: torch.Tensor) -> EmbeddingHead:
    """Turn a classifier into an embedding network: replace its class layer by ``Linear(in_features, dim)`` and
    L2-normalize the output (Knowledge Evolution Sec. 4.2: a 128-d embedding normalized to the unit sphere).

    The class layer is the ``nn.Linear`` whose output *is* the model's output (same tensor object) on
    ``example_input`` -- found with forward hooks, so it works whatever the layer is called and wherever it sits
    (``fc``, ``classifier.2``, a bare ``Sequential`` index). It is replaced in place, at every path where it is
    registered, by a fresh ``Linear`` with the same ``in_features``, bias setting, dtype and device, initialized by
    torch's default (so deterministic given the global torch seed). Everything else in ``model`` is left as it was
    (the probe runs in eval mode without gradients, so batch-norm statistics do not move).

    ``example_input`` is a small batch the model accepts (on its device); only its forward pass is used.

    Returns ``EmbeddingHead(model, dim)``: ``forward(x) = F.normalize(model(x), dim=1)``, with ``model``'s modules
    under ``net.`` and ``model``'s train/eval mode.

    Raises :class:`ConfigError` if no ``nn.Linear`` produces the output (e.g. a 1x1-conv classifier such as
    ``vgg head=gap``), or if ``dim`` is not a positive integer.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ConfigError(f"embedding dim must be an integer >= 1; got {dim!r}")
    classifier = _output_linear(model, example_input)
    if classifier is None:
        raise ConfigError(f"cannot attach an embedding head to {type(model).__name__}: its output does not come "
                          f"straight from an nn.Linear; a Linear classifier is needed (e.g. vgg head='fc', not 'gap')")
    replacement = nn.Linear(classifier.in_features, dim, bias=classifier.bias is not None,
                            device=classifier.weight.device, dtype=classifier.weight.dtype)
    replacement.train(classifier.training)
    paths = [name for name, m in model.named_modules(remove_duplicate=False) if m is classifier]
    if "" in paths:
        # The model is the classifier itself: the replacement is the whole network.
        model = replacement
    else:
        for path in paths:
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path), child, replacement)
    head = EmbeddingHead(model, dim)
    head.train(model.training)
    return head


def embedding_head_op(model: nn.Module, *, dim: int, input_shape: list[int]) -> nn.Module:
    """The surgery operation ``embedding_head`` (registered in :mod:`resprout.methods.registry`):
    :func:`attach_embedding_head`, probed with zeros of ``input_shape`` (C, H, W)."""
    return attach_embedding_head(model, dim, example_input=torch.zeros((2, *input_shape),
                                                                      device=next(model.parameters()).device))


# --------------------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------------------


@dataclass
class TripletOptions:
    margin: float = option(0.2, "m: the triplet margin (Eq. 3)", min=0.0)
    dim: int = option(128, "length of the embedding vector the triplet loss compares", min=1)
    k: int = option(5, "images per class in a P x K batch (P = batch_size / k)", min=2)


class TripletMetric(Method):
    """``method=triplet``: metric learning with the semi-hard triplet loss (KE paper Sec. 4.2).

    Every task member gets an L2-normalized embedding head in place of its classifier; batches are P classes x K
    images; evaluation reports Recall@1/2/4/8 and NMI, with ``top1`` = Recall@1 so that tables and the choice of
    the best epoch work unchanged.
    """

    name = "triplet"
    Options = TripletOptions
    provides_task_loss = True
    sampler = "pk"

    @property
    def sampler_options(self) -> dict:  # type: ignore[override]
        return {"k": self.options.k}

    def setup(self, trainer) -> None:
        for m in trainer.task_members:
            # as surgery, so that the head is in the run's weights files (a network rebuilt from them has it)
            trainer.apply_surgery(m.name, "embedding_head", dim=self.options.dim, input_shape=list(trainer.input_shape))
            m.logits = False
        trainer.task = RetrievalTask()  # Recall@K and NMI (resprout.engine.task)

    def on_loss(self, trainer) -> None:
        for m in trainer.task_members:
            loss = semi_hard_triplet_loss(trainer.outputs[m.name], trainer.targets_of(m.name), self.options.margin)
            trainer.add_loss(m.name, "triplet", loss)
