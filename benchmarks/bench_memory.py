"""The static training-memory estimate against the measured peak of a real training step (CPU).

For each model and batch size: ``specc.graph.memory.estimate_memory`` (``device="cpu"``, what
``specc check --memory --device cpu`` prints) next to the allocation peak of one steady-state
training step as ``specc train`` runs it (specc's own optimizer and loss: ``zero_grad``, forward,
cross-entropy, backward, the non-finite check, ``optimizer.step()``), measured after a first step
has created the optimizer state. (``zero_grad`` runs just before the profiled window: the profiler
cannot count the release of a block allocated before it started.)

How the peak is measured (``tests/memory_probe.py``): ``torch.profiler`` with
``profile_memory=True`` records every allocation and free of torch's CPU allocator; their running
sum from the bytes alive at the start gives the peak, the CPU counterpart of
``torch.cuda.max_memory_allocated`` (temporaries inside ops included).

Run: .venv/bin/python benchmarks/bench_memory.py [--only resnet18,...]   (figures go to RESULTS.md)
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent

sys.path.insert(0, str(ROOT / "tests"))

from memory_probe import measured_peak  # noqa: E402

from specc.api import check  # noqa: E402
from specc.graph import Graph  # noqa: E402
from specc.graph.memory import estimate_memory, human_bytes  # noqa: E402

# specs/llama.yaml (TinyLlama's layout: RMSNorm, rotary embeddings, grouped-query attention through
# scaled_dot_product_attention, SwiGLU, untied head) at a size this machine trains: 8 layers of 512.
LLAMA_SETS = [
    "hidden=512", "num_layers=8", "num_heads=8", "num_kv_heads=2", "intermediate=1408", "max_positions=256",
]  # fmt: skip

# (name, graph factory, batch sizes)
MODELS: list[tuple[str, Callable[[], Graph], tuple[int, int]]] = [
    ("resnet18", lambda: check(ROOT / "specs/resnet18.yaml"), (4, 16)),
    ("resnet50", lambda: check(ROOT / "specs/resnet50.yaml"), (2, 8)),
    ("bert_base", lambda: check(ROOT / "specs/bert_base.yaml", ["dims.seq=128"]), (4, 16)),
    ("gpt2_small", lambda: check(ROOT / "specs/gpt2_small.yaml", ["dims.seq=256"]), (2, 8)),
    ("llama", lambda: check(ROOT / "specs/llama.yaml", LLAMA_SETS), (2, 8)),
    # vision specs with today's ops: upsample/conv_transpose/concat (U-Net), permute, layer(channels),
    # scale (ConvNeXt), parameter, slice (ViT), depthwise convs and SE blocks (MobileNetV2, EfficientNet)
    ("unet", lambda: check(ROOT / "specs/unet.yaml", ["res=128"]), (2, 8)),
    ("convnext_tiny", lambda: check(ROOT / "specs/convnext_tiny.yaml"), (2, 8)),
    ("vit_b_16", lambda: check(ROOT / "specs/vit_b_16.yaml"), (2, 8)),
    ("mobilenet_v2", lambda: check(ROOT / "specs/mobilenet_v2.yaml"), (4, 16)),
    ("efficientnet_b0", lambda: check(ROOT / "specs/efficientnet_b0.yaml"), (4, 16)),
]


# ------------------------------------------------------------------------------- the table


def compare(name: str, graph: Graph, batch: int, amp: str = "none") -> dict[str, Any]:
    est = estimate_memory(graph, batch, "adamw", amp, "cpu")
    start = time.perf_counter()
    meas = measured_peak(graph, batch, "adamw", amp)
    row = {
        "model": name,
        "batch": batch,
        "amp": amp,
        "estimate": est.peak,
        "estimate_phase": est.peak_phase,
        "measured": meas["peak"],
        "measured_phases": {k: v for k, v in meas.items() if k not in ("peak",)},
        "ratio": est.peak / meas["peak"],
        "seconds": time.perf_counter() - start,
    }
    phases = ", ".join(f"{k} {human_bytes(v)}" for k, v in row["measured_phases"].items())
    print(
        f"{name:<12} batch {batch:>3} {amp:<5} estimate {human_bytes(est.peak):>11} ({est.peak_phase:<9}) "
        f"measured {human_bytes(meas['peak']):>11}  ratio {row['ratio']:.3f}  [{phases}]  "
        f"{row['seconds']:.0f} s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--amp", default="none", choices=["none", "bf16"], help="autocast dtype (CPU)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(
        f"{date.today()}  {platform.processor() or platform.machine()}  torch {torch.__version__}  "
        f"{args.threads} threads  load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    only = set(args.only.split(",")) - {""}
    worst = 0.0
    for name, factory, batches in MODELS:
        if only and name not in only:
            continue
        graph = factory()
        for b in batches:
            row = compare(name, graph, b, args.amp)
            worst = max(worst, abs(row["ratio"] - 1))
            gc.collect()
    print(f"largest deviation: {100 * worst:.1f} %")


if __name__ == "__main__":
    sys.exit(main())
