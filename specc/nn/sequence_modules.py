"""Torch modules of the sequence ops: embeddings, recurrent layers, attention, selection.

Every tensor is batch-first: a sequence is ``(B, T, D)``, a recurrent state ``(B, layers·dirs, H)``.
Boolean masks are key masks ``(B, Tk)`` with ``True`` = keep (a real token, as in Hugging Face's
``attention_mask``) and ``False`` = padding. Attention is written with ``matmul``/``softmax`` (no
fused kernels) so the TorchScript ONNX exporter sees plain ops; masked scores get the dtype's
most negative finite value, so a fully masked row gives a uniform average instead of NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from specc.nn.cache import BATCH, PAST, CacheTensor, DecodeSpec, DecodeUnsupported

Cached = tuple[torch.Tensor | tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]
"""What ``forward_cached`` returns: the usual output(s) and the tensors carried to the next step."""


class Embedding(nn.Embedding):
    """``nn.Embedding`` with an optional constant factor (``sqrt(dim)`` in the Transformer paper).

    ``(B, ...)`` int64 ids → ``(B, ..., D)``.
    """

    def __init__(self, num: int, dim: int, padding_idx: int | None, factor: float) -> None:
        super().__init__(num, dim, padding_idx=padding_idx)
        self.factor = factor

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out = super().forward(ids)
        return out * self.factor if self.factor != 1.0 else out


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """``P[t, 2i] = sin(t / 10000^(2i/d))``, ``P[t, 2i+1] = cos(...)`` (Vaswani et al. 2017)."""
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    """``x + P[:T]`` with a fixed sinusoid table ``P`` kept as a non-persistent buffer (not a
    parameter, not in the state_dict: it is recomputed at build). ``(B, T, D)`` → ``(B, T, D)``."""

    pe: torch.Tensor

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[: x.shape[1]]

    def decode_spec(self, num_inputs: int) -> DecodeSpec:
        return DecodeSpec(uses_offset=True, max_positions=int(self.pe.shape[0]))

    def forward_cached(
        self, inputs: tuple[torch.Tensor, ...], past: tuple[torch.Tensor, ...], offset: torch.Tensor | int
    ) -> Cached:
        """``x + P[offset : offset + T]``: the new tokens' rows of the table."""
        (x,) = inputs
        return x + self.pe[offset : offset + x.shape[1]], ()


class LearnedPositions(nn.Embedding):
    """``x + E[0..T-1]`` with a learned table ``E`` of ``max_len`` rows. ``(B, T, D)`` → ``(B, T, D)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return x + super().forward(positions)

    def decode_spec(self, num_inputs: int) -> DecodeSpec:
        return DecodeSpec(uses_offset=True, max_positions=self.num_embeddings)

    def forward_cached(
        self, inputs: tuple[torch.Tensor, ...], past: tuple[torch.Tensor, ...], offset: torch.Tensor | int
    ) -> Cached:
        """``x + E[offset .. offset + T - 1]``."""
        (x,) = inputs
        positions = torch.arange(x.shape[1], device=x.device) + offset
        return x + super().forward(positions), ()


class Select(nn.Module):
    """One index along an axis of the batched tensor: ``x.select(dim, index)``."""

    def __init__(self, dim: int, index: int) -> None:
        super().__init__()
        self.dim, self.index = dim, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.select(self.dim, self.index)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, index={self.index}"


class Broadcast(nn.Module):
    """Insert axis ``dim`` into ``x`` and repeat ``x`` along it to the size of ``like``'s axis ``dim``
    (d2l's Seq2Seq: the context vector ``(B, H)`` → ``(B, T, H)``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        sizes = [-1] * (x.dim() + 1)
        sizes[self.dim] = like.shape[self.dim]
        return x.unsqueeze(self.dim).expand(sizes)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


def _recurrent_output(
    y: torch.Tensor, h: torch.Tensor, output: str
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    state = h.transpose(0, 1)  # (layers·dirs, B, H) -> (B, layers·dirs, H)
    if output == "sequence":
        return y
    if output == "state":
        return state
    return y, state


def _initial(h0: torch.Tensor | None, x: torch.Tensor, layers: int, hidden: int) -> torch.Tensor:
    if h0 is not None:
        return h0.transpose(0, 1).contiguous()  # (B, layers·dirs, H) -> (layers·dirs, B, H)
    # built from x's shape so the exported graph keeps a dynamic batch axis
    return x.new_zeros(layers, x.shape[0], hidden)


def _recurrent_spec(module: nn.RNNBase, num_inputs: int, kinds: tuple[str, ...]) -> DecodeSpec:
    """A unidirectional recurrent layer carries its final state(s) ``(B, layers, H)`` to the next step."""
    if module.bidirectional:
        raise DecodeUnsupported("a bidirectional recurrent layer reads the sequence backwards too")
    if num_inputs > 1:
        raise DecodeUnsupported(
            "its initial state comes from the graph; step-by-step decoding carries the state itself"
        )
    shape = (BATCH, module.num_layers, module.hidden_size)
    return DecodeSpec(tuple(CacheTensor(kind, shape) for kind in kinds))


def _state(past: torch.Tensor) -> torch.Tensor:
    return past.transpose(0, 1).contiguous()  # (B, layers, H) -> (layers, B, H)


class _SingleState(nn.Module):
    """Shared by :class:`RNN` and :class:`GRU` (one state tensor); mixed in before the torch class."""

    num_layers: int
    bidirectional: bool
    hidden_size: int

    def __init__(self, *args: object, output: str = "sequence", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.output = output

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        y, h = super().forward(x, _initial(h0, x, layers, self.hidden_size))
        return _recurrent_output(y, h, self.output)

    def decode_spec(self, num_inputs: int) -> DecodeSpec:
        return _recurrent_spec(self, num_inputs, ("hidden",))  # type: ignore[arg-type]

    def forward_cached(
        self, inputs: tuple[torch.Tensor, ...], past: tuple[torch.Tensor, ...], offset: torch.Tensor | int
    ) -> Cached:
        """One run over the new tokens from the carried state (zeros at the start, as ``forward``)."""
        y, h = super().forward(inputs[0], _state(past[0]))
        return _recurrent_output(y, h, self.output), (h.transpose(0, 1),)


class RNN(_SingleState, nn.RNN):  # type: ignore[misc]
    """Batch-first ``nn.RNN``: ``(B, T, F)`` [, initial state ``(B, L·dirs, H)``] → sequence
    ``(B, T, dirs·H)`` and/or final state ``(B, L·dirs, H)`` as ``output`` says."""


class GRU(_SingleState, nn.GRU):  # type: ignore[misc]
    """Batch-first ``nn.GRU``; inputs and outputs as :class:`RNN`."""


class LSTM(nn.LSTM):
    """Batch-first ``nn.LSTM``: ``(B, T, F)`` [, h0 [, c0]] (each ``(B, L·dirs, H)``, zeros when
    absent) → sequence and/or the final *hidden* state ``h_n`` (the cell state is not returned)."""

    def __init__(self, *args: object, output: str = "sequence", **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.output = output

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        h0: torch.Tensor | None = None,
        c0: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        layers = self.num_layers * (2 if self.bidirectional else 1)
        h = _initial(h0, x, layers, self.hidden_size)
        c = _initial(c0, x, layers, self.hidden_size)
        y, (hn, _) = super().forward(x, (h, c))
        return _recurrent_output(y, hn, self.output)

    def decode_spec(self, num_inputs: int) -> DecodeSpec:
        return _recurrent_spec(self, num_inputs, ("hidden", "cell"))

    def forward_cached(
        self, inputs: tuple[torch.Tensor, ...], past: tuple[torch.Tensor, ...], offset: torch.Tensor | int
    ) -> Cached:
        """One run over the new tokens from the carried hidden and cell states."""
        y, (hn, cn) = super().forward(inputs[0], (_state(past[0]), _state(past[1])))
        return _recurrent_output(y, hn, self.output), (hn.transpose(0, 1), cn.transpose(0, 1))


def split_qkv(
    inputs: tuple[torch.Tensor, ...], num_float: int, has_mask: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``[x] | [q, kv] | [q, k, v]`` then an optional mask → ``(q, k, v, mask)``."""
    xs = inputs[:num_float]
    q, k, v = (xs * 3)[:3] if num_float == 1 else (xs[0], xs[1], xs[-1])
    return q, k, v, inputs[num_float] if has_mask else None


def keep_mask(
    tq: int,
    tk: int,
    causal: bool,
    key_mask: torch.Tensor | None,
    device: torch.device,
    window: int | None = None,
    offset: torch.Tensor | int | None = None,
) -> torch.Tensor | None:
    """Where a score takes part: ``(B, 1, Tk)``/``(Tq, Tk)``/``(B, Tq, Tk)`` bool, or None for all.

    Causal: query ``t`` sees keys ``<= t``; with ``window`` also only keys ``> t - window``. With
    ``offset`` (a key/value cache: ``Tk = offset + Tq``) query ``t`` is at position ``offset + t``."""
    keep: torch.Tensor | None = None
    if causal:
        rows = torch.arange(tq, device=device)[:, None]
        if offset is not None:
            rows = rows + offset
        cols = torch.arange(tk, device=device)[None, :]
        keep = cols <= rows  # (Tq, Tk): position t sees positions <= t
        if window is not None:
            keep = keep & (rows - cols < window)
    if key_mask is not None:
        km = key_mask[:, None, :]  # (B, 1, Tk)
        keep = km if keep is None else keep & km
    return keep


def mask_bias(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The additive form of a keep mask: 0 where kept, half the dtype's minimum where masked (so that
    adding a score cannot overflow to -inf in fp16)."""
    return (1.0 - keep.to(dtype)) * (torch.finfo(dtype).min / 2)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor | None,
    scale: float,
    dropout: nn.Module,
) -> torch.Tensor:
    """softmax(q kᵀ · scale, masked) v for ``(..., Tq, d)``, ``(..., Tk, d)``, ``(..., Tk, dv)``."""
    scores = torch.matmul(q, k.transpose(-2, -1)) / (1.0 / scale)  # (..., Tq, Tk); Div: see below
    if keep is not None:
        # An additive bias on the (small) mask shape, not masked_fill on the scores: onnxruntime's
        # broadcasting Where over (B, heads, Tq, Tk) cost 5x this Add (102 vs 22 us per BERT-base
        # layer), and Div-after-matmul + this mask form is the pattern onnxruntime's BERT Attention
        # fusion recognises (``specc export --optimize``; a Mul for the scale makes its matcher take
        # the scale's Mul for the mask's).
        scores = scores + mask_bias(keep, scores.dtype)
    return torch.matmul(dropout(scores.softmax(dim=-1)), v)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` over the two halves of the last axis (LLaMA's rotary layout)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Rotary(nn.Module):
    """Rotary position embeddings (Su et al., RoFormer) in LLaMA's "rotate half" layout, computed as
    ``transformers``' ``LlamaRotaryEmbedding`` / ``apply_rotary_pos_emb`` do:
    ``x·cos + rotate_half(x)·sin`` with ``inv_freq = 1 / theta^(2i/dim)`` in float32.

    The tables are computed from the positions on every call (``dim/2`` frequencies: negligible next
    to the projections), so any length works, an offset (a key/value cache) is a positions tensor,
    and nothing is stored: no buffer to lose on the meta device or to cast to fp16. Only the first
    ``dim`` features of a head rotate (partial rotary); the rest pass through.
    """

    def __init__(self, dim: int, theta: float, head_dim: int | None = None) -> None:
        super().__init__()
        self.dim, self.theta = dim, theta
        self.partial = head_dim is not None and dim < head_dim  # fixed at build: no shape test in forward

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin ``(..., T, dim)`` for int positions ``(..., T)``."""
        steps = torch.arange(0, self.dim, 2, dtype=torch.int64, device=positions.device).float()
        inv_freq = 1.0 / (self.theta ** (steps / self.dim))
        freqs = positions.float()[..., None] * inv_freq  # (..., T, dim/2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``x (B, heads, T, head_dim)`` with tables ``(T, dim)`` or ``(B, 1, T, dim)``."""
        if not self.partial:
            return x * cos + rotate_half(x) * sin
        rot, rest = x[..., : self.dim], x[..., self.dim :]
        return torch.cat((rot * cos + rotate_half(rot) * sin, rest), dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, theta={self.theta:g}"


class DotProductAttention(nn.Module):
    """Scaled dot-product attention (no parameters): ``q (B, ..., Tq, d)``, ``k (B, ..., Tk, d)``,
    ``v (B, ..., Tk, dv)`` [, key mask ``(B, Tk)`` without leading axes] → ``(B, ..., Tq, dv)``;
    ``[x]`` or ``[q, kv]`` also work."""

    def __init__(
        self,
        scale: float,
        causal: bool,
        dropout: float,
        num_float: int,
        has_mask: bool,
        features: int | None = None,
    ) -> None:
        super().__init__()
        self.scale, self.causal, self.num_float, self.has_mask = scale, causal, num_float, has_mask
        self.features = features
        self.dropout = nn.Dropout(dropout)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        q, k, v, mask = split_qkv(inputs, self.num_float, self.has_mask)
        keep = keep_mask(q.shape[-2], k.shape[-2], self.causal, mask, q.device)
        return attend(q, k, v, keep, self.scale, self.dropout)

    def decode_spec(self, num_inputs: int) -> DecodeSpec:
        """Causal self-attention carries the past inputs (its keys and values) ``(B, past, d)``."""
        if not _cached_self_attention(self.num_float, self.causal) or self.features is None:
            return DecodeSpec()
        return DecodeSpec((CacheTensor("key", (BATCH, PAST, self.features)),), _mask_slot(self))

    def forward_cached(
        self, inputs: tuple[torch.Tensor, ...], past: tuple[torch.Tensor, ...], offset: torch.Tensor | int
    ) -> Cached:
        if not past:
            return self.forward(*inputs), ()
        x, mask = inputs[0], inputs[1] if self.has_mask else None
        kv = torch.cat((past[0], x), dim=1)  # (B, past + T, d)
        start = past[0].shape[1]
        keep = keep_mask(x.shape[1], kv.shape[1], self.causal, mask, x.device, offset=start)
        return attend(x, kv, kv, keep, self.scale, self.dropout), (kv,)


def _cached_self_attention(num_float: int, causal: bool) -> bool:
    """Self-attention must be causal to be decoded one step at a time; cross-attention runs as it is
    (its keys come from elsewhere, e.g. an encoder's memory)."""
    if num_float == 1 and not causal:
        raise DecodeUnsupported("non-causal self-attention lets every position see the later ones")
    return num_float == 1


def _mask_slot(module: DotProductAttention | MultiheadAttention) -> tuple[int, ...]:
    """The key mask's input slot: it spans the past and the new keys."""
    return (module.num_float,) if module.has_mask else ()


class AdditiveAttention(nn.Module):
    """Bahdanau attention as in d2l: ``score(q, k) = w_vᵀ tanh(W_q q + W_k k)``; inputs as
    :class:`DotProductAttention`. Parameters in d2l's order: ``W_k``, ``W_q``, ``w_v``."""

    def __init__(
        self, key_size: int, query_size: int, num_hiddens: int, dropout: float, num_float: int, has_mask: bool
    ) -> None:
        super().__init__()
        self.num_float, self.has_mask = num_float, has_mask
        self.W_k = nn.Linear(key_size, num_hiddens, bias=False)
        self.W_q = nn.Linear(query_size, num_hiddens, bias=False)
        self.w_v = nn.Linear(num_hiddens, 1, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        q, k, v, mask = split_qkv(inputs, self.num_float, self.has_mask)
        features = torch.tanh(self.W_q(q).unsqueeze(2) + self.W_k(k).unsqueeze(1))  # (B, Tq, Tk, h)
        scores = self.w_v(features).squeeze(-1)  # (B, Tq, Tk)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], torch.finfo(scores.dtype).min)
        return torch.matmul(self.dropout(scores.softmax(dim=-1)), v)

    def decode_spec(self, num_inputs: int) -> DecodeSpec:
        _cached_self_attention(self.num_float, causal=False)  # no causal option: self-attention cannot step
        return DecodeSpec()


class MultiheadAttention(nn.Module):
    """Multi-head attention with grouped-query heads, rotary embeddings and causal/sliding-window masks.

    Parameter layouts: ``fused`` (``nn.MultiheadAttention``'s ``in_proj_weight`` ``(q+2kv, E)``,
    ``in_proj_bias``, ``out_proj``), ``separate`` (BERT's ``query``/``key``/``value``/``out_proj``)
    or ``llama`` (``q_proj``/``k_proj``/``v_proj``/``o_proj``), where q = ``num_heads·head_dim`` and
    kv = ``num_kv_heads·head_dim``. Inputs: query ``(B, Tq, E)`` [, key_value ``(B, Tk, Ek)`` | key,
    value] [, key mask ``(B, Tk)``] [, positions ``(B, Tq)`` int64] → ``(B, Tq, E)``.

    With the attention dropout inactive (eval mode or p = 0) it runs
    ``F.scaled_dot_product_attention`` (one fused kernel, grouped heads without copies); otherwise,
    and while exporting to ONNX, the matmul/softmax form of :func:`attend`, which the TorchScript
    exporter turns into plain ops and whose dropout is ``nn.Dropout`` on the weights. Both give the
    same result within 1e-5 relative (tests/ops/test_attention.py).
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kdim: int,
        vdim: int,
        *,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool,
        layout: str,
        causal: bool,
        window: int | None = None,
        rotary: Rotary | None = None,
        dropout: float,
        num_float: int,
        has_mask: bool,
        has_positions: bool = False,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.num_kv_heads = num_kv_heads or num_heads
        self.head_dim = head_dim or embed_dim // num_heads
        self.layout, self.causal, self.window = layout, causal, window
        self.num_float, self.has_mask, self.has_positions = num_float, has_mask, has_positions
        self.scale = 1.0 / math.sqrt(self.head_dim)
        qo, kvo = num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.q_out, self.kv_out = qo, kvo
        if layout == "fused":
            self.in_proj_weight = nn.Parameter(torch.empty(qo + 2 * kvo, embed_dim))
            self.in_proj_bias = nn.Parameter(torch.empty(qo + 2 * kvo)) if bias else None
            self.out_proj = nn.Linear(qo, embed_dim, bias=bias)
        else:
            names = (
                ("q_proj", "k_proj", "v_proj", "o_proj")
                if layout == "llama"
                else ("query", "key", "value", "out_proj")
            )
            for name, fin, fout in zip(
                names, (embed_dim, kdim, vdim, qo), (qo, kvo, kvo, embed_dim), strict=True
            ):
                self.add_module(name, nn.Linear(fin, fout, bias=bias))
            self._names = names
        self.rotary = rotary
        self.dropout = nn.Dropout(dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self.layout == "fused" and self.in_proj_weight.device.type != "meta":
            nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention
            if self.in_proj_bias is not None:
                nn.init.zeros_(self.in_proj_bias)
            if self.out_proj.bias is not None:
                nn.init.zeros_(self.out_proj.bias)

    def _project(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.layout != "fused":
            q_in, k_in, v_in, _ = split_qkv(xs, len(xs), False)
            qp, kp, vp = (self.get_submodule(n) for n in self._names[:3])
            return qp(q_in), kp(k_in), vp(v_in)
        w, b, qo, kvo = self.in_proj_weight, self.in_proj_bias, self.q_out, self.kv_out
        if len(xs) == 1:  # self-attention: one matmul for q, k and v
            q, k, v = torch.split(F.linear(xs[0], w, b), [qo, kvo, kvo], dim=-1)
            return q, k, v
        bq, bk, bv = (None, None, None) if b is None else (b[:qo], b[qo : qo + kvo], b[qo + kvo :])
        q = F.linear(xs[0], w[:qo], bq)
        if len(xs) == 2:
            bkv = None if b is None else b[qo:]
            k, v = torch.split(F.linear(xs[1], w[qo:], bkv), [kvo, kvo], dim=-1)
            return q, k, v
        return q, F.linear(xs[1], w[qo : qo + kvo], bk), F.linear(xs[2], w[qo + kvo :], bv)

    def _output(self, y: torch.Tensor) -> torch.Tensor:
        return self.get_submodule("o_proj" if self.layout == "llama" else "out_proj")(y)  # type: ignore[no-any-return]

    def _heads(self, x: torch.Tensor, heads: int) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], heads, self.head_dim).transpose(1, 2)  # (B, heads, T, d)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        xs = inputs[: self.num_float]
        mask = inputs[self.num_float] if self.has_mask else None
        q, k, v = self._qkv(xs, inputs[-1] if self.has_positions else None, None)
        return self._attend(q, k, v, mask, None)

    def _qkv(
        self,
        xs: tuple[torch.Tensor, ...],
        positions: torch.Tensor | None,
        offset: torch.Tensor | int | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Projected, split into heads ``(B, heads, T, d)`` and rotated (positions: the input, else
        ``offset + 0 .. T-1``)."""
        pq, pk, pv = self._project(xs)
        q, k, v = (
            self._heads(pq, self.num_heads),
            self._heads(pk, self.num_kv_heads),
            self._heads(pv, self.num_kv_heads),
        )
        if self.rotary is not None:
            if positions is None:
                positions = torch.arange(q.shape[2], device=q.device)
                if offset is not None:
                    positions = positions + offset
            cos, sin = self.rotary.tables(positions, q.dtype)
            if cos.dim() == 3:
                cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, dim): the same rotation for every head
            q, k = self.rotary(q, cos, sin), self.rotary(k, cos, sin)
        return q, k, v

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        offset: torch.Tensor | int | None,
    ) -> torch.Tensor:
        if self.dropout.p > 0 and self.training or torch.onnx.is_in_onnx_export():
            out = self._attend_math(q, k, v, mask, offset)
        else:
            out = self._attend_sdpa(q, k, v, mask, offset)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], self.q_out)  # (B, Tq, heads·d)
        return self._output(out)

    def decode_spec(self, num_inputs: int) -> DecodeSpec:
        """Causal self-attention carries its (rotated) keys and values ``(B, kv_heads, past, d)``."""
        if not _cached_self_attention(self.num_float, self.causal):
            return DecodeSpec()
        shape = (BATCH, self.num_kv_heads, PAST, self.head_dim)
        return DecodeSpec(
            (CacheTensor("key", shape), CacheTensor("value", shape)),
            _mask_slot(self),
            (num_inputs - 1,) if self.has_positions else (),
        )

    def forward_cached(
        self, inputs: tuple[torch.Tensor, ...], past: tuple[torch.Tensor, ...], offset: torch.Tensor | int
    ) -> Cached:
        """The new tokens attend to the past keys/values and themselves; query ``t`` is at position
        ``past + t`` (causal mask, sliding window and default rotary positions alike)."""
        if not past:
            return self.forward(*inputs), ()
        mask = inputs[self.num_float] if self.has_mask else None
        start = past[0].shape[2]
        q, k, v = self._qkv(inputs[:1], inputs[-1] if self.has_positions else None, start)
        k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)  # (B, kv_heads, past + T, d)
        return self._attend(q, k, v, mask, start), (k, v)

    def _keep(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        mask: torch.Tensor | None,
        offset: torch.Tensor | int | None = None,
    ) -> torch.Tensor | None:
        keep = keep_mask(q.shape[-2], k.shape[-2], self.causal, mask, q.device, self.window, offset)
        if keep is not None and keep.dim() == 3:
            keep = keep[:, None]  # (B, 1, Tq|1, Tk): the same mask for every head
        return keep

    def _attend_math(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        offset: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        keep = self._keep(q, k, mask, offset)
        if self.num_kv_heads == self.num_heads:
            return attend(q, k, v, keep, self.scale, self.dropout)  # (B, heads, Tq, d)
        b, _, tq, d = q.shape
        groups = self.num_heads // self.num_kv_heads
        # grouped-query: query heads h = g·groups + j share key/value head g; broadcasting the
        # matmuls over a group axis reads k and v without repeating them
        qg = q.reshape(b, self.num_kv_heads, groups, tq, d)  # (B, kv_heads, groups, Tq, d)
        keep = None if keep is None else keep[:, None] if keep.dim() == 4 else keep
        out = attend(qg, k[:, :, None], v[:, :, None], keep, self.scale, self.dropout)
        return out.reshape(b, self.num_heads, tq, d)

    def _attend_sdpa(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        mask: torch.Tensor | None,
        offset: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        simple_causal = self.causal and self.window is None and mask is None and q.shape[-2] == k.shape[-2]
        keep = None if simple_causal else self._keep(q, k, mask, offset)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=None if keep is None else mask_bias(keep, q.dtype),
            dropout_p=self.dropout.p if self.training else 0.0,
            is_causal=simple_causal,
            scale=self.scale,
            enable_gqa=self.num_kv_heads != self.num_heads,
        )
