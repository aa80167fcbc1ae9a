"""The method registry: ``method=ke+ls`` names methods, this builds them with their options.

Built-in methods are lazy entries: their modules are imported when a run names them, so listing the methods (``resprout
--help``) imports no torch. Register your own with :func:`register_method`, or pass the class (or an instance) to
``resprout.train(methods=[...])`` without registering it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from resprout.config import Config
from resprout.engine.method import Method
from resprout.errors import ConfigError
from resprout.options import fill_options
from resprout.registry import Registry
from resprout.surgery.registry import SURGERY

METHODS: Registry[type[Method]] = Registry("method", note="combine with '+', e.g. ke+ls")
_ALIASES = {"ls": ("label_smoothing", "label-smoothing")}
for _name, _target, _what in [
    ("ce", "classification:CrossEntropy", "plain cross-entropy: the baseline, and the default task loss"),
    ("ls", "classification:LabelSmoothing", "cross-entropy against smoothed labels (Szegedy et al., 2016)"),
    ("cskd", "distill:ClassWiseSelfKD", "class-wise self-knowledge distillation between same-class pairs "
                                        "(Yun et al., CVPR 2020)"),
    ("ke", "evolution:KnowledgeEvolution", "Knowledge Evolution: split into fit and reset hypotheses, re-initialize "
                                           "the reset one every generation (Taha et al., CVPR 2021)"),
    ("triplet", "metric:TripletMetric", "metric learning with the semi-hard triplet loss (KE paper, Sec. 4.2)"),
    # the distillation family (KTAN paper, Table I; Born-Again; deep mutual learning)
    ("kd", "distill:KnowledgeDistillation", "knowledge distillation from frozen teachers' softened outputs "
                                            "(Hinton et al., 2015)"),
    ("fitnet", "hints:FitNet", "FitNet: a regressor from the student's feature map to the teacher's hint "
                               "(Romero et al., ICLR 2015)"),
    ("at", "hints:AttentionTransfer", "attention transfer: match the teacher's spatial attention maps "
                                      "(Zagoruyko and Komodakis, ICLR 2017)"),
    ("dln", "ktan:DLN", "feature-map regression to a frozen teacher with a pre-trained regressor "
                        "(the KTAN paper's DLN baseline)"),
    ("ktan", "ktan:KTAN", "Knowledge Transfer Adversarial Network: a discriminator on feature maps "
                          "(Liu et al., 2018)"),
    ("ban", "born_again:BornAgain", "Born-Again Networks: each generation a fresh network taught by the previous "
                                    "one (Furlanello et al., ICML 2018)"),
    ("dml", "mutual:MutualLearning", "deep mutual learning: peers trained together, each matching the others "
                                     "(Zhang et al., CVPR 2018)"),
    # Filter Grafting / Grafting+
    ("graft", "grafting:Grafting", "Filter Grafting: peers graft each other's weights by layer entropy "
                                   "(Meng et al., CVPR 2020; Cheng et al., 2021)"),
    # Neural Rejuvenation and Network Slimming
    ("nr", "rejuvenation:NeuralRejuvenation", "Neural Rejuvenation: dead neurons found by BN scales are rebuilt "
                                              "and trained as mixed neurons (Qiao et al., CVPR 2019)"),
    ("slimming", "slimming:NetworkSlimming", "Network Slimming: L1 on BN scales, prune to a cost target, fine-tune "
                                             "(Liu et al., ICCV 2017)"),
    # the remaining baselines of the papers' tables
    ("repr", "repr:RePr", "RePr: drop the most redundant filters, train the rest, restore them orthogonally "
                          "(Prakash et al., CVPR 2019)"),
    ("dsd", "dsd:DenseSparseDense", "Dense-Sparse-Dense: train dense, prune by magnitude and train sparse, "
                                    "train dense again (Han et al., ICLR 2017)"),
    ("adacos", "adacos:AdaCos", "AdaCos: cross-entropy on cosine logits with an adaptive scale "
                                "(Zhang et al., CVPR 2019)"),
]:
    METHODS.add(_name, f"resprout.methods.{_target}", _what, aliases=_ALIASES.get(_name, ()))

# the heads some methods give their networks in setup, as surgery: recorded in the weights, so that a network rebuilt
# from a run (a teacher, an exported profile) gets its head again
SURGERY.add("cosine_classifier", "resprout.methods.adacos:cosine_classifier_op",
            "replace the class layer by AdaCos's cosine classifier (method=adacos)")
SURGERY.add("embedding_head", "resprout.methods.metric:embedding_head_op",
            "replace the class layer by a normalized embedding layer (method=triplet)")


def register_method(cls: type[Method], *, replace: bool = False) -> type[Method]:
    """Class decorator: make ``cls`` available as ``method=<cls.name>`` (its description: the docstring's first
    sentence). A name taken by another class is refused unless ``replace=True``."""
    METHODS.add(cls.name, cls, replace=replace)
    return cls


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name`` (a built-in is imported on first use)."""
    return METHODS.get(name)


def available_methods() -> list[str]:
    return METHODS.names()


def canonical_name(name: str) -> str:
    return METHODS.canonical(name)


def _class_of(obj: object) -> type[Method]:
    if isinstance(obj, Method):
        return type(obj)
    if isinstance(obj, type) and issubclass(obj, Method):
        return obj
    raise ConfigError(f"methods=[...] holds {obj!r}: give Method subclasses or instances (or method names)")


def method_objects(objects: Sequence, names: Sequence[str] | None = None
                   ) -> dict[str, Method | type[Method]]:
    """``{name: object}`` of Method classes or instances given in the Python API (``methods=[...]``), each under
    its class's ``name``. Refuses anything else, two objects of one name, and (with ``names``, the run's methods) an
    object the run does not name."""
    given: dict[str, Method | type[Method]] = {}
    for obj in objects:
        name = canonical_name(_class_of(obj).name)
        if name in given:
            raise ConfigError(f"methods=[...] gives two methods named {name!r}")
        if names is not None and name not in names:
            raise ConfigError(f"methods=[...] gives {_class_of(obj).__name__} (method {name!r}), which "
                              f"method={'+'.join(names)} does not name")
        given[name] = obj
    return given


def method_list(methods: Sequence | None, keys: dict) -> list:
    """The Method objects of ``resprout.train(methods=[...])`` (names, classes, instances); sets the ``method`` key
    to the list's names unless it is given, in which case it must name them all."""
    if methods is None:
        return []
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence):
        raise ConfigError(f"methods must be a list of method names, Method classes or instances; got "
                          f"{type(methods).__name__} (one name or a composition goes to method=, e.g. method='ke+ls')")
    objects = [m for m in methods if not isinstance(m, str)]
    names = [m if isinstance(m, str) else _class_of(m).name for m in methods]
    if "method" not in keys:
        keys["method"] = "+".join(names)
    else:
        named = {canonical_name(n) for n in str(keys["method"]).split("+")}
        extra = [n for n in names if canonical_name(n) not in named]
        if extra:
            raise ConfigError(f"methods=[...] names {', '.join(extra)}, which method={keys['method']} does not; "
                              f"give the methods one way")
    method_objects(objects)  # refuses two of one name
    return objects


def class_path(obj: Method | type[Method]) -> str:
    cls = _class_of(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


def recorded_objects(objects: Sequence) -> dict[str, str]:
    """``{name: "module:Class"}`` of the given method objects that ``method=<name>`` alone would not rebuild (what
    a run directory records): a class that is not the one registered under its name. An instance of the
    registered class is rebuilt: its options are in the configuration."""
    return {name: class_path(obj) for name, obj in method_objects(objects).items()
            if name not in METHODS or METHODS.get(name) is not _class_of(obj)}


def check_method_objects(where: object, recorded: dict[str, str], names: Sequence[str], objects: Sequence
                         ) -> None:
    """Refuse (one line) to continue the run at ``where``, made with the method objects ``recorded``
    (:func:`recorded_objects`) and named ``names``, unless ``objects`` holds the same classes again and any other
    object is the registered class of its name."""
    given = method_objects(objects, [canonical_name(n) for n in names])
    missing = [n for n in recorded if n not in given]
    if missing:
        raise ConfigError(f"{where} was trained with method {', '.join(missing)} given as an object "
                          f"({', '.join(recorded[n] for n in missing)}); pass it again: "
                          f"resprout.resume(dir, methods=[...]) (or train(..., methods=[...]))")
    for name, obj in given.items():
        if name in recorded and recorded[name] != class_path(obj):
            raise ConfigError(f"{where} was trained with {recorded[name]} as method {name!r}, not {class_path(obj)}")
        if name not in recorded and recorded_objects([obj]):
            raise ConfigError(f"{where} was trained with the registered method {name!r}, not {class_path(obj)}")


def _instance(obj: Method | type[Method], options: dict, name: str) -> Method:
    if not isinstance(obj, Method):
        return obj(**options)
    if options and fill_options(type(obj).Options, options, prefix=name) != obj.options:
        raise ConfigError(f"options {name}.* {options} differ from those of the {type(obj).__name__} object passed "
                          f"in methods=[...] ({dataclasses.asdict(obj.options)}); give them one way")
    return obj


def build_methods(config: Config, objects: Sequence = ()) -> list[Method]:
    """The methods of ``config.method``, with their options validated; cross-entropy added if no task loss.

    ``objects``: Method classes or instances for some of the names (``resprout.train(methods=[...])``), used
    instead of the registry; an instance is used as it is (options given for it too must equal its own)."""
    names = [canonical_name(n) for n in config.method_names()]
    given = method_objects(objects, names)
    classes = {n: given[n] if n in given else get_method(n) for n in names}
    if len(set(names)) != len(names):
        raise ConfigError(f"method {config.method!r} names a method twice")
    options = {canonical_name(k): v for k, v in config.method_options.items()}
    for family in options:
        if family not in names:
            if family in METHODS:
                raise ConfigError(f"options {family}.* given but method {family!r} is not used "
                                  f"(method={config.method})")
            raise ConfigError(f"unknown key prefix {family!r}: not a method, 'model' or 'data'")
    methods = [_instance(classes[n], options.get(n, {}), n) for n in names]
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
    return {m.name: dataclasses.asdict(m.options) for m in methods if dataclasses.fields(m.options)}
