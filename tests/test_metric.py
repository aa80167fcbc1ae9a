"""Tests for resprout.methods.metric: distances, semi-hard triplet loss, embedding head, embed, Recall@K and NMI."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from resprout.errors import ConfigError, DataError
from resprout.engine import retrieval
from resprout.methods.metric import (
    EmbeddingHead,
    attach_embedding_head,
    embed,
    nmi,
    pairwise_distances,
    recall_at_k,
    retrieval_metrics,
    select_semi_hard_triplets,
    semi_hard_triplet_loss,
)
from resprout.models import build_model


# ---------------------------------------------------------------------------------------------------------------
# pairwise_distances
# ---------------------------------------------------------------------------------------------------------------


def test_pairwise_distances_match_cdist():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 16, generator=g, dtype=torch.float64)
    d = pairwise_distances(x)
    expected = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    assert d.shape == (40, 40)
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(d, d.T)
    assert torch.all(d.diagonal() == 0)


def test_pairwise_distances_exact_zero_and_finite_gradient_at_coincident_points():
    x = torch.tensor([[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]], requires_grad=True)
    d = pairwise_distances(x)
    assert d[0, 1].item() == 0.0 and d[1, 0].item() == 0.0
    assert d[0, 2].item() == pytest.approx(math.hypot(0.4, 0.8))
    d.sum().backward()
    assert torch.isfinite(x.grad).all()
    # Only the (0,2), (1,2) distances have a gradient; d(0,1) = 0 contributes the zero subgradient.
    unit = torch.tensor([-0.4, 0.8]) / math.hypot(0.4, 0.8)  # (x0 - x2) / |x0 - x2|
    torch.testing.assert_close(x.grad[0], 2 * unit)  # d(0,2) and d(2,0)
    torch.testing.assert_close(x.grad[1], 2 * unit)
    torch.testing.assert_close(x.grad[2], -4 * unit)


# ---------------------------------------------------------------------------------------------------------------
# semi-hard triplet loss
# ---------------------------------------------------------------------------------------------------------------


def reference_loss(emb: torch.Tensor, labels: list[int], margin: float) -> tuple[torch.Tensor, dict[str, int]]:
    """Explicit loop over anchors, positives and negatives: the documented rule, written the slow obvious way."""
    n = len(labels)
    dist = lambda i, j: torch.linalg.vector_norm(emb[i] - emb[j])  # noqa: E731
    losses, cases = [], {"semi_hard": 0, "easy": 0, "all_hard": 0}
    for a in range(n):
        for p in range(n):
            if p == a or labels[p] != labels[a]:
                continue
            negs = [j for j in range(n) if labels[j] != labels[a]]
            if not negs:
                continue
            d_ap = dist(a, p).item()
            semi = [j for j in negs if d_ap < dist(a, j).item() < d_ap + margin]
            farther = [j for j in negs if dist(a, j).item() > d_ap]
            if semi:
                chosen, case = min(semi, key=lambda j: dist(a, j).item()), "semi_hard"
            elif farther:
                chosen, case = min(farther, key=lambda j: dist(a, j).item()), "easy"
            else:
                chosen, case = max(negs, key=lambda j: dist(a, j).item()), "all_hard"
            cases[case] += 1
            losses.append(torch.clamp(dist(a, p) - dist(a, chosen) + margin, min=0))
    if not losses:
        return emb.sum() * 0, cases
    return torch.stack(losses).mean(), cases


def test_vectorized_loss_matches_python_loop_reference():
    seen = {"semi_hard": 0, "easy": 0, "all_hard": 0}
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        labels = [0, 0, 0, 1, 1, 1, 2, 2, 3] if seed % 2 else [0, 1, 0, 2, 1, 1, 2, 0]
        base = F.normalize(torch.randn(len(labels), 4, generator=g, dtype=torch.float64), dim=1)
        for margin in (0.05, 0.2, 1.0):
            x1 = base.clone().requires_grad_(True)
            x2 = base.clone().requires_grad_(True)
            got = semi_hard_triplet_loss(x1, torch.tensor(labels), margin=margin)
            expected, cases = reference_loss(x2, labels, margin)
            torch.testing.assert_close(got, expected)
            got.backward()
            expected.backward()
            torch.testing.assert_close(x1.grad, x2.grad)
            for k, v in cases.items():
                seen[k] += v
    # The comparison covered all three branches of the negative choice.
    assert all(v > 0 for v in seen.values()), seen


def test_selection_picks_closest_semi_hard_negative():
    # 1-D embeddings. Anchor 0 and positive 0.5 share class 0; every negative has its own class.
    x = torch.tensor([[0.0], [0.5], [0.3], [0.65], [0.6], [2.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    a, p, n = select_semi_hard_triplets(pairwise_distances(x), labels)
    triplets = {(int(i), int(j)): int(k) for i, j, k in zip(a, p, n)}
    # Anchor 0: D(a,p) = 0.5, semi-hard window (0.5, 0.7) holds 0.65 (idx 3) and 0.6 (idx 4): the closest is idx 4.
    # Anchor 1 (at 0.5): D(a,p) = 0.5; negatives at 0.2, 0.15, 0.1, 1.5: none semi-hard, 1.5 (idx 5) is beyond it.
    assert triplets == {(0, 1): 4, (1, 0): 5}
    loss = semi_hard_triplet_loss(x, labels, margin=0.2)
    # (0.5 - 0.6 + 0.2) for the first pair, 0 for the easy one, mean over both pairs.
    assert loss.item() == pytest.approx(0.05, abs=1e-6)
    loss.backward()
    # Only the anchor, positive and chosen negative of the active triplet get a gradient.
    assert x.grad[4].item() == pytest.approx(-0.5)  # pushed away from the anchor (d/dx of -|x - 0| / 2)
    assert x.grad[2].item() == 0 and x.grad[3].item() == 0 and x.grad[5].item() == 0


def test_fallback_uses_least_hard_negative_when_all_negatives_are_hard():
    # Anchor 0, positive at 1.0; negatives at 0.2 and 0.7 are both closer than the positive.
    x = torch.tensor([[0.0], [1.0], [0.2], [0.7]])
    labels = torch.tensor([0, 0, 1, 2])
    a, p, n = select_semi_hard_triplets(pairwise_distances(x), labels)
    triplets = {(int(i), int(j)): int(k) for i, j, k in zip(a, p, n)}
    # Anchor 0: farthest negative 0.7 (idx 3). Anchor 1 (at 1.0): negatives at 0.8 and 0.3, both hard; farthest idx 2.
    assert triplets == {(0, 1): 3, (1, 0): 2}
    loss = semi_hard_triplet_loss(x, labels, margin=0.2)
    assert loss.item() == pytest.approx(((1.0 - 0.7 + 0.2) + (1.0 - 0.8 + 0.2)) / 2, abs=1e-6)


def test_zero_loss_when_classes_are_farther_apart_than_the_margin():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]])
    labels = torch.arange(3).repeat_interleave(4)
    x = (centres[labels] + 0.1 * torch.rand(12, 2, generator=g)).requires_grad_(True)
    loss = semi_hard_triplet_loss(x, labels, margin=1.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0
    # The same points with the classes shuffled across clusters give a positive loss.
    shuffled = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    assert semi_hard_triplet_loss(x, shuffled, margin=1.0).item() > 0.5


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [5, 5, 5, 5]], ids=["all-distinct", "single-class"])
def test_no_valid_pair_gives_zero_with_a_gradient_path(labels):
    x = torch.randn(4, 8, requires_grad=True)
    loss = semi_hard_triplet_loss(x, torch.tensor(labels))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) == 0


def test_gradients_finite_when_all_embeddings_coincide():
    # A collapsed embedding: every distance is 0, every negative is hard, each pair's loss is exactly the margin.
    x = F.normalize(torch.ones(10, 16), dim=1).requires_grad_(True)
    labels = torch.arange(5).repeat_interleave(2)
    loss = semi_hard_triplet_loss(x, labels, margin=0.3)
    assert loss.item() == pytest.approx(0.3)
    loss.backward()
    assert torch.isfinite(x.grad).all()


def test_loss_rejects_bad_margin_and_shapes():
    x = torch.randn(4, 3)
    with pytest.raises(ConfigError, match="margin"):
        semi_hard_triplet_loss(x, torch.tensor([0, 0, 1, 1]), margin=-0.1)
    with pytest.raises(ValueError, match="labels"):
        semi_hard_triplet_loss(x, torch.tensor([0, 0, 1]))


# ---------------------------------------------------------------------------------------------------------------
# Recall@K, NMI
# ---------------------------------------------------------------------------------------------------------------


def test_recall_is_one_for_perfect_clusters():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(5)
    x = 10 * torch.eye(6)[labels] + 0.01 * torch.randn(30, 6, generator=g)
    assert recall_at_k(x, labels) == {"recall@1": 1.0, "recall@2": 1.0, "recall@4": 1.0, "recall@8": 1.0}


def test_recall_on_a_hand_computed_mixed_case():
    # Points on a line, labels A=0, B=1. Neighbours by distance (self excluded):
    #   0 (A): 1 B, 10 A            -> first match at rank 2
    #   1 (B): 0 A, 10 A, 11 B      -> rank 3
    #   10 (A): 11 B, 12.5 B, 1 B, 0 A -> rank 4
    #   11 (B): 10 A, 12.5 B        -> rank 2
    #   12.5 (B): 11 B              -> rank 1
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0], [12.5]])
    labels = torch.tensor([0, 1, 0, 1, 1])
    r = recall_at_k(x, labels, ks=(1, 2, 3, 4))
    assert r == pytest.approx({"recall@1": 1 / 5, "recall@2": 3 / 5, "recall@3": 4 / 5, "recall@4": 1.0})
    # A class with a single sample can never be retrieved: a miss at every K.
    r = recall_at_k(torch.tensor([[0.0], [1.0], [2.0]]), torch.tensor([0, 0, 1]), ks=(1, 5))
    assert r == pytest.approx({"recall@1": 2 / 3, "recall@5": 2 / 3})


def test_recall_in_blocks_matches_brute_force_and_bounds_block_size(monkeypatch):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(300, 8, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 10, (300,), generator=g)
    # Brute force: full distance matrix, sort each row.
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    order = d.argsort(dim=1)
    match = labels[order] == labels[:, None]
    expected = {f"recall@{k}": match[:, :k].any(dim=1).double().mean().item() for k in (1, 2, 4, 8)}

    blocks = []
    original = retrieval._squared_distances

    def spy(q, db, db_sq):
        blocks.append(len(q) * len(db))
        return original(q, db, db_sq)

    monkeypatch.setattr(retrieval, "_squared_distances", spy)
    assert recall_at_k(x, labels) == pytest.approx(expected)
    assert len(blocks) == 1  # 300 x 300 fits in one block
    blocks.clear()
    assert recall_at_k(x, labels, max_block_elements=3000) == pytest.approx(expected)
    assert len(blocks) == 30 and max(blocks) <= 3000
    # The default block bound holds for 10,000 embeddings (without computing them all here).
    assert (retrieval._MAX_BLOCK_ELEMENTS // 10_000) * 10_000 * 4 <= 16 * 2**20


def test_nmi_is_one_for_perfect_clusters_and_near_zero_for_random_labels():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(40)
    x = 10 * torch.eye(5)[labels] + 0.1 * torch.randn(200, 5, generator=g)
    assert nmi(x, labels) == pytest.approx(1.0)
    # Cluster ids are arbitrary: relabelling the classes changes nothing.
    assert nmi(x, (labels + 3) % 5 * 7) == pytest.approx(1.0)
    random_x = torch.randn(1000, 8, generator=g)
    random_labels = torch.randint(0, 4, (1000,), generator=g)
    assert nmi(random_x, random_labels) < 0.05


def test_retrieval_metrics_combines_recall_and_nmi():
    labels = torch.arange(4).repeat_interleave(6)
    x = F.normalize(torch.eye(4)[labels] + 0.05 * torch.randn(24, 4, generator=torch.Generator().manual_seed(0)))
    m = retrieval_metrics(x, labels, ks=(1, 4))
    assert set(m) == {"recall@1", "recall@4", "nmi"}
    assert m["recall@1"] == 1.0 and m["nmi"] == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="ks"):
        recall_at_k(x, labels, ks=(0,))


# ---------------------------------------------------------------------------------------------------------------
# Embedding head and embed
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "path"),
    [
        ("cnn", dict(in_channels=1, num_classes=10), (4, 1, 8, 8), "fc"),
        ("resnet20", dict(in_channels=3, num_classes=10, width=0.5), (4, 3, 16, 16), "fc"),
        ("vgg11", dict(in_channels=3, num_classes=10, width=0.25), (4, 3, 16, 16), "classifier.2"),
    ],
)
def test_embedding_head_replaces_the_output_linear(name, kwargs, shape, path):
    x = torch.randn(*shape)
    torch.manual_seed(0)
    model = build_model(name, **kwargs)
    before = copy.deepcopy(model.state_dict())
    old = model.get_submodule(path)

    head = attach_embedding_head(model, 128, example_input=x)
    assert isinstance(head, EmbeddingHead) and head.net is model and head.training
    new = head.get_submodule(f"net.{path}")
    assert isinstance(new, nn.Linear) and new is not old
    assert (new.in_features, new.out_features) == (old.in_features, 128)
    # Everything but the classifier is untouched, batch-norm running statistics included.
    after = model.state_dict()
    assert set(after) == set(before)
    for key, value in before.items():
        if not key.startswith(f"{path}."):
            assert torch.equal(after[key], value), key
    head.eval()
    out = head(x)
    assert out.shape == (shape[0], 128)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(shape[0]))

    # Deterministic given the global seed.
    torch.manual_seed(0)
    again = attach_embedding_head(build_model(name, **kwargs), 128, example_input=x)
    assert torch.equal(again.get_submodule(f"net.{path}").weight, new.weight)


def test_embedding_head_finds_a_bare_sequential_index_and_keeps_eval_mode():
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    head = attach_embedding_head(net, dim=5, example_input=torch.randn(2, 6))
    assert isinstance(head.net[2], nn.Linear) and head.net[2].out_features == 5
    assert head.net[0].out_features == 12  # the first Linear is not the output one
    assert not head.training and not head.net.training
    torch.testing.assert_close(head(torch.randn(3, 6)).norm(dim=1), torch.ones(3))


def test_embedding_head_rejects_a_conv_classifier():
    model = build_model("vgg11", in_channels=3, num_classes=10, head="gap", width=0.25)
    with pytest.raises(ConfigError, match=r"VGG.*Linear classifier is needed"):
        attach_embedding_head(model, 128, example_input=torch.randn(2, 3, 16, 16))
    # A Linear followed by another op is not the output either.
    with pytest.raises(ConfigError, match="Sequential"):
        attach_embedding_head(nn.Sequential(nn.Linear(4, 4), nn.Tanh()), 8, example_input=torch.randn(2, 4))


def test_embed_returns_everything_in_order_and_restores_modes():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2))
    net.train()
    net[1].eval()  # a mixed-mode model: embed must restore exactly this
    x = torch.randn(10, 3)
    y = torch.arange(10)
    emb, labels = embed(net, DataLoader(TensorDataset(x, y), batch_size=4))
    assert emb.shape == (10, 2) and torch.equal(labels, y)
    assert not emb.requires_grad
    net_eval = copy.deepcopy(net).eval()
    with torch.no_grad():
        torch.testing.assert_close(emb, net_eval(x))  # eval mode: dropout off, BN running stats
    assert net.training and not net[1].training and net[2].training
    with pytest.raises(DataError, match="no batches"):
        embed(net, [])


# ---------------------------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------------------------


def test_a_few_sgd_steps_with_the_loss_raise_recall():
    # 8 classes that differ only in 2 of 20 input dimensions; the other 18 are large noise, so raw Euclidean
    # neighbours are poor and the network must learn the projection.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    classes, dim_in = 8, 20
    angles = torch.arange(classes) * (2 * math.pi / classes)
    centres = torch.zeros(classes, dim_in)
    centres[:, 0], centres[:, 1] = 3 * torch.cos(angles), 3 * torch.sin(angles)

    def sample(n_per_class):
        labels = torch.arange(classes).repeat_interleave(n_per_class)
        noise = torch.randn(len(labels), dim_in, generator=g)
        noise[:, :2] *= 0.3
        noise[:, 2:] *= 2.0
        return centres[labels] + noise, labels

    train_x, train_y = sample(40)
    test_x, test_y = sample(20)
    net = nn.Sequential(nn.Linear(dim_in, 64), nn.ReLU(), nn.Linear(64, classes))
    model = attach_embedding_head(net, dim=16, example_input=train_x[:2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def recall_now():
        with torch.no_grad():
            return recall_at_k(model(test_x), test_y, ks=(1,))["recall@1"]

    before = recall_now()
    losses = []
    for _ in range(150):
        # P x K batch: 4 classes x 5 samples.
        chosen = torch.randperm(classes, generator=g)[:4]
        idx = torch.cat([torch.nonzero(train_y == c).flatten()[torch.randperm(40, generator=g)[:5]] for c in chosen])
        loss = semi_hard_triplet_loss(model(train_x[idx]), train_y[idx], margin=0.2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = recall_now()
    assert before < 0.6
    assert after > before + 0.25 and after > 0.8, (before, after)
    assert sum(losses[-20:]) < sum(losses[:20])
