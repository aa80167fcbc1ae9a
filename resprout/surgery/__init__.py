"""Model surgery: measuring, pruning, slicing and widening trained networks.

The names below load on first access, so that importing the package (its operation registry, say) imports no torch.
"""

from typing import TYPE_CHECKING

from resprout.registry import lazy_exports

if TYPE_CHECKING:
    from resprout.surgery.profile import CATEGORIES, LayerCost, ModelProfile, profile_model

__getattr__, __dir__ = lazy_exports(__name__)

__all__ = ["CATEGORIES", "LayerCost", "ModelProfile", "profile_model"]
