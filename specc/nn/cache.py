"""What a module needs to run one decoding step at a time (a key/value cache, a recurrent state).

A module that mixes positions along the sequence axis implements two methods besides ``forward``:

* ``decode_spec(num_inputs) -> DecodeSpec``: the tensors it carries from one step to the next, which
  of its inputs span the past and the new keys (a key mask), which hold positions, and whether it
  reads the past length; it raises :class:`DecodeUnsupported` when it cannot be decoded one step at a
  time (a bidirectional RNN, non-causal self-attention);
* ``forward_cached(inputs, past, offset) -> (output, present)``: ``forward`` on the new tokens only,
  given the carried tensors ``past`` and the number of tokens before them ``offset``; it returns its
  usual output(s) and the tensors to carry on (``present``, in ``decode_spec`` order).

Modules without them are position-wise (a linear, a norm over features): :mod:`specc.nn.decode`
runs their ``forward`` on the new tokens as it is, and checks numerically that this is right.
"""

from __future__ import annotations

from dataclasses import dataclass

PAST = "past_seq"
"""The symbolic axis of a growing cache (the number of tokens before the new ones)."""
TOTAL = "total_seq"
"""The symbolic axis that spans the past and the new tokens (a key mask, a present key/value)."""
BATCH = "batch"


@dataclass(frozen=True)
class CacheTensor:
    """One tensor carried between decoding steps: its kind (``key``, ``value``, ``hidden``, ``cell``)
    and its batched shape, where :data:`PAST` marks the axis that grows by the new tokens."""

    kind: str
    shape: tuple[int | str, ...]

    @property
    def past_axis(self) -> int | None:
        return self.shape.index(PAST) if PAST in self.shape else None


@dataclass(frozen=True)
class DecodeSpec:
    """How a module takes part in step-by-step decoding (see the module notes)."""

    tensors: tuple[CacheTensor, ...] = ()
    key_inputs: tuple[int, ...] = ()
    """input slots that span the past and the new keys (key masks ``(B, past + T)``)"""
    position_inputs: tuple[int, ...] = ()
    """input slots holding the absolute positions of the new tokens"""
    uses_offset: bool = False
    """reads the past length (position tables, default rotary positions)"""
    max_positions: int | None = None
    """the longest sequence it can take (a position table's length)"""


class DecodeUnsupported(Exception):
    """A module cannot be decoded one step at a time; the message says why, in plain words."""
