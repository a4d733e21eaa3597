"""Deployment runtime: load an exported specc ONNX model safely and run it with checked inputs.

This module needs only numpy, onnx, onnxruntime, pydantic and Pillow (for images): it never imports
torch nor any part of specc other than :mod:`specc.errors`, :mod:`specc.atomic`, :mod:`specc.publish` and the torch-free
contracts it reads (:mod:`specc.contracts.onnx_metadata`, :mod:`specc.contracts.preprocess`).

Metadata contract
-----------------
The exporter stores :class:`~specc.contracts.onnx_metadata.OnnxMetadata` as ONNX ``metadata_props``
(``specc.version``, ``specc.spec_name``, ``specc.spec_hash``, ``specc.inputs``, ``specc.outputs``,
``specc.labels``, ``specc.preprocess``, ``specc.task``, ``specc.variant``; see that module). A
model whose ``specc.*`` metadata does not validate is refused at load with the key named.

Integrity manifest
------------------
``M.onnx.sha256`` next to ``M.onnx`` holds ``<sha256 hex>  <file name>`` lines (``sha256sum``
format) for the model and each of its external-data files. :func:`load` checks every line and
that the model and all its external-data files are listed; a missing manifest only logs a warning.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from specc.contracts.base import loads
from specc.contracts.onnx_metadata import JSON_FREE, METADATA_KEYS, OnnxMetadata, key
from specc.contracts.preprocess import TextPreprocess, preprocess_json
from specc.errors import ModelError, UsageError, did_you_mean
from specc.publish import check_published
from specc.runtime.inputs import (
    TensorSpec,
    check_file,
    check_input,
    sha256_file,
)
from specc.runtime.predict import Options, json_safe, predict
from specc.runtime.session import session_options

log = logging.getLogger(__name__)

KEY_VERSION = key("version")
KEY_SPEC_NAME = key("spec_name")
KEY_SPEC_HASH = key("spec_hash")
KEY_INPUTS = key("inputs")
KEY_OUTPUTS = key("outputs")
KEY_LABELS = key("labels")
KEY_PREPROCESS = key("preprocess")
KEY_TASK = key("task")
JSON_KEYS: frozenset[str] = frozenset(k for k in METADATA_KEYS if k.removeprefix("specc.") not in JSON_FREE)

MANIFEST_SUFFIX = ".sha256"
_MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


# ----------------------------------------------------------------------------------------------
# metadata


def _props(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def _parse_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Every entry, the JSON ones of specc parsed (for inspection; the typed view is OnnxMetadata)."""
    return {k: loads(v, f"model metadata '{k}'") if k in JSON_KEYS else v for k, v in props.items()}


def _load_proto(path: Path) -> onnx.ModelProto:
    check_file(path)
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError, OSError, ...
        raise UsageError(f"cannot read ONNX model '{path}': {e}") from e


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """All ``metadata_props`` of an ONNX file, JSON keys parsed; creates no session.

    External data is not read. Keys other than :data:`METADATA_KEYS` are returned as strings too.
    """
    return _parse_metadata(_props(_load_proto(Path(path))))


def read_info(path: str | os.PathLike[str]) -> OnnxMetadata:
    """The typed ``specc.*`` metadata of an ONNX file (a UsageError names an invalid key); no session."""
    return OnnxMetadata.from_props(_props(_load_proto(Path(path))))


# ----------------------------------------------------------------------------------------------
# integrity: manifest and external data


def _iter_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers, sparse tensors, node attributes, subgraphs, functions."""

    def from_sparse(sp: onnx.SparseTensorProto) -> Iterator[onnx.TensorProto]:
        yield sp.values
        yield sp.indices

    def from_nodes(nodes: Sequence[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield from from_sparse(attr.sparse_tensor)
                for sp in attr.sparse_tensors:
                    yield from from_sparse(sp)
                if attr.HasField("g"):
                    yield from from_graph(attr.g)
                for g in attr.graphs:
                    yield from from_graph(g)

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sp in graph.sparse_initializer:
            yield from from_sparse(sp)
        yield from from_nodes(graph.node)

    yield from from_graph(proto.graph)
    for fn in proto.functions:
        yield from from_nodes(fn.node)


def _is_absolute(location: str) -> bool:
    win = PureWindowsPath(location)
    return os.path.isabs(location) or location.startswith(("/", "\\")) or bool(win.drive) or win.is_absolute()


def _safe_relative(folder: Path, name: str, what: str) -> Path:
    """Resolve ``name`` inside ``folder``; refuse absolute paths, ``..``, symlinks and escapes.

    ``what`` starts the error message (e.g. ``"external data of tensor 'w' at location 'x'"``).
    """

    def refuse(why: str) -> UsageError:
        return UsageError(f"{what} is refused: {why}")

    if not name or "\x00" in name:
        raise refuse("empty or invalid file name")
    if _is_absolute(name):
        raise refuse("absolute paths are not allowed; it must be relative to the model's folder")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise refuse("'..' is not allowed; the file must be inside the model's folder")
    current = folder
    for part in parts:
        current = current / part
        if current.is_symlink():
            raise refuse(f"'{current}' is a symbolic link")
    base = folder.resolve()
    resolved = current.resolve()
    if resolved != base and not resolved.is_relative_to(base):
        raise refuse("it resolves outside the model's folder")
    return current


def check_external_data(proto: onnx.ModelProto, model_path: Path) -> list[Path]:
    """Check every external-data location of the model; return the files they name (unique)."""
    folder = model_path.parent
    files: dict[Path, None] = {}
    for tensor in _iter_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        what = f"external data of tensor '{tensor.name}' at location '{location}'"
        target = _safe_relative(folder, location, what)
        if not target.is_file():
            raise UsageError(f"{what} is missing: no file '{target}'")
        files[target] = None
    return list(files)


def manifest_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + MANIFEST_SUFFIX)


def check_manifest(model_path: Path) -> set[Path] | None:
    """Check every line of ``<model>.sha256``; return the (resolved) files it lists, or ``None``.

    Every listed file must be a plain file in the model's folder and match its hash, and the model
    itself must be listed. :func:`check_manifest_covers` checks the external-data files.
    """
    manifest = manifest_path(model_path)
    if not manifest.is_file():
        return None
    folder = model_path.parent
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read manifest '{manifest}': {e}") from e
    listed: set[Path] = set()
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _MANIFEST_LINE.match(line)
        if not match:
            raise UsageError(f"{manifest}:{lineno}: malformed line; expected '<sha256 hex>  <file name>'")
        want, name = match.group(1).lower(), match.group(2)
        target = _safe_relative(folder, name, f"manifest '{manifest}' entry '{name}'")
        if not target.is_file():
            raise UsageError(f"manifest '{manifest}' lists '{name}' but the file does not exist")
        have = sha256_file(target)
        if have != want:
            raise UsageError(
                f"SHA-256 mismatch for '{target}': manifest '{manifest.name}' says {want}, file has {have}; "
                "the file was modified or corrupted"
            )
        listed.add(target.resolve())
    check_manifest_covers(model_path, listed, [model_path])
    return listed


def check_manifest_covers(model_path: Path, listed: set[Path], files: Sequence[Path]) -> None:
    """Refuse files (the model, its external data) that the manifest does not list."""
    for required in files:
        if required.resolve() not in listed:
            raise UsageError(
                f"manifest '{manifest_path(model_path)}' does not list '{required.name}'; refusing to load"
            )


# ----------------------------------------------------------------------------------------------
# model


class Model:
    """A loaded model: call it with arrays, read its metadata, or predict from files.

    ``model(x)`` / ``model(image=x)`` takes **model inputs** (already preprocessed): every input is
    checked against the declared shapes and dtypes (finite numbers only) and the result is
    ``{output name: array}``. A single unbatched sample (rank one less than declared, with a
    symbolic or size-1 batch axis) is batched automatically; outputs always keep the batch axis.
    Safe casts are silent (float64 -> float32, int32 -> int64); unsafe ones (float -> int64 ids)
    are refused. :meth:`predict_file` takes **raw** files and applies the recorded preprocessing.
    Every problem is a :class:`~specc.errors.UsageError` saying what the model expects.
    """

    def __init__(
        self, session: Any, props: Mapping[str, str], path: Path, info: OnnxMetadata | None = None
    ) -> None:
        self._session = session
        self._info = info if info is not None else OnnxMetadata.from_props(props)
        self._metadata = _parse_metadata(props)
        self._path = path
        self._inputs = self._specs(session.get_inputs(), KEY_INPUTS, self._info.inputs)
        self._outputs = self._specs(session.get_outputs(), KEY_OUTPUTS, self._info.outputs)

    def _specs(self, args: Sequence[Any], key: str, entries: Sequence[Any] | None) -> tuple[TensorSpec, ...]:
        declared = {e.name: TensorSpec.from_entry(e) for e in entries or ()}
        specs: list[TensorSpec] = []
        for arg in args:
            actual = TensorSpec.from_ort(arg.name, arg.shape or [], arg.type)
            spec = declared.get(arg.name)
            if spec is None:
                if declared:
                    log.warning(
                        "model metadata '%s' does not describe '%s'; using the graph's info", key, arg.name
                    )
                specs.append(actual)
            elif spec.dtype != actual.dtype or (
                arg.shape is not None and len(spec.shape) != len(actual.shape)
            ):
                log.warning(
                    "model metadata '%s' says '%s' is %s but the graph says %s; using the graph's info",
                    key,
                    arg.name,
                    spec.describe(),
                    actual.describe(),
                )
                specs.append(actual)
            else:
                specs.append(spec)
        return tuple(specs)

    # -- properties ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Declared inputs in the graph's order (metadata names/symbols where present)."""
        return self._inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._outputs

    @property
    def info(self) -> OnnxMetadata:
        """The typed specc metadata (:class:`~specc.contracts.onnx_metadata.OnnxMetadata`)."""
        return self._info

    @property
    def labels(self) -> list[str] | None:
        return list(self._info.labels) if self._info.labels is not None else None

    @property
    def preprocess(self) -> dict[str, Any] | None:
        """The preprocessing record as JSON data (``info.preprocess`` is the typed one)."""
        pre = self._info.preprocess
        return preprocess_json(pre) if pre is not None else None

    @property
    def task(self) -> str | None:
        return self._info.task

    @property
    def metadata(self) -> dict[str, Any]:
        """All metadata (JSON keys parsed); a copy."""
        return copy.deepcopy(self._metadata)

    @property
    def session(self) -> Any:
        """The underlying ``onnxruntime.InferenceSession`` (its errors are not wrapped)."""
        return self._session

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.describe()}" for s in self._inputs)
        return f"Model({str(self._path)!r}, inputs=[{ins}])"

    # -- running ---------------------------------------------------------------------------------

    def expects(self) -> str:
        """``'x' [batch, 4] float32, ...``: the inputs, for messages."""
        return ", ".join(f"'{s.name}' {s.describe()}" for s in self._inputs)

    def _bind(self, args: tuple[object, ...], kwargs: Mapping[str, object]) -> dict[str, object]:
        names = [s.name for s in self._inputs]
        if len(args) > len(names):
            raise UsageError(
                f"the model takes {len(names)} input(s) ({self.expects()}), got {len(args)} positional"
            )
        values: dict[str, object] = dict(zip(names, args, strict=False))
        for key_, value in kwargs.items():
            if key_ not in names:
                raise UsageError(
                    f"unknown input '{key_}'{did_you_mean(key_, names)}; the model's inputs are: {self.expects()}"
                )
            if key_ in values:
                raise UsageError(f"input '{key_}' given both by position and by name")
            values[key_] = value
        for spec in self._inputs:
            if spec.name not in values:
                raise UsageError(f"missing input '{spec.name}': expected shape {spec.describe()}")
        return values

    def prepare(self, *args: object, **kwargs: object) -> dict[str, NDArray[Any]]:
        """The checked, cast and batched feeds ``__call__`` would pass to onnxruntime."""
        values = self._bind(args, kwargs)
        symbols: dict[str, tuple[int, str]] = {}
        feeds: dict[str, NDArray[Any]] = {}
        for spec in self._inputs:
            feeds[spec.name], _ = check_input(spec.name, values[spec.name], spec, symbols)
        return feeds

    def __call__(self, *args: object, **kwargs: object) -> dict[str, NDArray[Any]]:
        """Run the model; inputs by position (graph order) or by name. Returns ``{output: array}``."""
        feeds = self.prepare(*args, **kwargs)
        names = [s.name for s in self._outputs]
        try:
            results = self._session.run(names, feeds)
        except Exception as e:  # onnxruntime raises its own pybind exception types
            shapes = ", ".join(f"'{k}' {tuple(v.shape)} {v.dtype}" for k, v in feeds.items())
            raise ModelError(
                f"onnxruntime failed to run '{self._path.name}' on inputs {shapes} "
                f"(the model expects {self.expects()}): {e}"
            ) from e
        return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}

    # -- files -----------------------------------------------------------------------------------

    def is_language_model(self, out: NDArray[Any]) -> bool:
        if self.task is not None:
            return self.task == "language_model"
        pre = self._info.preprocess
        return isinstance(pre, TextPreprocess) and out.ndim == 3 and out.shape[-1] == len(pre.vocab)

    def is_classifier(self, out: NDArray[Any]) -> bool:
        if self.task is not None:
            return self.task == "classification"
        return self.labels is not None or out.ndim == 2

    def predict_file(
        self, path: str | os.PathLike[str], top_k: int = 5, *, preprocessed: bool = False
    ) -> dict[str, Any]:
        """Run the model on a file (or a folder of images) and return a JSON-ready result.

        Inputs are raw (see :mod:`specc.runtime.predict` for the routes): ``.npy``/``.npz`` arrays in
        the training data's units (``preprocessed=True``: already model inputs), images, ``.csv``
        rows and ``.txt`` text, each preprocessed as the metadata records.

        Result: ``{"task", "ids", "outputs": {name: nested lists}}``; classifiers add ``"top_k"``:
        per sample a list of ``{"label", "index", "prob"}`` (softmax applied unless the output
        already sums to 1); language models give instead ``"top_k"`` for the next token after the
        last position, with characters as labels, and ``"text"`` (the prompt), without the full
        logits. Non-finite outputs are ``None`` and listed in ``"warnings"``: the result is valid JSON.
        """

        file = Path(path)
        if not file.exists():
            raise UsageError(f"file not found: {file}")
        result: dict[str, Any] = {"task": self.task, "ids": []}
        tops: list[Any] = []
        outputs: dict[str, list[Any]] = {}
        warnings: list[str] = []
        for chunk, outs, res in predict(self, file, top_k, Options(preprocessed=preprocessed)):
            result["ids"] += chunk.ids
            result["task"] = res.task
            warnings += res.warnings
            if chunk.text is not None:
                result["text"] = chunk.text
            tops += [row["top_k"] for row in res.rows if "top_k" in row]
            if res.task != "language_model":
                for name, value in outs.items():
                    outputs.setdefault(name, []).extend(json_safe(value)[0])
        if result["task"] != "language_model":
            result["outputs"] = outputs
        if tops:
            result["top_k"] = tops
        if warnings:
            result["warnings"] = sorted(set(warnings))
        return result


# ----------------------------------------------------------------------------------------------
# loading


def _providers(providers: Sequence[Any] | None) -> list[Any]:
    import onnxruntime as ort

    if providers is None:
        return ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    chosen = list(providers)
    if not chosen:
        raise UsageError(f"no execution provider given; available: {', '.join(available)}")
    for p in chosen:
        name = p[0] if isinstance(p, tuple) else p
        if name not in available:
            raise UsageError(
                f"execution provider '{name}' is not available{did_you_mean(str(name), available)}; "
                f"available: {', '.join(available)}"
            )
    return chosen


def load(
    path: str | os.PathLike[str],
    *,
    providers: Sequence[Any] | None = None,
    verify_manifest: bool = True,
    intra_op_threads: int | None = None,
) -> Model:
    """Load an exported model after checking its integrity.

    Before any onnxruntime session exists: the file must exist; if ``verify_manifest`` and a
    ``<model>.sha256`` manifest is present, every hash in it must match (a missing manifest only
    logs a warning; ``verify_manifest=False`` skips the manifest entirely); every external-data
    location must be a relative path inside the model's folder (no absolute path, ``..``, symlink
    or escape). The session then runs on ``providers`` (default ``["CPUExecutionProvider"]``).
    """
    import onnxruntime as ort

    model_path = Path(path)
    if not model_path.exists():
        raise UsageError(f"model file not found: {model_path}")
    check_published(model_path)  # not a mix of two exports (a publish cut short by kill -9)
    listed = check_manifest(model_path) if verify_manifest else None
    if verify_manifest and listed is None:
        log.warning(
            "no SHA-256 manifest '%s' next to the model; its integrity is not verified",
            manifest_path(model_path).name,
        )
    proto = _load_proto(model_path)
    external = check_external_data(proto, model_path)
    if listed is not None:
        check_manifest_covers(model_path, listed, external)
    props = _props(proto)
    info = OnnxMetadata.from_props(props)  # an invalid specc.* entry is refused before a session exists
    del proto
    if intra_op_threads is not None and (
        not isinstance(intra_op_threads, int) or isinstance(intra_op_threads, bool) or intra_op_threads < 0
    ):
        raise UsageError(f"intra_op_threads must be a non-negative integer, got {intra_op_threads!r}")
    chosen = _providers(providers)
    cpu_only = all((p[0] if isinstance(p, tuple) else p) == "CPUExecutionProvider" for p in chosen)
    options = session_options(intra_op_threads, cpu_fusions=cpu_only)
    try:
        session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
    except Exception as e:
        raise ModelError(f"onnxruntime cannot load '{model_path}': {e}") from e
    return Model(session, props, model_path, info)
