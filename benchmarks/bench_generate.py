"""Greedy generation speed with a key/value cache vs without, in onnxruntime (specc.runtime.generate).

For each model the spec is exported twice from the same weights: ``specc export --kv-cache`` (each
new token is one step over that token, with the carried keys/values or recurrent states) and a plain
export (each new token re-runs the whole sequence so far). Both generate the same greedy tokens
(checked) from a 16-token prompt; the figure is generated tokens per second at 64 and 256 new tokens.
Runs are interleaved (the order alternates each rep) and each rep gives a paired ratio cached /
uncached; medians are reported. One onnxruntime thread, so that the A/B compares work, not
threading. Models (untrained weights: the speed does not depend on them):

* GPT-2 style: ``specs/gpt2_small.yaml`` reduced to 4 layers, hidden 128, 4 heads, vocab 512,
  512 positions;
* LLaMA style: ``specs/llama.yaml`` reduced to 4 layers, hidden 128, 4 query / 2 key-value heads,
  SwiGLU 256, vocab 512 (rotary positions, an attention-mask input);
* the char LSTM LM ``specs/lstm_lm.yaml`` at its own size (embed 64, hidden 256, vocab 128).

    .venv/bin/python benchmarks/bench_generate.py [--reps 5] [--tokens 64 256]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

from specc.export import export_spec
from specc.runtime import load
from specc.runtime.generate import Generator, Options

ROOT = Path(__file__).resolve().parent.parent
MODELS: dict[str, tuple[str, str | None, list[str]]] = {
    "gpt2 (4x128)": (
        "gpt2_small.yaml",
        "tiny",
        ["num_layers=4", "hidden=128", "num_heads=4", "vocab=512", "n_positions=512"],
    ),
    "llama (4x128, GQA)": (
        "llama.yaml",
        "tiny",
        ["num_layers=4", "hidden=128", "num_heads=4", "num_kv_heads=2", "intermediate=256", "vocab=512"],
    ),
    "lstm_lm (256)": ("lstm_lm.yaml", None, []),
}
PROMPT = " ".join(str(7 + 3 * i) for i in range(16))


def _run(gen: Generator, new: int) -> tuple[float, float, list[int]]:
    """(wall s, process CPU s, ids) of one greedy generation of ``new`` tokens."""
    wall, cpu = time.perf_counter(), time.process_time()
    ids = gen.generate(PROMPT, Options(max_new_tokens=new)).ids
    return time.perf_counter() - wall, time.process_time() - cpu, ids


def bench(name: str, folder: Path, tokens: list[int], reps: int) -> list[dict[str, float | str | int]]:
    spec, scale, sets = MODELS[name]
    files = {}
    for cached in (True, False):
        out = folder / f"{spec.split('.')[0]}{'.kv' if cached else ''}.onnx"
        export_spec(ROOT / "specs" / spec, out, scale=scale, sets=sets, kv_cache=cached)
        files[cached] = Generator(load(out, intra_op_threads=1))
    rows = []
    for new in tokens:
        for gen in files.values():
            _run(gen, new)  # warm-up
        times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        ratios, cpu_ratios = [], []
        for rep in range(reps):
            order = (True, False) if rep % 2 == 0 else (False, True)
            done = {}
            for cached in order:
                wall, cpu, ids = _run(files[cached], new)
                assert len(ids) == new, (name, cached, len(ids))
                done[cached] = (wall, cpu, ids)
                times[cached].append((wall, cpu))
            assert done[True][2] == done[False][2], f"{name}: cached and uncached tokens differ"
            ratios.append(done[False][0] / done[True][0])
            cpu_ratios.append(done[False][1] / done[True][1])
        row: dict[str, float | str | int] = {"model": name, "new_tokens": new}
        for cached, label in ((True, "cached"), (False, "uncached")):
            row[f"{label}_tok_s"] = new / statistics.median(w for w, _ in times[cached])
            row[f"{label}_cpu_tok_s"] = new / statistics.median(c for _, c in times[cached])
        row["speedup_wall"] = statistics.median(ratios)
        row["speedup_cpu"] = statistics.median(cpu_ratios)
        rows.append(row)
        print(
            f"{name:20s} {new:4d} tokens: cached {row['cached_tok_s']:8.1f} tok/s, uncached "
            f"{row['uncached_tok_s']:8.1f} tok/s (wall); paired speedup wall {row['speedup_wall']:.2f}x, "
            f"CPU {row['speedup_cpu']:.2f}x",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # "no --weights given": untrained weights are the point
    print(f"load average {os.getloadavg()}, reps {args.reps}, one onnxruntime thread")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            bench(name, Path(tmp), args.tokens, args.reps)
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
