"""Neural Rejuvenation (Qiao, Lin, Zhang and Yuille, "Neural Rejuvenation: Improving Deep Network Training by
Enhancing Computational Resource Utilization", CVPR 2019).

* :mod:`.monitor`: liveliness from BN scales, propagated through the traced channel graph, utilization by
  parameters or FLOPs (Sec. 3.1.1, 3.1.2);
* :mod:`.sparsity`: L1 on the BN scales, lambda per epoch, the adaptive lambda and its window (Eq. 3, Sec. 3.1.3);
* :mod:`.rebuild`: dead neurons removed, one shared expansion rate to a cost target, re-initialization, neural
  rescaling (Sec. 3.2);
* :mod:`.mixed`: training with mixed neurons, NR / NR-CR / NR-CA (Sec. 3.3, Eq. 5, 6, 9, 10);
* :mod:`.cost`: the paper's parameter and FLOP count beside the real one (what the tensors hold and the forward runs);
* :mod:`.method`: :class:`NeuralRejuvenation`, ``method=nr`` (with the ablations NR-IP, NR-FS, BL, BL-CA).
"""

from resprout.methods.rejuvenation.cost import model_counts
from resprout.methods.rejuvenation.method import NeuralRejuvenation, NROptions
from resprout.methods.rejuvenation.mixed import (cross_attention, cross_masks, half_labels,
                                                 install_cross_attention, mask_gradients, zero_cross)
from resprout.methods.rejuvenation.monitor import (Topology, bn_alive, group_liveness, layer_costs, pair_count,
                                                   topology, utilization)
from resprout.methods.rejuvenation.rebuild import (labels_of, real_cost, reinit_split, rejuvenation_plan, rescale,
                                                   solve_expansion)
from resprout.methods.rejuvenation.sparsity import (add_l1_subgradient, l1_penalty, next_lambda, per_iteration,
                                                    ramp_stretch, window_end)

__all__ = ["NROptions", "NeuralRejuvenation", "Topology", "add_l1_subgradient", "bn_alive", "cross_attention",
           "cross_masks", "group_liveness", "half_labels", "install_cross_attention", "l1_penalty", "labels_of",
           "layer_costs", "mask_gradients", "model_counts", "next_lambda", "pair_count", "per_iteration",
           "ramp_stretch", "real_cost", "reinit_split", "rejuvenation_plan", "rescale", "solve_expansion", "topology",
           "utilization", "window_end", "zero_cross"]
