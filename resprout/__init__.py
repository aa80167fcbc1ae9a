"""resprout: Knowledge Evolution, Neural Rejuvenation, Filter Grafting and KTAN for small datasets.

The Python API in one screen::

    import resprout
    result = resprout.train(data="digits", model="cnn", epochs=3)        # a stored, resumable run
    resprout.resume(result["run_dir"])                                   # continue after a crash
    cfg = resprout.make_config(data="fashion-mnist", per_class=100, method="ls", epochs=30)

Layers, each importing only those below it: ``cli`` / ``run`` > ``methods``, ``analysis`` > ``engine`` >
``surgery`` > ``models``, ``data`` > ``config``, ``errors``, ``seeding``.
"""

__version__ = "0.1.0"

from resprout.config import Config, load_config, make_config  # noqa: E402
from resprout.errors import ResproutError  # noqa: E402


def train(*args, **kwargs):
    """See :func:`resprout.run.train`."""
    from resprout.run import train as _train

    return _train(*args, **kwargs)


def resume(*args, **kwargs):
    """See :func:`resprout.run.resume`."""
    from resprout.run import resume as _resume

    return _resume(*args, **kwargs)


__all__ = ["Config", "ResproutError", "load_config", "make_config", "resume", "train", "__version__"]
