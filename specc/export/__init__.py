"""Stage 7 — export: a compiled model → a verified ONNX file with metadata and a manifest.

>>> from specc.export import export_spec, ExportOptions
>>> report = export_spec("specs/lenet.yaml", "lenet.onnx", weights="runs/lenet")
>>> report["ok"], report["max_diff"]

:func:`export_model` is the same for any ``nn.Module`` that takes the graph's inputs (used by the
benchmarks for hand-written reference networks).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from specc.contracts.preprocess import preprocess_json
from specc.errors import DataError, UsageError
from specc.export.cached import export_cached
from specc.export.generation import generation_metadata
from specc.export.metadata import input_entries
from specc.export.onnx_export import (
    EXPORTERS,
    ExportInfo,
    ExportOptions,
    ExportReport,
    export_model,
    failed_path,
    output_path,
    publish_export,
    report_path,
    static_sizes,
)
from specc.export.quantize import CALIBRATION_SAMPLES, INT8_MODES, Calibration, Int8Mode, load_calibration
from specc.export.samples import parity_sizes
from specc.export.source import Source, load_source
from specc.export.variants import EvalData, Variant, make_variant, variant_path
from specc.graph import Graph
from specc.nn.decode import DecodeModel
from specc.publish import Stage
from specc.runtime.inputs import TensorSpec
from specc.runtime.model import manifest_path
from specc.runtime.tokenize import read_tokenizer_file

__all__ = [
    "EXPORTERS",
    "EvalData",
    "ExportInfo",
    "ExportOptions",
    "ExportReport",
    "export_model",
    "export_spec",
    "failed_path",
    "load_eval_data",
    "report_path",
    "variant_path",
]

log = logging.getLogger(__name__)
MAX_EVAL_SAMPLES = 2000


def export_spec(
    spec: str | Path,
    out: str | Path,
    *,
    weights: str | Path | None = None,
    sets: Sequence[str] = (),
    scale: str | None = None,
    seed: int = 0,
    options: ExportOptions = ExportOptions(),
    variants: Sequence[Variant] = (),
    calibration: str | Path | None = None,
    int8_mode: Int8Mode = "auto",
    kv_cache: bool = False,
    tokenizer: str | Path | None = None,
) -> dict[str, Any]:
    """Build ``spec`` (with ``weights``: a .safetensors file or a run folder), export, verify, and write
    the requested variants; returns the JSON report (also written to ``out + ".json"``).

    ``calibration`` (a .npy/.npz file or a folder of images) feeds static int8 quantisation; without
    it the training split of the run folder's data set is used where known (see
    :mod:`specc.export.quantize`). ``kv_cache`` exports a causal language model for step-by-step
    decoding (:mod:`specc.export.cached`); ``tokenizer`` (a ``tokenizer.json``) is stored in the
    metadata of a language model for ``specc generate``."""
    options.check()
    if kv_cache and variants:
        raise UsageError("--kv-cache cannot be combined with --optimize, --int8 or --fp16")
    tok = read_tokenizer_file(tokenizer) if tokenizer is not None else None
    if int8_mode not in INT8_MODES:
        raise UsageError(f"unknown int8 mode '{int8_mode}'; choose one of {', '.join(INT8_MODES)}")
    if calibration is not None and not Path(calibration).exists():
        raise UsageError(f"calibration data not found: {calibration}")
    source = load_source(spec, weights=weights, sets=tuple(sets), scale=scale, seed=seed, run_flags=True)
    graph = source.model.graph
    dataset = _run_dataset(source) if variants else None  # loaded once: accuracy and calibration
    calib = run_calibration(source, dataset=dataset) if "int8" in variants and calibration is None else None
    if "int8" in variants and calibration is not None:  # checked before anything is written
        pre = source.run.preprocess
        calib = load_calibration(
            Path(calibration), input_specs(graph, options), preprocess_json(pre) if pre is not None else None
        )
        check_index_bounds(calib, graph)
    if "int8" in variants and int8_mode == "static" and calibration is None and calib is None:
        raise UsageError(
            "static int8 quantisation needs calibration data: pass --calibration FILE|FOLDER "
            "(.npy/.npz arrays or a folder of images) or a run folder whose data set is known"
        )
    cached = DecodeModel(source.model).signature if kv_cache else None
    generation = generation_metadata(
        source.model, preprocess=source.run.preprocess, task=source.run.task, cached=cached, tokenizer=tok
    )
    info = ExportInfo(
        labels=source.run.class_names,
        preprocess=source.run.preprocess,
        task=source.run.task,
        weights=str(source.weights) if source.weights else None,
        generation=generation,
        tokenizer=tok.text if tok is not None and generation is not None else None,
    )
    target = output_path(out)
    with Stage(target) as stage:  # model, variants, manifests and report appear together or not at all
        if kv_cache:
            report, _ = export_cached(source.model, target, options, info, stage=stage)
        else:
            report = export_model(source.model, graph, target, options, info, stage=stage)
        if source.weights is None:
            report.warnings.insert(0, "no weights given: the freshly initialised network was exported")
        if variants:
            eval_data = load_eval_data(source, dataset=dataset)
            sizes = (
                [static_sizes(graph)]
                if options.static
                else parity_sizes(graph, options.batches[:2], options.seq_lens)
            )
            staged = stage.path(target.name)
            for kind in variants:
                entry = make_variant(kind, staged, graph, sizes, eval_data, calib, int8_mode)
                made = variant_path(staged, kind)
                stage.add(made, manifest_path(made))
                report.variants[kind] = {**entry, "file": str(variant_path(target, kind))}
        publish_export(stage, report, variants)
    return report.to_json()


def input_specs(graph: Graph, options: ExportOptions) -> list[TensorSpec]:
    """The inputs as the exported file declares them (symbols fixed with --static), with a free batch
    axis: calibration samples are fed in batches of whatever size the file takes."""
    static = dict(static_sizes(graph).symbols) if options.static else None
    return [TensorSpec.from_json(entry, "inputs") for entry in input_entries(graph, static)]


def check_index_bounds(calib: Calibration, graph: Graph) -> None:
    """Calibration ids must be valid for the ops that index with them (an embedding's table size)."""
    for name, arr in calib.feeds.items():
        bound = graph.index_bound(name) if arr.dtype.kind in "iu" else None
        if bound is not None and arr.size and (int(arr.min()) < 0 or int(arr.max()) >= bound):
            raise UsageError(
                f"calibration input '{name}' ({calib.source}) holds ids {int(arr.min())}..{int(arr.max())}, "
                f"but the model takes 0..{bound - 1}"
            )


def _run_dataset(source: Source) -> tuple[str, str, Any] | None:
    """``(input name, data set name, data set)``: the run's data with exactly its splits, rebuilt from
    the source and options ``RUN/data.json`` records (seed, fractions, sequence length, samples)."""
    record = source.run.record
    graph = source.model.graph
    if record is None or len(graph.inputs) != 1:
        return None
    input_name = next(iter(graph.inputs))
    try:
        ds = record.data.load()
    except (DataError, UsageError) as e:
        log.warning(
            "cannot load the data set '%s' of the run (%s): accuracy and calibration use none",
            record.data.source,
            e,
        )
        return None
    return input_name, record.data.source, ds


def load_eval_data(
    source: Source, limit: int = MAX_EVAL_SAMPLES, *, dataset: tuple[str, str, Any] | None = None
) -> EvalData | None:
    """The validation split of the run's data set, as recorded in ``RUN/data.json`` (never a training
    sample: the split is rebuilt with the run's seed and fractions); None if unknown.
    ``dataset``: what :func:`_run_dataset` returned, if it was called already."""
    found = dataset if dataset is not None else _run_dataset(source)
    if found is None:
        return None
    input_name, name, ds = found
    if ds.task not in ("classification", "language_model") or len(ds.val) == 0:
        return None
    x, y = ds.val.arrays(limit)  # only the first ``limit`` samples are read (lazy splits too)
    return EvalData({input_name: x}, y, name)


def run_calibration(
    source: Source, limit: int = CALIBRATION_SAMPLES, *, dataset: tuple[str, str, Any] | None = None
) -> Calibration | None:
    """Calibration inputs for static int8: a seeded random subset of the run's training split."""
    found = dataset if dataset is not None else _run_dataset(source)
    if found is None or len(found[2].train) == 0:
        return None
    input_name, name, ds = found
    idx = np.sort(np.random.default_rng(0).permutation(len(ds.train))[:limit])
    x, _ = ds.train.take(idx)  # only these samples are read (lazy splits too)
    return Calibration({input_name: np.ascontiguousarray(x)}, f"{name} (training split)")
