"""Build cost against graph size: ``specc`` vs the same network written by hand, 10 → 10,000 layers.

Three families of stacks, each written once as a spec (``repeat``) and once by hand:

* ``mlp``      — ``linear(16)`` + ``relu`` pairs written out one by one; by hand an ``nn.Sequential``
  of the same layers;
* ``residual`` — ``residual: [linear(16), relu]`` blocks (+ the ``add`` node); by hand a small
  ``Residual`` module per block in an ``nn.Sequential``;
* ``dense``    — DenseNet-style blocks over features (2 layers of ``linear(8)`` + ``relu``, each
  concatenated to its input, then a ``linear(16)`` transition); by hand a ``Dense`` module per block.

``layers`` counts graph nodes (= modules of the hand-written network, plus the parameter-free add/
concat nodes that a hand-written ``forward`` does inline). For every size the two constructions
alternate (ABBA) on one thread and the table shows medians and the median of the paired ratios;
the growth exponent is the least-squares slope of log(time) over log(layers) from 1,000 to 10,000.
``build`` is :func:`specc.nn.build` on a checked graph (construction + initialisation); ``total`` adds
``check`` (YAML → typed graph). ``check``, ``render`` and ``graph`` (Mermaid) are timed on the same
sweep. The second table compares BERT-base and GPT-2 small with their hand-written references from
``tests/reference_models.py`` (torch's default initialisation, once), both built from scratch.

Run: .venv/bin/python benchmarks/bench_build.py [--reps 5] [--max 10000]   (figures go to RESULTS.md)
     .venv/bin/python benchmarks/bench_build.py --kinds mlp --sizes 5000 --reps 40 --no-references
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from reference_models import REFERENCES  # noqa: E402

from specc.api import check, check_text  # noqa: E402
from specc.graphviz import render_graph  # noqa: E402
from specc.nn import build  # noqa: E402
from specc.summary import render  # noqa: E402

WIDTH = 16
SIZES = (10, 100, 1000, 2000, 5000, 10000)
FIT_FROM = 1000


# ---------------------------------------------------------------------------------- the stacks


def spec_text(kind: str, layers: int) -> str:
    """A spec of about ``layers`` nodes of the given kind."""
    head = f"specc: 1\nname: {kind}_{layers}\ninputs:\n  x: {{shape: [{WIDTH}]}}\nlayers:\n"
    if kind == "mlp":  # written out layer by layer: a flat module list, as nn.Sequential's
        body = f"  - linear: {WIDTH}\n  - relu\n" * (layers // 2)
    elif kind == "residual":
        body = f"  - repeat: {layers // 3}\n    body:\n      residual: [linear: {WIDTH}, relu]\n      shortcut: identity\n"
    else:  # 2 dense layers of 3 nodes (linear, relu, concat) + a transition: 7 nodes per block
        body = (
            f"  - repeat: {max(1, layers // 7)}\n    body:\n"
            "      - dense: [linear: 8, relu]\n        num_layers: 2\n"
            f"      - linear: {WIDTH}\n"
        )
    return head + body


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(WIDTH + 8 * i, 8), nn.ReLU()) for i in range(2))
        self.transition = nn.Linear(WIDTH + 16, WIDTH)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=-1)
        return self.transition(x)  # type: ignore[no-any-return]


def by_hand(kind: str, layers: int) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(*(m for _ in range(layers // 2) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())))
    if kind == "residual":
        return nn.Sequential(*(Residual() for _ in range(layers // 3)))
    return nn.Sequential(*(Dense() for _ in range(max(1, layers // 7))))


# ---------------------------------------------------------------------------------- timing


GC_OFF = False  # --gc-off: time with the cyclic garbage collector paused (timeit's convention)


def timed(fn: Callable[[], object]) -> float:
    """CPU seconds of one call (one thread: the wall time of an idle machine, less moved by other
    jobs), starting from a collected heap so earlier garbage is not charged to it."""
    gc.collect()
    if GC_OFF:
        gc.disable()
    start = time.process_time()
    try:
        fn()
        return time.process_time() - start
    finally:
        gc.enable()


SPREAD: dict[tuple[str, int], tuple[float, float]] = {}  # (stack, layers) -> p10, p90 of the build ratios


def paired(
    a: Callable[[], object], b: Callable[[], object], reps: int, spread: tuple[str, int] | None = None
) -> tuple[float, float, float]:
    """Median time of ``a``, of ``b`` and median of the paired ratios a/b, alternating ABBA
    (``spread``: record the ratios' 10th and 90th percentiles under that key)."""
    ta, tb = [], []
    a(), b()  # warm-up: first-touch page faults of fresh memory
    for r in range(reps):
        if r % 2 == 0:
            ta.append(timed(a))
            tb.append(timed(b))
        else:
            tb.append(timed(b))
            ta.append(timed(a))
    ratios = [x / y for x, y in zip(ta, tb, strict=True)]
    if spread is not None:
        deciles = statistics.quantiles(ratios, n=10, method="inclusive")
        SPREAD[spread] = (deciles[0], deciles[-1])
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def exponent(sizes: list[int], times: list[float]) -> float:
    """Least-squares slope of log(time) over log(size)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(t) for t in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def measure(kind: str, n: int, reps: int) -> dict[str, float]:
    """Every figure of one row: the build against the hand-written network, check, render, graph."""
    text = spec_text(kind, n)
    graph = check_text(text)
    r = max(3, reps if n >= 1000 else reps * 4)
    spec_s, hand_s, ratio = paired(lambda: build(graph), lambda: by_hand(kind, n), r, spread=(kind, n))
    total_s, _, total_ratio = paired(lambda: build(check_text(text)), lambda: by_hand(kind, n), r)
    return {
        "layers": len(graph.nodes),
        "build": spec_s,
        "hand": hand_s,
        "ratio": ratio,
        "total": total_s,
        "total_ratio": total_ratio,
        "check": statistics.median(timed(lambda: check_text(text)) for _ in range(r)),
        "render": statistics.median(timed(lambda: render(graph)) for _ in range(r)),
        "graph": statistics.median(timed(lambda: render_graph(graph, "mermaid")) for _ in range(r)),
    }


def sweep(kind: str, sizes: tuple[int, ...], reps: int) -> list[dict[str, float]]:
    rows = []
    for n in sizes:
        row = measure(kind, n, reps)
        rows.append(row)
        print(
            f"{kind:<9} {int(row['layers']):>6} build {row['build'] * 1e3:9.1f} ms  "
            f"by hand {row['hand'] * 1e3:9.1f} ms  paired {row['ratio']:5.2f}x "
            f"(p10 {SPREAD[kind, n][0]:.2f}, p90 {SPREAD[kind, n][1]:.2f})  "
            f"check+build {row['total'] * 1e3:9.1f} ms ({row['total_ratio']:5.2f}x)  "
            f"check {row['check'] * 1e3:8.1f}  render {row['render'] * 1e3:8.1f}  "
            f"graph {row['graph'] * 1e3:8.1f} ms",
            flush=True,
        )
    return rows


def reference(name: str, reps: int) -> None:
    graph = check(ROOT / "specs" / f"{name}.yaml")
    spec_s, hand_s, ratio = paired(lambda: build(graph), REFERENCES[name], reps)
    print(f"{name:<12} specc {spec_s:7.3f} s  by hand {hand_s:7.3f} s  paired {ratio:5.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="paired repetitions per size (x4 below 1,000)")
    parser.add_argument("--max", type=int, default=SIZES[-1], help="largest size")
    parser.add_argument("--kinds", default="mlp,residual,dense")
    parser.add_argument("--sizes", default=None, help="comma-separated layer counts (default: the sweep)")
    parser.add_argument("--no-references", action="store_true")
    parser.add_argument("--gc-off", action="store_true", help="pause the garbage collector while timing")
    args = parser.parse_args()
    global GC_OFF
    GC_OFF = args.gc_off
    torch.set_num_threads(1)
    load = os.getloadavg()
    print(
        f"{date.today()}  {platform.processor() or platform.machine()}  torch {torch.__version__}  "
        f"1 thread  gc {'paused' if GC_OFF else 'on'}  load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}"
    )
    sweep_sizes = tuple(int(n) for n in args.sizes.split(",")) if args.sizes else SIZES
    sizes = tuple(s for s in sweep_sizes if s <= args.max)
    for kind in args.kinds.split(","):
        rows = sweep(kind, sizes, args.reps)
        fit = [r for r in rows if r["layers"] >= FIT_FROM * 0.9]
        if len(fit) >= 2:
            ns = [int(r["layers"]) for r in fit]
            exps = {
                k: exponent(ns, [r[k] for r in fit])
                for k in ("build", "hand", "total", "check", "render", "graph")
            }
            print(
                f"{kind:<9} growth exponent (≥{FIT_FROM} layers): "
                + "  ".join(f"{k} {v:.2f}" for k, v in exps.items())
            )
    if not args.no_references:
        print("\nreference networks built from scratch (by hand: torch's default init, once)")
        for name in ("bert_base", "gpt2_small"):
            reference(name, args.reps)
    load = os.getloadavg()
    print(f"load average after: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
    main()
