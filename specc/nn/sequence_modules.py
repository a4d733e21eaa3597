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


class LearnedPositions(nn.Embedding):
    """``x + E[0..T-1]`` with a learned table ``E`` of ``max_len`` rows. ``(B, T, D)`` → ``(B, T, D)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        return x + super().forward(positions)


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


def split_qkv(
    inputs: tuple[torch.Tensor, ...], num_float: int, has_mask: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``[x] | [q, kv] | [q, k, v]`` then an optional mask → ``(q, k, v, mask)``."""
    xs = inputs[:num_float]
    q, k, v = (xs * 3)[:3] if num_float == 1 else (xs[0], xs[1], xs[-1])
    return q, k, v, inputs[num_float] if has_mask else None


def keep_mask(
    tq: int, tk: int, causal: bool, key_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """Where a score takes part: ``(B, 1, Tk)``/``(Tq, Tk)``/``(B, Tq, Tk)`` bool, or None for all."""
    keep: torch.Tensor | None = None
    if causal:
        rows = torch.arange(tq, device=device)[:, None]
        cols = torch.arange(tk, device=device)[None, :]
        keep = cols <= rows  # (Tq, Tk): position t sees positions <= t
    if key_mask is not None:
        km = key_mask[:, None, :]  # (B, 1, Tk)
        keep = km if keep is None else keep & km
    return keep


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
        # An additive bias on the (small) mask shape, not masked_fill on the scores: kept scores get
        # + 0, masked ones a large negative (half the dtype's minimum, so that adding a score cannot
        # overflow to -inf in fp16). onnxruntime's broadcasting Where over (B, heads, Tq, Tk) cost 5x
        # this Add (102 vs 22 us per BERT-base layer), and Div-after-matmul + this mask form is the
        # pattern onnxruntime's BERT Attention fusion recognises (``specc export --optimize``; a Mul
        # for the scale makes its matcher take the scale's Mul for the mask's).
        scores = scores + (1.0 - keep.to(scores.dtype)) * (torch.finfo(scores.dtype).min / 2)
    return torch.matmul(dropout(scores.softmax(dim=-1)), v)


class DotProductAttention(nn.Module):
    """Scaled dot-product attention (no parameters): ``q (B, Tq, d)``, ``k (B, Tk, d)``,
    ``v (B, Tk, dv)`` [, key mask ``(B, Tk)``] → ``(B, Tq, dv)``; ``[x]`` or ``[q, kv]`` also work."""

    def __init__(self, scale: float, causal: bool, dropout: float, num_float: int, has_mask: bool) -> None:
        super().__init__()
        self.scale, self.causal, self.num_float, self.has_mask = scale, causal, num_float, has_mask
        self.dropout = nn.Dropout(dropout)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        q, k, v, mask = split_qkv(inputs, self.num_float, self.has_mask)
        keep = keep_mask(q.shape[1], k.shape[1], self.causal, mask, q.device)
        return attend(q, k, v, keep, self.scale, self.dropout)


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


class MultiheadAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s parameters (``fused``: ``in_proj_weight``
    ``(3E, E)``, ``in_proj_bias``, ``out_proj``) or separate ``query``/``key``/``value`` linears
    (BERT's layout). Inputs: query ``(B, Tq, E)`` [, key_value ``(B, Tk, Ek)`` | key, value]
    [, key mask ``(B, Tk)``] → ``(B, Tq, E)``. ``num_float`` says how many float inputs come first."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        kdim: int,
        vdim: int,
        *,
        bias: bool,
        fused: bool,
        causal: bool,
        dropout: float,
        num_float: int,
        has_mask: bool,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.fused, self.causal, self.num_float, self.has_mask = fused, causal, num_float, has_mask
        self.scale = 1.0 / math.sqrt(self.head_dim)
        if fused:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim)) if bias else None
        else:
            self.query = nn.Linear(embed_dim, embed_dim, bias=bias)
            self.key = nn.Linear(kdim, embed_dim, bias=bias)
            self.value = nn.Linear(vdim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self.fused and self.in_proj_weight.device.type != "meta":
            nn.init.xavier_uniform_(self.in_proj_weight)  # as nn.MultiheadAttention
            if self.in_proj_bias is not None:
                nn.init.zeros_(self.in_proj_bias)
            if self.out_proj.bias is not None:
                nn.init.zeros_(self.out_proj.bias)

    def _project(self, xs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.fused:
            q_in, k_in, v_in, _ = split_qkv(xs, len(xs), False)
            return self.query(q_in), self.key(k_in), self.value(v_in)
        w, b, e = self.in_proj_weight, self.in_proj_bias, self.embed_dim
        if len(xs) == 1:  # self-attention: one matmul for q, k and v
            q, k, v = F.linear(xs[0], w, b).chunk(3, dim=-1)
            return q, k, v
        bq, bk, bv = (None, None, None) if b is None else (b[:e], b[e : 2 * e], b[2 * e :])
        q = F.linear(xs[0], w[:e], bq)
        if len(xs) == 2:
            bkv = None if b is None else b[e:]
            k, v = F.linear(xs[1], w[e:], bkv).chunk(2, dim=-1)
            return q, k, v
        return q, F.linear(xs[1], w[e : 2 * e], bk), F.linear(xs[2], w[2 * e :], bv)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(
            1, 2
        )  # (B, heads, T, d)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        xs = inputs[: self.num_float]
        mask = inputs[self.num_float] if self.has_mask else None
        q, k, v = (self._heads(t) for t in self._project(xs))
        keep = keep_mask(q.shape[2], k.shape[2], self.causal, mask, q.device)
        if keep is not None and keep.dim() == 3:
            keep = keep[:, None]  # (B, 1, Tq|1, Tk): the same mask for every head
        out = attend(q, k, v, keep, self.scale, self.dropout)  # (B, heads, Tq, d)
        out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], self.embed_dim)  # (B, Tq, E)
        return self.out_proj(out)  # type: ignore[no-any-return]
