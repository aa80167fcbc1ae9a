"""Where the grafted information comes from (Sec. 3.1): noise, internal filters, or external filters.

*Rootstocks* are the invalid filters, those whose l1 norm (Eq. 3) is below a threshold ``gamma``; *scions* are
what is grafted into them.

* :func:`noise_scion` (Sec. 3.1.1): Gaussian noise ``N(0, sigma_t)`` with ``sigma_t = a^t`` (Eq. 1, ``0 < a < 1``,
  t the graft number) is added to every invalid filter. The paper's (and the official first upload's) sigma is
  absolute, ``sigma_0 = 1``, while conv weights have a standard deviation near 0.1 (resprout's He init, fan-out:
  ``sqrt(2 / (k^2 C_out))``, 0.083 for a 3x3 conv with 32 filters): such noise turns a grafted filter into noise
  about ten times its layer's scale. :func:`noise_sigma` with ``scale="layer"`` (resprout's default) multiplies
  ``a^t`` by the standard deviation of the layer's whole weight tensor at the graft; ``scale="absolute"`` is the
  paper's.
* :func:`internal_scion` (Sec. 3.1.2, Fig. 2): the filters of a layer are sorted by l1 norm and the i-th largest
  is added to the i-th smallest invalid one (at most half of the layer, so no filter is both). Theorem 1: this
  adds no information to the network.
* External filters (Sec. 3.1.3), the method and the default, are whole layers of other networks mixed in with
  adaptive weights: :mod:`resprout.methods.grafting.ring`.
* ``none`` grafts nothing: K independent peers, the ensemble of the same count that Table 5 compares with.

Both act on the filters (dim 0) of conv weights (3-D and more); see :func:`conv_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from resprout.methods.grafting.criteria import filter_l1

SCIONS = ("external", "internal", "noise", "none")
NOISE_SCALES = ("layer", "absolute")


def conv_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the model's convolutions (the layers whose filters are grafted), by state-dict key."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))}


def invalid_filters(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the filters whose l1 norm is below ``threshold`` (the rootstocks)."""
    return (filter_l1(weight) < threshold).nonzero().flatten()


def noise_sigma(a: float, t: int, weight: torch.Tensor | None = None, scale: str = "absolute") -> float:
    """``sigma_t = a^t`` (Eq. 1), times the standard deviation of the layer's ``weight`` (all its filters, at the
    graft) when ``scale="layer"``."""
    if scale not in NOISE_SCALES:
        raise ValueError(f"scale must be one of {NOISE_SCALES}, not {scale!r}")
    if scale == "absolute":
        return a ** t
    if weight is None:
        raise ValueError("noise_sigma(scale='layer') needs the layer's weight")
    return a ** t * float(weight.detach().double().std()) if weight.numel() > 1 else 0.0


def noise_scion(weight: torch.Tensor, threshold: float, sigma: float, generator: torch.Generator) -> tuple[torch.Tensor, int]:
    """(weight with ``N(0, sigma)`` added to its invalid filters, number of filters grafted)."""
    idx = invalid_filters(weight, threshold)
    out = weight.detach().clone()
    if len(idx):
        noise = torch.randn((len(idx), *weight.shape[1:]), generator=generator, dtype=torch.float32)
        out[idx] += sigma * noise.to(out.device, out.dtype)
    return out, len(idx)


def internal_scion(weight: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """(weight with the i-th largest filter added to the i-th smallest invalid filter, number grafted)."""
    norms = filter_l1(weight)
    order = torch.argsort(norms, stable=True)  # ascending
    n = min(int((norms < threshold).sum()), len(norms) // 2)
    out = weight.detach().clone()
    if n:
        small, large = order[:n], order.flip(0)[:n]
        out[small] += weight.detach()[large]
    return out, n
