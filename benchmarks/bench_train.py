"""Training benchmarks (issue 5): accuracy targets and the overhead of ``specc train``'s step.

    .venv/bin/python benchmarks/bench_train.py [lenet resnet lstm seq2seq overhead endtoend]

Each task runs ``specc train`` in-process into ``runs/bench-*`` and prints a table row. ``overhead``
times the trainer's step against a minimal hand-written loop on the same model and batches,
interleaved in one process (ratios measured side by side). ``endtoend`` (issue 14) times whole
``specc train`` processes against ``benchmarks/hand_train.py`` doing the same job, one thread each,
in ABBA rounds (paired wall and CPU ratios).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"


def _train(name: str, spec: str, data: str, *sets: str) -> tuple[dict[str, float], float]:
    from specc.cli import main

    run = ROOT / "runs" / f"bench-{name}"
    args = ["train", str(SPECS / spec), "--data", data, "--out", str(run), "--quiet", "--device", "cpu"]
    for s in sets:
        args += ["--set", s]
    import shutil

    shutil.rmtree(run, ignore_errors=True)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(args)
        except SystemExit as exc:
            if exc.code:
                raise RuntimeError(f"{name}: specc train exited {exc.code}") from None
    wall = time.perf_counter() - start
    return json.loads((run / "metrics.json").read_text())["final"], wall


def lenet() -> str:
    final, wall = _train(
        "lenet",
        "lenet.yaml",
        "digits",
        "train.epochs=15",
        "train.batch_size=64",
        "train.lr=0.02",
        "train.schedule=cosine",
        "train.warmup_steps=20",
    )
    return f"| LeNet (sigmoid) on digits 28x28 | test accuracy {final['test_accuracy']:.2%} (target ≥ 97%) | {wall:.1f} s |"


def resnet() -> str:
    final, wall = _train(
        "resnet",
        "small_resnet.yaml",
        "digits",
        "train.epochs=15",
        "train.batch_size=64",
        "train.lr=0.005",
        "train.schedule=cosine",
        "train.augment=crop",
    )
    return f"| small_resnet on digits 28x28 | test accuracy {final['test_accuracy']:.2%} (target ≥ 98%) | {wall:.1f} s |"


def lstm() -> str:
    final, wall = _train(
        "lstm",
        "lstm_lm.yaml",
        "text:stdlib",
        "train.epochs=1",
        "train.batch_size=32",
        "train.seq_len=64",
        "train.num_samples=3000",
        "train.lr=0.003",
        "train.grad_clip=1.0",
        "embed=32",
        "hidden=128",
    )
    baseline = _unigram_perplexity(3000, 64)
    return (
        f"| char LSTM (h=128) on text:stdlib, 3000 windows x 64 | val perplexity {final['val_perplexity']:.2f} "
        f"vs unigram {baseline:.2f} | {wall:.1f} s |"
    )


def _unigram_perplexity(num_samples: int, seq_len: int) -> float:
    from specc.data import load_dataset

    ds = load_dataset("text:stdlib", input_shape=(seq_len,), input_dtype="int64", num_samples=num_samples)
    counts = np.bincount(ds.train.y.ravel(), minlength=ds.num_classes or 1).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(math.exp(-logp[ds.val.y.ravel()].mean()))


def seq2seq() -> str:
    final, wall = _train(
        "seq2seq",
        "seq2seq_attention.yaml",
        "reverse",
        "train.epochs=20",
        "train.batch_size=64",
        "train.lr=0.005",
        "train.grad_clip=1.0",
        "train.schedule=cosine",
        "dropout=0.0",
    )
    return (
        f"| seq2seq + additive attention on reverse (len ≤ 16) | test exact match {final['test_exact_match']:.2%} "
        f"(target ≥ 95%), token accuracy {final['test_accuracy']:.2%} | {wall:.1f} s |"
    )


def overhead(steps: int = 200, rounds: int = 5) -> str:
    """Per-step CPU time of Trainer._step vs a minimal loop (same model/batches), interleaved, 1 thread."""
    torch.set_num_threads(1)
    from specc.lang.train_config import TrainConfig
    from specc.nn import build
    from specc.train.batches import ModelIO, epoch_permutation, global_batch, load_for_model
    from specc.train.distributed import Dist
    from specc.train.loop import StopRequest, Trainer
    from specc.train.report import RunReport

    graph_spec = SPECS / "lenet.yaml"
    from specc.api import check

    graph = check(graph_spec)
    io_ = ModelIO.from_graph(graph)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.01, optimizer="sgd")
    ds = load_for_model("digits", io_, seed=0)
    run = ROOT / "runs" / "bench-overhead"
    run.mkdir(parents=True, exist_ok=True)
    model_a, model_b = build(graph, seed=0), build(graph, seed=0)
    trainer = Trainer(
        model_a,
        io_,
        ds,
        cfg,
        run,
        torch.device("cpu"),
        Dist(),
        RunReport(run, write=False, quiet=True, log_every=10**9),
    )
    opt = torch.optim.SGD(model_b.parameters(), lr=0.01, momentum=0.9)
    x, y = trainer.train_data.inputs[0], trainer.train_data.target
    perm = epoch_permutation(0, 0, len(y))
    batches = [global_batch(perm, i % trainer.spe, 64) for i in range(steps)]

    def plain() -> None:
        model_b.train()
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model_b(x[idx]), y[idx]).backward()
            opt.step()

    def specc_step() -> None:
        with StopRequest() as stop:
            for idx in batches:
                trainer._step(idx, stop)

    t_plain, t_specc = _interleave(plain, specc_step, rounds)
    ratio = t_specc / t_plain
    return (
        f"| step overhead, LeNet on digits, batch 64, {steps} steps x {rounds} rounds (median) | "
        f"specc {t_specc / steps * 1e3:.2f} ms/step vs hand-written {t_plain / steps * 1e3:.2f} ms/step: "
        f"{(ratio - 1):+.1%} (target ≤ +5%) | |"
    )


def _interleave(a: Callable[[], None], b: Callable[[], None], rounds: int) -> tuple[float, float]:
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(rounds):
        for fn, times in ((a, ta), (b, tb)):
            start = time.process_time()  # CPU time: less noisy than wall time on a shared machine
            fn()
            times.append(time.process_time() - start)
    return float(np.median(ta)), float(np.median(tb))


def _child(cmd: list[str], out: Path) -> tuple[float, float]:
    """Run one training process on one thread; returns (wall s, CPU s of the child)."""
    import shutil
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def endtoend(epochs: int = 5, rounds: int = 3) -> str:
    """``specc train`` as a user runs it (a new process: imports, data, build, epochs with
    validation, checkpoints and metrics, test, final weights, curves) against the same job written by
    hand (``benchmarks/hand_train.py``), one thread each, alternating ABBA; paired ratios per round."""
    python = sys.executable
    sets = [
        f"train.epochs={epochs}",
        "train.batch_size=64",
        "train.optimizer=adamw",
        "train.lr=0.001",
        "train.schedule=none",
        "train.warmup_steps=0",
        "train.augment=none",
    ]
    specc_cmd = [python, "-m", "specc.cli", "train", str(SPECS / "lenet.yaml"), "--data", "digits", "--quiet"]
    specc_cmd += ["--device", "cpu", "--out", str(ROOT / "runs" / "bench-e2e-specc")]
    for s in sets:
        specc_cmd += ["--set", s]
    hand_cmd = [python, str(ROOT / "benchmarks" / "hand_train.py"), "--epochs", str(epochs)]
    hand_cmd += ["--out", str(ROOT / "runs" / "bench-e2e-hand")]
    runs = {
        "specc": (specc_cmd, ROOT / "runs" / "bench-e2e-specc"),
        "hand": (hand_cmd, ROOT / "runs" / "bench-e2e-hand"),
    }
    for cmd, out in runs.values():
        _child(cmd, out)  # warm-up: page cache, .pyc files
    walls: dict[str, list[float]] = {"specc": [], "hand": []}
    cpus: dict[str, list[float]] = {"specc": [], "hand": []}
    for r in range(rounds):
        order = ["specc", "hand", "hand", "specc"] if r % 2 == 0 else ["hand", "specc", "specc", "hand"]
        got: dict[str, list[tuple[float, float]]] = {"specc": [], "hand": []}
        for name in order:
            got[name].append(_child(*runs[name]))
        for name in got:
            walls[name].append(sum(w for w, _ in got[name]) / 2)
            cpus[name].append(sum(c for _, c in got[name]) / 2)
    wall_ratio = [a / b for a, b in zip(walls["specc"], walls["hand"], strict=True)]
    cpu_ratio = [a / b for a, b in zip(cpus["specc"], cpus["hand"], strict=True)]
    load = os.getloadavg()

    def spread(v: list[float]) -> str:
        q = np.percentile(v, [10, 50, 90])
        return f"{q[1]:.3f} (p10 {q[0]:.3f}, p90 {q[2]:.3f})"

    return (
        f"| end to end, LeNet on digits, {epochs} epochs, batch 64, AdamW, validation + checkpoint + metrics "
        f"every epoch, test + curves at the end; {rounds} ABBA rounds, 1 thread, load {load[0]:.1f} | "
        f"specc {np.median(walls['specc']):.2f} s wall / {np.median(cpus['specc']):.2f} s CPU, hand-written "
        f"{np.median(walls['hand']):.2f} s / {np.median(cpus['hand']):.2f} s; paired specc/hand: wall "
        f"{spread(wall_ratio)}, CPU {spread(cpu_ratio)} (target ≤ 1.05) | |"
    )


TASKS = {
    "lenet": lenet,
    "resnet": resnet,
    "lstm": lstm,
    "seq2seq": seq2seq,
    "overhead": overhead,
    "endtoend": endtoend,
}


def main(names: list[str]) -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| benchmark | result | wall |\n|---|---|---|")
    for name in names or list(TASKS):
        if name not in TASKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(TASKS)}")
        print(TASKS[name](), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
