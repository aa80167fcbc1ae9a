"""Model surgery: measuring, pruning, slicing and widening trained networks."""

from resprout.surgery.profile import CATEGORIES, LayerCost, ModelProfile, profile_model

__all__ = ["CATEGORIES", "LayerCost", "ModelProfile", "profile_model"]
