"""``resprout profile``: parameters and multiply-accumulates of a model for an input size, and of its Knowledge
Evolution fit hypothesis when ``ke.split_rate`` is given.

Two conventions: ``default`` reports true parameter counts, MACs (one multiply-add = 1) and ops (= 2 x MACs);
``ke-paper`` reproduces the counting of the Knowledge Evolution paper's Table 5 (see
:func:`resprout.methods.evolution.cost.count_ke_paper`: multiplies and adds counted apart, ReLU and BN counted, the
split masks counted as parameters), for comparison with the paper only.
"""

from __future__ import annotations

from dataclasses import dataclass

from resprout.analysis.tables import format_table
from resprout.config import fill_options, option, parse_scalar, split_pairs
from resprout.errors import ConfigError
from resprout.methods.evolution.cost import count_ke_paper, ke_paper_printed
from resprout.models import build_model
from resprout.surgery.profile import CATEGORIES, profile_model


@dataclass
class ProfileKeys:
    model: str = option("cnn", "architecture to count: a registered name, tv:<name> or timm:<name>")
    input: str = option("3x32x32", "shape of one input image, channels x height x width")
    classes: int = option(10, "size of the classifier's output (the number of classes)", min=1)
    width: float | None = option(None, "channel width multiplier of the model (as model.width)")
    stem: str | None = option(None, "first layers of resnet18/34/50: cifar or imagenet (as the run key stem)", choices=("cifar", "imagenet"))
    convention: str = option("default", "counting convention: default (true params and MACs) or ke-paper (the KE paper's Table 5)", choices=("default", "ke-paper"))


def parse_input(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"bad value for input: {text!r} (expected CxHxW, e.g. 3x32x32)")
    return shape  # type: ignore[return-value]


def _costs(model, shape, convention: str) -> dict:
    if convention == "ke-paper":
        counts = count_ke_paper(model, shape)
        return {"params": counts["params"], "ops": counts["ops"], "printed": ke_paper_printed(model, shape)}
    prof = profile_model(model, shape)
    return {"params": prof.params, "macs": prof.macs, "ops": 2 * prof.macs,
            "by_type": {k: prof.by_type.get(k, 0) for k in CATEGORIES}}


def profile_command(args: list[str]) -> tuple[dict, str]:
    """(JSON-ready result, text) for ``resprout profile key=value ...``."""
    raw = split_pairs(args)
    model_options = {k[6:]: parse_scalar(v) for k, v in raw.items() if k.startswith("model.")}
    split_rate = raw.pop("ke.split_rate", None)
    raw = {k: v for k, v in raw.items() if not k.startswith("model.")}
    keys = fill_options(ProfileKeys, raw, prefix=None)
    shape = parse_input(keys.input)
    opts = dict(model_options)
    if keys.width is not None:
        opts["width"] = keys.width
    if keys.stem is not None:
        opts["stem"] = keys.stem
    model = build_model(keys.model, in_channels=shape[0], num_classes=keys.classes, **opts)
    result = {"model": keys.model, "input": list(shape), "classes": keys.classes, "convention": keys.convention}
    nets = {"dense": model}
    if split_rate is not None:
        from resprout.methods.evolution import fit_hypothesis

        try:
            rate = float(split_rate)
        except ValueError:
            raise ConfigError(f"bad value for ke.split_rate: {split_rate!r} (expected a number)") from None
        nets["slim"] = fit_hypothesis(model, shape, rate)
        result["split_rate"] = rate
    rows = []
    for name, net in nets.items():
        costs = _costs(net, shape, keys.convention)
        result[name] = costs
        if keys.convention == "ke-paper":
            rows.append([name, f"{costs['params']:,}", f"{costs['ops']:,}",
                         f"{costs['printed']['mparams']} M / {costs['printed']['gops']} G"])
        else:
            rows.append([name, f"{costs['params']:,}", f"{costs['macs']:,}", f"{costs['macs'] / 1e6:.2f}"])
    if split_rate is None:  # one network: keep the flat keys too
        result.update({k: v for k, v in result["dense"].items()})
    headers = (["network", "params (masks counted)", "ops", "as printed by the paper's code"]
               if keys.convention == "ke-paper" else ["network", "params", "MACs", "MMACs"])
    title = f"{keys.model} on {keys.input}, {keys.classes} classes ({keys.convention} convention)"
    if len(nets) == 1 and keys.convention == "default":
        title += f": {result['params']:,} parameters, {result['macs']:,} MACs ({result['macs'] / 1e6:.2f} M)"
    return result, title + "\n" + format_table(headers, rows)
