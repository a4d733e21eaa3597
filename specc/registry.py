"""One registry type for everything a name in a spec, a config or a command line selects: ops, data
sources, export variants, init kinds, losses and metrics.

A :class:`Registry` is a read-only mapping from names to entries (classes or functions) filled by
:meth:`Registry.register` at import time. Names are unique: registering a second, different entry
under a taken name is an error, so nothing is silently replaced. A registry may name an entry-point
group (``specc.ops``); the entry points of installed packages are then imported the first time the
registry is read, and register their entries themselves. Nothing is ever imported by a name taken
from a spec or a file: a spec can only select what Python code registered.

This module imports nothing heavy (``specc check`` reads the op registry before torch is imported).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from specc.errors import did_you_mean

T = TypeVar("T")
E = TypeVar("E")

log = logging.getLogger(__name__)


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (``Registry[type[Op]]``, ``Registry[LossFactory]``, ...).

    Args:
        kind: What an entry is, for messages (``"op"``, ``"data source"``).
        entry_point_group: An entry-point group whose installed entry points are imported on the
            first read (third-party plugins); None for closed registries.
    """

    def __init__(self, kind: str, entry_point_group: str | None = None) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, T] = {}
        self._plugins_loaded = entry_point_group is None
        self.plugins: list[str] = []
        """Names of the entry points imported so far (``specc ops`` lists them)."""

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a name already taken by another entry is an error."""
        if not name:
            raise ValueError(f"a {self.kind} needs a non-empty name")
        old = self._entries.get(name)
        if old is not None and old is not entry:
            raise ValueError(f"{self.kind} name {name!r} registered twice ({_label(old)}, {_label(entry)})")
        self._entries[name] = entry
        return entry

    def add(self, name: str) -> Callable[[E], E]:
        """Decorator form of :meth:`register`: ``@LOSSES.add("mse")``."""

        def deco(entry: E) -> E:
            self.register(name, entry)  # type: ignore[arg-type]  # E is T at every use site
            return entry

        return deco

    def unknown(self, name: str) -> str:
        """The message for a name that is not registered: did-you-mean and the known names."""
        return (
            f"unknown {self.kind} '{name}'{did_you_mean(name, list(self))}; known: {', '.join(sorted(self))}"
        )

    def load_plugins(self) -> list[str]:
        """Import the entry points of :attr:`entry_point_group` (once); returns their names.

        A plugin that fails to import is skipped with a warning naming it, so one broken package
        does not stop every command; specs naming its entries then get the usual unknown-name error.
        """
        if self._plugins_loaded:
            return self.plugins
        self._plugins_loaded = True  # before importing: a plugin's own register() must not recurse here
        from importlib.metadata import entry_points  # noqa: PLC0415 - when a registry is first read: start-up time

        assert self.entry_point_group is not None
        for ep in entry_points(group=self.entry_point_group):
            try:
                ep.load()
            except Exception as e:  # a third-party import can raise anything
                warnings.warn(
                    f"specc: skipping {self.entry_point_group} entry point '{ep.name}' ({ep.value}): "
                    f"{type(e).__name__}: {e}",
                    stacklevel=2,
                )
                continue
            self.plugins.append(ep.name)
            log.debug("loaded %s plugin %s (%s)", self.kind, ep.name, ep.value)
        return self.plugins

    def __getitem__(self, name: str) -> T:
        self.load_plugins()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self.load_plugins()
        return iter(self._entries)

    def __len__(self) -> int:
        self.load_plugins()
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._entries)})"


def _label(entry: object) -> str:
    return getattr(entry, "__qualname__", None) or repr(entry)
