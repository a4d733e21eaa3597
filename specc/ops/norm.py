"""Normalisation chosen by one word: ``batch | layer | group | group(N) | instance | rms | none``,
with the axes of ``layer`` and ``rms`` as an optional suffix: ``layer(channels)``, ``layer(last)``,
``layer(sample)`` (same for ``rms``).

How the word maps to a torch module depends on the input rank (one sample, batch implicit):

================  ==================  =====================  =======================
kind              ``(F,)`` features   ``(C, L)`` / ``(T, D)``  ``(C, H, W)``
================  ==================  =====================  =======================
batch             BatchNorm1d(F)      BatchNorm1d(C)         BatchNorm2d(C)
layer             LayerNorm(F)        LayerNorm(L) (last)    LayerNorm([C,H,W]) (sample)
layer(last)       LayerNorm(F)        LayerNorm(L)           LayerNorm(W)
layer(channels)   LayerNorm(F)        over C at each step    over C at each pixel (LayerNorm2d)
layer(sample)     LayerNorm(F)        LayerNorm([C, L])      LayerNorm([C,H,W])
rms, rms(...)     as layer, with RMSNorm (no bias)
group(N)          GroupNorm(N, F)     GroupNorm(N, C)        GroupNorm(N, C)
instance          —                   InstanceNorm1d(C)      InstanceNorm2d(C)
none              Identity            Identity               Identity
================  ==================  =====================  =======================

``group`` without N takes the largest divisor of C that is at most 32. For sequences ``(T, D)``
use ``layer`` or ``rms``: they normalise the last (feature) axis. On a ``(C, H, W)`` map a plain
``layer``/``rms`` normalises the whole sample (``LayerNorm([C, H, W])``: ``2·C·H·W`` parameters,
tied to one resolution); ``specc check`` prints a note asking for an explicit axis there.
ConvNeXt's ``LayerNorm2d`` is ``layer(channels)``: two ``(C,)`` tensors, any resolution.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from specc.ops.base import (
    Dim,
    InferContext,
    Inferred,
    MemoryContext,
    Op,
    OpMemory,
    ShapeMismatch,
    TensorType,
    expect_int,
)
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn

NORM_RE = re.compile(
    r"^(batch|instance|none|group(?:\((\d+)\))?|(layer|rms)(?:\((channels|last|sample)\))?)$"
)
NORM_WORDS = "batch | layer | group | group(N) | instance | rms | none; layer/rms(channels|last|sample)"
AXES_NOTE = (
    "normalises each whole sample (LayerNorm([C, H, W]): parameters for every pixel, one resolution "
    "only); write {kind}(channels) for a per-pixel norm over channels (ConvNeXt's LayerNorm2d) or "
    "{kind}(sample) to keep this"
)


def check_norm_word(value: str) -> str:
    m = NORM_RE.match(value)
    if not m or (m.group(2) is not None and int(m.group(2)) < 1):
        raise ValueError(f"unknown norm {value!r}; expected one of {NORM_WORDS}")
    return value


def _groups(word: str, channels: int) -> int:
    m = NORM_RE.match(word)
    assert m
    if m.group(2):
        g = int(m.group(2))
        if channels % g:
            raise ShapeMismatch(f"group norm with {g} groups needs channels divisible by {g}, got {channels}")
        return g
    return max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)


def norm_axes(word: str, rank: int) -> str | None:
    """For ``layer``/``rms``: ``channels``, ``last`` or ``sample`` (the default follows the rank)."""
    m = NORM_RE.match(word)
    if not m or not m.group(3):
        return None
    return m.group(4) or ("sample" if rank == 3 else "last")


def norm_notes(word: str, shape: tuple[Dim, ...]) -> list[str]:
    """The note for a plain ``layer``/``rms`` on a ``(C, H, W)`` map (its axes are easy to mistake)."""
    kind = word.split("(")[0]
    if kind in ("layer", "rms") and "(" not in word and len(shape) == 3:
        return [f"norm '{word}' on {TensorType(shape)} " + AXES_NOTE.format(kind=kind)]
    return []


def normalized_shape(word: str, shape: tuple[Dim, ...]) -> tuple[int, ...]:
    """The axes holding the norm's per-feature parameters for an input of ``shape``."""
    kind = word.split("(")[0]
    if kind in ("layer", "rms"):
        over = norm_axes(word, len(shape))
        axes = {"sample": shape, "last": shape[-1:], "channels": shape[:1]}[over or "last"]
        return tuple(expect_int(d, "a normalised axis") for d in axes)
    if kind == "instance" and len(shape) < 2:
        raise ShapeMismatch("instance norm needs (C, L) or (C, H, W) input, got features only")
    if kind == "instance" and all(d == 1 for d in shape[1:]):
        raise ShapeMismatch(
            f"instance norm needs more than one spatial element per channel, got {TensorType(shape)}"
        )
    return (expect_int(shape[0], "the channel axis"),)


def norm_param_shapes(word: str, shape: tuple[Dim, ...], affine: bool = True) -> list[tuple[int, ...]]:
    if word == "none" or not affine:
        return []
    if len(shape) not in (1, 2, 3):
        raise ShapeMismatch(f"norm expects (F,), (C, L) or (C, H, W) input, got {len(shape)}-d")
    ns = normalized_shape(word, shape)
    if word.startswith("group"):
        _groups(word, ns[0])
    return [ns] if word.startswith("rms") else [ns, ns]


def norm_memory(word: str, x: TensorType, ctx: MemoryContext, affine: bool = True) -> OpMemory:
    """What a norm keeps for backward: its input and fp32 statistics (mean and 1/std) per group it
    normalises; RMS norm with a weight also keeps its normalised input, instance norm its per-sample copy of the
    affine weight (it runs as a batch norm over batch x channels)."""
    kind = word.split("(")[0]
    if kind == "none":
        return OpMemory(view=True)
    numel = ctx.numel(x.shape)
    if kind in ("layer", "rms"):
        rows = numel // max(1, math.prod(normalized_shape(word, x.shape)))
        extra = numel if kind == "rms" and affine else 0  # the normalised input, for weight's grad
        return OpMemory(
            keeps_inputs=(0,), kept=extra, kept_bytes=4 * rows * (1 if kind == "rms" else 2), amp="fp32"
        )
    if kind == "group":
        return OpMemory(keeps_inputs=(0,), kept_bytes=8 * _groups(word, ctx.nominal(x.shape[0])), amp="fp32")
    if kind == "instance":
        return OpMemory(keeps_inputs=(0,), kept_bytes=(12 if affine else 8) * ctx.nominal(x.shape[0]))
    return OpMemory(keeps_inputs=(0,))  # batch: per-channel statistics, shared by the batch


def make_norm(
    word: str,
    shape: tuple[Dim, ...],
    eps: float | None = None,
    momentum: float | None = None,
    affine: bool = True,
) -> nn.Module:
    """Build the torch module for a norm word at this input shape (see the module table)."""
    import torch.nn as nn

    kind = word.split("(")[0]
    if kind == "none":
        return nn.Identity()
    ns = normalized_shape(word, shape)
    kw: dict[str, Any] = {} if eps is None else {"eps": eps}
    if norm_axes(word, len(shape)) == "channels" and len(shape) > 1:
        from specc.nn.vision_modules import ChannelLayerNorm, ChannelRMSNorm

        if kind == "layer":
            return ChannelLayerNorm(ns[0], elementwise_affine=affine, **kw)
        return ChannelRMSNorm(ns[0], elementwise_affine=affine, **kw)
    if kind == "batch":
        cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return cls(ns[0], affine=affine, momentum=0.1 if momentum is None else momentum, **kw)
    if kind == "layer":
        return nn.LayerNorm(list(ns), elementwise_affine=affine, **kw)
    if kind == "rms":
        from specc.nn.modules import RMSNorm  # nn.RMSNorm's parameters, exportable to ONNX

        return RMSNorm(list(ns), elementwise_affine=affine, **kw)
    if kind == "group":
        return nn.GroupNorm(_groups(word, ns[0]), ns[0], affine=affine, **kw)
    cls_i = nn.InstanceNorm2d if len(shape) == 3 else nn.InstanceNorm1d
    return cls_i(ns[0], affine=affine, **kw)


@register
class Norm(Op):
    """Normalisation layer; the kind comes from ``defaults.norm`` unless given.

    ``layer`` and ``rms`` take their axes as a suffix: ``layer(channels)`` normalises over the channel
    axis of a ``(C, ...)`` map at each position (ConvNeXt's ``LayerNorm2d``, parameters ``(C,)``),
    ``layer(last)`` over the last axis (features of ``(T, D)`` tokens; ``(H, W, C)`` after a
    ``permute``), ``layer(sample)`` over the whole sample (``LayerNorm([C, H, W])``). Without a suffix:
    ``last`` for ``(F,)`` and ``(T, D)``, ``sample`` for ``(C, H, W)`` (``specc check`` prints a note
    then, as it is rarely what a CNN wants). Full table: docs/spec-language.md "Norm axes".

    Example::

        - norm                       # defaults.norm
        - norm: group(8)
        - norm: {kind: batch, eps: 0.001, momentum: 0.01}
        - norm: {kind: layer(channels), eps: 1.0e-6}    # ConvNeXt LayerNorm2d on (C, H, W)
        - norm: rms(last)
    """

    op_name = "norm"
    shorthand = "kind"
    from_defaults = {"kind": "norm", "eps": "norm_eps"}
    kind: str | None = Field(None, description=NORM_WORDS)
    eps: float | None = Field(None, gt=0, description="default: torch's for the module (1e-5)")
    momentum: float | None = Field(None, gt=0, le=1, description="batch norm running-stat momentum (0.1)")
    affine: bool = True

    @field_validator("kind")
    @classmethod
    def _word(cls, v: str | None) -> str | None:
        return None if v is None else check_norm_word(v)

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        (x,) = inputs
        word = self.kind or "batch"
        shapes = norm_param_shapes(word, x.shape, self.affine)
        macs = ctx.numel(x.shape) * (2 if word != "none" else 0)
        return Inferred([x], shapes, macs, notes=norm_notes(word, x.shape))

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        return norm_memory(self.kind or "batch", inputs[0], ctx, self.affine)

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        return make_norm(self.kind or "batch", inputs[0].shape, self.eps, self.momentum, self.affine)
