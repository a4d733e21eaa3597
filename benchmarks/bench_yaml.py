"""YAML loading: specc's loader (limits + source map, one pass over libyaml's events) next to PyYAML's
``yaml.load`` with ``CSafeLoader`` (C parser + composer) and ``SafeLoader`` (pure Python), on the
same ~1 MB spec text. The three are timed in turn within each round (order rotated every round);
the figure is the median over rounds of the per-round ratio specc / CSafeLoader.

Run: .venv/bin/python benchmarks/bench_yaml.py [--rounds 15] [--kib 1000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import yaml

from specc.load import LIMITS, Limits, load_text


def spec_text(kib: int) -> str:
    """A realistic spec of about ``kib`` KiB: vars, blocks and a long list of layers with arguments."""
    head = [
        "specc: 1",
        "name: big",
        "inputs: {image: {shape: [3, 224, 224]}}",
        "defaults: {norm: batch, activation: relu}",
        "vars: {width: 64, classes: 1000, drop: 0.1}",
        "layers:",
    ]
    item = [
        "  - conv2d: {out_channels: $width, kernel_size: 3, stride: 1, padding: 1, bias: false, name: c%d}",
        "  - norm: {name: n%d}",
        "  - act",
        "  - residual:",
        "      - conv2d: {out_channels: '$width * 2', kernel_size: 3, padding: 1, bias: false}",
        "      - norm",
        "    shortcut: auto",
        "    then: act  # a comment",
    ]
    lines = list(head)
    size = sum(len(x) + 1 for x in lines)
    k = 0
    while size < kib * 1024:
        for line in item:
            text = line % k if "%d" in line else line
            lines.append(text)
            size += len(text) + 1
        k += 1
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--kib", type=int, default=1000)
    args = parser.parse_args()
    text = spec_text(args.kib)
    assert len(text.encode()) <= LIMITS.max_bytes, "the spec must stay under the loader's size limit"
    # ~8 bytes per YAML node: a 1 MB spec has more nodes than the default limit allows, so the node
    # limit is raised here (it is still counted and checked on every event, as in normal use)
    limits = Limits(max_nodes=10_000_000)
    loaders: dict[str, Callable[[], Any]] = {
        "specc load_text": lambda: load_text(text, "big.yaml", limits),
        "yaml.load CSafeLoader": lambda: yaml.load(text, Loader=yaml.CSafeLoader),  # noqa: S506 - safe loader
        "yaml.load SafeLoader": lambda: yaml.load(text, Loader=yaml.SafeLoader),  # noqa: S506 - safe loader
    }
    assert loaders["specc load_text"]() == loaders["yaml.load CSafeLoader"](), "loaders disagree"
    names = list(loaders)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            loaders[name]()
            times[name].append(time.perf_counter() - start)
    base = times["yaml.load CSafeLoader"]
    print(f"spec: {len(text.encode()) / 1024:.0f} KiB, {text.count(chr(10))} lines, {args.rounds} rounds")
    print(f"{'loader':<24} {'median s':>9} {'paired ratio / CSafeLoader':>28}")
    for name in names:
        ratio = statistics.median(t / b for t, b in zip(times[name], base, strict=True))
        print(f"{name:<24} {statistics.median(times[name]):>9.3f} {ratio:>28.2f}")


if __name__ == "__main__":
    main()
