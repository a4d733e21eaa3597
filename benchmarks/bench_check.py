"""`specc check` wall time on every bundled spec, next to the cost of importing torch alone.

Run: .venv/bin/python benchmarks/bench_check.py   (prints a table; figures go to RESULTS.md)
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPS = 5


def wall(cmd: list[str]) -> float:
    times = []
    for _ in range(REPS):
        start = time.perf_counter()
        subprocess.run(cmd, check=False, capture_output=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    specc = [sys.executable, "-m", "specc.cli", "check"]
    torch_import = wall([sys.executable, "-c", "import torch"])
    bare = wall([sys.executable, "-c", "pass"])
    rows = []
    for spec in sorted((ROOT / "specs").glob("*.yaml")):
        rows.append((spec.name, wall([*specc, str(spec)])))
    print(f"{'spec':<28} {'check (s)':>10} {'/ import torch':>15}")
    for name, t in rows:
        print(f"{name:<28} {t:>10.3f} {t / torch_import:>15.2f}")
    print(f"{'python startup':<28} {bare:>10.3f}")
    print(f"{'import torch alone':<28} {torch_import:>10.3f}")
    if rows:
        print(f"max check time: {max(t for _, t in rows):.3f} s")


if __name__ == "__main__":
    main()
