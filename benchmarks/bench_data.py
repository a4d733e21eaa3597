"""Data at scale: peak memory of an image-folder run vs its size, and ``specc train`` with loader
workers vs a hand-written ``DataLoader`` loop on the same images and model.

1. **Memory**: ``specc train`` on generated 64x64 PNG folders of 2,000 and 20,000 images (10
   classes), the same number of steps, 2 loader workers; peak RSS of the training process and peak
   summed RSS of its process tree (workers included), sampled every 50 ms. Interleaved rounds.
2. **Speed**: samples/s of ``specc train`` (2 workers, its own measure: samples of the epoch over
   the epoch's time, worker start included) and of a hand-written loop (a ``Dataset`` decoding the
   PNG with Pillow, ``DataLoader(num_workers=2, batch_size=64, shuffle=True)``, the same compiled
   model, AdamW, cross-entropy), both over the same number of samples, one torch thread each,
   interleaved; the paired ratio is reported per round.

    .venv/bin/python benchmarks/bench_data.py [--rounds 3] [--skip-memory] [--skip-speed]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SPEC = """specc: 1
name: folder_cnn
inputs: {image: {shape: [3, 64, 64]}}
defaults: {activation: relu}
layers:
  - conv2d: {out_channels: 16, kernel_size: 3, stride: 2, padding: 1}
  - act
  - conv2d: {out_channels: 32, kernel_size: 3, stride: 2, padding: 1}
  - act
  - global_avgpool
  - linear: {out_features: 10, name: logits}
train: {batch_size: 64, lr: 0.003, num_workers: 2, log_every: 1000}
"""


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` 64x64 RGB PNGs in 10 class folders: a class colour, a gradient and noise."""
    from PIL import Image

    if (root / "done").is_file():
        return root
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 80, 64)[None, :, None]
    for i in range(n):
        c = i % 10
        base = np.asarray([25 * c, 255 - 25 * c, 120], dtype=np.float64)[None, None, :]
        img = np.clip(base * 0.6 + ramp + rng.normal(0, 20, size=(64, 64, 3)), 0, 255).astype(np.uint8)
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "RGB").save(root / f"class{c}" / f"{i:06d}.png")
    (root / "done").write_text("ok")
    return root


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def train_peak(spec: Path, data: Path, out: Path, steps: int) -> tuple[float, float, float]:
    """(peak RSS of the training process, peak RSS of its tree, wall s) of one ``specc train`` run."""
    import psutil

    cmd = [sys.executable, "-m", "specc.cli", "train", str(spec), "--data", str(data), "--out", str(out)]
    cmd += ["--quiet", "--device", "cpu", "--set", f"train.max_steps={steps}", "--set", "train.epochs=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    main_peak = tree_peak = 0
    while proc.poll() is None:
        try:
            main_peak = max(main_peak, psutil.Process(proc.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            break
        tree_peak = max(tree_peak, _tree_rss(proc.pid))
        time.sleep(0.05)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.wait() != 0:
        raise SystemExit(f"specc train failed: {err[-500:]}")
    return main_peak / 2**20, tree_peak / 2**20, time.perf_counter() - t0


HAND = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np, torch
    from PIL import Image
    import specc

    torch.set_num_threads(1)
    folder, spec, samples = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    files = sorted(folder.rglob("*.png"))
    labels = [int(f.parent.name.removeprefix("class")) for f in files]
    mean = np.asarray([0.5, 0.5, 0.5], np.float32)[:, None, None]
    std = np.asarray([0.25, 0.25, 0.25], np.float32)[:, None, None]

    class Folder(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as im:
                x = np.asarray(im.convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
            return torch.from_numpy((x - mean) / std), labels[i]

    model = specc.build(spec, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=0.003)
    loader = torch.utils.data.DataLoader(Folder(), batch_size=64, shuffle=True, num_workers=2)
    t0, done = time.perf_counter(), 0
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        done += len(y)
        if done >= samples:
            break
    print(json.dumps({"samples_per_s": done / (time.perf_counter() - t0), "samples": done}))
    """
)


def specc_rate(spec: Path, data: Path, out: Path) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "specc.cli", "train", str(spec), "--data", str(data), "--out", str(out)]
    cmd += ["--quiet", "--device", "cpu", "--set", "train.epochs=1", "--set", "train.val_fraction=0.05"]
    cmd += ["--set", "train.test_fraction=0.05"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"specc train failed: {done.stderr[-500:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    row = metrics["epochs"][0]
    return float(row["samples_per_s"]), int(json.loads((out / "data.json").read_text())["sizes"]["train"])


def hand_rate(spec: Path, data: Path, samples: int, tmp: Path) -> float:
    script = tmp / "hand.py"
    script.write_text(HAND)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script), str(data), str(spec), str(samples)],
        env=env,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"hand-written loop failed: {done.stderr[-500:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["samples_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "specc-bench-images")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} CPUs, load {os.getloadavg()}")
    small = make_folder(args.cache / "n2000", 2000)
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        spec = tmp / "folder_cnn.yaml"
        spec.write_text(SPEC)
        if not args.skip_memory:
            big = make_folder(args.cache / "n20000", 20000)
            print(
                "| round | images | peak RSS main (MiB) | peak RSS tree (MiB) | wall (s) |\n|---|---|---|---|---|"
            )
            peaks: dict[int, list[tuple[float, float]]] = {2000: [], 20000: []}
            for r in range(args.rounds):
                for n, folder in ((2000, small), (20000, big)):
                    main_mb, tree_mb, wall = train_peak(spec, folder, tmp / f"m{r}_{n}", args.steps)
                    peaks[n].append((main_mb, tree_mb))
                    print(f"| {r + 1} | {n} | {main_mb:.0f} | {tree_mb:.0f} | {wall:.1f} |", flush=True)
            for i, what in ((0, "main"), (1, "tree")):
                a = max(p[i] for p in peaks[20000]) / max(p[i] for p in peaks[2000])
                print(f"ratio 20k / 2k ({what}, max over rounds): {a:.2f}x")
        if not args.skip_speed:
            print(
                "| round | specc train (samples/s) | hand-written loop (samples/s) | specc / hand |\n|---|---|---|---|"
            )
            ratios = []
            for r in range(args.rounds):
                s, n = specc_rate(spec, small, tmp / f"s{r}")
                h = hand_rate(spec, small, n, tmp)
                ratios.append(s / h)
                print(f"| {r + 1} | {s:.0f} | {h:.0f} | {s / h:.3f} |", flush=True)
            print(f"median ratio specc / hand: {float(np.median(ratios)):.3f}; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
