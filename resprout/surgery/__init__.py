"""Model surgery: measuring, pruning, slicing and widening trained networks."""

from resprout.surgery import resize as _resize  # noqa: F401  (registers the "resize" surgery)
from resprout.surgery.profile import CATEGORIES, LayerCost, ModelProfile, profile_model

__all__ = ["CATEGORIES", "LayerCost", "ModelProfile", "profile_model"]
