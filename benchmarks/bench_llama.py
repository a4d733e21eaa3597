"""Training-step time of a specc-compiled LLaMA-style decoder vs the same network hand-written in PyTorch.

Both sides: token embedding, N pre-norm layers (RMSNorm, q/k/v/o projections without bias,
grouped-query attention with rotary embeddings through ``F.scaled_dot_product_attention``, SwiGLU
MLP), final RMSNorm, untied LM head; one step = zero_grad + forward + cross-entropy on the next
token + backward (dropout 0, as LLaMA). The compiled side is ``repeat: N`` of ``std:llama``'s
``llama_layer`` (or ``llama_layer_padded`` with ``--mask``: an all-true padding mask goes through
the masked path on both sides); the hand-written side is what one writes after reading
``transformers``' LlamaForCausalLM: rotary tables computed once per forward, ``repeat``-free GQA via
``enable_gqa``, ``is_causal=True`` (or one additive mask shared by all layers with ``--mask``).

A reduced config by default (hidden 256, 4 layers, 8 heads / 2 kv heads, SwiGLU 704, vocab 2048,
batch 4, T 256) so that it runs in about a minute on one CPU thread. Steps are interleaved (the order
alternates each rep) and each rep gives a paired ratio hand-written / specc (≥ 1: specc is at least
as fast); the median of the ratios is the figure.

    .venv/bin/python benchmarks/bench_llama.py [--reps 20] [--threads 1] [--mask]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

SPEC = """
specc: 1
name: bench_llama
include: [std:llama]
inputs: {{tokens: {{shape: [seq], dtype: int64}}{mask_input}}}
dims: {{seq: {t}}}
layers:
  - embedding: {{num_embeddings: {vocab}, embedding_dim: {d}, from: tokens, name: embed_tokens}}
  - repeat: {layers}
    name: layers
    body: {{{block}: {{d_model: {d}, num_heads: {heads}, num_kv_heads: {kv}, intermediate: {ffn}{mask_from}}}}}
  - norm: {{kind: rms, eps: 1.0e-5, name: norm}}
  - linear: {{out_features: {vocab}, bias: false, name: lm_head}}
"""


class RMSNorm(nn.Module):
    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(d)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


class Layer(nn.Module):
    def __init__(self, d: int, heads: int, kv: int, ffn: int) -> None:
        super().__init__()
        self.heads, self.kv, self.hd = heads, kv, d // heads
        self.input_layernorm = RMSNorm(d)
        self.q_proj = nn.Linear(d, heads * self.hd, bias=False)
        self.k_proj = nn.Linear(d, kv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, kv * self.hd, bias=False)
        self.o_proj = nn.Linear(heads * self.hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d)
        self.gate_proj = nn.Linear(d, ffn, bias=False)
        self.up_proj = nn.Linear(d, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, d, bias=False)

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.kv, self.hd).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=bias is None, enable_gqa=True)
        x = x + self.o_proj(y.transpose(1, 2).reshape(b, t, -1))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class HandLlama(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, kv: int, ffn: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(Layer(d, heads, kv, ffn) for _ in range(layers))
        self.norm = RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        self.register_buffer(
            "inv_freq", 1.0 / 10000.0 ** (torch.arange(0, hd, 2).float() / hd), persistent=False
        )

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        t = ids.shape[1]
        freqs = torch.arange(t).float()[:, None] * self.inv_freq
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = emb.cos(), emb.sin()
        bias = None
        if mask is not None:  # one (B, 1, T, T) additive mask for all layers
            keep = torch.ones(t, t, dtype=torch.bool).tril() & mask[:, None, None, :]
            bias = (1.0 - keep.float()) * (torch.finfo(torch.float32).min / 2)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, bias)
        return self.lm_head(self.norm(x))  # type: ignore[no-any-return]


def step(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(wall, CPU) seconds of one training step. With one torch thread all work runs on this thread,
    so its CPU time leaves out the time other processes on a shared machine took the core away."""
    start, cpu = time.perf_counter(), time.thread_time()
    model.zero_grad(set_to_none=True)
    logits = model(*inputs)
    ids = inputs[0]
    F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten()).backward()
    return time.perf_counter() - start, time.thread_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--ffn", type=int, default=704)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--mask", action="store_true", help="feed an all-true padding mask (masked path)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from specc.api import check_text
    from specc.nn import build

    torch.manual_seed(0)
    spec = SPEC.format(
        t=a.seq,
        vocab=a.vocab,
        d=a.hidden,
        layers=a.layers,
        heads=a.heads,
        kv=a.kv_heads,
        ffn=a.ffn,
        block="llama_layer_padded" if a.mask else "llama_layer",
        mask_input=", attention_mask: {shape: [seq], dtype: bool}" if a.mask else "",
        mask_from=", from: [-1, attention_mask]" if a.mask else "",
    )
    compiled = build(check_text(spec, "bench_llama.yaml")).train()
    hand = HandLlama(a.vocab, a.hidden, a.layers, a.heads, a.kv_heads, a.ffn).train()
    n_c, n_h = (sum(p.numel() for p in m.parameters()) for m in (compiled, hand))
    assert n_c == n_h, (n_c, n_h)
    with torch.no_grad():  # the same weights on both sides (same registration order, same shapes)
        for p_hand, p_specc in zip(hand.parameters(), compiled.parameters(), strict=True):
            p_hand.copy_(p_specc)
    ids = torch.randint(0, a.vocab, (a.batch, a.seq))
    inputs = (ids, torch.ones(a.batch, a.seq, dtype=torch.bool)) if a.mask else (ids,)
    with torch.no_grad():  # and the same function
        torch.testing.assert_close(compiled(*inputs), hand(*inputs), rtol=1e-4, atol=1e-5)
    models = {"specc": compiled, "hand-written": hand}
    for _ in range(a.warmup):
        for m in models.values():
            step(m, inputs)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    for rep in range(a.reps):
        order = list(models) if rep % 2 == 0 else list(reversed(models))
        got = {name: step(models[name], inputs) for name in order}
        for name, t in got.items():
            times[name].append(t)
        for i, clock in enumerate(ratios):
            ratios[clock].append(got["hand-written"][i] / got["specc"][i])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load {load:.2f}; llama {a.layers} x hidden "
        f"{a.hidden}, {a.heads}/{a.kv_heads} heads, SwiGLU {a.ffn}, vocab {a.vocab}; batch {a.batch}, T {a.seq}"
        f"{', padding mask' if a.mask else ''}; {n_c:,} params; {a.reps} interleaved reps"
    )
    print(f"{'model':<14} {'median ms/step':>15} {'min':>9} {'max':>9} {'median CPU ms':>14}")
    for k, v in times.items():
        wall = [w for w, _ in v]
        cpu = statistics.median(c for _, c in v)
        print(
            f"{k:<14} {statistics.median(wall) * 1e3:>15.1f} {min(wall) * 1e3:>9.1f} {max(wall) * 1e3:>9.1f}"
            f" {cpu * 1e3:>14.1f}"
        )
    for clock, r in ratios.items():
        q = statistics.quantiles(r, n=4)
        print(
            f"paired ratio hand-written / specc ({clock} time): median {statistics.median(r):.3f} "
            f"(quartiles {q[0]:.3f}..{q[2]:.3f}; target >= 0.98)"
        )


if __name__ == "__main__":
    main()
