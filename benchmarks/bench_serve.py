"""`specc serve` under load: dynamic batching vs batch-1 serving (issue 15), loopback only.

For each model (ResNet-18 at 3x224x224; a BERT-style encoder, ``specs/bert_base.yaml`` with
``--set num_layers=2``: width 768, 12 heads, FFN 3072, at T = ``--seq`` 64), both servers run side
by side for the whole measurement: one with ``--max-batch 1`` (every request alone) and one with dynamic batching (``--max-batch 32
--max-delay-ms D``), each a `specc serve` subprocess on 127.0.0.1 with ``--threads T`` onnxruntime
intra-op threads. Closed-loop clients (1, 8, 32 threads in this process, one keep-alive connection
each, binary tensor data) send requests back to back for ``--warmup`` + ``--seconds``; responses
completed in the last ``--seconds`` count (throughput) and give the latencies. The cells
alternate between the two servers (order reversed every round), so that the load of other tenants
of this shared machine hits both alike. Reported per cell: throughput (responses/s), p50/p99
latency, and how many requests each onnxruntime call merged (from the server's /metrics).

The request loops are bounded (``--seconds`` per cell, ``--rounds`` rounds) and every server is
stopped at the end. Clients and servers share this machine's cores: the client threads' cost (small
next to a model call) is part of every figure.

Usage: ``.venv/bin/python benchmarks/bench_serve.py [--models resnet18 bert] [--threads 1]
[--seconds 10] [--rounds 2] [--delay-ms 10] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CONCURRENCY = (1, 8, 32)

MODELS: dict[str, dict[str, Any]] = {
    "resnet18": {"spec": "specs/resnet18.yaml", "args": []},
    "bert": {"spec": "specs/bert_base.yaml", "args": ["--set", "num_layers=2"]},
}


def export(name: str, folder: Path) -> Path:
    out = folder / f"{name}.onnx"
    if not out.exists():
        cmd = [
            sys.executable,
            "-m",
            "specc.cli",
            "export",
            MODELS[name]["spec"],
            "--out",
            str(out),
            *MODELS[name]["args"],
        ]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return out


def inputs(name: str, rng: np.random.Generator, seq: int) -> dict[str, np.ndarray]:
    if name == "resnet18":
        return {"image": rng.standard_normal((1, 3, 224, 224), dtype=np.float32)}
    return {
        "tokens": rng.integers(1, 30000, size=(1, seq), dtype=np.int64),
        "token_types": np.zeros((1, seq), np.int64),
        "attention_mask": np.ones((1, seq), bool),
    }


def body(arrays: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
    """A binary-tensor infer request (what tritonclient sends with binary_data=True)."""
    types = {"float32": "FP32", "int64": "INT64", "bool": "BOOL"}
    entries, blobs = [], []
    for name, arr in arrays.items():
        blob = arr.tobytes()
        entries.append(
            {
                "name": name,
                "shape": list(arr.shape),
                "datatype": types[arr.dtype.name],
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    head = json.dumps({"inputs": entries, "parameters": {"binary_data_output": True}}).encode()
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}


class Server:
    def __init__(self, model: Path, name: str, args: list[str], threads: int) -> None:
        cmd = [sys.executable, "-m", "specc.cli", "serve", f"{name}={model}", "--host", HOST, "--port", "0",
               "--threads", str(threads), "--log-level", "warning", *args]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.port = int(line.split("listening on http://")[1].split(" ")[0].rsplit(":", 1)[1])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("server did not become ready")

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def merged(self, model: str) -> tuple[float, float]:
        """(onnxruntime calls, requests merged into them) so far, from /metrics."""
        text = self.get("/metrics")[1].decode()
        values = {}
        for line in text.splitlines():
            for key in ("specc_batch_requests_count", "specc_batch_requests_sum"):
                if line.startswith(f'{key}{{model="{model}"}}'):
                    values[key] = float(line.rsplit(" ", 1)[1])
        return values.get("specc_batch_requests_count", 0.0), values.get("specc_batch_requests_sum", 0.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def load(
    port: int,
    model: str,
    clients: int,
    payloads: list[tuple[bytes, dict[str, str]]],
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    """Closed-loop load: ``clients`` threads, back-to-back requests until the time is up."""
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = time.monotonic()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(HOST, port, timeout=120)
        payload, headers = payloads[i % len(payloads)]
        try:
            while (t0 := time.monotonic()) < stop_at:
                conn.request("POST", f"/v2/models/{model}/infer", body=payload, headers=headers)
                r = conn.getresponse()
                r.read()
                t1 = time.monotonic()
                if r.status != 200:
                    errors[i] += 1
                elif measure_from <= t1 <= stop_at:  # completed inside the measured window
                    lat[i].append(t1 - t0)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    all_lat = sorted(x for row in lat for x in row)
    if not all_lat:
        return {
            "throughput": 0.0,
            "p50_ms": float("nan"),
            "p99_ms": float("nan"),
            "n": 0,
            "errors": sum(errors),
        }
    return {
        "throughput": len(all_lat) / seconds,
        "p50_ms": 1e3 * float(np.percentile(all_lat, 50)),
        "p99_ms": 1e3 * float(np.percentile(all_lat, 99)),
        "n": len(all_lat),
        "errors": sum(errors),
    }


def engine(path: Path, name: str, args: argparse.Namespace) -> dict[int, float]:
    """The ceiling of what batching can gain: onnxruntime alone (specc.runtime, ``--threads``),
    milliseconds per sample at batch 1, 8 and 32, batch sizes alternating in blocks (median)."""
    from specc.runtime import load as load_model

    model = load_model(path, intra_op_threads=args.threads)
    rng = np.random.default_rng(1)
    feeds = {
        b: {k: np.repeat(v, b, axis=0) for k, v in inputs(name, rng, args.seq).items()} for b in CONCURRENCY
    }
    times: dict[int, list[float]] = {b: [] for b in CONCURRENCY}
    for r in range(3):
        for b in CONCURRENCY if r % 2 == 0 else CONCURRENCY[::-1]:
            model(**feeds[b])
            for _ in range(max(2, 32 // b)):
                t = time.perf_counter()
                model(**feeds[b])
                times[b].append((time.perf_counter() - t) / b)
    per_sample = {b: 1e3 * statistics.median(v) for b, v in times.items()}
    print(
        f"{name} onnxruntime alone, ms per sample: "
        + ", ".join(f"batch {b}: {v:.1f}" for b, v in per_sample.items()),
        flush=True,
    )
    return per_sample


def bench_model(name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    path = export(name, folder)
    per_sample = engine(path, name, args)
    rng = np.random.default_rng(0)
    payloads = [body(inputs(name, rng, args.seq)) for _ in range(8)]
    modes = {
        "batch-1": ["--max-batch", "1"],
        "dynamic": ["--max-batch", str(args.max_batch), "--max-delay-ms", str(args.delay_ms)],
    }
    servers = {mode: Server(path, name, extra, args.threads) for mode, extra in modes.items()}
    cells: dict[str, dict[int, list[dict[str, Any]]]] = {m: {c: [] for c in CONCURRENCY} for m in modes}
    try:
        for r in range(args.rounds):
            for c in CONCURRENCY:
                order = list(modes) if r % 2 == 0 else list(modes)[::-1]
                for mode in order:
                    time.sleep(args.pause)
                    before = servers[mode].merged(name)
                    cell = load(servers[mode].port, name, c, payloads, args.seconds, args.warmup)
                    after = servers[mode].merged(name)
                    calls = after[0] - before[0]
                    cell["requests_per_call"] = (after[1] - before[1]) / calls if calls else float("nan")
                    cells[mode][c].append(cell)
                    print(
                        f"{name} round {r} {mode:8s} clients {c:2d}: {cell['throughput']:7.1f}/s "
                        f"p50 {cell['p50_ms']:7.1f} ms p99 {cell['p99_ms']:7.1f} ms, "
                        f"{cell['requests_per_call']:.1f} req/call, {cell['errors']} errors",
                        flush=True,
                    )
    finally:
        for s in servers.values():
            s.stop()
    result = summarise(cells)
    result["engine_ms_per_sample"] = per_sample
    return result


def summarise(cells: dict[str, dict[int, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Medians over rounds, and paired (per-round) throughput ratios dynamic / batch-1."""
    out: dict[str, Any] = {"cells": cells, "table": {}}
    for c in CONCURRENCY:
        row: dict[str, Any] = {}
        for mode, by_c in cells.items():
            runs = by_c[c]
            row[mode] = {
                k: statistics.median(run[k] for run in runs)
                for k in ("throughput", "p50_ms", "p99_ms", "requests_per_call")
            }
        pairs = zip(cells["dynamic"][c], cells["batch-1"][c], strict=True)
        row["throughput_ratio"] = statistics.median(
            d["throughput"] / b["throughput"] for d, b in pairs if b["throughput"]
        )
        out["table"][c] = row
    base_p50 = out["table"][1]["batch-1"]["p50_ms"]
    out["target"] = {
        "throughput_ratio_at_32": out["table"][32]["throughput_ratio"],
        "dynamic_p99_at_32_over_batch1_p50_at_1": out["table"][32]["dynamic"]["p99_ms"] / base_p50,
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per server")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds at the start of a cell")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--pause", type=float, default=1.0)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--models-dir", type=Path, default=None, help="reuse exported models here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": os.getloadavg(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    print(f"{info['date']} {info['machine']} load {info['load_before']}", flush=True)
    results: dict[str, Any] = {"info": info}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.models_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            results[name] = bench_model(name, folder, args)
    info["load_after"] = os.getloadavg()
    for name in args.models:
        table = results[name]["table"]
        print(f"\n{name}: clients | batch-1 /s p50 p99 | dynamic /s p50 p99 req/call | ratio")
        for c, row in table.items():
            b, d = row["batch-1"], row["dynamic"]
            print(
                f"  {c:2d} | {b['throughput']:6.1f} {b['p50_ms']:7.1f} {b['p99_ms']:7.1f} | "
                f"{d['throughput']:6.1f} {d['p50_ms']:7.1f} {d['p99_ms']:7.1f} {d['requests_per_call']:4.1f} | "
                f"{row['throughput_ratio']:.2f}x"
            )
        print(f"  onnxruntime alone, ms per sample: {results[name]['engine_ms_per_sample']}")
        print(f"  target: {results[name]['target']}")
    print(f"load after: {info['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
