"""Export a compiled model to ONNX and prove it computes what PyTorch computes.

Steps (all in a hidden work folder next to the target, so a reader never sees a half-made file):
eval-mode deep copy → ``torch.onnx.export`` with the chosen exporter and opset → metadata →
``onnx.checker.check_model(full_check=True)`` → parity in onnxruntime at several batch sizes (and
sequence lengths) → ``M.onnx.sha256`` → ``M.onnx.json``; then model, manifest, report (and the
variants :func:`specc.export.export_spec` makes in the same folder) are published in one step by
:class:`specc.publish.Stage`: a failure or Ctrl-C at any point leaves the previous export as it was. On a parity miss
the model is kept as ``M.failed.onnx`` (for inspection; no manifest, never loaded by default) and
:class:`~specc.errors.ExportVerificationError` (exit 3) is raised; when the exporter itself fails (or
``onnx.checker`` rejects its file) :class:`~specc.errors.ExportError` (exit 4) is raised with the
exporter's first line; an existing ``M.onnx`` is left untouched either way.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx
import torch

from specc.atomic import atomic_write_text, sha256_file, write_failure
from specc.contracts.generation import GenerationInfo
from specc.contracts.onnx_metadata import OnnxMetadata
from specc.contracts.preprocess import Preprocess
from specc.errors import BuildError, ExportError, UsageError
from specc.export.metadata import build_metadata, set_metadata, write_manifest
from specc.export.samples import (
    SampleSizes,
    dynamic_axes,
    example_sizes,
    make_inputs,
    parity_sizes,
    symbols_of,
)
from specc.export.verify import (
    ATOL,
    RTOL,
    ParityCase,
    ort_runner,
    ort_session,
    parity,
    raise_on_failure,
    summarise,
    torch_runner,
)
from specc.graph import Graph
from specc.publish import Stage

Exporter = Literal["torchscript", "dynamo"]
EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")
DEFAULT_OPSET: dict[str, int] = {"torchscript": 17, "dynamo": 18}
# opsets each exporter can write with torch 2.13 (torch.onnx._constants: the TorchScript exporter's
# maximum is 20; torch.export-based export starts at 18) and onnxruntime can run
OPSET_RANGE: dict[str, tuple[int, int]] = {"torchscript": (7, 20), "dynamo": (18, 23)}
#: The derived files an export can make next to ``M.onnx`` (``M.<kind>.onnx``, see :mod:`specc.export.variants`).
VARIANTS: tuple[str, ...] = ("opt", "int8", "fp16")
EXTERNAL_DATA_THRESHOLD = 2 * 1024**3 - 64 * 1024**2  # protobuf's 2 GiB limit, with headroom


@dataclass(frozen=True)
class ExportOptions:
    """How to export and verify (see ``specc export --help``)."""

    exporter: Exporter = "torchscript"
    opset: int | None = None
    static: bool = False
    atol: float = ATOL
    rtol: float = RTOL
    batches: tuple[int, ...] = (1, 2, 7)
    seq_lens: tuple[int, ...] = (5, 17)

    @property
    def opset_version(self) -> int:
        return self.opset if self.opset is not None else DEFAULT_OPSET[self.exporter]

    def check(self) -> None:
        """Refuse an exporter or opset that cannot work before anything is built or written."""
        if self.exporter not in EXPORTERS:
            raise UsageError(f"unknown exporter '{self.exporter}'; choose one of {', '.join(EXPORTERS)}")
        low, high = OPSET_RANGE[self.exporter]
        if not low <= self.opset_version <= high:
            raise UsageError(
                f"--opset {self.opset_version} is not supported by the {self.exporter} exporter "
                f"(it writes opsets {low}..{high}; default {DEFAULT_OPSET[self.exporter]})"
            )


@dataclass
class ExportInfo:
    """What goes into the metadata besides the graph: data labels, preprocessing, task."""

    labels: list[str] | None = None
    preprocess: Preprocess | None = None
    task: str | None = None
    weights: str | None = None
    generation: GenerationInfo | None = None
    """how to generate with a language model (:mod:`specc.export.generation`)"""
    tokenizer: str | None = None
    """the ``tokenizer.json`` text stored with it (``--tokenizer``)"""


@dataclass
class ExportReport:
    """Everything ``specc export --json`` prints and ``M.onnx.json`` holds."""

    model: str
    spec_name: str
    exporter: str
    opset: int
    static: bool
    sha256: str = ""
    size_bytes: int = 0
    external_data: list[str] = field(default_factory=list)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    tolerance: dict[str, float] = field(default_factory=dict)
    parity: list[ParityCase] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    weights: str | None = None
    node_names: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    variants: dict[str, Any] = field(default_factory=dict)
    kv_cache: bool = False
    """a ``--kv-cache`` export (:mod:`specc.export.cached`)"""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.parity)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "spec_name": self.spec_name,
            "ok": self.ok,
            "exporter": self.exporter,
            "opset": self.opset,
            "static": self.static,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "external_data": self.external_data,
            "weights": self.weights,
            "dynamic_axes": {k: {str(a): s for a, s in v.items()} for k, v in self.dynamic_axes.items()},
            "tolerance": self.tolerance,
            "sizes_tested": [c.sizes.to_json() for c in self.parity],
            "max_diff": summarise(self.parity),
            "parity": [c.to_json() for c in self.parity],
            "timings_s": {k: round(v, 4) for k, v in self.timings_s.items()},
            "node_names": self.node_names,
            "warnings": self.warnings,
            "variants": self.variants,
            "kv_cache": self.kv_cache,
        }


# ------------------------------------------------------------------------------------------ export


def static_sizes(graph: Graph) -> SampleSizes:
    """Sizes of a ``--static`` export: batch 1, each symbol at its nominal size from ``dims:``."""
    missing = [s for s in symbols_of(graph) if s not in graph.dims]
    if missing:
        raise UsageError(
            f"--static needs a size for the symbolic axes {', '.join(missing)}; "
            f"set them with --set dims.{missing[0]}=N"
        )
    return SampleSizes(1, {s: graph.dims[s] for s in symbols_of(graph)})


@contextlib.contextmanager
def _quiet(notes: list[str], captured: list[str]) -> Iterator[None]:
    """Keep stdout clean (``--json``): Python prints go to stderr, the exporter's warnings into
    ``notes`` and whatever native code writes to file descriptor 1 into ``captured``.

    The TorchScript exporter's C++ log is always on (torch checks ``_jit_is_onnx_log_enabled``, a
    function, for truth) and prints the whole Torch IR graph to stdout when it fails; only an OS-level
    redirect of descriptor 1 keeps that out of ``specc export --json``'s output.
    """
    torch_onnx_log = logging.getLogger("torch.onnx")
    level = torch_onnx_log.level
    torch_onnx_log.setLevel(logging.ERROR)  # "torchvision is not installed" and friends
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(sys.stderr),
            _native_stdout(captured),
        ):
            warnings.simplefilter("always")
            yield
    finally:
        torch_onnx_log.setLevel(level)
    for w in caught:
        text = str(w.message).splitlines()[0][:200]
        if text not in notes:
            notes.append(text)


@contextlib.contextmanager
def _native_stdout(captured: list[str]) -> Iterator[None]:
    """Point file descriptor 1 at a temporary file while the block runs; its text goes to ``captured``."""
    _flush_c_stdio()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            yield
        finally:
            _flush_c_stdio()  # C/C++ buffers hold what belongs in the file, not in the real stdout
            os.dup2(saved, 1)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            if text:
                captured.append(text)


def _flush_c_stdio() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to reach (not on Linux/macOS)
        pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def to_onnx(
    model: torch.nn.Module, graph: Graph, path: Path, options: ExportOptions, notes: list[str]
) -> None:
    """Run ``torch.onnx.export`` on an eval-mode model with dynamic batch/symbol axes."""
    sizes = static_sizes(graph) if options.static else example_sizes(graph)
    feeds = make_inputs(graph, sizes)
    args = tuple(torch.from_numpy(feeds[n]) for n in graph.inputs)
    try:
        with torch.no_grad():
            model(*args)
    except Exception as e:  # a build bug, not an export one: say so before the exporter muddles it
        shapes = ", ".join(f"{n} {tuple(v.shape)} {v.dtype}" for n, v in feeds.items())
        raise BuildError(f"the PyTorch model '{graph.name}' fails on example inputs ({shapes}): {e}") from e
    names: dict[str, Any] = dict(input_names=list(graph.inputs), output_names=list(graph.outputs))
    with running_exporter(f"torch.onnx.export ({options.exporter}, opset {options.opset_version})", notes):
        if options.exporter == "torchscript":
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                opset_version=options.opset_version,
                dynamic_axes=None if options.static else dynamic_axes(graph),
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
                **names,
            )
        else:
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=True,
                opset_version=options.opset_version,
                dynamic_shapes=None if options.static else (_dynamo_shapes(graph),),
                external_data=True,
                verbose=False,
                optimize=True,
                **names,
            )


@contextlib.contextmanager
def running_exporter(what: str, notes: list[str]) -> Iterator[None]:
    """Run ``torch.onnx.export`` quietly (see :func:`_quiet`); its failure becomes an ExportError saying ``what`` failed.

    The exporters raise many exception types; the first line is what matters, the rest (and whatever
    the exporter printed) is shown with ``SPECC_DEBUG=1``. A full disk or a read-only folder is not an
    exporter failure: it propagates so the publishing stage names the file.
    """
    captured: list[str] = []
    try:
        with _quiet(notes, captured), torch.inference_mode(False), torch.no_grad():
            yield
    except Exception as e:
        if write_failure(e) is not None:
            raise
        if os.environ.get("SPECC_DEBUG") == "1":
            print("".join(captured), end="", file=sys.stderr)
        raise ExportError(
            f"{what} failed: {_first_line(e)} (SPECC_DEBUG=1 shows the exporter's full output)"
        ) from e


def _dynamo_shapes(graph: Graph) -> tuple[dict[int, Any], ...]:
    dims: dict[str, Any] = {}

    def dim(name: str) -> Any:
        if name not in dims:
            dims[name] = torch.export.Dim(name, min=1)
        return dims[name]

    axes = dynamic_axes(graph)
    return tuple({a: dim(s) for a, s in axes[n].items()} for n in graph.inputs)


def _tensor_bytes(proto: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in proto.graph.initializer)


def save_model(proto: onnx.ModelProto, path: Path) -> list[Path]:
    """Save ``proto``; tensors go to one external ``NAME.data`` file only above ~2 GB."""
    if _tensor_bytes(proto) < EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(proto, str(path))
        return []
    data = path.with_name(path.name + ".data")
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    return [data]


def node_name_stats(proto: onnx.ModelProto) -> dict[str, Any]:
    """How many ONNX nodes point back at a spec path: torchscript puts the module scope in the node
    name (``/layer1.0/conv1/Conv``), dynamo in the ``pkg.torch.onnx.name_scopes`` node metadata."""
    traced = []
    for node in proto.graph.node:
        scopes = {m.key: m.value for m in node.metadata_props}.get("pkg.torch.onnx.name_scopes")
        if node.name.startswith("/") and node.name.count("/") >= 2:
            traced.append(node.name)
        elif scopes and any(part.strip("' ") for part in scopes.strip("[]").split(",")[:-1]):
            traced.append(f"{node.name} {scopes}")
    return {"total": len(proto.graph.node), "with_spec_path": len(traced), "examples": traced[:5]}


# ------------------------------------------------------------------------------------------ driver


def export_model(
    model: torch.nn.Module,
    graph: Graph,
    out: str | os.PathLike[str],
    options: ExportOptions = ExportOptions(),
    info: ExportInfo | None = None,
    *,
    stage: Stage | None = None,
) -> ExportReport:
    """Export ``model`` (a :class:`~specc.nn.CompiledModel` or any module taking the graph's
    inputs) to ``out``, verify it and publish it with its manifest and JSON report.

    With ``stage`` (a :class:`specc.publish.Stage` for ``out``) the verified model and its manifest
    are only made in the stage's work folder (and added to it); the caller adds more (variants,
    the report) and publishes everything at once."""
    options.check()
    info = info or ExportInfo()
    target = output_path(out)
    report = ExportReport(
        str(target),
        graph.name,
        options.exporter,
        options.opset_version,
        options.static,
        tolerance={"atol": options.atol, "rtol": options.rtol},
        weights=info.weights,
    )
    report.dynamic_axes = {} if options.static else dynamic_axes(graph)
    if stage is not None:
        _export_in(stage, model, graph, options, info, report)
        return report
    with Stage(target) as own:
        _export_in(own, model, graph, options, info, report)
        publish_export(own, report)
    return report


def _export_in(
    stage: Stage,
    model: torch.nn.Module,
    graph: Graph,
    options: ExportOptions,
    info: ExportInfo,
    report: ExportReport,
) -> None:
    work, target = stage.work, stage.target
    start = time.perf_counter()
    net = copy.deepcopy(model).cpu().eval()
    raw = work / "raw.onnx"
    to_onnx(net, graph, raw, options, report.warnings)
    report.timings_s["export"] = time.perf_counter() - start

    t = time.perf_counter()
    static = static_sizes(graph) if options.static else None
    meta = build_metadata(
        graph,
        labels=info.labels,
        preprocess=info.preprocess,
        task=info.task,
        static=static.to_json() if static else None,
        generation=info.generation,
        tokenizer=info.tokenizer,
    )
    staged, external = save_checked(raw, meta, target, report)
    report.timings_s["check"] = time.perf_counter() - t

    t = time.perf_counter()
    sizes = [static] if static else parity_sizes(graph, options.batches, options.seq_lens)
    report.parity = parity(
        torch_runner(net, list(graph.inputs)),
        ort_runner(ort_session(staged)),
        graph,
        sizes,
        atol=options.atol,
        rtol=options.rtol,
    )
    report.timings_s["verify"] = time.perf_counter() - t
    report.timings_s["total"] = time.perf_counter() - start
    if not report.ok:
        _keep_failed(staged, external, target, report)
        raise_on_failure(
            report.parity, f"export of '{graph.name}' failed verification", options.atol, options.rtol
        )
    _stage_model(stage, staged, external, report)


def output_path(out: str | os.PathLike[str]) -> Path:
    """The ``.onnx`` file to write, in a folder that exists."""
    target = Path(out)
    if not target.parent.is_dir():
        raise UsageError(f"output folder does not exist: {target.parent}")
    if target.suffix != ".onnx":
        raise UsageError(f"the output must end in .onnx, got '{target.name}'")
    return target


def save_checked(
    raw: Path, meta: OnnxMetadata, target: Path, report: ExportReport
) -> tuple[Path, list[Path]]:
    """Write the metadata into the exported file, save it next to ``raw`` under the target's name and
    run ``onnx.checker``; returns it and its external data."""
    proto = onnx.load(str(raw))
    set_metadata(proto, meta)
    report.node_names = node_name_stats(proto)
    staged = raw.parent / target.name
    external = save_model(proto, staged)
    del proto
    try:
        onnx.checker.check_model(str(staged), full_check=True)
    except Exception as e:  # onnx raises ValidationError / InferenceError
        raise ExportError(f"onnx.checker rejected the exported file: {_first_line(e)}") from e
    return staged, external


def failed_path(target: Path) -> Path:
    return target.with_name(target.stem + ".failed.onnx")


def report_path(target: Path) -> Path:
    return target.with_name(target.name + ".json")


def _keep_failed(staged: Path, external: list[Path], target: Path, report: ExportReport) -> None:
    """Keep a failed export as ``M.failed.onnx`` (single-file models only) with its report."""
    if external:
        report.warnings.append("the failed model used external data and was deleted")
        return
    failed = failed_path(target)
    os.replace(staged, failed)
    report.model = str(failed)
    atomic_write_text(report_path(failed), json.dumps(report.to_json(), indent=2) + "\n")


def _stage_model(stage: Stage, staged: Path, external: list[Path], report: ExportReport) -> None:
    """The verified model, its external data and its manifest, ready to publish."""
    manifest = write_manifest(staged, external)
    stage.add(staged, *external, manifest)
    report.sha256 = sha256_file(staged)
    report.size_bytes = staged.stat().st_size + sum(f.stat().st_size for f in external)
    report.external_data = [f.name for f in external]


def publish_export(stage: Stage, report: ExportReport, variants: Sequence[str] = ()) -> None:
    """Write the report into the stage and publish everything at once; the files an older export
    left that this one does not replace (its variants, its external data, a failed try) go."""
    target = stage.target
    data = report.to_json()
    stage.add(write_report(stage.path(target.name), data))
    older = [failed_path(target), report_path(failed_path(target)), target.with_name(target.name + ".data")]
    for kind in VARIANTS:
        if kind not in variants:
            made = target.with_name(f"{target.stem}.{kind}.onnx")
            older += [made, made.with_name(made.name + ".sha256")]
    stage.publish(remove=[p.name for p in older])


def write_report(target: Path, data: Mapping[str, Any]) -> Path:
    path = report_path(target)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    return path
