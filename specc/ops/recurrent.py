"""Recurrent layers: ``rnn``, ``gru``, ``lstm`` (batch-first, deep, bidirectional).

One sample is ``(T, F)``. ``output`` picks what the node returns: the top layer's outputs at every
step ``(T, dirs·H)``, the final hidden state of every layer and direction ``(layers·dirs, H)``
(torch's ``h_n`` with the batch axis first; for an LSTM the hidden state ``h``, not the cell
state), or both (``name:0`` and ``name:1``). An optional second input (``from: [x, state]``)
is the initial state, same shape as the final one; an LSTM takes ``h0`` and optionally ``c0``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, PositiveInt

from specc.ops.base import (
    InferContext,
    Inferred,
    MemoryContext,
    Op,
    OpMemory,
    ShapeMismatch,
    TensorType,
    expect_int,
    expect_rank,
    float_inputs,
)
from specc.ops.registry import register

if TYPE_CHECKING:
    import torch.nn as nn


class _Recurrent(Op):
    gates: ClassVar[int] = 1
    cpu_floats_per_step: ClassVar[int] = 1
    category = "recurrent"
    max_inputs = 2
    num_outputs = 2
    hidden_size: PositiveInt
    num_layers: PositiveInt = 1
    bidirectional: bool = False
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout between layers (training only)")
    bias: bool = True
    output: Literal["sequence", "state", "both"] = Field(
        "sequence", description="sequence (T, dirs·H) | state (layers·dirs, H) | both"
    )

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def infer(self, inputs: list[TensorType], ctx: InferContext) -> Inferred:
        x, *states = inputs
        expect_rank(x, (2,), "(seq, features)")
        features = expect_int(x.shape[1], "the feature axis")
        state = TensorType((self.num_layers * self.directions, self.hidden_size))
        for s in states:
            if s.shape != state.shape:
                raise ShapeMismatch(
                    f"the initial state must be {state} (layers·directions, hidden_size), got {s}"
                )
        g, h = self.gates * self.hidden_size, self.hidden_size
        shapes: list[tuple[int, ...]] = []
        macs = 0
        for layer in range(self.num_layers):
            fin = features if layer == 0 else h * self.directions
            for _ in range(self.directions):
                shapes += [(g, fin), (g, h)] + ([(g,), (g,)] if self.bias else [])
                macs += g * (fin + h)
        seq = TensorType((x.shape[0], self.directions * h))
        outputs = {"sequence": [seq], "state": [state], "both": [seq, state]}[self.output]
        return Inferred(outputs, shapes, macs * ctx.nominal(x.shape[0]))

    def memory(self, inputs: list[TensorType], outputs: list[TensorType], ctx: MemoryContext) -> OpMemory:
        # every layer, direction and step keeps gate activations and states: measured on the CPU
        # (oneDNN's LSTM workspace ~17 H per step, GRU ~7 H, RNN ~H), gates + 2 states on CUDA
        # (cuDNN's reserve space); an approximation, not derived op by op
        steps = ctx.nominal(inputs[0].shape[0])
        per_h = self.cpu_floats_per_step if ctx.device == "cpu" else self.gates + 2
        kept = steps * self.num_layers * self.directions * per_h * self.hidden_size
        work = steps * self.num_layers * self.directions * (self.gates + 2) * self.hidden_size
        return OpMemory(float_inputs(inputs), (), kept, 0, work, work, amp="low")

    def _kwargs(self, inputs: list[TensorType]) -> dict[str, Any]:
        return {
            "input_size": expect_int(inputs[0].shape[1], "the feature axis"),
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "bias": self.bias,
            "batch_first": True,
            "dropout": self.dropout,
            "bidirectional": self.bidirectional,
            "output": self.output,
        }


@register
class RNN(_Recurrent):
    """Elman RNN ``h_t = tanh(W_ih x_t + W_hh h_{t-1} + b)`` (torch ``nn.RNN``; see the module notes).

    Example::

        - rnn: {hidden_size: 256}
        - rnn: {hidden_size: 128, num_layers: 2, nonlinearity: relu, output: both, name: enc}
    """

    op_name = "rnn"
    nonlinearity: Literal["tanh", "relu"] = "tanh"

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import RNN as RNNModule

        return RNNModule(nonlinearity=self.nonlinearity, **self._kwargs(inputs))


@register
class GRU(_Recurrent):
    """Gated recurrent unit layer(s) (torch ``nn.GRU``; 3 gates; see the module notes).

    Example::

        - gru: {hidden_size: 32, num_layers: 2, dropout: 0.1, output: both, name: encoder}
        - gru: {hidden_size: 32, num_layers: 2, from: [dec_in, encoder:1]}   # initial state
    """

    op_name = "gru"
    gates = 3
    cpu_floats_per_step = 7

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import GRU as GRUModule

        return GRUModule(**self._kwargs(inputs))


@register
class LSTM(_Recurrent):
    """Long short-term memory layer(s) (torch ``nn.LSTM``; 4 gates). The ``state`` output is the
    final hidden state ``h_n``; optional inputs 2 and 3 are ``h0`` and ``c0`` (zeros when absent).

    Example::

        - lstm: {hidden_size: 256, num_layers: 2}
        - lstm: {hidden_size: 100, num_layers: 2, bidirectional: true}
    """

    op_name = "lstm"
    gates = 4
    cpu_floats_per_step = 17
    max_inputs = 3

    def build(self, inputs: list[TensorType], inferred: Inferred) -> nn.Module:
        from specc.nn.sequence_modules import LSTM as LSTMModule

        return LSTMModule(**self._kwargs(inputs))
