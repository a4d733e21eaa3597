"""Ops: every module of this package is imported here, and each registers its ops in
:data:`specc.ops.registry.OPS` with ``@register``; adding an op is adding a module (no list to edit).
Third-party packages register theirs through the ``specc.ops`` entry-point group."""

import importlib
import pkgutil

from specc.ops.base import InferContext, Inferred, Op, ShapeMismatch, TensorType
from specc.ops.registry import OPS, get_op, register

# this package's own modules only (never a name from a spec or a file), in file-name order
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["OPS", "InferContext", "Inferred", "Op", "ShapeMismatch", "TensorType", "get_op", "register"]
