"""Filter Grafting and Grafting+ (Cheng et al., "Filter Grafting for Deep Neural Networks: Reason, Method, and
Cultivation", 2021; Meng et al., CVPR 2020).

* :mod:`.criteria`: filter and layer l1 norms (Eq. 3), the layer entropy (Eq. 6);
* :mod:`.weighting`: the adaptive alpha (Eq. 7) and the official per-network learning-rate factors;
* :mod:`.scions`: noise and internal scions (Sec. 3.1.1-3.1.2);
* :mod:`.ring`: layer groups, the layer mix (Eq. 2) and the K-network ring (Sec. 3.4, Algorithm 1);
* :mod:`.aftergraft`: BN statistics re-estimated and SGD momentum reset after a graft (options beyond the paper);
* :mod:`.method`: ``method=graft`` (and with ``kd``, Grafting+).
"""

from resprout.methods.grafting.aftergraft import reestimate_bn, reset_momentum
from resprout.methods.grafting.criteria import (
    bin_counts, filter_l1, layer_entropy, layer_information, layer_l1)
from resprout.methods.grafting.method import GraftOptions, Grafting, ensemble_metrics, peer_names
from resprout.methods.grafting.ring import (
    LayerGroup, graft_ring, grafts_at, group_alphas, layer_groups, mix_states, predecessor)
from resprout.methods.grafting.scions import (
    conv_weights, internal_scion, invalid_filters, noise_scion, noise_sigma)
from resprout.methods.grafting.weighting import adaptive_alpha, alpha_bounds, lr_factors

__all__ = ["GraftOptions", "Grafting", "LayerGroup", "adaptive_alpha", "alpha_bounds", "bin_counts",
           "conv_weights", "ensemble_metrics", "filter_l1", "graft_ring", "grafts_at", "group_alphas",
           "internal_scion", "invalid_filters", "layer_entropy", "layer_groups", "layer_information", "layer_l1",
           "lr_factors", "mix_states", "noise_scion", "noise_sigma", "peer_names", "predecessor", "reestimate_bn",
           "reset_momentum"]
