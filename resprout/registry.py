"""One kind of registry for everything a user picks by name: methods, models, data sources, surgery operations,
loggers.

An entry is a name, a one-line description and either the object itself or a lazy ``"module:attr"`` target,
imported the first time the entry is used. Listing names and descriptions imports nothing, so ``resprout --help``
stays free of torch while naming every method. A name nobody registered is one :class:`~resprout.errors.ConfigError`
line with a did-you-mean and the allowed names::

    METHODS = Registry("method", note="combine with '+', e.g. ke+ls")
    METHODS.add("ke", "resprout.methods.evolution:KnowledgeEvolution", "Knowledge Evolution (Taha et al., 2021)")
    METHODS.get("ke")    # imports resprout.methods.evolution, returns the class
    METHODS.get("kee")   # ConfigError: unknown method 'kee' (did you mean ke?); allowed: ke (combine with ...)

This module imports nothing of resprout but its errors (it is the bottom
layer, below ``config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from resprout.errors import ConfigError

T = TypeVar("T")
_UNSET: Any = object()


@dataclass(frozen=True)
class _Entry:
    description: str
    obj: Any = _UNSET  # the registered object, once loaded
    target: str = ""  # "module:attr" of a lazy entry ("" for an object)


def first_sentence(text: str | None) -> str:
    """The first sentence of ``text`` (a docstring) on one line, without reST's double backquotes."""
    paragraph = " ".join(inspect.cleandoc(text or "").split("\n\n")[0].split()).replace("``", "")
    return re.split(r"(?<=[^.][^.]\.)\s(?=[A-Z])", paragraph, maxsplit=1)[0]  # not after "e.g."


class Registry(Generic[T]):
    """Entries of one ``kind`` ("method", "model", ...) by name.

    ``normalize`` maps what users type to the stored name (``"CIFAR_10"`` -> ``"cifar-10"``); ``also_allowed`` are
    forms the owner accepts besides the registered names (``tv:<name>``), listed in the error of a miss; ``note``
    ends that error (how names combine, say).
    """

    def __init__(self, kind: str, *, normalize: Callable[[str], str] | None = None,
                 also_allowed: Sequence[str] = (), note: str = "") -> None:
        self.kind = kind
        self._normalize = normalize or str.strip
        self.also_allowed = tuple(also_allowed)
        self.note = note
        self._entries: dict[str, _Entry] = {}
        self._aliases: dict[str, str] = {}

    # -- registering ------------------------------------------------------------------------------------------------
    def add(self, name: str, obj: T | str, description: str | None = None, *, aliases: Sequence[str] = (),
            replace: bool = False) -> T | str:
        """Register ``obj`` (or, given a ``"module:attr"`` string, a lazy entry) under ``name``; returns ``obj``.

        ``description`` is one line saying what the entry is (default: the first sentence of ``obj``'s docstring;
        a lazy entry must give it). A taken name is refused unless ``replace=True`` or it is the same object again
        (a lazy entry's object included).
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"a {self.kind} needs a non-empty name; got {name!r}")
        key = self.canonical(name)
        lazy = isinstance(obj, str)
        if lazy and (obj.count(":") != 1 or not all(obj.partition(":")[::2])):
            raise ConfigError(f"lazy {self.kind} {key!r} must name 'module:attribute'; got {obj!r}")
        if description is None:
            if lazy:
                raise ConfigError(f"lazy {self.kind} {key!r} needs a description (it is listed without importing it)")
            description = first_sentence(getattr(obj, "__doc__", None))
        description = " ".join(description.split())
        entry = _Entry(description, target=obj) if lazy else _Entry(description, obj=obj)
        old = self._entries.get(key)
        if old is not None and not replace:
            if lazy or (old.obj if old.obj is not _UNSET else self.get(key)) is not obj:
                raise ConfigError(f"{self.kind} {key!r} is already registered (pass replace=True to replace it)")
            entry = _Entry(old.description, obj=obj)  # the same object again (a lazy entry's own object)
        self._entries[key] = entry
        for alias in aliases:
            self._aliases[self._normalize(alias)] = key
        return obj

    def remove(self, name: str) -> None:
        """Forget ``name`` and its aliases (a test's own entry, say)."""
        key = self.canonical(name)
        self._entries.pop(key, None)
        for alias in [a for a, k in self._aliases.items() if k == key]:
            del self._aliases[alias]

    def copy(self) -> Registry[T]:
        """An independent registry with the same entries."""
        new = Registry(self.kind, normalize=self._normalize, also_allowed=self.also_allowed, note=self.note)
        new._entries, new._aliases = dict(self._entries), dict(self._aliases)
        return new

    @contextmanager
    def scoped(self) -> Iterator[Registry[T]]:
        """Entries added or removed inside the ``with`` block are undone at its end."""
        entries, aliases = dict(self._entries), dict(self._aliases)
        try:
            yield self
        finally:
            self._entries, self._aliases = entries, aliases

    # -- reading ----------------------------------------------------------------------------------------------------
    def canonical(self, name: str) -> str:
        """The registered name ``name`` stands for (normalized, aliases resolved); it need not be registered."""
        key = self._normalize(str(name))
        return self._aliases.get(key, key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.canonical(name) in self._entries

    def names(self) -> list[str]:
        """The registered names, sorted (aliases not included)."""
        return sorted(self._entries)

    def describe(self) -> list[tuple[str, str]]:
        """(name, one-line description) of every entry, sorted by name; nothing is imported."""
        return [(k, self._entries[k].description) for k in self.names()]

    def description(self, name: str) -> str:
        return self._entry(name)[1].description

    def target(self, name: str) -> str | None:
        """The ``"module:attr"`` of a lazy entry not loaded yet, else None."""
        entry = self._entry(name)[1]
        return None if entry.obj is not _UNSET else entry.target

    def get(self, name: str) -> T:
        """The object registered as ``name``; a lazy entry is imported now. A miss is :meth:`unknown`."""
        key, entry = self._entry(name)
        if entry.obj is _UNSET:
            module, _, attr = entry.target.partition(":")
            entry = dataclasses.replace(entry, obj=getattr(importlib.import_module(module), attr))
            self._entries[key] = entry
        return entry.obj

    def suggestion(self, name: object) -> str | None:
        """The registered name or alias closest to ``name``, if one is close."""
        close = difflib.get_close_matches(self._normalize(str(name)), [*self._entries, *self._aliases], n=1)
        return close[0] if close else None

    def unknown(self, name: object) -> ConfigError:
        """The one-line error for a name nobody registered: did-you-mean, then what is allowed."""
        close = self.suggestion(name)
        hint = f" (did you mean {close}?)" if close else ""
        allowed = ", ".join([*self.names(), *self.also_allowed]) or "none"
        note = f" ({self.note})" if self.note else ""
        return ConfigError(f"unknown {self.kind} {name!r}{hint}; allowed: {allowed}{note}")

    def _entry(self, name: str) -> tuple[str, _Entry]:
        key = self.canonical(name) if isinstance(name, str) else None
        if key not in self._entries:
            raise self.unknown(name)
        return key, self._entries[key]


def lazy_exports(module_name: str) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` (PEP 562) for a package whose convenience names load on first access.

    The names are those of the ``from x import a, b`` lines in the package's ``if TYPE_CHECKING:`` block: editors
    and type checkers follow those lines to the definitions, and at run time a name is imported from its module
    the first time it is read, so importing the package stays light. One list, read from the package's source.
    """
    table: dict[str, tuple[str, str]] = {}  # exported name -> (module, name there)

    def exports() -> dict[str, tuple[str, str]]:
        if not table:
            import ast

            with open(sys.modules[module_name].__file__, encoding="utf-8") as fh:
                tree = ast.parse(fh.read())
            for node in tree.body:
                if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                    for imp in node.body:
                        if isinstance(imp, ast.ImportFrom) and imp.level == 0:
                            table.update({a.asname or a.name: (imp.module, a.name) for a in imp.names})
        return table

    def __getattr__(name: str) -> Any:
        if name not in exports():
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        module, attr = table[name]
        return getattr(importlib.import_module(module), attr)

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[module_name])) | set(exports()))

    return __getattr__, __dir__
