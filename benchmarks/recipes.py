"""Run every bundled spec's training recipe and print its result (a table for benchmarks/RESULTS.md).

Each spec's header names its ``specc train`` command (``#   specc train specs/X.yaml --data D ...``)
and its ``train:`` section holds the recipe; this script runs that command as written (``--out`` in a
temporary folder, ``--quiet --device cpu`` added) and reports the final test metric and wall time.
``bilstm_classifier`` trains on a generated token-classification set (``my_reviews.npz``: does a
sequence hold more tokens from the lower half of the vocabulary than from the upper half?).

    .venv/bin/python benchmarks/recipes.py                 # all specs (about an hour on 2 cores)
    .venv/bin/python benchmarks/recipes.py lenet mlp       # some
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
METRICS = ("test_accuracy", "test_exact_match", "test_perplexity", "test_loss")


def command(spec: Path) -> list[str] | None:
    """The ``specc train`` command in the spec's header comment, or None."""
    for line in spec.read_text().splitlines():
        m = re.match(r"#\s+(specc train .*?)(\s+#.*)?$", line)
        if m:
            return shlex.split(m.group(1))
    return None


def reviews(path: Path, n: int = 1500, length: int = 20, seed: int = 0) -> None:
    """A toy sentiment set: ids 1..99; label 1 when ids < 50 outnumber ids >= 50."""
    rng = np.random.default_rng(seed)
    bias = rng.uniform(0.3, 0.7, size=(n, 1))
    low = rng.random((n, length)) < bias
    x = np.where(low, rng.integers(1, 50, (n, length)), rng.integers(50, 100, (n, length)))
    y = (low.sum(1) * 2 > length).astype(np.int64)
    np.savez(path, x=x.astype(np.int64), y=y)


def run(spec: Path, tmp: Path) -> dict[str, object]:
    cmd = command(spec)
    if cmd is None:
        return {"spec": spec.stem, "status": "no train command"}
    args = cmd[2:]
    if "my_reviews.npz" in args:
        reviews(tmp / "my_reviews.npz")
        args = [str(tmp / "my_reviews.npz") if a == "my_reviews.npz" else a for a in args]
    out = tmp / spec.stem
    args[args.index("--out") + 1] = str(out)
    full = [sys.executable, "-m", "specc.cli", "train", *args, "--quiet", "--device", "cpu"]
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"spec": spec.stem, "status": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    final = json.loads((out / "metrics.json").read_text())["final"]
    metric = next(m for m in METRICS if m in final)
    return {
        "spec": spec.stem,
        "command": " ".join(cmd),
        "metric": metric,
        "value": final[metric],
        "epochs": final["epochs"],
        "steps": final["step"],
        "wall_s": wall,
    }


def main() -> None:
    names = sys.argv[1:]
    specs = [p for p in sorted((ROOT / "specs").glob("*.yaml")) if not names or p.stem in names]
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("| spec | command | result | epochs / steps | wall |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in specs:
            r = run(spec, Path(tmp))
            if "metric" not in r:
                print(f"| {r['spec']} | | {r['status']} | | |", flush=True)
                continue
            value = float(r["value"])  # type: ignore[arg-type]
            shown = f"{value:.2f}" if r["metric"] == "test_perplexity" else f"{value:.2%}"
            print(
                f"| {r['spec']} | `{r['command']}` | {r['metric']} {shown} | {r['epochs']} / {r['steps']} "
                f"| {float(r['wall_s']):.0f} s |",  # type: ignore[arg-type]
                flush=True,
            )


if __name__ == "__main__":
    main()
