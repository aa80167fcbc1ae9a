"""Knowledge Evolution (Taha, Shrivastava and Davis, "Knowledge Evolution in Neural Networks", CVPR 2021).

The network is split, once and for all, into a *fit hypothesis* (mask 1) and a *reset hypothesis* (mask 0). It
trains for ``e`` epochs per generation; between generations the reset hypothesis is re-initialized (Eq. 1) and the
fit hypothesis carries the knowledge over. The mask is not applied in the forward pass (Algorithm 1): every weight
trains in every generation. With the kernel-level split (KELS, Sec. 3.2, Fig. 3) the fit hypothesis is a slim
network that :func:`fit_hypothesis` extracts as a real, smaller ``nn.Module``.

* :mod:`.hypotheses`: the pure functions (masks, Eq. 1, magnitudes, the slim network);
* :mod:`.method`: :class:`KnowledgeEvolution`, ``method=ke``.
"""

from resprout.methods.evolution.hypotheses import (default_init, fit_hypothesis, hypothesis_magnitudes, kels_masks,
                                                   reestimate_batchnorm, reinitialize, reset_batchnorm, wels_masks)
from resprout.methods.evolution.method import KEOptions, KnowledgeEvolution

__all__ = ["KEOptions", "KnowledgeEvolution", "default_init", "fit_hypothesis", "hypothesis_magnitudes",
           "kels_masks", "reestimate_batchnorm", "reinitialize", "reset_batchnorm", "wels_masks"]
