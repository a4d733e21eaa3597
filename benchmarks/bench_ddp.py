"""Data-parallel throughput on CPU (issue 7): samples/s of 1 vs 2 processes for a small CNN.

    .venv/bin/python benchmarks/bench_ddp.py [--steps 150]

Both runs use ``specc train`` (the 2-process one through ``--nproc-per-node 2``, gloo) with the same
global batch, OMP_NUM_THREADS=1 per process; the table shows the training samples/s of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SPEC = """specc: 1
name: ddp_cnn
inputs: {image: {shape: [1, 16, 16]}}
layers:
  - conv2d: {out_channels: 16, kernel_size: 3, padding: 1}
  - act
  - maxpool2d: 2
  - conv2d: {out_channels: 32, kernel_size: 3, padding: 1}
  - act
  - maxpool2d: 2
  - flatten
  - linear: 64
  - act
  - linear: {out_features: 10, name: logits}
"""


def _run(spec: Path, out: Path, steps: int, nproc: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        sys.executable,
        "-m",
        "specc.cli",
        "train",
        str(spec),
        "--data",
        "digits",
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
        "--set",
        "train.epochs=null",
        "--set",
        f"train.max_steps={steps}",
        "--set",
        "train.batch_size=128",
        "--set",
        "train.optimizer=sgd",
        "--set",
        "train.lr=0.05",
    ]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    rows = json.loads((out / "metrics.json").read_text())["epochs"]
    return float(sum(r["samples_per_s"] for r in rows[1:] or rows) / len(rows[1:] or rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "cnn.yaml"
        spec.write_text(SPEC)
        one = _run(spec, Path(tmp) / "one", args.steps, 1)
        two = _run(spec, Path(tmp) / "two", args.steps, 2)
    print(f"cpus: {os.cpu_count()}, OMP_NUM_THREADS=1 per process, global batch 128, {args.steps} steps")
    print("| processes | samples/s | speed-up |\n|---|---|---|")
    print(f"| 1 | {one:,.0f} | 1.00x |")
    print(f"| 2 (gloo) | {two:,.0f} | {two / one:.2f}x |")


if __name__ == "__main__":
    main()
