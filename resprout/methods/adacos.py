"""AdaCos (Zhang et al., "AdaCos: Adaptively Scaling Cosine Logits for Effectively Learning Deep Face
Representations", CVPR 2019): a cosine classifier whose scale is set from the batch, with no hyperparameter.

The logits are ``s * cos(theta_{i,j})``, the cosine between the normalized feature ``x_i`` and the normalized class
weight ``W_j`` (no bias), trained with cross-entropy. AdaCos chooses ``s``:

* fixed (Sec. 4.1, Eq. 13): ``s_f = sqrt(2) * log(C - 1)`` for ``C`` classes; it is also the starting value of
* the dynamic scale (Sec. 4.2, Eq. 15-16), updated at every training step ``t`` from the batch ``N^(t)``::

      B_avg^(t)  = 1/|N^(t)| * sum_i sum_{k != y_i} exp(s^(t-1) * cos(theta_{i,k}))
      theta_med^(t) = median_i theta_{i,y_i}
      s^(t) = log(B_avg^(t)) / cos(min(pi/4, theta_med^(t)))

  computed without gradient, with the previous scale in ``B_avg``; the step's loss uses ``s^(t)``. The median is
  the lower middle value for an even batch (``torch.median``); the paper does not say which. A step whose formula
  gives no positive scale (``B_avg < 1``, which the paper's analysis with ``C - 1`` near-orthogonal non-target
  classes rules out but a batch of few classes can reach) keeps the previous scale.

The Knowledge Evolution paper uses it as a baseline and composes it with KE (Taha et al., CVPR 2021, Sec. 4.1,
Tables 2 and 3). Here ``method=adacos`` replaces the network's class layer (the ``nn.Linear`` whose output is the
network's output) by a :class:`CosineClassifier` that starts from that layer's weight: the task loss is
cross-entropy on ``s * cos``, and evaluation uses the same cosine logits (argmax of ``cos``, loss at the current
scale). The cosine weight *is* the classifier's weight (same parameter path, shape and init), so Knowledge
Evolution splits and re-initializes it exactly like the classifier it replaces (every class row kept, the first
``ceil(s_r * d)`` feature columns in the fit hypothesis), and KE's slim network carries the cosine head.

For the channel tracer of :mod:`resprout.surgery.graph` the head looks like the linear layer it carries: its weight's
columns read the feature channels exactly as a linear layer's do, and removing a channel whose features are zero
(KE's zeroed reset hypothesis, Neural Rejuvenation's dead channels) leaves the cosines unchanged.

Under torch.distributed the scale is computed from the whole global batch (``B_avg`` summed over processes, the
median over every process's target angles), so every process uses the same ``s``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from resprout.config import option
from resprout.engine.distributed import all_gather_object, all_reduce_sum
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.surgery.graph import is_tracing

__all__ = ["AdaCos", "AdaCosOptions", "CosineClassifier", "adaptive_scale", "attach_cosine_classifier",
           "cosine_classifier_op", "cosine_logits", "fixed_scale"]


# -- pure functions ----------------------------------------------------------------------------------------------------
def fixed_scale(num_classes: int) -> float:
    """The fixed AdaCos scale ``sqrt(2) * log(C - 1)`` (Zhang et al. 2019, Eq. 13); the dynamic scale starts here."""
    if num_classes < 3:
        raise ConfigError(f"AdaCos needs at least 3 classes (its scale is log(C - 1)); got {num_classes}")
    return math.sqrt(2.0) * math.log(num_classes - 1)


def cosine_logits(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``cos(theta_{i,j}) = <x_i / |x_i|, W_j / |W_j|>`` for features (N, d) and class weights (C, d)."""
    return F.linear(F.normalize(features, dim=1), F.normalize(weight, dim=1))


@torch.no_grad()
def adaptive_scale(cos: torch.Tensor, targets: torch.Tensor, scale: float, *, dist=None) -> float:
    """The dynamic AdaCos scale ``s^(t)`` of a batch (Zhang et al. 2019, Eq. 15-16) from its cosines (N, C), its
    labels and the previous scale ``s^(t-1)``; ``dist`` (a :class:`~resprout.engine.distributed.DistInfo`) takes
    the statistics over every process's batch."""
    cos = cos.detach().double()
    target = F.one_hot(targets, cos.shape[1]).bool()
    b_sum = torch.exp(scale * cos).masked_fill(target, 0.0).sum()
    theta = torch.acos(cos[target].clamp(-1.0 + 1e-7, 1.0 - 1e-7))  # theta_{i,y_i}, one per sample
    count = torch.tensor(float(len(targets)), dtype=torch.float64, device=cos.device)
    if dist is not None and dist.enabled:
        b_sum, count = all_reduce_sum(torch.stack([b_sum, count]), dist).unbind()
        theta = torch.cat([t.to(cos.device) for t in all_gather_object(theta.cpu(), dist)])
    b_avg = b_sum / count
    theta_med = theta.median()
    return float(torch.log(b_avg) / torch.cos(torch.clamp(theta_med, max=math.pi / 4)))


class CosineClassifier(nn.Linear):
    """``scale * cos(theta)`` between the input features and the class weights (no bias).

    A subclass of ``nn.Linear`` so that everything that knows linear layers (Knowledge Evolution's split and
    default re-initialization, surgery, cost profiles) treats its weight like the classifier's. ``scale`` is a
    buffer: the current AdaCos scale, saved with the weights; :class:`AdaCos` updates it at every step."""

    def __init__(self, in_features: int, num_classes: int, scale: float, *, device=None, dtype=None) -> None:
        super().__init__(in_features, num_classes, bias=False, device=device, dtype=dtype)
        self.register_buffer("scale", torch.tensor(float(scale), device=device, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_tracing():  # surgery sees the linear layer it carries (see the module docstring)
            return F.linear(x, self.weight)
        return self.scale.to(x.dtype) * cosine_logits(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, classes={self.out_features}, scale={float(self.scale):.4f}"


def attach_cosine_classifier(model: nn.Module, example_input: torch.Tensor,
                             scale: float | None = None) -> CosineClassifier:
    """Replace the class layer of ``model`` (the ``nn.Linear`` whose output is the model's output) in place by a
    :class:`CosineClassifier` that starts from its weight, at ``scale`` (default: the fixed scale of Eq. 13 for its
    classes); returns the new head. A model whose output does not come from an ``nn.Linear`` (a 1x1-conv head) is
    refused with one line."""
    from resprout.methods.metric import _output_linear  # the shared "which Linear is the class layer" probe

    linear = _output_linear(model, example_input)
    if linear is None or isinstance(linear, CosineClassifier):
        raise ConfigError(f"method=adacos needs a network whose output comes straight from an nn.Linear class layer; "
                          f"{type(model).__name__} has none (e.g. use vgg head=fc, not head=gap)")
    scale = fixed_scale(linear.out_features) if scale is None else scale
    head = CosineClassifier(linear.in_features, linear.out_features, scale, device=linear.weight.device,
                            dtype=linear.weight.dtype)
    with torch.no_grad():
        head.weight.copy_(linear.weight)
    head.train(linear.training)
    paths = [name for name, m in model.named_modules(remove_duplicate=False) if m is linear]
    if "" in paths:
        raise ConfigError("method=adacos: the network is a single linear layer; it has no features to normalize")
    for path in paths:
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, head)
    return head


def cosine_classifier_op(model: nn.Module, *, input_shape: list[int]) -> nn.Module:
    """The surgery operation ``cosine_classifier`` (registered in :mod:`resprout.methods.registry`):
    :func:`attach_cosine_classifier` at the fixed scale, probed with zeros of ``input_shape`` (C, H, W). Recorded at
    setup, it gives a network rebuilt from a run's weights its cosine head again; the current scale is a buffer,
    loaded with the weights."""
    example = torch.zeros((2, *input_shape), device=next(model.parameters()).device)
    attach_cosine_classifier(model, example)
    return model


# -- the method --------------------------------------------------------------------------------------------------------
@dataclass
class AdaCosOptions:
    scale: str = option("dynamic", "the scale s: dynamic (Eq. 15-16, updated every step) or fixed (Eq. 13)",
                        choices=("dynamic", "fixed"))


class AdaCos(Method):
    """``method=adacos``: the task loss is cross-entropy on AdaCos cosine logits, which replace the class layer."""

    name = "adacos"
    Options = AdaCosOptions
    provides_task_loss = True

    def __init__(self, options=None, **kwargs) -> None:
        super().__init__(options, **kwargs)
        self.heads: dict[str, str] = {}  # member -> path of its cosine head

    def setup(self, trainer) -> None:
        members = [m for m in trainer.members.values() if m.task]
        if not members:
            raise ConfigError("method=adacos: this run has no trainable classifier to give a cosine head")
        for m in members:  # as surgery, so that the head is in the run's weights files (a teacher loads it)
            model = trainer.apply_surgery(m.name, "cosine_classifier", input_shape=list(trainer.input_shape))
            self.heads[m.name] = next(n for n, mod in model.named_modules() if isinstance(mod, CosineClassifier))

    def on_fit_start(self, trainer) -> None:
        missing = [m.name for m in trainer.members.values() if m.task and m.name not in self.heads]
        if missing:  # added by a method set up after this one (grafting's peers, ...)
            raise ConfigError(f"method=adacos: members {', '.join(missing)} were added after adacos gave the "
                              f"classifiers their cosine heads; name adacos after the method that adds them "
                              f"(e.g. method=graft+adacos)")

    def head(self, trainer, member: str) -> CosineClassifier:
        return trainer.members[member].model.get_submodule(self.heads[member])

    def on_loss(self, trainer) -> None:
        for m in trainer.task_members:
            head = self.head(trainer, m.name)
            targets = trainer.targets_of(m.name)
            previous = float(head.scale)
            cos = trainer.outputs[m.name] / previous  # the forward returned s^(t-1) * cos
            s = previous
            if self.options.scale == "dynamic":
                s = adaptive_scale(cos, targets, previous, dist=None if trainer.per_rank else trainer.dist)
                if not (math.isfinite(s) and s > 0):  # B_avg < 1 (possible with few classes): keep the scale
                    s = previous
                head.scale.fill_(s)
            trainer.add_loss(m.name, "adacos", F.cross_entropy(s * cos, targets))
