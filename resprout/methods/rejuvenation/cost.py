"""The paper's cost beside the real one (Qiao et al., "Neural Rejuvenation", CVPR 2019, Sec. 3.1.2 and Tables 1/4).

The paper counts a layer as ``live_in * live_out * K`` weights (times ``O_h * O_w`` for FLOPs) and, with the cross
connections removed (NR-CR, Eq. 6), leaves the ``W_S->R`` and ``W_R->S`` blocks out: its NR-CR network "maintains
the number of parameters". resprout keeps the network one dense module (:mod:`.mixed`), so NR-CR's tensors still
hold those zero blocks and its convolutions still compute them: at ``nr.target=1.0`` a VGG holds about 1.8x the
baseline's weights. :func:`model_counts` reports both:

* ``paper_params`` / ``paper_macs``: conv and linear weights (and their multiply-adds) as the monitor counts them,
  the removed cross blocks left out (:func:`~.rebuild.real_cost` with the labels);
* ``weights``: what the conv and linear weight tensors hold; ``params``: every parameter (BN and biases too);
* ``macs``: the conv and linear multiply-adds the forward really runs, measured by torch's own counter
  (:func:`resprout.surgery.profile.profile_model`, ``torch.utils.flop_counter.FlopCounterMode``): NR-CA's cross
  attention computes its cross blocks a second time, and that shows here; ``macs_all`` adds BN and pooling.
"""

from __future__ import annotations

from torch import nn

from resprout.methods.rejuvenation.monitor import Topology
from resprout.methods.rejuvenation.rebuild import real_cost
from resprout.surgery.channels import model_device
from resprout.surgery.profile import profile_model

COUNTS = ("paper_params", "paper_macs", "weights", "params", "macs", "macs_all")


def model_counts(model: nn.Module, topo: Topology, labels: dict[str, list] | None,
                 input_shape: tuple[int, ...]) -> dict[str, int]:
    """The paper's count and the real one of ``model`` (``labels``: NR-CR's S/R labels, whose cross blocks the
    paper leaves out; None for a dense count)."""
    prof = profile_model(model, tuple(input_shape), device=model_device(model))
    counted = dict.fromkeys(layer.module for layer in topo.layers)  # each conv/linear module once, in order
    return {"paper_params": real_cost(model, topo, labels, "params"),
            "paper_macs": real_cost(model, topo, labels, "flops"),
            "weights": sum(model.get_submodule(m).weight.numel() for m in counted),
            "params": prof.params, "macs": prof.by_type["conv"] + prof.by_type["linear"], "macs_all": prof.macs}
