"""The data-source registry behind :func:`resprout.data.load_source`: a name -> the function that loads it.

A source's options are the keyword parameters of its function; those it declares with a
:class:`~resprout.options.Spec` are checked by the shared option validator before the function runs. Names are
case-insensitive and ``_`` is ``-`` (``Fashion_MNIST`` is ``fashion-mnist``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import NamedTuple, TypeVar

from resprout.data.dataset import Dataset
from resprout.options import Spec
from resprout.registry import Registry, first_sentence

SourceFn = Callable[..., Dataset]
_F = TypeVar("_F", bound=SourceFn)
KEYWORD = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class Source(NamedTuple):
    fn: SourceFn
    options: dict[str, Spec]  # the declared options (a subset of the function's keyword parameters)


def canonical(name: str) -> str:
    return str(name).strip().lower().replace("_", "-")


SOURCES: Registry[Source] = Registry("data source", normalize=canonical)


def register_source(name: str, *, options: Mapping[str, Spec] | None = None, replace: bool = False,
                    description: str | None = None) -> Callable[[_F], _F]:
    """Register a data source under ``name`` (decorator).

    The function returns a :class:`Dataset` (or a :class:`~resprout.data.files.FileDataset` of image files, or a
    :class:`~resprout.data.reid.ReidDataset` of a re-identification set). If it has a parameter called ``path``, it
    receives the data path (``None`` when the user gave none); its other keyword parameters are the source's
    options, and :func:`load_source` refuses options it does not declare (unless it takes ``**options``).
    ``options`` may give a :class:`~resprout.options.Spec` (type, choices, range) for some of them;
    :func:`load_source` checks those values (strictly: no parsing from strings) before calling the function.
    ``description`` (default: the function's docstring) is the line ``resprout keys`` shows::

        @register_source("my-data", options={"size": Spec(int, min=1)})
        def my_data(path, *, size=32):
            ...
    """
    key = canonical(name)
    if not key:
        raise ValueError("a data source needs a non-empty name")
    specs = dict(options or {})

    def deco(fn: _F) -> _F:
        if key in SOURCES and not replace and SOURCES.get(key).fn is not fn:
            raise ValueError(f"data source {key!r} is already registered (pass replace=True to replace it)")
        params = inspect.signature(fn).parameters
        for opt in specs:
            if opt == "path" or opt not in params or params[opt].kind not in KEYWORD:
                raise ValueError(f"data source {key!r} declares option {opt!r}, which is not a keyword parameter")
        what = description if description is not None else first_sentence(fn.__doc__)
        SOURCES.add(key, Source(fn, specs), what, replace=True)
        return fn

    return deco


def available_sources() -> list[str]:
    """The names of the registered data sources, sorted."""
    return SOURCES.names()
