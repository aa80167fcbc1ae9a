"""Every key resprout takes, with what it means: the run keys, every registered method's options, model and data
options, per-member keys and ``resprout profile``'s keys (``resprout keys`` prints them; the tests check that none
is missing or explained by its own name).

Sections are built from the registries (the config dataclass, :func:`resprout.methods.available_methods`, the
model and data-source registries), not from a hand list; only model and data options, which their registries
record without a description, take their meaning from the tables below.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

Row = tuple[str, str, str]  # key, default, meaning

# Registries record model options as name -> default; what each name means, for every model that takes it.
MODEL_OPTION_MEANINGS = {
    "width": "channel width multiplier: every layer gets max(1, round(c * width)) channels",
    "stem": "first layers: cifar (3x3 conv, no pooling, for 32x32 images) or imagenet (7x7 stride-2 conv and "
            "max-pool)",
    "depth": "number of layers (densenet-bc: 3n+4 with n dense layers per block; wrn: 6n+4)",
    "growth": "DenseNet growth rate k: channels each dense layer adds to its block",
    "widen": "Wide-ResNet widening factor k: block channels 16k, 32k, 64k",
    "dropout": "dropout probability (wrn: between the two convs of a block; mobilenetv2: before the classifier)",
    "head": "classifier after the conv stack: fc (flatten and fully connected layers) or gap (global average pooling "
            "and one linear layer)",
}
# (source, option) -> meaning, for the data sources' own options.
DATA_OPTION_MEANINGS = {
    ("cifar100", "labels"): "which labels to train on: fine (100 classes) or coarse (20 superclasses)",
    ("imagefolder", "image_size"): "resize every image to S x S while reading (needed when image sizes differ)",
    ("imagefolder", "channels"): "read images as 3-channel RGB or 1-channel grayscale",
    ("synthetic", "num_classes"): "number of classes, each with its own random prototype",
    ("synthetic", "n_train"): "number of training images (balanced over the classes)",
    ("synthetic", "n_test"): "number of test images (balanced over the classes)",
    ("synthetic", "image_size"): "side of the square images in pixels",
    ("synthetic", "channels"): "channels of the generated images (1 or 3)",
    ("synthetic", "seed"): "seed of the prototypes and of both splits' images",
}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def run_keys() -> list[Row]:
    from resprout.config import describe_keys

    return describe_keys()


def method_rows() -> tuple[list[Row], list[Row], list[str]]:
    """(one row per method: ``method=<name>`` and what it is; its options ``<name>.<opt>``; the methods that could
    not be loaded, as ``name (reason)``)."""
    from resprout.methods import available_methods, get_method

    methods, options, failed = [], [], []
    for name in available_methods():
        try:
            cls = get_method(name)
        except Exception as e:  # noqa: BLE001  (a method module another helper has not finished, say)
            failed.append(f"{name} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            continue
        doc = inspect.getdoc(cls) or ""
        methods.append((f"method={name}", "", doc.split("\n\n")[0].replace("\n", " ")))
        for f in dataclasses.fields(cls.Options):
            options.append((f"{name}.{f.name}", repr(_default(f)), f.metadata.get("help", "")))
    return methods, options, failed


def model_rows() -> list[Row]:
    """``model.<option>``: every option any registered model takes, the models that take it and their default."""
    from resprout.models import available_models, model_options
    from resprout.models.registry import _REGISTRY

    by_option: dict[str, dict[str, Any]] = {}
    helps: dict[str, str] = {}
    for name in available_models():
        for opt, default in model_options(name).items():
            by_option.setdefault(opt, {})[name] = default
        for opt, spec in _REGISTRY[name][2].items():
            if spec.help:
                helps[opt] = spec.help
    rows = []
    for opt, models in sorted(by_option.items()):
        defaults = sorted({repr(v) for v in models.values()})
        meaning = helps.get(opt) or MODEL_OPTION_MEANINGS.get(opt, "")
        rows.append((f"model.{opt}", " / ".join(defaults), f"{meaning} (models: {', '.join(sorted(models))})"))
    return rows


def data_rows() -> list[Row]:
    """``data.<option>``: the options of every registered data source."""
    from resprout.data.sources import SOURCES

    rows = []
    for source in SOURCES.names():
        entry = SOURCES.get(source)
        params = inspect.signature(entry.fn).parameters
        for opt, p in params.items():
            if opt == "path" or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                continue
            spec = entry.options.get(opt)
            meaning = (spec.help if spec is not None and spec.help else "") or DATA_OPTION_MEANINGS.get((source, opt),
                                                                                                        "")
            default = "" if p.default is p.empty else repr(p.default)
            rows.append((f"data.{opt}", default, f"{meaning} (data={source})"))
    return rows


def member_rows() -> list[Row]:
    """``member.<name>.<key>``: the optimizer and schedule keys one member may set for itself."""
    from resprout.config import FIELDS, MEMBER_KEYS

    return [(f"member.<name>.{k}", "run's value", f"{FIELDS[k].metadata['help']}, for member <name> only")
            for k in MEMBER_KEYS]


def profile_rows() -> list[Row]:
    from resprout.analysis.cost import ProfileKeys

    return [(f.name, repr(_default(f)), f.metadata.get("help", "")) for f in dataclasses.fields(ProfileKeys)]


def sections() -> tuple[list[tuple[str, list[Row]]], list[str]]:
    """[(title, rows)] of every key family, and the methods that could not be loaded."""
    methods, options, failed = method_rows()
    return [
        ("run keys (key=value, or a top-level key of a TOML/YAML file)", run_keys()),
        ("methods (method=a+b combines them)", methods),
        ("method options (<method>.<option>=value, or a [<method>] table)", options),
        ("model options (model.<option>=value, or a [model_options] table)", model_rows()),
        ("data-source options (data.<option>=value, or a [data_options] table)", data_rows()),
        ("per-member optimizer keys (member.<name>.<key>=value, or a [member.<name>] table)", member_rows()),
        ("resprout profile keys (resprout profile key=value ...)", profile_rows()),
    ], failed


def render() -> str:
    from resprout.analysis.tables import format_table

    parts, failed = sections()
    out = []
    for title, rows in parts:
        out.append(f"{title}:\n{format_table(['key', 'default', 'meaning'], rows)}")
    if failed:
        out.append("not available in this install (their modules are missing or fail to import): " + "; ".join(failed))
    return "\n\n".join(out)


def installed_methods() -> list[str]:
    """The registered method names whose module and class exist in this install, found without importing them
    (``resprout --help`` stays free of torch): a name registered ahead of its code is left out."""
    import importlib.util
    import re

    from resprout.methods import _BUILTIN, _METHODS

    names = set(_METHODS)
    for name, target in _BUILTIN.items():
        module, _, attr = target.partition(":")
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        paths = []
        if spec is not None and spec.origin:
            paths.append(spec.origin)
            if spec.submodule_search_locations:  # a package: the class may live in any of its files
                for loc in spec.submodule_search_locations:
                    from pathlib import Path

                    paths += [str(p) for p in Path(loc).glob("*.py")]
        for path in paths:
            try:
                text = open(path, encoding="utf-8").read()
            except OSError:
                continue
            if re.search(rf"^class {re.escape(attr)}\b", text, re.M):
                names.add(name)
                break
    return sorted(names)
