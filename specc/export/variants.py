"""Derived deployment files of a verified export: onnxruntime-optimised, int8 and fp16.

Each variant is written next to ``M.onnx`` (``M.opt.onnx``, ``M.int8.onnx``, ``M.fp16.onnx``) with
the same ``specc.*`` metadata plus ``specc.variant``, its own SHA-256 manifest, and a check against
the fp32 model in onnxruntime: output difference (on validation data where there is some, else on
random inputs) and, where a validation split is available, accuracy before and after. int8 is made
by :mod:`specc.export.quantize` (static for CNNs with calibration data, else dynamic). Variants are approximations: their checks are reported, not
enforced (the fp32 ``M.onnx`` is the verified reference).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from numpy.typing import NDArray

from specc.atomic import atomic_path, sha256_file
from specc.contracts.onnx_metadata import OnnxMetadata
from specc.errors import UsageError
from specc.export.metadata import get_metadata, set_metadata, write_manifest
from specc.export.quantize import Calibration, Int8Mode, fixed_batch, quantize_int8
from specc.export.samples import SampleSizes, make_inputs
from specc.export.verify import ort_runner, ort_session
from specc.graph import Graph
from specc.registry import Registry
from specc.runtime.session import session_options

log = logging.getLogger(__name__)

Variant = Literal["opt", "int8", "fp16"]
FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "EmbedLayerNormalization",
    "LayerNormalization",
    "FastGelu",
    "BiasGelu",
    "Gelu",
    "FusedConv",
    "FusedMatMul",
)


@dataclass(frozen=True)
class EvalData:
    """A labelled split to measure accuracy on: inputs by name, integer targets."""

    feeds: dict[str, NDArray[Any]]
    targets: NDArray[Any]
    source: str


def variant_path(target: Path, kind: Variant) -> Path:
    return target.with_name(f"{target.stem}.{kind}.onnx")


def transformer_shape(graph: Graph) -> tuple[int, int] | None:
    """``(num_heads, hidden_size)`` of the first op that has ``num_heads`` (a BERT-like model)."""
    for node in graph.nodes:
        heads = getattr(node.op, "num_heads", None)
        if isinstance(heads, int) and heads > 0:
            for attr in ("embed_dim", "d_model", "hidden_size", "dim"):
                hidden = getattr(node.op, attr, None)
                if isinstance(hidden, int) and hidden > 0:
                    return heads, hidden
            return heads, 0
    return None


# ------------------------------------------------------------------------------------ converters


def optimize(src: Path, dst: Path, transformer: tuple[int, int] | None = None) -> dict[str, Any]:
    """Graph optimisation: the BERT fusions of ``onnxruntime.transformers`` for attention models,
    else onnxruntime's level ALL saved through ``SessionOptions.optimized_model_filepath``.

    A level-ALL file may hold layout-specific contrib ops: load it with onnxruntime on the same
    kind of CPU, with graph optimisation off or on (both work).

    The BERT fusions run at ``opt_level=0`` (the Python fusions only, no onnxruntime-specific graph
    saved): the file stays portable and onnxruntime still applies its level-ALL passes at load.
    SkipLayerNormalization is not fused (its CPU kernel is slow, see :mod:`specc.runtime.session`).
    On a 2-core CPU at batch 1 (T = 128) a BERT encoder is matmul-bound and the fused graph
    (Attention, BiasGelu, EmbedLayerNormalization) runs as fast as onnxruntime's own load-time
    optimisation of the plain export (within 1 %); the fusions pay off with more threads, longer
    sequences or a GPU."""
    if transformer is not None:
        from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        heads, hidden = transformer
        fusions = FusionOptions("bert")
        # SkipLayerNormalization's CPU kernel is slower than the Add + LayerNormalization it replaces
        # (see specc.runtime.session); onnxruntime's own fusion of it is turned off at load as well
        fusions.enable_skip_layer_norm = fusions.enable_bias_skip_layer_norm = False
        # the raw 2-d mask, not the "bert" default MaskIndexEnd (a per-row count of leading ones,
        # which silently assumes right padding: any other mask would compute something else)
        fusions.attention_mask_format = AttentionMaskFormat.AttentionMask
        opt = optimize_model(
            str(src),
            model_type="bert",
            num_heads=heads,
            hidden_size=hidden,
            opt_level=0,
            optimization_options=fusions,
        )
        with atomic_path(dst) as tmp:
            opt.save_model_to_file(str(tmp))
        return {
            "method": "onnxruntime.transformers.optimizer (bert)",
            "num_heads": heads,
            "hidden_size": hidden,
        }
    import onnxruntime as ort

    with atomic_path(dst) as tmp:
        options = session_options()
        options.optimized_model_filepath = str(tmp)
        ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])
    return {"method": "onnxruntime SessionOptions level ALL"}


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """fp16 weights and compute, fp32 inputs and outputs (so the metadata's dtypes still hold)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    converted = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
    converted.topological_sort()  # the io casts are appended at the end
    with atomic_path(dst) as tmp:
        onnx.save_model(converted.model, str(tmp))
    return {"method": "onnxruntime.transformers.float16 (keep_io_types)"}


@dataclass(frozen=True)
class VariantInputs:
    """What a converter may use besides the source and destination files."""

    graph: Graph
    calibration: Calibration | None = None
    int8_mode: Int8Mode = "auto"


Converter = Callable[[Path, Path, VariantInputs], dict[str, Any]]
"""Writes ``dst`` from the verified ``src`` and returns its report entry's own fields (``method``, ...)."""
VARIANTS: Registry[Converter] = Registry("export variant")
VARIANTS.register("opt", lambda src, dst, v: optimize(src, dst, transformer_shape(v.graph)))
VARIANTS.register("int8", lambda src, dst, v: quantize_int8(src, dst, v.calibration, v.int8_mode))
VARIANTS.register("fp16", lambda src, dst, v: convert_fp16(src, dst))


# ------------------------------------------------------------------------------------ checks


def _copy_metadata(src: Path, dst: Path, kind: Variant) -> None:
    """The fp32 model's metadata (typed, :class:`~specc.contracts.onnx_metadata.OnnxMetadata`) with
    ``variant`` set; the converters' own entries are dropped."""
    props = get_metadata(onnx.load(str(src), load_external_data=False))
    meta = OnnxMetadata.from_props(props)
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for key, value in props.items():  # other tools' entries stay; set_metadata replaces specc's
        model.metadata_props.add(key=key, value=value)
    set_metadata(model, meta.model_copy(update={"variant": kind}))
    with atomic_path(dst) as tmp:
        onnx.save_model(model, str(tmp))


def _batches(
    data: EvalData, path: Path, limit: int | None = None
) -> Iterator[tuple[dict[str, NDArray[Any]], NDArray[Any]]]:  # noqa: E501
    """``(feeds, targets)`` of ``data`` in batches the model at ``path`` takes: 256 samples, or the
    fixed batch size of a ``--static`` file (dropping a last partial batch)."""
    fixed = fixed_batch(path)
    size = fixed or 256
    n = len(data.targets) if limit is None else min(limit, len(data.targets))
    for i in range(0, n, size):
        y = data.targets[i : i + size]
        if fixed and len(y) != fixed:
            return
        yield {k: v[i : i + size] for k, v in data.feeds.items()}, y


def output_change(
    reference: Path, candidate: Path, graph: Graph, sizes: Sequence[SampleSizes], data: EvalData | None = None
) -> dict[str, Any]:
    """Max/mean absolute difference per output and top-1 agreement vs the fp32 model: on random
    inputs at every size of ``sizes`` (the dynamic axes), or with ``data`` on its first 256 samples
    (real inputs: what a quantised model is calibrated for; random ones overstate its error)."""
    ref, cand = ort_runner(ort_session(reference)), ort_runner(ort_session(candidate))
    stats: dict[str, dict[str, float]] = {}
    if data is not None:
        batches = [feeds for feeds, _ in _batches(data, reference, limit=256)]
    else:
        batches = [make_inputs(graph, s, seed=100 + k) for k, s in enumerate(sizes)]
    for feeds in batches:
        a, b = ref(feeds), cand(feeds)
        for name in a:
            d = np.abs(a[name].astype(np.float64) - b[name].astype(np.float64))
            cur = stats.setdefault(
                name, {"max_abs": 0.0, "mean_abs": 0.0, "ref_max_abs": 0.0, "top1_agree": 1.0}
            )
            cur["max_abs"] = max(cur["max_abs"], float(d.max()) if d.size else 0.0)
            cur["mean_abs"] = max(cur["mean_abs"], float(d.mean()) if d.size else 0.0)
            cur["ref_max_abs"] = max(cur["ref_max_abs"], float(np.abs(a[name]).max()) if d.size else 0.0)
            if a[name].ndim >= 2 and a[name].dtype.kind == "f":
                agree = float(np.mean(a[name].argmax(-1) == b[name].argmax(-1)))
                cur["top1_agree"] = min(cur["top1_agree"], agree)
    return stats


def accuracy(path: Path, data: EvalData) -> float:
    """Top-1 accuracy (per token for sequence outputs) of an ONNX model on a labelled split."""
    run = ort_runner(ort_session(path))
    hits = total = 0
    for feeds, y in _batches(data, path):
        out = next(iter(run(feeds).values()))
        pred = out.argmax(-1)
        if pred.shape != y.shape:
            raise ValueError(f"prediction shape {pred.shape} does not match targets {y.shape}")
        hits += int((pred == y).sum())
        total += int(y.size)
    return hits / max(total, 1)


def make_variant(
    kind: Variant,
    target: Path,
    graph: Graph,
    sizes: Sequence[SampleSizes],
    eval_data: EvalData | None = None,
    calibration: Calibration | None = None,
    int8_mode: Int8Mode = "auto",
) -> dict[str, Any]:
    """Write one variant of the verified ``target`` and check it; returns its report entry."""
    if kind not in VARIANTS:  # the API takes any string; the CLI offers flags for the registered ones
        raise UsageError(VARIANTS.unknown(kind))
    dst = variant_path(target, kind)
    start = time.perf_counter()
    info = VARIANTS[kind](target, dst, VariantInputs(graph, calibration, int8_mode))
    _copy_metadata(target, dst, kind)
    entry: dict[str, Any] = {"file": str(dst), **info, "convert_s": round(time.perf_counter() - start, 3)}
    entry["checker"] = _checker(dst)
    entry["output_change"] = output_change(target, dst, graph, sizes)  # every size of the dynamic axes
    if eval_data is not None:
        entry["output_change_on_data"] = output_change(target, dst, graph, sizes, eval_data)
    if eval_data is not None:
        entry["accuracy"] = {
            "split": f"{eval_data.source} (validation, {len(eval_data.targets)} samples)",
            "fp32": accuracy(target, eval_data),
            kind: accuracy(dst, eval_data),
        }
    else:
        entry["accuracy"] = None
        entry["accuracy_note"] = "no validation split available (random inputs only)"
    write_manifest(dst)
    entry["sha256"] = sha256_file(dst)
    entry["size_bytes"] = dst.stat().st_size
    entry["fused_ops"] = _fused_ops(dst) if kind == "opt" else None
    return entry


def _checker(path: Path) -> str:
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except Exception as e:  # contrib ops of the optimiser are unknown to onnx
        return f"not passed: {str(e).splitlines()[0][:160]}"
    return "passed"


def _fused_ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path)).graph.node:
        if node.op_type in FUSED_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
