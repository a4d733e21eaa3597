"""The op registry. Ops register from Python: the modules of this package, or third-party packages
through the ``specc.ops`` entry-point group (imported the first time the registry is read); a spec
can only name ops that are registered."""

from __future__ import annotations

from typing import TypeVar

from specc.ops.base import Op
from specc.registry import Registry

OPS: Registry[type[Op]] = Registry("op", entry_point_group="specc.ops")

T = TypeVar("T", bound=type[Op])


def register(cls: T) -> T:
    """Class decorator: add an op under ``cls.op_name``. Names are unique."""
    name = cls.op_name
    if not name or not name.isidentifier():
        raise ValueError(f"op {cls.__name__} needs an identifier op_name, got {name!r}")
    OPS.register(name, cls)
    return cls


def get_op(name: str) -> type[Op] | None:
    return OPS.get(name)


def load_plugins() -> list[str]:
    """Import the installed ``specc.ops`` entry points now (reading :data:`OPS` does it too)."""
    return OPS.load_plugins()
