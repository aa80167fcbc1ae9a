"""Training methods, one file per paper or family, and the registry that builds them from a config.

``method=ke+ls`` builds the methods named ``ke`` and ``ls`` with their options (``ke.split_rate=...``). A run
that names no task loss gets cross-entropy. Register your own with :func:`register_method`, or pass it to
``resprout.train(methods=[MyMethod])`` without registering it (:mod:`.registry`).

The pure functions and method classes below are re-exported for convenience. They load on first access (importing
``resprout.methods`` imports no torch, so ``resprout --help`` stays quick); the ``TYPE_CHECKING`` block is their one
list, and what editors follow to the definitions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resprout.engine.method import Method
from resprout.methods.registry import (METHODS, available_methods, build_methods, canonical_name, get_method,
                                       register_method, resolved_options)
from resprout.registry import lazy_exports

if TYPE_CHECKING:
    from resprout.methods.adacos import adaptive_scale, cosine_logits
    from resprout.methods.born_again import born_again_loss
    from resprout.methods.classification import CrossEntropy, LabelSmoothing, smooth_cross_entropy, smooth_labels
    from resprout.methods.distill import ClassWiseSelfKD, KnowledgeDistillation, kd_loss, kd_loss_to, soft_targets
    from resprout.methods.dsd import magnitude_masks
    from resprout.methods.evolution import KnowledgeEvolution
    from resprout.methods.grafting import (Grafting, adaptive_alpha, graft_ring, layer_entropy, layer_groups,
                                           mix_states)
    from resprout.methods.hints import (at_loss, attention_map, hint_loss, make_regressor, regressor_kernel,
                                        transposed_kernel)
    from resprout.methods.ktan import (Discriminator, adversarial_loss, discriminator_loss, feature_mse,
                                       pretrain_regressor)
    from resprout.methods.mutual import dml_loss, ensemble_probabilities, mutual_kl
    from resprout.methods.rejuvenation import NeuralRejuvenation
    from resprout.methods.repr import filter_orthogonality, orthogonal_reinit, rank_filters
    from resprout.methods.slimming import NetworkSlimming

__getattr__, __dir__ = lazy_exports(__name__)

__all__ = ["METHODS", "Method", "CrossEntropy", "LabelSmoothing", "ClassWiseSelfKD", "KnowledgeEvolution",
           "kd_loss", "smooth_cross_entropy", "smooth_labels", "register_method", "get_method",
           "available_methods", "build_methods", "canonical_name", "resolved_options"]
