"""Typed run configuration: one dataclass, filled from a TOML/YAML file and ``key=value`` overrides.

Every key is validated before anything runs. A bad key or value raises :class:`~resprout.errors.ConfigError` with
one line naming the key and what is allowed.

Three families of keys are open-ended and validated later by whoever owns them:

* ``model.<option>`` (e.g. ``model.depth=40``) goes to the model builder,
* ``data.<option>`` (e.g. ``data.labels=coarse``) goes to the data source,
* ``<method>.<option>`` (e.g. ``ls.smoothing=0.2``) goes to that method's options dataclass.

In a TOML/YAML file, method options are tables (``[ls]`` with ``smoothing = 0.2``); model and data options are
the tables ``[model_options]`` and ``[data_options]`` (``model`` and ``data`` themselves name the architecture and
the source).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from resprout.errors import ConfigError
# The option validator lives in resprout.options; these names stay importable from here.
from resprout.options import base_type, check_range, coerce, fill_options, option, parse_scalar  # noqa: F401


@dataclass(frozen=True)
class Config:
    """Everything a run needs. Defaults train the small CNN on digits.

    Frozen: a run resolves its configuration once (:func:`resprout.run.resolve`) and everything downstream reads
    that one object. A key's ``scope`` (:data:`resprout.options.SCOPES`) says whether it is part of the run's
    identity, whether a resume may change it and whether one member may set it for itself; the key lists
    (:data:`RUNTIME_KEYS`, :data:`RESUME_KEYS`, :data:`MEMBER_KEYS`, ...) are read from the fields.
    """

    # -- data ---------------------------------------------------------------------------------------------------
    data: str = option("digits", "data source: digits, fashion-mnist, mnist, cifar10, cifar100, imagefolder, "
                       "synthetic; fashion-reid, market1501, dukemtmc (re-identification: an identity classifier "
                       "evaluated by rank-1/5 and mAP over query and gallery); user for data passed from Python "
                       "(resprout.train(train=..., test=...))")
    data_path: str | None = option(None, "directory of the data source (default: where the source is found)")
    per_class: int | None = option(None, "keep N seeded training images per class (small-data experiments)", min=1)
    test_per_class: int | None = option(None, "evaluate on a fixed subset of N test images per class (quick "
                                        "benchmarks; default: the whole test split)", min=1)
    val_split: float = option(0.0, "fraction of train carved out as validation when the source has none", min=0.0, max=0.95)
    data_seed: int = option(0, "seed of the per_class subset and the validation carve (kept fixed across seeds)", min=0)
    image_size: int | None = option(None, "pad (if larger) or resize (if smaller) images to this size", min=4)
    image_fit: str = option("auto", "how image_size is reached: auto (pad if larger, else resize), pad, resize",
                            choices=("auto", "pad", "resize"))
    channels: int | None = option(None, "convert images to 1 or 3 channels", choices=(1, 3))
    augment: str = option("auto", "random augmentation of training batches: none, crop (pad and crop back), flip "
                          "(mirror left-right), crop+flip; imagenet (image files: a random resized crop of "
                          "image_size, default 224, and a flip; evaluation on the central crop after resizing the "
                          "short side to image_size * 256/224); auto: imagenet for cub200, flower102, fgvc-aircraft, "
                          "mit67 and stanford-dogs, crop for digits and mnist, none for synthetic and data from "
                          "Python, crop+flip otherwise",
                          choices=("auto", "none", "crop", "flip", "crop+flip", "imagenet"))
    crop_padding: int | None = option(None, "padding of the random crop (default: image_size // 8)", min=0)
    data_mode: str = option("auto", "where augment=imagenet images live: memory (decoded once), stream (read from "
                            "disk by DataLoader workers, for data larger than memory) or auto (memory when they fit "
                            "memory_budget); the batches are the same in every mode",
                            choices=("auto", "memory", "stream"), scope="runtime")
    memory_budget: float | None = option(None, "GB the images may take in memory (default: half of this machine's "
                                         "memory); above it data_mode=auto streams and data_mode=memory refuses",
                                         min=0.0, min_exclusive=True, scope="runtime")
    data_workers: int | None = option(None, "DataLoader worker processes that decode and augment image files "
                                      "(augment=imagenet; default: one per core, at most 4; 0: in the training "
                                      "process)", min=0, scope="runtime")
    data_options: dict = option({}, "options of the data source (data.<key>=...)")
    # -- model --------------------------------------------------------------------------------------------------
    model: str = option("cnn", "architecture name (see `resprout profile`), or tv:<name> / timm:<name>")
    width: float | None = option(None, "channel width multiplier of the model", min=0.0, min_exclusive=True)
    stem: str | None = option(None, "first layers of resnet18/34/50: cifar (3x3 conv, no pooling) or imagenet (7x7 "
                              "stride-2 conv, max-pool)", choices=("cifar", "imagenet"))
    model_options: dict = option({}, "other options of the model (model.<key>=...)")
    # -- method -------------------------------------------------------------------------------------------------
    method: str = option("ce", "training method, or several joined by '+' (e.g. ke+ls)")
    method_options: dict = option({}, "options of the methods (<method>.<key>=...)")
    member_options: dict = option({}, "optimizer and schedule keys of one member (member.<name>.<key>=..., "
                                  "e.g. member.discriminator.optimizer=adam)")
    teacher: list = option([], "teacher run directories, comma-separated (their best weights if stored, else "
                           "the last), for methods that distil from a teacher (kd, fitnet, at, dln, ktan)")
    # -- schedule -----------------------------------------------------------------------------------------------
    epochs: int = option(10, "training epochs in each generation (the whole run: epochs x generations)", min=1)
    generations: int = option(1, "generations (KE, Born-Again, ...): epochs x generations in all", min=1)
    seed: int = option(0, "seed of initialization, data order and augmentation", min=0)
    batch_size: int = option(64, "training batch size (global, over all processes)", min=1)
    eval_batch_size: int = option(512, "images per evaluation batch (changes speed and memory, not the results)", min=1)
    optimizer: str = option("sgd", "optimizer of every trainable member: sgd (with momentum) or adam",
                            choices=("sgd", "adam"), scope=("optimizer", "resumable"))
    lr: float = option(0.1, "peak learning rate", min=0.0, min_exclusive=True, scope=("optimizer", "resumable"))
    momentum: float = option(0.9, "momentum factor of SGD (adam ignores it)", min=0.0, max=1.0, scope=("optimizer", "resumable"))
    nesterov: bool = option(False, "use Nesterov's form of momentum in SGD", scope=("optimizer", "resumable"))
    betas: list = option([0.9, 0.999], "Adam's decay rates of its first and second moment estimates", scope=("optimizer", "resumable"))
    weight_decay: float = option(5e-4, "L2 penalty coefficient the optimizer adds to the gradients", min=0.0, scope=("optimizer", "resumable"))
    decay_bn_bias: bool = option(True, "apply weight decay to BN parameters and biases too", scope="optimizer")
    schedule: str = option("cosine", "how the learning rate changes over each generation: cosine (down to zero), "
                           "step (times gamma at milestones), constant", choices=("cosine", "step", "constant"),
                           scope=("schedule", "resumable"))
    warmup_epochs: float = option(0.0, "linear warmup at the start of every generation, in epochs", min=0.0,
                                  scope=("schedule", "resumable"))
    milestones: list = option([], "epochs at which the step schedule multiplies the rate by gamma (default: 50%, 75%)",
                              scope="schedule")
    gamma: float = option(0.1, "step-schedule factor", min=0.0, min_exclusive=True, scope=("schedule", "resumable"))
    eval_every: int | None = option(None, "evaluate every N epochs, and always at the last epoch of a generation "
                                    "(default: every ceil(evaluated images / training images) epochs, e.g. every "
                                    "epoch on digits, every 10th on Fashion-MNIST at per_class=100)", min=1)
    # -- runtime ------------------------------------------------------------------------------------------------
    device: str = option("auto", "auto, cpu, cuda or cuda:N", scope="runtime")
    threads: int | None = option(None, "CPU threads (default: torch's choice)", min=1, scope="runtime")
    precision: str = option("auto", "what forwards and losses compute in: fp32; bf16 or fp16 (autocast: weights, "
                            "optimizer state and checkpoints stay fp32; fp16 on CUDA only, with a gradient scaler); "
                            "auto: bf16 where the device computes it natively (CUDA with bf16, a CPU with AVX-512 "
                            "BF16 or AMX), else fp32. The run stores what it resolved to",
                            choices=("auto", "fp32", "bf16", "fp16"), scope="auto")
    channels_last: Any = option("auto", "channels-last memory format: true, false, or auto (on for resprout's and "
                                "tv:/timm: models, faster or equal on every model measured; off for a module of "
                                "your own, which may reshape with .view). The run stores what it resolved to",
                                scope="auto")
    compile: bool = option(False, "compile the trainable members' forward with torch.compile (slower on a 2-core "
                           "CPU, and tens of seconds to compile)", scope="runtime")
    checkpoint_every: int = option(1, "write a checkpoint every N epochs (and at the end of every generation)", min=1)
    checkpoint_minutes: float = option(10.0, "also checkpoint inside an epoch after this many minutes (0 = never)", min=0.0)
    progress: str = option("auto", "how progress is shown: auto (a live bar on a terminal, plain lines otherwise), "
                           "bar, plain, none", choices=("auto", "bar", "plain", "none"), scope="runtime")
    loggers: str = option("csv", "dashboard logs in the run directory, comma-separated: csv (metrics.csv), "
                          "tensorboard (event files; pip install 'resprout[tensorboard]'), or none", scope="runtime")

    # ---------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """The keys that decide what a run computes: everything but where and how it is shown. An ``auto`` key
        counts as what it resolves to on this machine (a run stores the resolved value)."""
        ident = {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS}
        if any(ident[k] == "auto" for k in AUTO_KEYS):
            from resprout.hardware import resolve_auto  # imports torch: only for unresolved configs

            ident.update(resolve_auto(self))
        if ident["precision"] == "fp32":  # keeps the fingerprints of runs made before the key existed (all fp32)
            del ident["precision"]
        if not ident["member_options"]:  # keeps the fingerprints of runs made before the key existed
            del ident["member_options"]
        if not ident["teacher"]:  # likewise
            del ident["teacher"]
        return ident

    def fingerprint(self, *, without_seed: bool = False) -> str:
        ident = self.identity()
        if without_seed:
            ident.pop("seed")
        blob = json.dumps(ident, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def model_kwargs(self) -> dict:
        kw = dict(self.model_options)
        if self.width is not None:
            kw["width"] = self.width
        if self.stem is not None:
            kw["stem"] = self.stem
        return kw

    def method_names(self) -> list[str]:
        return [m.strip() for m in self.method.split("+") if m.strip()]


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def keys_in(scope: str) -> tuple[str, ...]:
    """The config keys whose ``scope`` includes ``scope`` (one of :data:`resprout.options.SCOPES`), in field
    order."""
    return tuple(k for k, f in FIELDS.items() if scope in f.metadata.get("scope", ()))


#: keys that may differ between a run and its resumption (where it runs, not what it computes)
RUNTIME_KEYS = keys_in("runtime")
#: optimizer keys a resume may change (``lr`` after a divergence, say); recorded in ``config_history``
RESUME_KEYS = keys_in("resumable")
#: keys whose ``auto`` resolves on the machine that starts the run (resprout.engine.precision); the run stores the
#: resolved value, so they are part of its identity
AUTO_KEYS = keys_in("auto")
#: the optimizer and the schedule keys: what one member may set for itself (``member.<name>.<key>``)
OPTIM_KEYS = keys_in("optimizer")
SCHEDULE_KEYS = keys_in("schedule")
MEMBER_KEYS = OPTIM_KEYS + SCHEDULE_KEYS
_HINTS = typing.get_type_hints(Config)
# Keys that only a file or a prefixed key can fill.
_OPEN_FIELDS = {"data_options": "data", "model_options": "model", "method_options": None, "member_options": "member"}
KEYS = [k for k in FIELDS if k not in _OPEN_FIELDS]


# -- parsing --------------------------------------------------------------------------------------------------------
_base_type = base_type


def _unknown_key(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, KEYS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return ConfigError(f"unknown key {key!r}{hint}; allowed: {', '.join(KEYS)}, model.<option>, data.<option>, "
                       f"<method>.<option>")


def _set(values: dict, key: str, value: Any, *, from_text: bool) -> None:
    """Put one key into the raw ``values`` dict, routing dotted keys to their option family."""
    if "." in key:
        family, _, opt = key.partition(".")
        if not family or not opt:
            raise _unknown_key(key)
        v = parse_scalar(value) if from_text and isinstance(value, str) else value
        if family == "member":
            name, _, sub = opt.partition(".")
            if not name or not sub:
                raise ConfigError(f"bad key {key!r}: expected member.<name>.<key>, e.g. member.discriminator.lr")
            values.setdefault("member_options", {}).setdefault(name, {})[sub] = value
        elif family == "model":
            values.setdefault("model_options", {})[opt] = v
        elif family == "data":
            values.setdefault("data_options", {})[opt] = v
        else:
            values.setdefault("method_options", {}).setdefault(family, {})[opt] = v
        return
    if isinstance(value, dict) and key not in FIELDS:
        # a table, as in a TOML file: ke={"split_rate": 0.3} is ke.split_rate=0.3, member={"d": {"lr": 1}} is
        # member.d.lr=1
        for sub, v in value.items():
            if key == "member" and isinstance(v, dict):
                for mk, mv in v.items():
                    _set(values, f"member.{sub}.{mk}", mv, from_text=from_text)
            else:
                _set(values, f"{key}.{sub}", v, from_text=from_text)
        return
    if key not in FIELDS or key in _OPEN_FIELDS:
        raise _unknown_key(key)
    values[key] = value


def _table(value: Any, key: str, expected: str) -> dict:
    """``value`` when it is a table (a dict), else the one-line refusal naming ``key`` and what belongs there."""
    if not isinstance(value, dict):
        raise ConfigError(f"bad value for {key}: {value!r} (expected {expected})")
    return value


def _flatten_file(raw: dict, source: str) -> dict:
    """TOML/YAML tables become dotted keys: ``[ls] smoothing = 0.2`` is ``ls.smoothing=0.2``."""
    values: dict = {}
    try:
        for key, value in raw.items():
            key = str(key)
            if key in ("data_options", "model_options"):
                # `data` and `model` name the source and architecture, so their options come as these tables
                family = _OPEN_FIELDS[key]
                for sub, v in _table(value, key, f"a table of the {family}'s options: option = value").items():
                    _set(values, f"{family}.{sub}", v, from_text=False)
            elif key in ("method_options", "member_options", "member"):
                # {method: {option: value}} and {member: {optimizer key: value}}: a scalar at either level is refused
                # here, naming the key, rather than failing later on a number that has no .items()
                member = key != "method_options"
                outer = "a table with one table of " + ("optimizer keys per member" if member else
                                                        "options per method")
                for name, opts in _table(value, key, outer).items():
                    inner = f"a table of {name}'s " + ("optimizer keys, e.g. lr" if member else
                                                       "options: option = value")
                    for sub, v in _table({} if opts is None else opts, f"{key}.{name}", inner).items():
                        _set(values, f"{'member.' if member else ''}{name}.{sub}", v, from_text=False)
            elif isinstance(value, dict) and key not in FIELDS:
                for sub, v in value.items():
                    _set(values, f"{key}.{sub}", v, from_text=False)
            else:
                _set(values, key, value, from_text=False)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return values


def read_config_file(path: str | Path) -> dict:
    """The keys of a ``.toml``, ``.yaml`` or ``.yml`` file, flattened to dotted keys."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            with p.open("rb") as fh:
                raw = tomllib.load(fh)
        elif suffix in (".yaml", ".yml"):
            import yaml  # a declared dependency; imported here so TOML users do not pay for it

            with p.open() as fh:
                raw = yaml.safe_load(fh) or {}
        else:
            raise ConfigError(f"config file {str(p)!r} must end in .toml, .yaml or .yml")
    except ConfigError:
        raise
    except Exception as e:  # a parse error of either format: show its one-line reason
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"cannot parse {str(p)!r}: {reason}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(p)!r} must hold a table of keys")
    return _flatten_file(raw, str(p))


def split_pairs(items: list[str]) -> dict[str, str]:
    """``["epochs=3", "ls.smoothing=0.2"]`` -> ``{"epochs": "3", "ls.smoothing": "0.2"}``."""
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"bad argument {item!r}: expected key=value")
        pairs[key] = value
    return pairs


def parse_overrides(items: list[str]) -> dict:
    """``["epochs=3", "ls.smoothing=0.2"]`` -> raw config values (strings, typed later)."""
    values: dict = {}
    for key, value in split_pairs(items).items():
        _set(values, key, value, from_text=True)
    return values


def merge(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            if k in _OPEN_FIELDS and isinstance(v, dict):
                target = out.setdefault(k, {})
                for sub, sv in v.items():
                    if isinstance(sv, dict) and isinstance(target.get(sub), dict):
                        target[sub] = {**target[sub], **sv}
                    else:
                        target[sub] = sv
            else:
                out[k] = v
    return out


def make_config(values: dict | None = None, **kwargs: Any) -> Config:
    """Build and validate a :class:`Config` from raw values (strings or typed) and keyword arguments."""
    raw: dict = {}
    for src in (values or {}), kwargs:
        for k, v in src.items():
            if k in _OPEN_FIELDS:
                raw = merge(raw, {k: v})
            else:
                _set(raw, k, v, from_text=isinstance(v, str))
    typed: dict = {}
    for key, value in raw.items():
        f = FIELDS[key]
        if key == "channels_last":
            typed[key] = _auto_or_bool(key, value)
            continue
        tp, allow_none = _base_type(_HINTS[key])
        v = coerce(key, value, tp, allow_none=allow_none)
        if tp is list:
            v = [coerce(f"{key}[]", x, float) if key in ("milestones", "betas") else x for x in v]
        check_range(key, v, f.metadata)
        typed[key] = v
    if "member_options" in typed:
        typed["member_options"] = _typed_member_options(typed["member_options"])
    cfg = Config(**typed)
    _check_consistency(cfg)
    object.__setattr__(cfg, "_validated", True)  # not a field: equality, to_dict and replace ignore it
    return cfg


def is_validated(cfg: Config) -> bool:
    """Whether ``cfg`` came out of :func:`make_config` (a ``Config(...)`` built by hand, or a
    ``dataclasses.replace`` of one, is validated again before a run uses it)."""
    return getattr(cfg, "_validated", False)


def _auto_or_bool(key: str, value: Any) -> str | bool:
    """``auto``, or a bool (``true``/``false`` and their spellings)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        return coerce(key, value, bool)
    except ConfigError:
        raise ConfigError(f"bad value for {key}: {value!r} (allowed: auto, true, false)") from None


def _typed_member_options(raw: dict) -> dict:
    """``{member: {key: value}}`` typed and range-checked like the run-wide key of the same name."""
    out: dict = {}
    for name, opts in raw.items():
        if not isinstance(opts, dict):
            raise ConfigError(f"bad value for member.{name}: expected a table of optimizer keys")
        for key, value in opts.items():
            if key not in MEMBER_KEYS:
                raise ConfigError(f"unknown key member.{name}.{key}; allowed: "
                                  f"{', '.join(f'member.{name}.{k}' for k in MEMBER_KEYS)}")
            tp, allow_none = _base_type(_HINTS[key])
            v = coerce(f"member.{name}.{key}", value, tp, allow_none=allow_none)
            if tp is list:
                v = [coerce(f"member.{name}.{key}[]", x, float) for x in v]
            check_range(f"member.{name}.{key}", v, FIELDS[key].metadata)
            out.setdefault(name, {})[key] = v
    return out


def _check_consistency(cfg: Config) -> None:
    if not cfg.method_names():
        raise ConfigError("method cannot be empty; e.g. method=ce")
    for m in cfg.milestones:
        if not 0 < m < cfg.epochs:
            raise ConfigError(f"bad value for milestones: {m} (each must lie between 0 and epochs={cfg.epochs})")
    if len(cfg.betas) != 2 or not all(0 <= b < 1 for b in cfg.betas):
        raise ConfigError(f"bad value for betas: {cfg.betas} (two numbers in [0, 1))")
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"bad value for warmup_epochs: {cfg.warmup_epochs} (at most epochs={cfg.epochs})")
    if not (cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:")):
        raise ConfigError(f"bad value for device: {cfg.device!r} (allowed: auto, cpu, cuda, cuda:N)")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """File (optional) then ``key=value`` overrides, validated."""
    file_values = read_config_file(path) if path else {}
    return make_config(merge(file_values, parse_overrides(overrides or [])))


# what a key a saved configuration lacks was in the runs made before the key existed
_SAVED_BEFORE = {"precision": "fp32"}


def config_from_dict(d: dict) -> Config:
    """Rebuild a config saved with :meth:`Config.to_dict` (run directories, checkpoints)."""
    known = {k: v for k, v in d.items() if k in FIELDS}
    known.update({k: v for k, v in _SAVED_BEFORE.items() if k not in known})
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ConfigError(f"saved configuration has unknown keys {unknown}: written by another resprout version?")
    return make_config(known)


def describe_keys() -> list[tuple[str, str, str]]:
    """(key, default, help) of every key, for ``--help`` and the README."""
    rows = []
    for name in KEYS:
        f = FIELDS[name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((name, repr(default), f.metadata["help"]))
    return rows
