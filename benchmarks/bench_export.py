"""Export and deployment speed, measured side by side in one run (issue 6).

1. ResNet-18 (``specs/resnet18.yaml``): export + verification time; batch-1 latency of torch eager vs
   onnxruntime fp32 and vs the static int8 model ``specc export --int8`` writes for a CNN (target ≥ 2×).
2. A BERT-style encoder (4 layers, width 768, 12 heads, FFN 3072, T = 128, batch 1), written by hand
   in torch in the Hugging Face layout (the layout ORT's BERT fusions match) and exported with
   :func:`specc.export.export_model`: torch eager vs onnxruntime fp32 (plain and with the
   ``onnxruntime.transformers`` BERT fusions, target ≥ 1.3×) vs int8 (target ≥ 3× over fp32 ORT),
   with the output change of each.
3. The same encoder written in specc: ``specs/bert_base.yaml --set num_layers=4`` (plus its pooler),
   exported with specc's exporter; the same engines (``specc export --optimize`` / ``--int8``).

Timing: every engine runs in blocks of ``--block`` consecutive calls; blocks alternate between the
engines (order reversed every round), and each block starts with a 0.2 s pause and 3 untimed calls.
Calling the engines one call each in turn measures something else: the intra-op threads of the
engine that just ran keep spinning for a while and take a core from the next one (the first 2-3
calls after a switch ran 1.5-3× slower). With more than one part, each part runs in a fresh
process, after ``--pause`` idle seconds (60). Speed-ups are paired: the median over rounds of the ratio of
two engines' block medians within the round (see :func:`paired`), so that slow drifts of this shared
machine cancel. ORT sessions: specc's settings (:mod:`specc.runtime.session`: level ALL, sequential,
1 inter-op thread, ``SkipLayerNormFusion`` off), ``--threads`` intra-op threads; torch eager gets
``torch.set_num_threads(--threads)``.

Usage: ``.venv/bin/python benchmarks/bench_export.py [--iters 60] [--block 10] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specc.api import check  # noqa: E402
from specc.export import ExportOptions, export_model  # noqa: E402
from specc.export.bench import ort_fn, time_calls, torch_fn  # noqa: E402
from specc.export.quantize import Calibration, quantize_int8  # noqa: E402
from specc.export.variants import optimize  # noqa: E402
from specc.graph import Graph  # noqa: E402
from specc.nn import build  # noqa: E402
from specc.ops.base import TensorType  # noqa: E402


def latencies(
    fns: dict[str, Any],
    feeds: dict[str, np.ndarray],
    iters: int,
    block: int = 10,
    pause_s: float = 0.2,
    warmup: int = 3,
) -> dict[str, dict[str, float]]:
    """Batch-1 latency of every engine: blocks of ``block`` consecutive timed calls, alternating
    between engines (order reversed every round) so that load from other processes hits all engines
    alike; each block starts after a pause and ``warmup`` untimed calls (see the module docstring).
    Median, p90 and min over all timed calls, in ms."""
    for fn in fns.values():
        time_calls(fn, feeds, 1, warmup=5)
    times: dict[str, list[float]] = {k: [] for k in fns}
    blocks: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(max(1, math.ceil(iters / block))):
        for k in names if r % 2 == 0 else names[::-1]:
            time.sleep(pause_s)
            t = time_calls(fns[k], feeds, block, warmup=warmup)
            times[k] += t
            blocks[k].append(1e3 * statistics.median(t))
    return {
        k: {
            "median_ms": 1e3 * statistics.median(t),
            "p90_ms": 1e3 * float(np.percentile(t, 90)),
            "min_ms": 1e3 * min(t),
            "calls": len(t),
            "block_medians_ms": blocks[k],
        }
        for k, t in times.items()
    }


def paired(rows: dict[str, dict[str, Any]], slow: str, fast: str) -> float:
    """Median over rounds of (block median of ``slow``) / (block median of ``fast``): the speed-up
    measured pairwise within each round, so that the machine's slow drifts (other tenants' load,
    shared-cache pressure) cancel out instead of landing on whichever engine ran during them."""
    a, b = rows[slow]["block_medians_ms"], rows[fast]["block_medians_ms"]
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def first(out: Any) -> np.ndarray:
    """The first output of an engine call (torch tensor, tuple of them, or an ORT dict) as numpy."""
    if isinstance(out, dict):
        out = next(iter(out.values()))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.numpy() if isinstance(out, torch.Tensor) else np.asarray(out)


def op_counts(path: Path) -> dict[str, int]:
    import onnx

    ops = [
        n.op_type
        for n in onnx.load(str(path), load_external_data=False).graph.node
        if n.op_type != "Constant"
    ]
    return {op: ops.count(op) for op in sorted(set(ops))}


def change(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {
        "max_abs": float(np.abs(a - b).max()),
        "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
        "cosine": cos,
    }


# -------------------------------------------------------------------------------------- ResNet-18


def resnet_graph() -> tuple[Graph, str]:
    path = ROOT / "specs/resnet18.yaml"
    return check(path), str(path.relative_to(ROOT))


def bench_resnet(iters: int, tmp: Path, block: int = 10, threads: int = 2) -> dict[str, Any]:
    graph, spec = resnet_graph()
    model = build(graph, seed=0).eval()
    t = time.perf_counter()
    report = export_model(model, graph, tmp / "resnet18.onnx", ExportOptions())
    export_s = time.perf_counter() - t
    # what `specc export --int8` writes for a CNN with calibration data: static QDQ. The weights here
    # are random, so calibration inputs are random too (timing; accuracy is measured on trained CNNs)
    rng = np.random.default_rng(1)
    calib = Calibration({"image": rng.standard_normal((32, 3, 224, 224), dtype=np.float32)}, "random")
    t = time.perf_counter()
    int8_info = quantize_int8(tmp / "resnet18.onnx", tmp / "resnet18.int8.onnx", calib)
    int8_s = time.perf_counter() - t
    x = {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)}
    eager = torch_fn(model, ["image"])
    fp32, int8 = ort_fn(tmp / "resnet18.onnx", threads), ort_fn(tmp / "resnet18.int8.onnx", threads)
    rows = latencies(
        {"torch eager": eager, "onnxruntime fp32": fp32, "onnxruntime int8 static": int8}, x, iters, block
    )
    ref = eager(x).numpy()
    out8 = next(iter(int8(x).values()))
    return {
        "spec": spec,
        "params": graph.params,
        "export_and_verify_s": export_s,
        "timings_s": report.timings_s,
        "int8_quantize_s": int8_s,
        "parity_max_abs": max(d["max_abs"] for d in report.to_json()["max_diff"].values()),
        "latency_b1": rows,
        "int8": int8_info,
        "speedup_ort_fp32_vs_eager": paired(rows, "torch eager", "onnxruntime fp32"),
        "speedup_ort_int8_vs_eager": paired(rows, "torch eager", "onnxruntime int8 static"),
        "speedup_ort_int8_vs_fp32": paired(rows, "onnxruntime fp32", "onnxruntime int8 static"),
        "int8_change": change(ref, out8),
        "int8_top1_agree": bool(ref.argmax() == out8.argmax()),
    }


# -------------------------------------------------------------------------------------- BERT


class BertLayer(nn.Module):
    """Post-LN encoder layer in the Hugging Face BERT layout: (B, T, D) -> (B, T, D)."""

    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out, self.attn_norm = nn.Linear(d, d), nn.LayerNorm(d, eps=1e-12)
        self.intermediate, self.output = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.out_norm = nn.LayerNorm(d, eps=1e-12)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.heads, self.head_dim).permute(0, 2, 1, 3)  # (B, heads, T, head_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
        ctx = torch.matmul(scores.softmax(-1), v).permute(0, 2, 1, 3).contiguous()
        ctx = ctx.view(x.shape[0], x.shape[1], -1)  # (B, T, D)
        x = self.attn_norm(self.attn_out(ctx) + x)
        return self.out_norm(self.output(F.gelu(self.intermediate(x))) + x)


class BertEncoder(nn.Module):
    """Embeddings + N layers; inputs ``input_ids`` and ``attention_mask`` (B, T) int64."""

    def __init__(
        self,
        vocab: int = 30522,
        d: int = 768,
        heads: int = 12,
        ffn: int = 3072,
        layers: int = 4,
        max_len: int = 512,
    ) -> None:
        super().__init__()
        self.word, self.position = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.token_type = nn.Embedding(2, d)
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(d, heads, ffn) for _ in range(layers))
        self.output_names = ["hidden"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.emb_norm(
            self.word(input_ids) + self.position(pos) + self.token_type(torch.zeros_like(input_ids))
        )
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class _HandGraph(Graph):
    """The graph description export_model needs for a hand-written module (no spec nodes)."""

    def __init__(
        self, name: str, inputs: dict[str, TensorType], outputs: dict[str, TensorType], dims: dict[str, int]
    ) -> None:
        super().__init__(name=name, inputs=inputs, nodes=[], outputs={}, dims=dims)
        self._outs = outputs
        self.outputs = {k: None for k in outputs}  # type: ignore[misc]

    def output_types(self) -> dict[str, TensorType]:
        return dict(self._outs)


def bert_summary(
    rows: dict[str, dict[str, Any]], eager: np.ndarray, outs: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Paired speed-ups (see :func:`paired`) and the output change of each ORT engine vs torch eager."""
    fused = next(k for k in rows if k.startswith("onnxruntime fp32 "))  # the fused / --optimize graph
    best = min(("onnxruntime fp32", fused), key=lambda k: rows[k]["median_ms"])
    return {
        "speedup_fp32_vs_eager": paired(rows, "torch eager", "onnxruntime fp32"),
        "speedup_fused_fp32_vs_eager": paired(rows, "torch eager", fused),
        "speedup_best_fp32_vs_eager": paired(rows, "torch eager", best),
        "speedup_int8_vs_plain_fp32": paired(rows, "onnxruntime fp32", "onnxruntime int8"),
        "speedup_int8_vs_fused_fp32": paired(rows, fused, "onnxruntime int8"),
        "speedup_int8_vs_best_fp32": paired(rows, best, "onnxruntime int8"),
        "output_change_vs_torch": {k: change(eager, v) for k, v in outs.items()},
    }


def bench_bert(iters: int, tmp: Path, seq: int = 128, block: int = 10, threads: int = 2) -> dict[str, Any]:
    torch.manual_seed(0)
    model = BertEncoder().eval()
    graph = _HandGraph(
        "bert_bench",
        {"input_ids": TensorType(("seq",), "int64"), "attention_mask": TensorType(("seq",), "int64")},
        {"hidden": TensorType(("seq", 768))},
        {"seq": 512},
    )
    onnx_path = tmp / "bert.onnx"
    t = time.perf_counter()
    report = export_model(model, graph, onnx_path, ExportOptions(batches=(1, 2)))
    export_s = time.perf_counter() - t
    fused = tmp / "bert.opt.onnx"
    info = optimize(onnx_path, fused, transformer=(12, 768))
    int8_info = quantize_int8(onnx_path, tmp / "bert.int8.onnx")  # the plain graph: ORT fuses it at load
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30522, (1, seq)), "attention_mask": np.ones((1, seq), np.int64)}
    fns = {
        "torch eager": torch_fn(model, ["input_ids", "attention_mask"]),
        "onnxruntime fp32": ort_fn(onnx_path, threads),
        "onnxruntime fp32 fused": ort_fn(fused, threads),
        "onnxruntime int8": ort_fn(tmp / "bert.int8.onnx", threads),
    }
    rows = latencies(fns, feeds, iters, block)
    ref = first(fns["torch eager"](feeds))
    outs = {k: first(fns[k](feeds)) for k in list(fns)[1:]}
    return {
        "export_and_verify_s": export_s,
        "parity_max_abs": report.to_json()["max_diff"]["hidden"]["max_abs"],
        "optimizer": info,
        "fused_ops": op_counts(fused),
        "int8": int8_info,
        "latency_b1_T128": rows,
        **bert_summary(rows, ref, outs),
    }


def bench_spec_bert(
    iters: int, tmp: Path, seq: int = 128, block: int = 10, threads: int = 2, layers: int = 4
) -> dict[str, Any]:
    """``specs/bert_base.yaml --set num_layers=4`` built by specc and exported by specc's exporter."""
    from specc.export.source import load_source
    from specc.export.variants import transformer_shape

    spec = ROOT / "specs/bert_base.yaml"
    model = load_source(spec, sets=(f"num_layers={layers}",), seed=0).model.eval()
    graph = model.graph
    onnx_path = tmp / "bert_base.onnx"
    t = time.perf_counter()
    report = export_model(model, graph, onnx_path, ExportOptions(batches=(1, 2)))
    export_s = time.perf_counter() - t
    shape = transformer_shape(graph)
    opt = tmp / "bert_base.opt.onnx"
    info = optimize(onnx_path, opt, transformer=shape)  # what `specc export --optimize` does
    int8_info = quantize_int8(onnx_path, tmp / "bert_base.int8.onnx")  # `specc export --int8`
    rng = np.random.default_rng(0)
    feeds = {
        "tokens": rng.integers(1, 30522, (1, seq)),
        "token_types": np.zeros((1, seq), np.int64),
        "attention_mask": np.ones((1, seq), bool),
    }
    fns = {
        "torch eager": torch_fn(model, list(graph.inputs)),
        "onnxruntime fp32": ort_fn(onnx_path, threads),
        "onnxruntime fp32 --optimize": ort_fn(opt, threads),
        "onnxruntime int8": ort_fn(tmp / "bert_base.int8.onnx", threads),
    }
    rows = latencies(fns, feeds, iters, block)
    ref = first(fns["torch eager"](feeds))  # the sequence output (1, T, 768)
    outs = {k: first(fns[k](feeds)) for k in list(fns)[1:]}
    fused_ops = op_counts(opt)
    return {
        "spec": f"{spec.relative_to(ROOT)} --set num_layers={layers}",
        "params": graph.params,
        "export_and_verify_s": export_s,
        "parity_max_abs": max(d["max_abs"] for d in report.to_json()["max_diff"].values()),
        "optimizer": info,
        "fused_ops": fused_ops,
        "attention_fused": fused_ops.get("Attention", 0) > 0,
        "int8": int8_info,
        "latency_b1_T128": rows,
        **bert_summary(rows, ref, outs),
    }


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=60, help="timed calls per engine and model")
    parser.add_argument("--block", type=int, default=10, help="consecutive calls per engine and block")
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--only", choices=("resnet18", "bert", "spec_bert"), action="append", default=None)
    parser.add_argument(
        "--pause", type=float, default=60.0, help="idle seconds between the models' processes"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    env = {
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg(),
    }
    print(
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, threads {args.threads}, "
        f"load average {env['loadavg_start'][0]:.2f}",
        file=sys.stderr,
    )
    parts = {"resnet18": bench_resnet, "bert": bench_bert, "spec_bert": bench_spec_bert}
    chosen = [name for name in parts if args.only is None or name in args.only]
    result: dict[str, Any] = {"env": env}
    with tempfile.TemporaryDirectory() as tmp:
        if len(chosen) == 1:
            result[chosen[0]] = parts[chosen[0]](
                args.iters, Path(tmp), block=args.block, threads=args.threads
            )
        for i, name in enumerate(chosen if len(chosen) > 1 else []):
            # each model in a fresh process, after an idle pause: a part that ran after minutes of
            # full load (same process or not) ran everything slower (torch eager +18 %, int8 BERT
            # +30 %: the clock drops under sustained load on this host), which is not the state a
            # single deployment call starts from and is not the same for every part
            if i:
                time.sleep(args.pause)
            out = Path(tmp) / f"{name}.json"
            cmd = [
                sys.executable,
                __file__,
                "--only",
                name,
                "--iters",
                str(args.iters),
                "--block",
                str(args.block),
                "--threads",
                str(args.threads),
                "--json",
                str(out),
            ]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            result[name] = json.loads(out.read_text())[name]
    env["loadavg_end"] = os.getloadavg()
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def _rows(rows: dict[str, dict[str, float]]) -> None:
    for k, v in rows.items():
        print(
            f"  {k:<28} b1 median {v['median_ms']:8.2f} ms  p90 {v['p90_ms']:8.2f} ms  min {v['min_ms']:8.2f} ms"
        )


def _bert_lines(b: dict[str, Any]) -> None:
    _rows(b["latency_b1_T128"])
    print(
        f"  fp32 vs eager: plain {b['speedup_fp32_vs_eager']:.2f}x, fused {b['speedup_fused_fp32_vs_eager']:.2f}x "
        f"(target >= 1.3)"
    )
    print(
        f"  int8 vs fp32: plain {b['speedup_int8_vs_plain_fp32']:.2f}x, fused "
        f"{b['speedup_int8_vs_fused_fp32']:.2f}x, best fp32 {b['speedup_int8_vs_best_fp32']:.2f}x (target >= 3)"
    )
    print(f"  fused ops: {b['fused_ops']}")
    print(f"  int8 ops: {b['int8']['int8_ops']}")
    for k, v in b["output_change_vs_torch"].items():
        print(
            f"  {k:<28} vs torch: max |Δ| {v['max_abs']:.3g}, rel L2 {v['rel_l2']:.3g}, cosine {v['cosine']:.6f}"
        )


def print_table(r: dict[str, Any]) -> None:
    env = r["env"]
    print(
        f"torch {env['torch']}, onnxruntime {env['onnxruntime']}, {env['threads']} threads, {env['cpus']} CPUs, "
        f"load average {env['loadavg_start'][0]:.2f} -> {env['loadavg_end'][0]:.2f}"
    )
    if "resnet18" in r:
        res = r["resnet18"]
        print(
            f"ResNet-18 ({res['spec']}, {res['params']:,} params): export + verify {res['export_and_verify_s']:.1f} s"
        )
        _rows(res["latency_b1"])
        print(
            f"  ORT fp32 vs eager: {res['speedup_ort_fp32_vs_eager']:.2f}x, ORT int8 (static) vs eager: "
            f"{res['speedup_ort_int8_vs_eager']:.2f}x (target >= 2); int8 vs fp32 {res['speedup_ort_int8_vs_fp32']:.2f}x"
        )
        c = res["int8_change"]
        print(
            f"  int8 vs torch: rel L2 {c['rel_l2']:.3g}, cosine {c['cosine']:.6f}, top-1 agrees: {res['int8_top1_agree']}"
        )
    if "bert" in r:
        bert = r["bert"]
        print(
            f"BERT-style encoder, hand-written (4 x 768, 12 heads, FFN 3072, T=128, batch 1): export + verify "
            f"{bert['export_and_verify_s']:.1f} s"
        )
        _bert_lines(bert)
    if "spec_bert" in r:
        sb = r["spec_bert"]
        print(
            f"specc {sb['spec']} ({sb['params']:,} params, T=128, batch 1): export + verify "
            f"{sb['export_and_verify_s']:.1f} s, attention fused: {sb['attention_fused']}"
        )
        _bert_lines(sb)


if __name__ == "__main__":
    main()
