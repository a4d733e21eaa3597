"""The closed op registry. Ops register from Python (here, or via the ``specc.ops`` entry-point
group for third-party packages); a spec can only name ops that are registered."""

from __future__ import annotations

from typing import TypeVar

from specc.ops.base import Op

OPS: dict[str, type[Op]] = {}

T = TypeVar("T", bound=type[Op])


def register(cls: T) -> T:
    """Class decorator: add an op under ``cls.op_name``. Names are unique."""
    name = cls.op_name
    if not name or not name.isidentifier():
        raise ValueError(f"op {cls.__name__} needs an identifier op_name, got {name!r}")
    if name in OPS and OPS[name] is not cls:
        raise ValueError(f"op name {name!r} registered twice ({OPS[name].__name__}, {cls.__name__})")
    OPS[name] = cls
    return cls


def get_op(name: str) -> type[Op] | None:
    return OPS.get(name)


def load_plugins() -> list[str]:
    """Register ops from installed packages' ``specc.ops`` entry points (called once by the CLI)."""
    from importlib.metadata import entry_points

    loaded = []
    for ep in entry_points(group="specc.ops"):
        ep.load()
        loaded.append(ep.name)
    return loaded
