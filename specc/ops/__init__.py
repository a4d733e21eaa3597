"""Ops: each module registers its ops in :data:`specc.ops.registry.OPS` when imported."""

from specc.ops import (  # noqa: F401  (importing registers the ops)
    activation,
    attention,
    axes,
    conv,
    conv_transpose,
    drop_path,
    embedding,
    learned,
    linear,
    merge,
    misc,
    norm,
    pool,
    projection,
    recurrent,
    resample,
    sequence,
)
from specc.ops.base import InferContext, Inferred, Op, ShapeMismatch, TensorType
from specc.ops.registry import OPS, get_op, register

__all__ = ["OPS", "InferContext", "Inferred", "Op", "ShapeMismatch", "TensorType", "get_op", "register"]
