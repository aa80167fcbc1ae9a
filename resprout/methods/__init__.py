"""Training methods, one file per paper or family, and the registry that builds them from a config.

``method=ke+ls`` builds the methods named ``ke`` and ``ls`` with their options (``ke.split_rate=...``). A run
that names no task loss gets cross-entropy. Register your own with :func:`register_method`.
"""

from __future__ import annotations

import importlib

from resprout.config import Config
from resprout.engine.method import Method
from resprout.errors import ConfigError

_METHODS: dict[str, type[Method]] = {}
_ALIASES: dict[str, str] = {"label_smoothing": "ls", "label-smoothing": "ls"}
# Built-in methods are imported when a run names them (or on attribute access), not all at import time.
_BUILTIN: dict[str, str] = {
    "ce": "resprout.methods.classification:CrossEntropy",
    "ls": "resprout.methods.classification:LabelSmoothing",
    "cskd": "resprout.methods.distill:ClassWiseSelfKD",
    "ke": "resprout.methods.evolution:KnowledgeEvolution",
    "triplet": "resprout.methods.metric:TripletMetric",
    # distillation family (KTAN paper, Table I; Born-Again; deep mutual learning)
    "kd": "resprout.methods.distill:KnowledgeDistillation",
    "fitnet": "resprout.methods.hints:FitNet",
    "at": "resprout.methods.hints:AttentionTransfer",
    "dln": "resprout.methods.ktan:DLN",
    "ktan": "resprout.methods.ktan:KTAN",
    "ban": "resprout.methods.born_again:BornAgain",
    "dml": "resprout.methods.mutual:MutualLearning",
    # Filter Grafting / Grafting+
    "graft": "resprout.methods.grafting:Grafting",
    # Neural Rejuvenation and Network Slimming
    "nr": "resprout.methods.rejuvenation:NeuralRejuvenation",
    "slimming": "resprout.methods.slimming:NetworkSlimming",
    # the remaining baselines of the papers' tables
    "repr": "resprout.methods.repr:RePr",
    "dsd": "resprout.methods.dsd:DenseSparseDense",
    "adacos": "resprout.methods.adacos:AdaCos",
}
# Pure functions and classes re-exported here for convenience, loaded on first access.
_EXPORTS: dict[str, str] = {
    "CrossEntropy": "resprout.methods.classification", "LabelSmoothing": "resprout.methods.classification",
    "smooth_cross_entropy": "resprout.methods.classification", "smooth_labels": "resprout.methods.classification",
    "ClassWiseSelfKD": "resprout.methods.distill", "kd_loss": "resprout.methods.distill",
    "KnowledgeDistillation": "resprout.methods.distill", "kd_loss_to": "resprout.methods.distill",
    "soft_targets": "resprout.methods.distill",
    "regressor_kernel": "resprout.methods.hints", "transposed_kernel": "resprout.methods.hints",
    "make_regressor": "resprout.methods.hints", "hint_loss": "resprout.methods.hints",
    "attention_map": "resprout.methods.hints", "at_loss": "resprout.methods.hints",
    "feature_mse": "resprout.methods.ktan", "discriminator_loss": "resprout.methods.ktan",
    "adversarial_loss": "resprout.methods.ktan", "Discriminator": "resprout.methods.ktan",
    "pretrain_regressor": "resprout.methods.ktan",
    "KnowledgeEvolution": "resprout.methods.evolution",
    "NeuralRejuvenation": "resprout.methods.rejuvenation", "NetworkSlimming": "resprout.methods.slimming",
    "magnitude_masks": "resprout.methods.dsd", "filter_orthogonality": "resprout.methods.repr",
    "rank_filters": "resprout.methods.repr", "orthogonal_reinit": "resprout.methods.repr",
    "adaptive_scale": "resprout.methods.adacos", "cosine_logits": "resprout.methods.adacos",
    "born_again_loss": "resprout.methods.born_again", "mutual_kl": "resprout.methods.mutual",
    "dml_loss": "resprout.methods.mutual", "ensemble_probabilities": "resprout.methods.mutual",
    "Grafting": "resprout.methods.grafting", "layer_entropy": "resprout.methods.grafting",
    "adaptive_alpha": "resprout.methods.grafting", "graft_ring": "resprout.methods.grafting",
    "mix_states": "resprout.methods.grafting", "layer_groups": "resprout.methods.grafting",
}


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``method=<cls.name>``."""
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (a built-in is imported on first use)."""
    name = canonical_name(name)
    if name not in _METHODS and name in _BUILTIN:
        module, _, attr = _BUILTIN[name].partition(":")
        register_method(getattr(importlib.import_module(module), attr))
    if name not in _METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(available_methods())} "
                          f"(combine with '+', e.g. ke+ls)")
    return _METHODS[name]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'resprout.methods' has no attribute {name!r}")


def available_methods() -> list[str]:
    return sorted(set(_METHODS) | set(_BUILTIN))


def canonical_name(name: str) -> str:
    return _ALIASES.get(name, name)


def build_methods(config: Config) -> list[Method]:
    """The methods of ``config.method``, with their options validated; cross-entropy added if no task loss."""
    names = [canonical_name(n) for n in config.method_names()]
    classes = {n: get_method(n) for n in names}
    if len(set(names)) != len(names):
        raise ConfigError(f"method {config.method!r} names a method twice")
    options = {canonical_name(k): v for k, v in config.method_options.items()}
    for family in options:
        if family not in names:
            if family in _METHODS or family in _BUILTIN:
                raise ConfigError(f"options {family}.* given but method {family!r} is not used "
                                  f"(method={config.method})")
            raise ConfigError(f"unknown key prefix {family!r}: not a method, 'model' or 'data'")
    methods = [classes[n](**options.get(n, {})) for n in names]
    task = [m.name for m in methods if m.provides_task_loss]
    if len(task) > 1:
        raise ConfigError(f"methods {' and '.join(task)} both provide the task loss; use one of them")
    if not task:
        methods.insert(0, get_method("ce")())
    samplers = {m.sampler for m in methods if m.sampler}
    if len(samplers) > 1:
        raise ConfigError(f"methods need different batch samplers ({', '.join(sorted(samplers))}); "
                          f"they cannot be combined")
    return methods


def resolved_options(methods: list[Method]) -> dict:
    """Every method's options with defaults filled in (for the stored configuration)."""
    import dataclasses

    return {m.name: dataclasses.asdict(m.options) for m in methods if dataclasses.fields(m.options)}


__all__ = ["Method", "CrossEntropy", "LabelSmoothing", "ClassWiseSelfKD", "KnowledgeEvolution", "kd_loss",
           "smooth_cross_entropy", "smooth_labels", "register_method", "get_method",
           "available_methods", "build_methods", "resolved_options"]
