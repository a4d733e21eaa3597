"""Training benchmarks (issue 5): accuracy targets and the overhead of ``specc train``'s step.

    .venv/bin/python benchmarks/bench_train.py [lenet resnet lstm seq2seq overhead endtoend[:ROUNDS]
                                                endtoend-resnet[:ROUNDS]]

Each task runs ``specc train`` in-process into ``runs/bench-*`` and prints a table row. ``overhead``
times the trainer's step against a minimal hand-written loop on the same model and batches,
interleaved in one process (ratios measured side by side). ``endtoend`` (issue 14) times whole
``specc train`` processes against ``benchmarks/hand_train.py`` doing the same job (LeNet-5;
``endtoend-resnet``: the small ResNet), one thread each, in interleaved rounds (paired wall and CPU
ratios).
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
    xa, ya = ds.train.arrays()
    x, y = torch.from_numpy(xa).float(), torch.from_numpy(ya).long()
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
                trainer._step(((x[idx],), y[idx]), stop)

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
    # bytecode as an installed package has it (pip compiles on install): a shell that sets
    # PYTHONDONTWRITEBYTECODE would make every specc run compile the package's sources again
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {err[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def endtoend(epochs: int = 5, rounds: int = 3, model: str = "lenet") -> str:
    """``specc train`` as a user runs it (a new process: imports, data, build, epochs with
    validation, checkpoints and metrics, test, final weights, curves) against the same job written by
    hand (``benchmarks/hand_train.py``), one thread each, in rounds of S H F F H S (then reversed):
    S ``specc train``, H the script, F the script with ``--freeze-at-exit`` (the exit the specc CLI
    has: like for like). Paired ratios per round; the child's CPU time (``wait4``) is the figure to
    read on a shared machine."""
    import compileall
    import subprocess

    python = sys.executable
    compileall.compile_dir(str(ROOT / "specc"), quiet=1)
    sets = [
        f"train.epochs={epochs}",
        "train.batch_size=64",
        "train.optimizer=adamw",
        "train.lr=0.001",
        "train.weight_decay=0.01",
        "train.schedule=none",
        "train.warmup_steps=0",
        "train.augment=none",
    ]
    spec = SPECS / f"{model}.yaml"
    runs_dir = ROOT / "runs"
    specc_cmd = [python, "-m", "specc.cli", "train", str(spec), "--data", "digits", "--quiet"]
    specc_cmd += ["--device", "cpu", "--out", str(runs_dir / "bench-e2e-specc")]
    for s in sets:
        specc_cmd += ["--set", s]
    hand_cmd = [python, str(ROOT / "benchmarks" / "hand_train.py"), "--epochs", str(epochs), "--model", model]
    runs = {
        "specc": (specc_cmd, runs_dir / "bench-e2e-specc"),
        "hand": ([*hand_cmd, "--out", str(runs_dir / "bench-e2e-hand")], runs_dir / "bench-e2e-hand"),
        "freeze": (
            [*hand_cmd, "--freeze-at-exit", "--out", str(runs_dir / "bench-e2e-freeze")],
            runs_dir / "bench-e2e-freeze",
        ),
    }
    for cmd, out in runs.values():
        _child(cmd, out)  # warm-up: page cache, .pyc files
    load_before = os.getloadavg()
    walls: dict[str, list[float]] = {k: [] for k in runs}
    cpus: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        order = ["specc", "hand", "freeze", "freeze", "hand", "specc"]
        got: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
        for name in order if r % 2 == 0 else order[::-1]:
            got[name].append(_child(*runs[name]))
        for name in got:
            walls[name].append(sum(w for w, _ in got[name]) / 2)
            cpus[name].append(sum(c for _, c in got[name]) / 2)
    load = os.getloadavg()
    torch_version = subprocess.run(
        [python, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True
    ).stdout.strip()

    def ratio(a: str, b: str, d: dict[str, list[float]]) -> str:
        q = np.percentile([x / y for x, y in zip(d[a], d[b], strict=True)], [10, 50, 90])
        return f"{q[1]:.3f} (p10 {q[0]:.3f}, p90 {q[2]:.3f})"

    med = {k: (np.median(walls[k]), np.median(cpus[k])) for k in runs}
    return (
        f"| end to end, {model} on digits 28x28, {epochs} epochs, batch 64, AdamW, validation + "
        f"checkpoint + metrics every epoch, test + curves at the end; {rounds} rounds of 6 runs, 1 thread, "
        f"torch {torch_version}, load {load_before[0]:.1f} -> {load[0]:.1f} | median wall / CPU: specc "
        f"{med['specc'][0]:.2f} s / {med['specc'][1]:.2f} s, hand {med['hand'][0]:.2f} s / "
        f"{med['hand'][1]:.2f} s, hand + freeze-at-exit {med['freeze'][0]:.2f} s / {med['freeze'][1]:.2f} s; "
        f"paired CPU specc/hand {ratio('specc', 'hand', cpus)}, specc/(hand + freeze) "
        f"{ratio('specc', 'freeze', cpus)}; paired wall specc/hand {ratio('specc', 'hand', walls)} "
        f"(target <= 1.05) | |"
    )


def endtoend_resnet(epochs: int = 3, rounds: int = 3) -> str:
    """:func:`endtoend` with ``specs/small_resnet.yaml`` (BatchNorm, residual blocks; ~4 s of CPU
    per epoch, so 3 epochs)."""
    return endtoend(epochs, rounds, model="small_resnet")


TASKS = {
    "lenet": lenet,
    "resnet": resnet,
    "lstm": lstm,
    "seq2seq": seq2seq,
    "overhead": overhead,
    "endtoend": endtoend,
    "endtoend-resnet": endtoend_resnet,
}


def main(names: list[str]) -> None:
    """Run the named tasks (all by default); ``endtoend`` and ``endtoend-resnet`` take
    ``NAME:ROUNDS`` (``endtoend:8``)."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| benchmark | result | wall |\n|---|---|---|")
    for item in names or list(TASKS):
        name, _, rounds = item.partition(":")
        if name not in TASKS:
            raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(TASKS)}")
        task = TASKS[name]
        print(task(rounds=int(rounds)) if rounds else task(), flush=True)  # type: ignore[call-arg]


if __name__ == "__main__":
    main(sys.argv[1:])
