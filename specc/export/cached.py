"""``specc export --kv-cache``: a causal language model exported for step-by-step decoding.

The file is a :class:`~specc.nn.decode.DecodeModel`: the spec's inputs for the new tokens, then the
tensors carried from the previous step (``past_key.N``/``past_value.N`` of every causal self-attention,
``past_hidden.N``/``past_cell.N`` of every recurrent layer), with a dynamic past length (0 before the
first step, where it is the plain model on the prompt); outputs are the spec's outputs for the new
tokens, then ``present_*.N``. ``specc.generation`` names them all.

Verified like every export, but against the *uncached* model: at batch sizes 1 and 2 and several
prompt lengths, onnxruntime runs the prompt with an empty cache and then a few single-token steps, and
every step's logits must equal the uncached PyTorch model's logits at the same positions within the
export tolerance; the carried tensors must equal the PyTorch decode model's. Before that, a PyTorch
check (:func:`~specc.nn.decode.check_decoding`) names the first node that cannot be decoded this way.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from specc.contracts.onnx_metadata import TensorEntry
from specc.errors import BuildError, UsageError
from specc.export.metadata import build_metadata
from specc.export.onnx_export import (
    ExportInfo,
    ExportOptions,
    ExportReport,
    _keep_failed,
    _stage_model,
    output_path,
    publish_export,
    running_exporter,
    save_checked,
)
from specc.export.samples import SampleSizes, make_inputs
from specc.export.verify import ParityCase, compare, ort_session, raise_on_failure
from specc.nn import CompiledModel
from specc.nn.cache import BATCH, PAST, TOTAL
from specc.nn.decode import DecodeModel, Signature, check_decoding, real_tokens, step_feeds
from specc.publish import Stage

CACHE_BATCHES = (1, 2)
CACHE_PROMPTS = (1, 5, 17)
CACHE_STEPS = 3
TRACE_SIZES = {BATCH: 2, "seq": 3, PAST: 4}  # distinct sizes, so the tracer keeps every axis symbolic


def export_cached(
    model: CompiledModel,
    out: str | os.PathLike[str],
    options: ExportOptions = ExportOptions(),
    info: ExportInfo | None = None,
    *,
    stage: Stage | None = None,
) -> tuple[ExportReport, Signature]:
    """Export ``model`` as a :class:`DecodeModel`, verify it against the uncached model and publish it
    with its manifest and report; ``info.generation`` should list the carried tensors
    (:func:`specc.export.generation.generation_metadata` with ``cached``).

    With ``stage`` (a :class:`specc.publish.Stage` for ``out``) the verified model and its manifest
    are only made in the stage's work folder, as with :func:`~specc.export.export_model`; the caller
    publishes everything at once."""
    options.check()
    if options.static:
        raise UsageError("--kv-cache exports a dynamic past length; drop --static")
    if options.exporter != "torchscript":
        raise UsageError("--kv-cache is exported with the torchscript exporter; drop --exporter dynamo")
    info = info or ExportInfo()
    target = output_path(out)
    net = copy.deepcopy(model).cpu().eval()
    decoder = DecodeModel(net).eval()
    sig = decoder.signature
    _check_in_torch(decoder, sig)
    report = ExportReport(
        str(target),
        model.graph.name,
        options.exporter,
        options.opset_version,
        False,
        tolerance={"atol": options.atol, "rtol": options.rtol},
        weights=info.weights,
    )
    report.dynamic_axes = sig.dynamic_axes()
    report.kv_cache = True
    if stage is not None:
        _export_in(stage, net, decoder, options, info, report)
        return report, sig
    with Stage(target) as own:
        _export_in(own, net, decoder, options, info, report)
        publish_export(own, report)
    return report, sig


def _entries(tensors: Sequence[Any]) -> list[TensorEntry]:
    return [TensorEntry(name=t.name, shape=list(t.shape), dtype=t.dtype) for t in tensors]


def _prompt_lengths(sig: Signature, steps: int) -> list[int]:
    """Prompt lengths to verify, so that prompt + steps fits the position table."""
    limit = sig.max_positions
    lengths = sorted({p if limit is None else max(1, min(p, limit - steps)) for p in CACHE_PROMPTS})
    return lengths


def _check_in_torch(decoder: DecodeModel, sig: Signature) -> None:
    """Decode a random sequence in chunks in torch; the first node that differs is named."""
    graph = decoder.graph
    length = 9 if sig.max_positions is None else min(9, sig.max_positions)
    feeds = make_inputs(graph, SampleSizes(2, {sig.roles.seq: length}), seed=1)
    full = {n: torch.from_numpy(v) for n, v in feeds.items()}
    chunks = [length // 2, 1, 1, length - length // 2 - 2] if length >= 4 else [1] * length
    check_decoding(decoder, full, [c for c in chunks if c > 0])


def _trace_args(decoder: DecodeModel, sig: Signature) -> tuple[torch.Tensor, ...]:
    sizes = {**TRACE_SIZES, sig.roles.seq: TRACE_SIZES["seq"]}
    if sig.max_positions is not None and sizes[sig.roles.seq] + sizes[PAST] > sig.max_positions:
        sizes[PAST], sizes[sig.roles.seq] = 1, 1
    sizes[TOTAL] = sizes[PAST] + sizes[sig.roles.seq]
    graph = decoder.graph
    feeds = make_inputs(graph, SampleSizes(sizes[BATCH], {sig.roles.seq: sizes[TOTAL]}), seed=0)
    full = {n: torch.from_numpy(v) for n, v in feeds.items()}
    inputs = step_feeds(sig, full, sizes[PAST], sizes[TOTAL])
    cache = [
        torch.randn([sizes[d] if isinstance(d, str) else d for d in c.past_shape]) for c in sig.cache
    ]  # random, not zeros: constant folding must not see a constant cache
    return (*inputs, *cache)


def _to_onnx(
    decoder: DecodeModel, sig: Signature, path: Path, options: ExportOptions, notes: list[str]
) -> None:
    args = _trace_args(decoder, sig)
    try:
        with torch.no_grad():
            decoder(*args)
    except Exception as e:
        raise BuildError(f"the decode model of '{decoder.spec_name}' fails on example inputs: {e}") from e
    what = f"torch.onnx.export (torchscript, opset {options.opset_version}) of the decode model"
    with running_exporter(what, notes):
        torch.onnx.export(
            decoder,
            args,
            str(path),
            dynamo=False,
            opset_version=options.opset_version,
            dynamic_axes=sig.dynamic_axes(),
            do_constant_folding=True,
            training=torch.onnx.TrainingMode.EVAL,
            input_names=sig.input_names,
            output_names=sig.output_names,
        )


def _export_in(
    stage: Stage,
    net: CompiledModel,
    decoder: DecodeModel,
    options: ExportOptions,
    info: ExportInfo,
    report: ExportReport,
) -> None:
    work, target = stage.work, stage.target
    start = time.perf_counter()
    sig = decoder.signature
    raw = work / "raw.onnx"
    _to_onnx(decoder, sig, raw, options, report.warnings)
    report.timings_s["export"] = time.perf_counter() - start

    t = time.perf_counter()
    meta = build_metadata(
        net.graph,
        labels=info.labels,
        preprocess=info.preprocess,
        task=info.task,
        generation=info.generation,
        tokenizer=info.tokenizer,
        signature=(_entries(sig.inputs), _entries(sig.outputs)),  # the decode model's own
    )
    staged, external = save_checked(raw, meta, target, report)
    report.timings_s["check"] = time.perf_counter() - t

    t = time.perf_counter()
    report.parity = cached_parity(net, decoder, ort_session(staged), options.atol, options.rtol)
    report.timings_s["verify"] = time.perf_counter() - t
    report.timings_s["total"] = time.perf_counter() - start
    if not report.ok:
        _keep_failed(staged, external, target, report)
        raise_on_failure(
            report.parity,
            f"export of '{net.graph.name}' with a key/value cache failed verification",
            options.atol,
            options.rtol,
        )
    _stage_model(stage, staged, external, report)


def cached_parity(
    net: CompiledModel,
    decoder: DecodeModel,
    session: Any,
    atol: float,
    rtol: float,
    *,
    batches: Sequence[int] = CACHE_BATCHES,
    steps: int = CACHE_STEPS,
) -> list[ParityCase]:
    """onnxruntime's cached steps against the uncached PyTorch model (see the module notes)."""
    sig = decoder.signature
    graph = net.graph
    seq_outputs = [n for n, t in graph.output_types().items() if t.shape and t.shape[0] == sig.roles.seq]
    cases = []
    for k, (batch, prompt) in enumerate((b, p) for p in _prompt_lengths(sig, steps) for b in batches):
        total = prompt + steps
        feeds = make_inputs(graph, SampleSizes(batch, {sig.roles.seq: total}), seed=100 + k)
        full = {n: torch.from_numpy(v) for n, v in feeds.items()}
        with torch.inference_mode():
            ref = dict(zip(net.output_names, _tuple(net(*[full[n] for n in graph.inputs])), strict=True))
        chunks = [prompt] + [1] * steps
        got, presents = _run_steps(session, sig, full, chunks)
        _, torch_presents = _torch_steps(decoder, full, chunks)
        real = real_tokens(sig, full)
        diffs = {
            n: compare(_real(ref[n].numpy(), real), _real(np.concatenate(got[n], axis=1), real), atol, rtol)
            for n in seq_outputs
        }
        for c in sig.cache:
            diffs[c.output] = compare(torch_presents[c.output], presents[c.output], atol, rtol)
        cases.append(ParityCase(SampleSizes(batch, {"prompt": prompt, "steps": steps}), diffs))
    return cases


def _real(values: NDArray[Any], real: torch.Tensor | None) -> NDArray[Any]:
    """``values`` with padded positions (see :func:`~specc.nn.decode.real_tokens`) set to 0."""
    if real is None:
        return values
    keep = real.numpy().reshape(*real.shape, *[1] * (values.ndim - 2))
    return np.where(keep, values, 0).astype(values.dtype)


def _tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def _run_steps(
    session: Any, sig: Signature, full: dict[str, torch.Tensor], chunks: Sequence[int]
) -> tuple[dict[str, list[NDArray[Any]]], dict[str, NDArray[Any]]]:
    """Run onnxruntime chunk by chunk; per spec output the list of chunk results, and the last presents."""
    batch = next(iter(full.values())).shape[0]
    names = sig.output_names
    n_out = len(names) - len(sig.cache)
    past = {
        c.input: np.zeros(
            [batch if d == BATCH else 0 if d == PAST else int(d) for d in c.past_shape], np.float32
        )
        for c in sig.cache
    }
    got: dict[str, list[NDArray[Any]]] = {n: [] for n in names[:n_out]}
    presents: dict[str, NDArray[Any]] = {}
    start = 0
    for length in chunks:
        inputs = step_feeds(sig, full, start, start + length)
        feeds = {t.name: v.numpy() for t, v in zip(sig.inputs, inputs, strict=False)}
        values = session.run(names, {**feeds, **past})
        for n, v in zip(names[:n_out], values[:n_out], strict=True):
            got[n].append(np.asarray(v))
        presents = dict(zip(names[n_out:], values[n_out:], strict=True))
        past = {c.input: presents[c.output] for c in sig.cache}
        start += length
    return got, presents


def _torch_steps(
    decoder: DecodeModel, full: dict[str, torch.Tensor], chunks: Sequence[int]
) -> tuple[list[torch.Tensor], dict[str, NDArray[Any]]]:
    sig = decoder.signature
    batch = next(iter(full.values())).shape[0]
    past = decoder.empty_cache(batch)
    start = 0
    outs: list[torch.Tensor] = []
    with torch.inference_mode():
        for length in chunks:
            result = decoder(*step_feeds(sig, full, start, start + length), *past)
            n_out = len(result) - len(past)
            outs, past = list(result[:n_out]), list(result[n_out:])
            start += length
    return outs, {c.output: p.numpy() for c, p in zip(sig.cache, past, strict=True)}
