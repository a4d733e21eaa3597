"""Step-by-step decoding of a compiled language model: a key/value cache and recurrent states.

:class:`DecodeModel` shares every module (and so every parameter) of a
:class:`~specc.nn.CompiledModel` and runs the same plan on the *new* tokens only. Each module that
mixes positions (see :mod:`specc.nn.cache`) takes what it carried from the previous step — causal
self-attention its keys and values ``past_key.N``/``past_value.N`` ``(B, kv_heads, past, d)``, a
recurrent layer its final states ``past_hidden.N`` (and ``past_cell.N``) ``(B, layers, H)`` — and
returns the updated ones (``present_*.N``). Positions follow from the past length: the causal mask
and the sliding window put query ``t`` at ``past + t``, default rotary positions and position tables
start at ``past``. A key mask input spans the past and the new tokens (``(B, past + T)``, as Hugging
Face's ``attention_mask`` in generation). A past of length 0 is the plain model on the prompt.

:func:`check_decoding` proves, in torch, that decoding a sequence in steps gives what the uncached
model gives on the whole sequence, and names the first node that does not (an op that mixes positions
without a cache, such as a convolution over the sequence axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from specc.errors import BuildError
from specc.graph import Graph, Node
from specc.nn.cache import BATCH, PAST, TOTAL, CacheTensor, DecodeSpec, DecodeUnsupported
from specc.nn.compiled import CompiledModel, Step


@dataclass(frozen=True)
class Tensor:
    """Name, batched shape (ints and symbols) and dtype of one input or output of a decode model."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class CacheSlot:
    """One carried tensor: node ``node`` carries it as ``past_<kind>.<index>`` → ``present_<kind>.<index>``."""

    node: str
    index: int
    tensor: CacheTensor
    dtype: str = "float32"

    @property
    def input(self) -> str:
        return f"past_{self.tensor.kind}.{self.index}"

    @property
    def output(self) -> str:
        return f"present_{self.tensor.kind}.{self.index}"

    @property
    def past_shape(self) -> tuple[int | str, ...]:
        return self.tensor.shape

    @property
    def present_shape(self) -> tuple[int | str, ...]:
        return tuple(TOTAL if d == PAST else d for d in self.tensor.shape)


@dataclass(frozen=True)
class Roles:
    """What each input and output of a language model is (found from the graph's structure).

    A causal LM takes token ids ``tokens`` (int64, read by an embedding), optionally a bool key mask
    and int64 positions; a seq2seq model takes source ids, decoder input ids and optionally a bool
    source mask. ``logits`` is the output of shape ``(seq, vocab)`` on the (decoder) token axis.
    """

    kind: str
    tokens: str
    logits: str
    vocab_size: int
    seq: str
    attention_mask: str | None = None
    positions: str | None = None
    source: str | None = None
    source_mask: str | None = None


def find_roles(graph: Graph) -> Roles:
    """The roles of a language model's inputs and output; :class:`BuildError` says why there are none."""
    ints = [n for n, t in graph.inputs.items() if t.dtype == "int64"]
    tokens = [n for n in ints if graph.index_bound(n) is not None]
    bools = [n for n, t in graph.inputs.items() if t.dtype == "bool"]
    floats = [n for n, t in graph.inputs.items() if t.dtype == "float32"]
    name = graph.name
    if floats or not tokens:
        raise BuildError(
            f"'{name}' is not a language model: it needs an int64 token input read by an embedding "
            f"and no float inputs (its inputs: {', '.join(_describe(graph, n) for n in graph.inputs)})"
        )
    for n in ints + bools:
        if len(graph.inputs[n].shape) != 1 or not isinstance(graph.inputs[n].shape[0], str):
            raise BuildError(
                f"'{name}': input '{n}' must be one symbolic sequence axis, e.g. shape: [seq], "
                f"got {graph.inputs[n]}"
            )
    if len(tokens) == 2 and len(ints) == 2 and len(bools) <= 1:
        src, tgt = tokens
        src_axis, tgt_axis = graph.inputs[src].shape[0], graph.inputs[tgt].shape[0]
        mask = bools[0] if bools else None
        if src_axis != tgt_axis and (mask is None or graph.inputs[mask].shape[0] == src_axis):
            logits, vocab = _logits(graph, str(tgt_axis))
            return Roles("seq2seq", tgt, logits, vocab, str(tgt_axis), source=src, source_mask=mask)
    positions = [n for n in ints if n not in tokens]
    if len(tokens) != 1 or len(positions) > 1 or len(bools) > 1:
        raise BuildError(
            f"'{name}' is not a causal language model (token ids, optionally a bool key mask and int64 "
            f"positions) nor a seq2seq model (source ids, decoder ids, optionally a bool source mask): "
            f"its inputs are {', '.join(_describe(graph, n) for n in graph.inputs)}"
        )
    axis = str(graph.inputs[tokens[0]].shape[0])
    logits, vocab = _logits(graph, axis)
    return Roles(
        "causal_lm",
        tokens[0],
        logits,
        vocab,
        axis,
        attention_mask=bools[0] if bools else None,
        positions=positions[0] if positions else None,
    )


def _describe(graph: Graph, name: str) -> str:
    return f"{name} {graph.inputs[name]}"


def _logits(graph: Graph, axis: str) -> tuple[str, int]:
    for out, t in graph.output_types().items():
        if t.dtype == "float32" and len(t.shape) == 2 and t.shape[0] == axis and isinstance(t.shape[1], int):
            return out, t.shape[1]
    raise BuildError(
        f"'{graph.name}': no output gives next-token logits of shape ({axis}, vocab); outputs: "
        + ", ".join(f"{n} {t}" for n, t in graph.output_types().items())
    )


@dataclass(frozen=True)
class Signature:
    """Inputs, outputs and carried tensors of a :class:`DecodeModel`."""

    roles: Roles
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    cache: tuple[CacheSlot, ...]
    max_positions: int | None

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{name: {axis: symbol}}`` for every input and output (the TorchScript exporter's form)."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
        }


def _where(node: Node) -> str:
    return f"{node.loc}: {node.path}" if node.loc else node.path


def _spec_of(node: Node, module: nn.Module) -> DecodeSpec | None:
    get = getattr(module, "decode_spec", None)
    if get is None:
        return None
    try:
        spec = get(len(node.inputs))
    except DecodeUnsupported as e:
        raise BuildError(
            f"{_where(node)}: {node.op.op_name} cannot be decoded one token at a time: {e}"
        ) from None
    assert isinstance(spec, DecodeSpec)
    if not (spec.tensors or spec.key_inputs or spec.position_inputs or spec.uses_offset):
        return None  # runs as it is (e.g. cross-attention to a fixed memory)
    return spec


class DecodeModel(nn.Module):
    """A compiled causal LM that decodes step by step (see the module notes).

    ``forward(*inputs, *past)`` takes the spec's inputs for the new tokens (a key mask spans the past
    and the new tokens) and the carried tensors in :attr:`signature` order; it returns the spec's
    outputs for the new tokens, then the tensors to carry on. Parameters and state_dict keys are the
    compiled model's own.
    """

    def __init__(self, model: CompiledModel) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)  # the same modules: parameters shared, names unchanged
        graph = model.graph
        self.graph = graph
        self.spec_name = graph.name
        roles = find_roles(graph)
        if roles.kind != "causal_lm":
            raise BuildError(
                f"'{graph.name}' is a seq2seq model; a key/value cache is exported for causal language "
                "models (seq2seq models generate without one: specc generate re-runs the decoder)"
            )
        path_of = {id(model.get_submodule(n.path)): n for n in graph.nodes}
        self._plan: list[Step] = model.plan
        self._num_slots = model.num_slots
        self._result = model.result_slots
        self._num_inputs = len(graph.inputs)
        self._calls: list[tuple[int, int] | None] = []
        cache: list[CacheSlot] = []
        key_inputs: set[str] = set()
        uses_offset: list[Node] = []
        limits: list[int] = []
        for step in self._plan:
            node = path_of[id(step.module)]
            spec = _spec_of(node, step.module)
            if spec is None:
                self._calls.append(None)
                continue
            key_inputs |= {self._graph_input(node, i, "key mask") for i in spec.key_inputs}
            for i in spec.position_inputs:
                self._graph_input(node, i, "positions input")
            if spec.uses_offset:
                uses_offset.append(node)
            if spec.max_positions is not None:
                limits.append(spec.max_positions)
            index = sum(1 for c in self._calls if c is not None and c[1])
            first = len(cache)
            cache += [CacheSlot(node.path, index, t) for t in spec.tensors]
            self._calls.append((first, len(spec.tensors)))
        self._check_key_inputs(key_inputs, roles)
        growing = [k for k, c in enumerate(cache) if c.tensor.past_axis is not None]
        if uses_offset and not growing:
            raise BuildError(
                f"{_where(uses_offset[0])}: {uses_offset[0].op.op_name} needs the number of tokens decoded "
                "so far, and no causal attention of this model carries keys to count them"
            )
        self._offset_from = (growing[0], cache[growing[0]].tensor.past_axis or 0) if growing else None
        self.signature = Signature(
            roles,
            tuple(self._input_tensor(n, key_inputs) for n in graph.inputs)
            + tuple(Tensor(c.input, c.past_shape, c.dtype) for c in cache),
            tuple(Tensor(n, (BATCH, *t.shape), t.dtype) for n, t in graph.output_types().items())
            + tuple(Tensor(c.output, c.present_shape, c.dtype) for c in cache),
            tuple(cache),
            min(limits) if limits else None,
        )
        self.input_names = self.signature.input_names
        self.output_names = self.signature.output_names
        self.train(model.training)  # a new module starts in training mode, and train() recurses

    def _graph_input(self, node: Node, slot: int, what: str) -> str:
        ref = node.inputs[slot]
        if ref.node not in self.graph.inputs:
            raise BuildError(
                f"{_where(node)}: the {what} of {node.op.op_name} must be a model input to decode step by "
                f"step (it comes from node '{ref}')"
            )
        return ref.node

    def _check_key_inputs(self, key_inputs: set[str], roles: Roles) -> None:
        """A key mask spans past + new tokens: it may feed key-mask slots only."""
        for node in self.graph.nodes:
            spec = _spec_of(node, self.get_submodule(node.path))
            allowed = set(spec.key_inputs) if spec else set()
            for slot, ref in enumerate(node.inputs):
                if ref.node in key_inputs and slot not in allowed:
                    raise BuildError(
                        f"{_where(node)}: input '{ref.node}' is the key mask of a causal attention (it "
                        f"covers the past and the new tokens while decoding) and cannot also feed "
                        f"{node.op.op_name}"
                    )
        if roles.attention_mask is not None and roles.attention_mask not in key_inputs:
            raise BuildError(
                f"'{self.graph.name}': the bool input '{roles.attention_mask}' must be the key mask of its "
                "causal attention to decode step by step"
            )

    def _input_tensor(self, name: str, key_inputs: set[str]) -> Tensor:
        t = self.graph.inputs[name]
        shape: tuple[int | str, ...] = (BATCH, TOTAL) if name in key_inputs else (BATCH, *t.shape)
        return Tensor(name, shape, t.dtype)

    def empty_cache(self, batch: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
        """The carried tensors before the first step: zero-length pasts, zero recurrent states."""
        return [
            torch.zeros(
                [batch if d == BATCH else 0 if d == PAST else int(d) for d in c.past_shape], device=device
            )
            for c in self.signature.cache
        ]

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        env, presents = self.run(args)
        return tuple(env[i] for i in self._result) + tuple(presents)

    def run(
        self, args: Sequence[torch.Tensor], *, cached: bool = True, keep: bool = False
    ) -> tuple[list[Any], list[torch.Tensor]]:
        """Run the plan: ``cached`` on the new tokens with the carried tensors (``args`` = inputs then
        pasts), else the plain model (``args`` = inputs). ``keep`` keeps every node's output."""
        n = self._num_inputs
        inputs, past = list(args[:n]), list(args[n:])
        env: list[Any] = inputs + [None] * (self._num_slots - n)
        offset: torch.Tensor | int = 0
        if cached and self._offset_from is not None:
            k, axis = self._offset_from
            offset = past[k].shape[axis]
        presents: list[torch.Tensor] = [torch.empty(0)] * len(past)
        for step, call in zip(self._plan, self._calls, strict=True):
            ins = [env[i] for i in step.inputs]
            if call is None or not cached:
                out = step.module(*ins)
            else:
                first, count = call
                forward_cached = getattr(step.module, "forward_cached")  # noqa: B009 - the decode protocol
                out, present = forward_cached(tuple(ins), tuple(past[first : first + count]), offset)
                presents[first : first + count] = present
            if len(step.outputs) == 1:
                env[step.outputs[0]] = out
            else:
                for slot, value in zip(step.outputs, out, strict=True):
                    env[slot] = value
            if not keep:
                for i in step.free:
                    env[i] = None
        return env, presents


# ---------------------------------------------------------------------------------------- checking


def step_feeds(
    signature: Signature, full: dict[str, torch.Tensor], start: int, stop: int
) -> list[torch.Tensor]:
    """The spec inputs for tokens ``start..stop-1`` of ``full`` (a key mask: ``0..stop-1``)."""
    out = []
    for t in signature.inputs[: len(full)]:
        value = full[t.name]
        out.append(value[:, :stop] if TOTAL in t.shape else value[:, start:stop])
    return out


def check_decoding(
    decoder: DecodeModel,
    full: dict[str, torch.Tensor],
    chunks: Sequence[int],
    *,
    atol: float = 1e-4,
    rtol: float = 1e-3,
) -> None:
    """Decode ``full`` (the spec's inputs for the whole sequence) in chunks of the given lengths and
    compare every node's output with the plain model's on the whole sequence; :class:`BuildError`
    names the first node whose values differ."""
    graph = decoder.graph
    names = list(graph.inputs)
    with torch.no_grad():
        whole, _ = decoder.run([full[n] for n in names], cached=False, keep=True)
        batch = next(iter(full.values())).shape[0]
        past = decoder.empty_cache(batch)
        parts: list[list[Any]] = []
        start = 0
        for length in chunks:
            env, past = decoder.run(
                step_feeds(decoder.signature, full, start, start + length) + past, keep=True
            )
            parts.append(env)
            start += length
    axis = decoder.signature.roles.seq
    real = real_tokens(decoder.signature, full)
    for node in graph.nodes:
        for k, t in enumerate(node.outputs):
            if not t.shape or t.shape[0] != axis:
                continue
            slot = _slot(decoder, node.path, k)
            if slot is None:
                continue
            ref = whole[slot][:, :start]
            got = torch.cat([env[slot] for env in parts], dim=1)
            bad = (got - ref).abs() > atol + rtol * ref.abs()
            if real is not None:
                bad &= real[:, :start].reshape(real.shape[0], start, *[1] * (bad.dim() - 2))
            if bool(bad.any()):
                pos = int(bad.nonzero()[0][1])
                raise BuildError(
                    f"{_where(node)}: {node.op.op_name} gives other values on the new tokens alone than on the "
                    f"whole sequence (position {pos}, max |Δ| {float((got - ref).abs().max()):.3g}): it mixes "
                    "positions along the sequence axis without carrying a state, so the model cannot be "
                    "decoded one token at a time"
                )


def real_tokens(signature: Signature, full: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """``(B, T)`` True where a token is real (its key-mask flag is set), or None without a mask.

    A padded query sees no key at all and gets an average of values that depends on how many keys
    there are (all of them without a cache, the past ones with it): padding, so it is not compared."""
    mask = signature.roles.attention_mask
    return None if mask is None else full[mask].bool()


def _slot(decoder: DecodeModel, path: str, k: int) -> int | None:
    for step in decoder._plan:  # noqa: SLF001 - same package
        if decoder.get_submodule(path) is step.module:
            return step.outputs[k]
    return None
