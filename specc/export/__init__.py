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

from specc.errors import DataError, UsageError
from specc.export.onnx_export import (
    EXPORTERS,
    ExportInfo,
    ExportOptions,
    ExportReport,
    export_model,
    failed_path,
    report_path,
    static_sizes,
    write_report,
)
from specc.export.samples import parity_sizes
from specc.export.source import RunInfo, Source, load_source
from specc.export.variants import EvalData, Variant, make_variant, variant_path

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


def export_spec(spec: str | Path, out: str | Path, *, weights: str | Path | None = None,
                sets: Sequence[str] = (), scale: str | None = None, seed: int = 0,
                options: ExportOptions = ExportOptions(), variants: Sequence[Variant] = ()) -> dict[str, Any]:  # fmt: skip
    """Build ``spec`` (with ``weights``: a .safetensors file or a run folder), export, verify, and write
    the requested variants; returns the JSON report (also written to ``out + ".json"``)."""
    source = load_source(spec, weights=weights, sets=tuple(sets), scale=scale, seed=seed)
    graph = source.model.graph
    info = ExportInfo(labels=source.run.class_names, preprocess=source.run.preprocess, task=source.run.task,
                      weights=str(source.weights) if source.weights else None)  # fmt: skip
    report = export_model(source.model, graph, out, options, info)
    if source.weights is None:
        report.warnings.insert(0, "no weights given: the freshly initialised network was exported")
    target = Path(out)
    failed_path(target).unlink(missing_ok=True)
    report_path(failed_path(target)).unlink(missing_ok=True)
    if variants:
        eval_data = load_eval_data(source)
        sizes = [static_sizes(graph)] if options.static else parity_sizes(graph, options.batches[:2], options.seq_lens)
        for kind in variants:
            report.variants[kind] = make_variant(kind, target, graph, sizes, eval_data)
    data = report.to_json()
    write_report(target, data)
    return data


def load_eval_data(source: Source, limit: int = MAX_EVAL_SAMPLES) -> EvalData | None:
    """The validation split of the run's data set, as recorded in ``RUN/data.json``; None if unknown."""
    run: RunInfo = source.run
    graph = source.model.graph
    name = run.data.get("source") or run.data.get("data") or run.data.get("dataset")
    if not isinstance(name, str) or len(graph.inputs) != 1:
        return None
    from specc.data import load_dataset

    (input_name, t), = graph.inputs.items()
    kw = {k: run.data[k] for k in ("seed", "val_fraction", "test_fraction", "seq_len", "num_samples")
          if isinstance(run.data.get(k), int | float) and not isinstance(run.data.get(k), bool)}  # fmt: skip
    try:
        ds = load_dataset(name, input_shape=tuple(t.shape), input_dtype=t.dtype, **kw)  # type: ignore[arg-type]
    except (DataError, UsageError) as e:
        log.warning("cannot load the validation split of '%s' (%s): accuracy is not measured", name, e)
        return None
    if ds.task not in ("classification", "language_model") or len(ds.val) == 0:
        return None
    return EvalData({input_name: ds.val.x[:limit]}, ds.val.y[:limit], name)
