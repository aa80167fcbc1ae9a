"""resprout: Knowledge Evolution, Neural Rejuvenation, Filter Grafting and KTAN for small datasets.

The Python API in one screen::

    import resprout
    result = resprout.train(data="digits", model="cnn", epochs=3)        # a stored, resumable run
    resprout.resume(result["run_dir"])                                   # continue after a crash
    cfg = resprout.make_config(data="fashion-mnist", per_class=100, method="ls", epochs=30)
    resprout.train(train=my_dataset, test=my_test_set, module=MyNet, method="ke", ke={"split_rate": 0.5})

Layers, each importing only those below it (``tests/test_layers.py`` checks it): ``cli``, ``run``, ``compare`` >
``analysis`` > ``methods`` > ``engine`` > ``surgery`` > ``models``, ``data`` > ``config``, ``options``, ``registry``,
``errors``, ``seeding``.
"""

__version__ = "0.1.0"

from resprout.config import Config, load_config, make_config  # noqa: E402
from resprout.errors import ResproutError  # noqa: E402


# ``resprout.train`` and ``resprout.resume`` are the functions of :mod:`resprout.run` themselves (so ``help()`` shows
# their real signature and docstring), loaded on first access: ``import resprout`` (and the CLI's --help) stays free
# of torch.
_LAZY = {"train": "resprout.run", "resume": "resprout.run", "open_run": "resprout.run"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'resprout' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = ["Config", "ResproutError", "load_config", "make_config", "open_run", "resume", "train", "__version__"]
