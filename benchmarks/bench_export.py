"""Export and deployment speed, measured side by side in one run (issue 6).

1. ResNet-18 (``specs/resnet18.yaml``): export +
   verification time; batch-1 latency of torch eager vs onnxruntime fp32 (target ≥ 2×); int8.
2. A BERT-style encoder (4 layers, width 768, 12 heads, FFN 3072, T = 128, batch 1), written by hand
   in torch in the Hugging Face layout (the layout ORT's BERT fusions match) and exported with
   :func:`specc.export.export_model`: torch eager vs onnxruntime fp32 (plain and with the
   ``onnxruntime.transformers`` BERT fusions, target ≥ 1.3×) vs int8 (target ≥ 3× over fp32 ORT),
   with the output change of each.

Usage: ``.venv/bin/python benchmarks/bench_export.py [--iters 50] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
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
from specc.build import build  # noqa: E402
from specc.export import ExportOptions, export_model  # noqa: E402
from specc.export.bench import ort_fn, time_calls, torch_fn  # noqa: E402
from specc.export.variants import optimize, quantize_int8  # noqa: E402
from specc.graph import Graph  # noqa: E402
from specc.ops.base import TensorType  # noqa: E402


def latencies(fns: dict[str, Any], feeds: dict[str, np.ndarray], rounds: int) -> dict[str, dict[str, float]]:
    """Batch-1 latency of every engine, interleaved call by call so that load from other processes
    on the machine hits all engines alike; median, p90 and min in ms."""
    for fn in fns.values():
        time_calls(fn, feeds, 1, warmup=3)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k] += time_calls(fn, feeds, 1, warmup=0)
    return {k: {"median_ms": 1e3 * statistics.median(t), "p90_ms": 1e3 * float(np.percentile(t, 90)),
                "min_ms": 1e3 * min(t)} for k, t in times.items()}  # fmt: skip


def change(ref: np.ndarray, got: np.ndarray) -> dict[str, float]:
    a, b = ref.astype(np.float64).ravel(), got.astype(np.float64).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"max_abs": float(np.abs(a - b).max()), "rel_l2": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
            "cosine": cos}  # fmt: skip


# -------------------------------------------------------------------------------------- ResNet-18


def resnet_graph() -> tuple[Graph, str]:
    path = ROOT / "specs/resnet18.yaml"
    return check(path), str(path.relative_to(ROOT))


def bench_resnet(iters: int, tmp: Path) -> dict[str, Any]:
    graph, spec = resnet_graph()
    model = build(graph, seed=0).eval()
    t = time.perf_counter()
    report = export_model(model, graph, tmp / "resnet18.onnx", ExportOptions())
    export_s = time.perf_counter() - t
    quantize_int8(tmp / "resnet18.onnx", tmp / "resnet18.int8.onnx")
    x = {"image": np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)}
    eager = torch_fn(model, ["image"])
    fp32, int8 = ort_fn(tmp / "resnet18.onnx"), ort_fn(tmp / "resnet18.int8.onnx")
    rows = latencies({"torch eager": eager, "onnxruntime fp32": fp32, "onnxruntime int8": int8}, x, iters)
    ref = eager(x).numpy()
    return {
        "spec": spec, "params": graph.params,
        "export_and_verify_s": export_s, "timings_s": report.timings_s,
        "parity_max_abs": max(d["max_abs"] for d in report.to_json()["max_diff"].values()),
        "latency_b1": rows,
        "speedup_ort_fp32_vs_eager": rows["torch eager"]["median_ms"] / rows["onnxruntime fp32"]["median_ms"],
        "int8_change": change(ref, next(iter(int8(x).values()))),
        "int8_top1_agree": bool(ref.argmax() == next(iter(int8(x).values())).argmax()),
    }  # fmt: skip


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

    def __init__(self, vocab: int = 30522, d: int = 768, heads: int = 12, ffn: int = 3072, layers: int = 4,
                 max_len: int = 512) -> None:  # fmt: skip
        super().__init__()
        self.word, self.position = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.token_type = nn.Embedding(2, d)
        self.emb_norm = nn.LayerNorm(d, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(d, heads, ffn) for _ in range(layers))
        self.output_names = ["hidden"]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        x = self.emb_norm(self.word(input_ids) + self.position(pos) + self.token_type(torch.zeros_like(input_ids)))
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0  # (B, 1, 1, T)
        for layer in self.layers:
            x = layer(x, mask)
        return x


class _HandGraph(Graph):
    """The graph description export_model needs for a hand-written module (no spec nodes)."""

    def __init__(self, name: str, inputs: dict[str, TensorType], outputs: dict[str, TensorType],
                 dims: dict[str, int]) -> None:  # fmt: skip
        super().__init__(name=name, inputs=inputs, nodes=[], outputs={}, dims=dims)
        self._outs = outputs
        self.outputs = {k: None for k in outputs}  # type: ignore[misc]

    def output_types(self) -> dict[str, TensorType]:
        return dict(self._outs)


def bench_bert(iters: int, tmp: Path, seq: int = 128) -> dict[str, Any]:
    torch.manual_seed(0)
    model = BertEncoder().eval()
    graph = _HandGraph("bert_bench", {"input_ids": TensorType(("seq",), "int64"),
                                      "attention_mask": TensorType(("seq",), "int64")},
                       {"hidden": TensorType(("seq", 768))}, {"seq": 512})  # fmt: skip
    onnx_path = tmp / "bert.onnx"
    t = time.perf_counter()
    report = export_model(model, graph, onnx_path, ExportOptions(batches=(1, 2)))
    export_s = time.perf_counter() - t
    fused = tmp / "bert.opt.onnx"
    info = optimize(onnx_path, fused, transformer=(12, 768))
    quantize_int8(onnx_path, tmp / "bert.int8.onnx")  # from the plain graph: ORT fuses it at load
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 30522, (1, seq)), "attention_mask": np.ones((1, seq), np.int64)}
    fns = {"torch eager": torch_fn(model, ["input_ids", "attention_mask"]),
           "onnxruntime fp32": ort_fn(onnx_path), "onnxruntime fp32 fused": ort_fn(fused),
           "onnxruntime int8": ort_fn(tmp / "bert.int8.onnx")}  # fmt: skip
    rows = latencies(fns, feeds, iters)
    ref = fns["torch eager"](feeds).numpy()
    outs = {k: next(iter(fns[k](feeds).values())) for k in list(fns)[1:]}
    med = {k: v["median_ms"] for k, v in rows.items()}
    import onnx

    ops = [n.op_type for n in onnx.load(str(fused)).graph.node]
    return {
        "export_and_verify_s": export_s, "parity_max_abs": report.to_json()["max_diff"]["hidden"]["max_abs"],
        "optimizer": info, "fused_ops": {op: ops.count(op) for op in sorted(set(ops))},
        "latency_b1_T128": rows,
        "speedup_fused_fp32_vs_eager": med["torch eager"] / med["onnxruntime fp32 fused"],
        "speedup_int8_vs_fused_fp32": med["onnxruntime fp32 fused"] / med["onnxruntime int8"],
        "speedup_int8_vs_plain_fp32": med["onnxruntime fp32"] / med["onnxruntime int8"],
        "output_change_vs_torch": {k: change(ref, v) for k, v in outs.items()},
    }  # fmt: skip


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=100, help="interleaved rounds per model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"resnet18": bench_resnet(args.iters, Path(tmp)), "bert": bench_bert(args.iters, Path(tmp))}
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def print_table(r: dict[str, Any]) -> None:
    res, bert = r["resnet18"], r["bert"]
    print(f"ResNet-18 ({res['spec']}, {res['params']:,} params): export + verify {res['export_and_verify_s']:.1f} s")
    for k, v in res["latency_b1"].items():
        print(f"  {k:<26} b1 median {v['median_ms']:8.2f} ms  p90 {v['p90_ms']:8.2f} ms  min {v['min_ms']:8.2f} ms")
    print(f"  ORT fp32 vs eager: {res['speedup_ort_fp32_vs_eager']:.2f}x (target >= 2)")
    print(f"BERT-style encoder (4 x 768, 12 heads, FFN 3072, T=128, batch 1): export + verify "
          f"{bert['export_and_verify_s']:.1f} s")  # fmt: skip
    for k, v in bert["latency_b1_T128"].items():
        print(f"  {k:<26} b1 median {v['median_ms']:8.2f} ms  p90 {v['p90_ms']:8.2f} ms  min {v['min_ms']:8.2f} ms")
    print(f"  fused fp32 vs eager: {bert['speedup_fused_fp32_vs_eager']:.2f}x (target >= 1.3)")
    print(f"  int8 vs fused fp32: {bert['speedup_int8_vs_fused_fp32']:.2f}x, vs plain fp32: "
          f"{bert['speedup_int8_vs_plain_fp32']:.2f}x (target >= 3)")  # fmt: skip
    for k, v in bert["output_change_vs_torch"].items():
        print(f"  {k:<26} vs torch: max |Δ| {v['max_abs']:.3g}, rel L2 {v['rel_l2']:.3g}, cosine {v['cosine']:.5f}")


if __name__ == "__main__":
    main()
