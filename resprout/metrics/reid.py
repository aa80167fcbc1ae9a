"""Re-identification metrics: CMC rank-k and mean average precision, with Market-1501's exclusion rule.

For each query (Zheng et al., "Scalable Person Re-identification: A Benchmark", ICCV 2015, Sec. 4):

* the gallery is ranked by distance to the query (ascending; ties keep gallery order);
* gallery images of the query's identity taken by the query's camera are removed from the ranking ("junk" for that
  query: finding them is trivial, so they count neither as hits nor as misses); Market-1501's identity -1 images
  are removed by the reader (:mod:`resprout.data.reid.folders`);
* the remaining images of the query's identity are the true matches. CMC rank-k is 1 when a true match is among the
  first k, 0 otherwise; average precision is the mean, over the true matches, of the precision at each one's rank
  (the precision of the first j ranked images, j its rank): the non-interpolated AP of torchreid and fast-reid,
  which the grafting paper's re-id baseline ([44], OSNet) reports.

Rank-k and mAP are the means over queries, as fractions in [0, 1]. A query with no true match (no gallery image of
its identity from another camera) has no AP: ValueError, never a silent skip.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["DISTANCES", "reid_metrics"]

DISTANCES = ("euclidean", "cosine")
_BLOCK = 256  # queries per block: 256 x 15,913 gallery images (Market-1501) is 16 MB of distances


def _distances(query: torch.Tensor, gallery: torch.Tensor, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return 1 - F.normalize(query, dim=1) @ F.normalize(gallery, dim=1).T
    return torch.cdist(query, gallery)


def reid_metrics(query_features: torch.Tensor, query_ids: torch.Tensor, query_cameras: torch.Tensor,
                 gallery_features: torch.Tensor, gallery_ids: torch.Tensor, gallery_cameras: torch.Tensor, *,
                 ranks: Sequence[int] = (1, 5), distance: str = "euclidean") -> dict[str, float]:
    """``{"rank1": .., "rank5": .., "map": ..}`` (one ``rank<k>`` per ``ranks``) of the queries against the
    gallery, features compared by ``distance`` (``euclidean``, or ``cosine``: 1 - cosine similarity)."""
    if distance not in DISTANCES:
        raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
    if not ranks or any(int(k) < 1 for k in ranks):
        raise ValueError(f"ranks must be positive, got {list(ranks)}")
    qf, gf = query_features.detach().float().cpu(), gallery_features.detach().float().cpu()
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be (N, dim) with one dim: query {tuple(qf.shape)}, gallery {tuple(gf.shape)}")
    q_ids, q_cams, g_ids, g_cams = (torch.as_tensor(t).long().cpu().reshape(-1) for t in
                                    (query_ids, query_cameras, gallery_ids, gallery_cameras))
    if not (len(q_ids) == len(q_cams) == len(qf)) or not (len(g_ids) == len(g_cams) == len(gf)):
        raise ValueError("each query and gallery image needs one feature row, one identity and one camera")
    if len(qf) == 0 or len(gf) == 0:
        raise ValueError(f"{len(qf)} queries and {len(gf)} gallery images: both must be non-empty")
    hits_at = {int(k): 0 for k in ranks}
    ap_sum = 0.0
    for start in range(0, len(qf), _BLOCK):
        stop = min(start + _BLOCK, len(qf))
        order = _distances(qf[start:stop], gf, distance).argsort(dim=1, stable=True)
        same_id = g_ids[order] == q_ids[start:stop, None]
        keep = ~(same_id & (g_cams[order] == q_cams[start:stop, None]))  # same identity, same camera: removed
        match = same_id & keep
        n_match = match.sum(dim=1)
        if bool((n_match == 0).any()):
            q = start + int((n_match == 0).nonzero()[0])
            raise ValueError(f"query {q} (identity {int(q_ids[q])}, camera {int(q_cams[q])}) has no gallery image of "
                             f"its identity from another camera: its AP is undefined")
        rank = keep.cumsum(dim=1)  # 1-based rank among the images kept (valid where keep)
        first = torch.where(match, rank, torch.full_like(rank, rank.shape[1] + 1)).min(dim=1).values
        for k in hits_at:
            hits_at[k] += int((first <= k).sum())
        precision = match.cumsum(dim=1).double() / rank.clamp(min=1).double()
        ap_sum += float((torch.where(match, precision, 0.0).sum(dim=1) / n_match).sum())
    n = len(qf)
    out = {f"rank{k}": hits / n for k, hits in hits_at.items()}
    out["map"] = ap_sum / n
    return out
