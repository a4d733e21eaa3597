"""Training-step time of a specc-compiled Transformer encoder vs the same network hand-written in PyTorch.

Both sides: 6 post-norm encoder layers (d_model 256, 8 heads, FFN 1024, ReLU, dropout 0.1,
LayerNorm), input (batch 16, T 128, 256) float32, one step = zero_grad + forward + MSE-style loss +
backward. The compiled side is ``repeat: 6`` of ``std:transformer``'s ``encoder_layer``; the
hand-written side is plain ``nn.Module`` code doing the same math (fused qkv linear,
matmul/softmax attention, out projection, dropout, residual + LayerNorm, FFN). Reps are
interleaved (the order alternates every rep) and the median of each side is reported; ratio =
hand-written time / compiled time (≥ 1 means specc is at least as fast).

    .venv/bin/python benchmarks/bench_transformer.py [--reps 10] [--batch 16] [--seq 128]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from torch import nn

SPEC = """
specc: 1
name: bench_encoder
include: [std:transformer]
inputs: {{x: {{shape: [seq, {d}]}}}}
dims: {{seq: {t}}}
layers:
  - repeat: {layers}
    name: layers
    body: {{encoder_layer: {{d_model: {d}, num_heads: {heads}, dim_feedforward: {ffn}, dropout: 0.1}}}}
"""


class HandLayer(nn.Module):
    """nn.TransformerEncoderLayer(norm_first=False) math in plain modules."""

    def __init__(self, d: int, heads: int, ffn: int, p: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.attn_drop, self.drop1, self.drop2, self.drop3 = (nn.Dropout(p) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.reshape(b, t, self.heads, self.head_dim).transpose(1, 2) for z in self.in_proj(x).chunk(3, -1)
        )
        scores = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(-2, -1))
        y = torch.matmul(self.attn_drop(scores.softmax(-1)), v).transpose(1, 2).reshape(b, t, d)
        x = self.norm1(x + self.drop1(self.out_proj(y)))
        return self.norm2(x + self.drop3(self.linear2(self.drop2(torch.relu(self.linear1(x))))))


def step(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.pow(2).mean().backward()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--ffn", type=int, default=1024)
    a = ap.parse_args()

    from specc.api import check_text
    from specc.nn import build

    torch.manual_seed(0)
    spec = SPEC.format(d=a.d_model, t=a.seq, layers=a.layers, heads=a.heads, ffn=a.ffn)
    compiled = build(check_text(spec, "bench_encoder.yaml")).train()
    hand = nn.Sequential(*(HandLayer(a.d_model, a.heads, a.ffn, 0.1) for _ in range(a.layers))).train()
    n_c, n_h = (sum(p.numel() for p in m.parameters()) for m in (compiled, hand))
    assert n_c == n_h, (n_c, n_h)
    x = torch.randn(a.batch, a.seq, a.d_model)
    models = {"specc": compiled, "hand-written": hand}
    for _ in range(a.warmup):
        for m in models.values():
            step(m, x)
    times: dict[str, list[float]] = {k: [] for k in models}
    for rep in range(a.reps):
        order = list(models) if rep % 2 == 0 else list(reversed(models))
        for name in order:
            times[name].append(step(models[name], x))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoder {a.layers} x d_model {a.d_model}, "
        f"{a.heads} heads, FFN {a.ffn}; batch {a.batch}, T {a.seq}; {n_c:,} params; {a.reps} interleaved reps"
    )
    print(f"{'model':<14} {'median ms/step':>15} {'min':>9} {'max':>9}")
    for k, v in times.items():
        print(f"{k:<14} {med[k] * 1e3:>15.1f} {min(v) * 1e3:>9.1f} {max(v) * 1e3:>9.1f}")
    print(f"ratio hand-written / specc = {med['hand-written'] / med['specc']:.3f}  (target >= 0.98)")


if __name__ == "__main__":
    main()
