"""Retrieval metrics of an embedding network: Recall@K and NMI of a k-means clustering (KE paper, Sec. 4.2,
Table 4), and the embeddings of a split.

They belong to the retrieval task (:class:`resprout.engine.task.RetrievalTask`), which evaluates an embedding
network with them; :mod:`resprout.methods.metric` (``method=triplet``) trains one. :func:`embed` also gives the
re-identification task (:class:`resprout.engine.task.ReidTask`) the penultimate features of a classifier
(``head_input=True``). Every function is pure (apart from :func:`embed`, which runs the model it is given).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from resprout.errors import ConfigError, DataError

DEFAULT_KS: tuple[int, ...] = (1, 2, 4, 8)

# recall_at_k computes the distances of at most this many (query, database) pairs at once: 2**22 float32 values
# is 16 MiB per block, whatever the number of embeddings.
_MAX_BLOCK_ELEMENTS = 1 << 22



def check_batch(embeddings: torch.Tensor, labels: torch.Tensor | Sequence[int], where: str) -> torch.Tensor:
    """``labels`` as a 1-D tensor on the embeddings' device; ValueError on mismatched shapes."""
    if embeddings.dim() != 2:
        raise ValueError(f"{where}: embeddings must be 2-D (N, dim); got shape {tuple(embeddings.shape)}")
    labels = torch.as_tensor(labels, device=embeddings.device)
    if labels.dim() != 1 or len(labels) != len(embeddings):
        raise ValueError(f"{where}: labels must be 1-D with one label per embedding; got shape "
                         f"{tuple(labels.shape)} for {len(embeddings)} embeddings")
    return labels



def embed(
    model: nn.Module, images_loader: Iterable, *, device: torch.device | str | None = None, head_input: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The embeddings and labels of every batch ``(x, y)`` of ``images_loader``, in order, as CPU tensors.

    The embedding is the model's output, or with ``head_input`` the input of its class layer: the ``nn.Linear`` whose
    output *is* the model's output (the same tensor), found in every batch's forward by hooks on the model's linear
    layers (:func:`head_inputs`). Runs ``model`` in eval mode without gradients on ``device`` (default: the device
    of its first parameter, or CPU), then restores every module's train/eval mode. Raises :class:`DataError` if the
    loader yields nothing, :class:`ConfigError` with ``head_input`` if no linear layer gives the output.
    """
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    embeddings: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    try:
        model.eval()
        with torch.no_grad(), head_inputs(model, head_input) as forward:
            for x, y in images_loader:
                embeddings.append(forward(x.to(device)).detach().cpu())
                labels.append(torch.as_tensor(y).reshape(-1).cpu())
    finally:
        for m, training in modes.items():
            m.training = training
    if not embeddings:
        raise DataError("embed: the images loader yielded no batches; the split to embed is empty")
    return torch.cat(embeddings), torch.cat(labels)


@contextlib.contextmanager
def head_inputs(model: nn.Module, enabled: bool = True) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """A forward of ``model`` that returns the input of its class layer instead of its output (``enabled``; else
    the plain forward): forward hooks on every ``nn.Linear`` keep each one's input and output of the current
    forward, and the input of the one whose output is the model's output is returned. The rule is the one that
    finds the class layer for an embedding head (:func:`resprout.methods.metric.attach_embedding_head`), so it
    works whatever the layer is called and after surgery; only 2-D tensors of the linear layers are held, never a
    feature map. The hooks are removed on exit."""
    if not enabled:
        yield model
        return
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [m.register_forward_hook(lambda _m, inputs, output: seen.append((inputs[0], output)))
               for m in model.modules() if isinstance(m, nn.Linear)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.clear()
        out = model(x)
        features = next((inp for inp, o in seen if o is out), None)
        seen.clear()
        if features is None:
            raise ConfigError(f"{type(model).__name__}'s output does not come straight from an nn.Linear class "
                              f"layer, so it has no penultimate features to compare (e.g. use vgg head=fc, not "
                              f"head=gap)")
        return features.flatten(1)

    try:
        yield forward
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------------------------------------------
# Retrieval metrics
# --------------------------------------------------------------------------------------------------------------


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ConfigError(f"recall ks must be a non-empty list of integers >= 1; got {ks!r}")
    return ks


def _squared_distances(queries: torch.Tensor, database: torch.Tensor, database_sq: torch.Tensor) -> torch.Tensor:
    """(q, n) squared Euclidean distances by ``|a|^2 + |b|^2 - 2ab`` (fine for ranking; clamped at 0)."""
    sq = queries.pow(2).sum(dim=1, keepdim=True) + database_sq[None, :] - 2.0 * queries @ database.T
    return sq.clamp_min_(0.0)


def recall_at_k(
    embeddings: torch.Tensor,
    labels: torch.Tensor | Sequence[int],
    ks: Iterable[int] = DEFAULT_KS,
    *,
    max_block_elements: int = _MAX_BLOCK_ELEMENTS,
) -> dict[str, float]:
    """Retrieval Recall@K: the fraction of queries with at least one same-label sample among their K nearest
    neighbours (Euclidean), the query itself excluded. Every embedding is a query against all the others.

    Returns ``{"recall@1": ..., "recall@2": ..., ...}`` for ``ks``. A query whose class has no other sample counts
    as a miss; K larger than N - 1 means "all other samples". Ties in distance are broken arbitrarily (by
    ``torch.topk``). The distances are computed in blocks of at most ``max_block_elements`` (query, database) pairs
    (16 MiB of float32 by default), so 10,000 x 10,000 needs no 400 MB matrix.
    """
    ks = _check_ks(ks)
    labels = check_batch(embeddings, labels, "recall_at_k")
    n = len(embeddings)
    if n == 0:
        raise ValueError("recall_at_k: no embeddings")
    emb = embeddings.detach()
    if not emb.is_floating_point():
        emb = emb.float()
    neighbours = min(max(ks), n - 1)
    if neighbours == 0:  # a single embedding has no neighbour: every recall is 0
        return {f"recall@{k}": 0.0 for k in ks}
    rows = max(1, min(n, max_block_elements // n))
    database_sq = emb.pow(2).sum(dim=1)
    # Rank (1-based) of each query's first same-label neighbour; ``miss`` (larger than every k) if none.
    miss = max(ks) + 1
    first_hit = torch.empty(n, dtype=torch.long, device=emb.device)
    ranks = torch.arange(1, neighbours + 1, device=emb.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        sq = _squared_distances(emb[start:stop], emb, database_sq)
        sq[torch.arange(stop - start, device=emb.device), torch.arange(start, stop, device=emb.device)] = float("inf")
        idx = sq.topk(neighbours, dim=1, largest=False).indices
        match = labels[idx] == labels[start:stop, None]
        first_hit[start:stop] = torch.where(match, ranks, torch.full_like(ranks, miss)).min(dim=1).values
    return {f"recall@{k}": (first_hit <= k).double().mean().item() for k in ks}


def nmi(embeddings: torch.Tensor, labels: torch.Tensor | Sequence[int], seed: int = 0, *, n_init: int = 10) -> float:
    """Normalized mutual information between the labels and a k-means clustering of the embeddings.

    k-means (scikit-learn, ``n_clusters`` = number of distinct labels, ``random_state=seed``, ``n_init`` restarts)
    on the embeddings, then ``sklearn.metrics.normalized_mutual_info_score(labels, clusters)`` (arithmetic
    normalization). 1 means the clusters are the classes; about 0 means they are unrelated.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    labels = check_batch(embeddings, labels, "nmi")
    if len(labels) == 0:
        raise ValueError("nmi: no embeddings")
    x = embeddings.detach().cpu().double().numpy()
    y = labels.cpu().numpy()
    n_clusters = len(np.unique(y))
    clusters = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init).fit_predict(x)
    return float(normalized_mutual_info_score(y, clusters))


def retrieval_metrics(
    embeddings: torch.Tensor, labels: torch.Tensor | Sequence[int], ks: Iterable[int] = DEFAULT_KS, *, seed: int = 0
) -> dict[str, float]:
    """Recall@K for ``ks`` (:func:`recall_at_k`) and ``"nmi"`` (:func:`nmi`) in one dict, as in Table 4."""
    metrics = recall_at_k(embeddings, labels, ks)
    metrics["nmi"] = nmi(embeddings, labels, seed=seed)
    return metrics
