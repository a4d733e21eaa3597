"""Compiled CNN specs vs the hand-written torch references: training-step time, side by side.

For each pair the compiled model (``specs/NAME.yaml``) and the reference from
``tests/reference_models.py`` get the same input and labels; one step is forward, cross-entropy
and backward. Steps alternate between the two (ABBA order, after warm-up) so drifts in machine
speed hit both equally, and the median of each is reported. ``ratio`` = reference / compiled
median step time; ``paired`` = median over repetitions of the same ratio taken step by step
(robust when other processes share the CPU). 1.00 means equal; >= 0.98 is the target.

Also reported: the time to build ``specs/resnet50.yaml`` (check + construct + initialise) with
torch already imported, and the static check alone.

Run: .venv/bin/python benchmarks/bench_cnn.py [--reps N] [--batch B]   (figures go to RESULTS.md)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from reference_models import REFERENCES  # noqa: E402

from specc.api import check  # noqa: E402
from specc.nn import build  # noqa: E402

# (spec, input shape): small inputs keep a 2-core CPU run short
PAIRS: list[tuple[str, tuple[int, int, int]]] = [("resnet18", (3, 64, 64)), ("densenet121", (3, 64, 64))]


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], float]:
    def step() -> float:
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return time.perf_counter() - start

    return step


def compare(name: str, shape: tuple[int, int, int], batch: int, reps: int) -> dict[str, float]:
    torch.manual_seed(0)
    reference = REFERENCES[name]().train()
    compiled = build(
        str(ROOT / "specs" / f"{name}.yaml"), sets=(f"inputs.image.shape=[{','.join(map(str, shape))}]",)
    )
    compiled.train()
    with torch.no_grad():  # same weights, so both do exactly the same arithmetic
        for mine, theirs in zip(compiled.state_dict().values(), reference.state_dict().values(), strict=True):
            mine.copy_(theirs)
    x = torch.randn(batch, *shape)
    y = torch.randint(0, 1000, (batch,))
    run = {"reference": step_fn(reference, x, y), "compiled": step_fn(compiled, x, y)}
    for fn in run.values():  # warm-up (allocator, kernels)
        fn()
        fn()
    times: dict[str, list[float]] = {"reference": [], "compiled": []}
    for r in range(reps):
        order = ("reference", "compiled") if r % 2 == 0 else ("compiled", "reference")
        for key in order:
            times[key].append(run[key]())
    ref, comp = statistics.median(times["reference"]), statistics.median(times["compiled"])
    paired = statistics.median(a / b for a, b in zip(times["reference"], times["compiled"], strict=True))
    return {"reference": ref, "compiled": comp, "ratio": ref / comp, "paired": paired}


def build_time(spec: Path, reps: int = 5) -> tuple[float, float]:
    """Median seconds for check alone and for check + build on CPU (torch already imported)."""
    checks, builds = [], []
    for _ in range(reps):
        start = time.perf_counter()
        check(spec)
        checks.append(time.perf_counter() - start)
        start = time.perf_counter()
        build(str(spec))
        builds.append(time.perf_counter() - start)
    return statistics.median(checks), statistics.median(builds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.reps} reps"
    )
    print(f"{'model':<14} {'input':<11} {'reference ms':>13} {'compiled ms':>12} {'ratio':>7} {'paired':>7}")
    for name, shape in PAIRS:
        r = compare(name, shape, args.batch, args.reps)
        dims = "x".join(map(str, shape))
        print(
            f"{name:<14} {dims:<11} {r['reference'] * 1e3:>13.1f} {r['compiled'] * 1e3:>12.1f} {r['ratio']:>7.3f} {r['paired']:>7.3f}"
        )
    t_check, t_build = build_time(ROOT / "specs" / "resnet50.yaml")
    print(f"resnet50.yaml: check {t_check * 1e3:.1f} ms, check + build (CPU, init) {t_build * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
