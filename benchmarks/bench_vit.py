"""Training-step time of the compiled ``specs/vit_b_16.yaml`` vs the same ViT hand-written in PyTorch.

The compiled side is the bundled spec (``--set`` for depth and resolution); the hand-written side is
torchvision's VisionTransformer structure in plain modules (conv patchify, class token, position
table, pre-norm blocks, head on the class token) with the attention written out (fused q/k/v linear,
matmul/softmax, out projection). A second hand-written variant uses ``nn.MultiheadAttention`` as
torchvision does. One step = zero_grad + forward + mean-square loss + backward, train mode. Steps are
interleaved (the order rotates every rep); each records wall time and the thread's CPU time, and the
figures are the medians of the paired ratios hand-written / specc of each rep (>= 0.98 means specc is
within 2 %). One thread unless ``--threads``.

    .venv/bin/python benchmarks/bench_vit.py [--layers 12] [--res 224] [--batch 1] [--reps 10]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn

SPEC = Path(__file__).resolve().parent.parent / "specs" / "vit_b_16.yaml"


class Attention(nn.Module):
    """Self-attention with nn.MultiheadAttention's parameters, written out (matmul, softmax)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.in_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.reshape(b, t, self.heads, self.head_dim).transpose(1, 2) for z in self.in_proj(x).chunk(3, -1)
        )
        scores = torch.matmul(q * (1.0 / math.sqrt(self.head_dim)), k.transpose(-2, -1))  # (B, h, T, T)
        return self.out_proj(torch.matmul(scores.softmax(-1), v).transpose(1, 2).reshape(b, t, d))


class TorchMHA(nn.Module):
    """nn.MultiheadAttention, as torchvision's EncoderBlock calls it."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mha(x, x, x, need_weights=False)[0]


class Block(nn.Module):
    def __init__(self, d: int, heads: int, mlp: int, attention: type[nn.Module]) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
        self.attn = attention(d, heads)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ViT(nn.Module):
    def __init__(
        self,
        res: int,
        patch: int,
        layers: int,
        d: int,
        heads: int,
        mlp: int,
        classes: int,
        attention: type[nn.Module],
    ) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, 1, d))
        self.conv_proj = nn.Conv2d(3, d, patch, patch)
        self.pos_embedding = nn.Parameter(torch.randn(1, (res // patch) ** 2 + 1, d) * 0.02)
        self.blocks = nn.Sequential(*(Block(d, heads, mlp, attention) for _ in range(layers)))
        self.ln = nn.LayerNorm(d, eps=1e-6)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.blocks(x))[:, 0])


def step(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """Wall and CPU time of one step (CPU time of this thread: less disturbed by other jobs on a
    shared machine, since time spent waiting for a core is not counted)."""
    start, cpu = time.perf_counter(), time.thread_time()
    model.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    return time.perf_counter() - start, time.thread_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--res", type=int, default=224)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)

    from specc.nn import build

    torch.manual_seed(0)
    compiled = build(str(SPEC), sets=(f"num_layers={a.layers}", f"res={a.res}")).train()
    dims = {
        "res": a.res,
        "patch": 16,
        "layers": a.layers,
        "d": 768,
        "heads": 12,
        "mlp": 3072,
        "classes": 1000,
    }
    models: dict[str, nn.Module] = {
        "specc": compiled,
        "hand-written": ViT(**dims, attention=Attention).train(),
        "hand nn.MHA": ViT(**dims, attention=TorchMHA).train(),
    }
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()}
    assert len(set(counts.values())) == 1, counts
    x = torch.randn(a.batch, 3, a.res, a.res)
    for _ in range(a.warmup):
        for m in models.values():
            step(m, x)
    wall: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}
    names = list(models)
    for rep in range(a.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            w, c = step(models[name], x)
            wall[name].append(w)
            cpu[name].append(c)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); ViT-B/16 width (768, 12 heads, MLP 3072), "
        f"{a.layers} layers, {a.res}x{a.res} ({(a.res // 16) ** 2 + 1} tokens), batch {a.batch}; "
        f"{counts['specc']:,} params; {a.reps} interleaved reps"
    )
    print(
        f"{'model':<14} {'wall ms (median/min)':>21} {'paired':>7} {'CPU ms (median/min)':>21} {'paired':>7}"
    )
    for k in models:
        row = [f"{k:<14}"]
        for t in (wall, cpu):
            ratio = statistics.median(h / s for h, s in zip(t[k], t["specc"], strict=True))
            row.append(f"{statistics.median(t[k]) * 1e3:>12.1f} / {min(t[k]) * 1e3:>6.1f} {ratio:>7.3f}")
        print(" ".join(row))
    print("paired = median over reps of (that model's step / specc's step); >= 0.98: specc within 2 %")


if __name__ == "__main__":
    main()
