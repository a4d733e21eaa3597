"""`specc check` on every bundled spec: wall time and CPU time of a fresh process, next to the cost of
importing torch alone; optionally against another source tree of specc, interleaved.

Run: .venv/bin/python benchmarks/bench_check.py [--reps 5] [--baseline DIR]

``--baseline DIR`` runs the same commands with ``PYTHONPATH=DIR`` (e.g. ``git archive main | tar -x
-C /tmp/main``) right after each measured one, so both see the same machine state; the paired ratio
is the median of per-pair CPU-time ratios. CPU time (user + system of the child) is the figure to
read on a shared machine: wall time also counts waiting for a core.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], pythonpath: str | None = None) -> tuple[float, float]:
    """Wall and CPU seconds of one fresh process."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(cmd, check=False, capture_output=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--baseline", help="another specc source tree to compare with (PYTHONPATH)")
    args = parser.parse_args()
    specc = [sys.executable, "-m", "specc.cli", "check"]
    torch = [run([sys.executable, "-c", "import torch"]) for _ in range(args.reps)]
    bare = [run([sys.executable, "-c", "pass"]) for _ in range(args.reps)]
    head = f"{'spec':<26} {'wall (s)':>9} {'cpu (s)':>8}"
    print(head + (f" {'baseline cpu':>13} {'paired ratio':>13}" if args.baseline else ""))
    worst = 0.0
    for spec in sorted((ROOT / "specs").glob("*.yaml")):
        ours, base = [], []
        for _ in range(args.reps):
            ours.append(run([*specc, str(spec)]))
            if args.baseline:
                base.append(run([*specc, str(spec)], args.baseline))
        wall = statistics.median(w for w, _ in ours)
        cpu = statistics.median(c for _, c in ours)
        worst = max(worst, cpu)
        line = f"{spec.name:<26} {wall:>9.3f} {cpu:>8.3f}"
        if base:
            ratio = statistics.median(o[1] / b[1] for o, b in zip(ours, base, strict=True))
            line += f" {statistics.median(c for _, c in base):>13.3f} {ratio:>13.2f}"
        print(line)
    print(
        f"{'python startup':<26} {statistics.median(w for w, _ in bare):>9.3f} {statistics.median(c for _, c in bare):>8.3f}"
    )
    print(
        f"{'import torch alone':<26} {statistics.median(w for w, _ in torch):>9.3f} {statistics.median(c for _, c in torch):>8.3f}"
    )
    print(f"max check CPU time: {worst:.3f} s")


if __name__ == "__main__":
    main()
