"""Deployment runtime: load an exported specc ONNX model safely and run it with checked inputs.

This module needs only numpy, onnx, onnxruntime and Pillow (for images): it never imports torch nor
any part of specc other than :mod:`specc.errors`.

Metadata contract
-----------------
The exporter stores these keys as ONNX ``metadata_props`` (all values are strings; the JSON ones
are parsed by :func:`read_metadata`):

``specc.version`` (:data:`KEY_VERSION`)
    specc version that exported the model.
``specc.spec_name`` (:data:`KEY_SPEC_NAME`)
    name of the spec.
``specc.spec_hash`` (:data:`KEY_SPEC_HASH`)
    SHA-256 hex digest of the spec text.
``specc.inputs`` (:data:`KEY_INPUTS`), JSON
    ``[{"name": str, "shape": [dim, ...], "dtype": "float32" | "int64" | "bool"}, ...]``; the shape
    includes the batch axis and a dim is an int (fixed) or a string (a symbolic axis, e.g.
    ``["batch", 3, 32, 32]`` or ``["batch", "seq"]``). The same symbol means the same size.
``specc.outputs`` (:data:`KEY_OUTPUTS`), JSON
    same form, for the outputs.
``specc.labels`` (:data:`KEY_LABELS`), JSON, optional
    list of class names.
``specc.preprocess`` (:data:`KEY_PREPROCESS`), JSON, optional
    ``{"kind": "image", "mean": [...], "std": [...], "size": [H, W], "channels": C}``,
    ``{"kind": "features", "mean": [...], "std": [...]}``,
    ``{"kind": "text", "vocab": [char, ...]}`` (a char's index in ``vocab`` is its token id; unknown
    chars map to 0) or ``{"kind": "tokens", ...}``.
``specc.task`` (:data:`KEY_TASK`), optional
    ``"classification"``, ``"regression"``, ``"language_model"`` or ``"seq2seq"``.

Integrity manifest
------------------
``M.onnx.sha256`` next to ``M.onnx`` holds ``<sha256 hex>  <file name>`` lines (``sha256sum``
format) for the model and each of its external-data files. :func:`load` checks every line and
that the model and all its external-data files are listed; a missing manifest only logs a warning.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray

from specc.errors import UsageError, did_you_mean
from specc.runtime.inputs import (
    ARRAY_SUFFIXES,
    IMAGE_SUFFIXES,
    TEXT_SUFFIXES,
    TensorSpec,
    check_file,
    check_input,
    encode_text,
    load_arrays,
    load_image,
    read_text,
    sha256_file,
    text_vocab,
    unsupported_file,
)
from specc.runtime.session import session_options

log = logging.getLogger(__name__)

KEY_VERSION = "specc.version"
KEY_SPEC_NAME = "specc.spec_name"
KEY_SPEC_HASH = "specc.spec_hash"
KEY_INPUTS = "specc.inputs"
KEY_OUTPUTS = "specc.outputs"
KEY_LABELS = "specc.labels"
KEY_PREPROCESS = "specc.preprocess"
KEY_TASK = "specc.task"

METADATA_KEYS: tuple[str, ...] = (
    KEY_VERSION,
    KEY_SPEC_NAME,
    KEY_SPEC_HASH,
    KEY_INPUTS,
    KEY_OUTPUTS,
    KEY_LABELS,
    KEY_PREPROCESS,
    KEY_TASK,
)
JSON_KEYS: frozenset[str] = frozenset({KEY_INPUTS, KEY_OUTPUTS, KEY_LABELS, KEY_PREPROCESS})
TASKS = ("classification", "regression", "language_model", "seq2seq")

MANIFEST_SUFFIX = ".sha256"
_MANIFEST_LINE = re.compile(r"^([0-9a-fA-F]{64}) [ *](.+)$")


# ----------------------------------------------------------------------------------------------
# metadata


def _parse_metadata(proto: onnx.ModelProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        value: Any = prop.value
        if prop.key in JSON_KEYS:
            try:
                value = json.loads(prop.value)
            except json.JSONDecodeError as e:
                raise UsageError(f"model metadata '{prop.key}' is not valid JSON: {e}") from e
        out[prop.key] = value
    return out


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
    return _parse_metadata(_load_proto(Path(path)))


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


def _softmax(x: NDArray[Any]) -> NDArray[np.float64]:
    z = x.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    out: NDArray[np.float64] = e / e.sum(axis=-1, keepdims=True)
    return out


def _as_probabilities(x: NDArray[Any]) -> NDArray[np.float64]:
    """``x`` itself if its rows already are distributions, else ``softmax(x)`` over the last axis."""
    z = x.astype(np.float64)
    if z.size and np.all(np.isfinite(z)) and z.min() >= 0.0 and z.max() <= 1.0:
        if np.allclose(z.sum(axis=-1), 1.0, atol=1e-3):
            return z
    return _softmax(z)


class Model:
    """A loaded model: call it with arrays, read its metadata, or predict from a file.

    ``model(x)`` / ``model(image=x)`` checks every input against the declared shapes and dtypes and
    returns ``{output name: array}``. A single unbatched sample (rank one less than declared, with a
    symbolic or size-1 batch axis) is batched automatically; outputs always keep the batch axis.
    Safe casts are silent (float64 -> float32, int32 -> int64); unsafe ones (float -> int64 ids)
    are refused. Every problem is a :class:`~specc.errors.UsageError` saying what the model expects.
    """

    def __init__(self, session: Any, metadata: Mapping[str, Any], path: Path) -> None:
        self._session = session
        self._metadata = dict(metadata)
        self._path = path
        self._inputs = self._specs(session.get_inputs(), KEY_INPUTS)
        self._outputs = self._specs(session.get_outputs(), KEY_OUTPUTS)

    def _specs(self, args: Sequence[Any], key: str) -> tuple[TensorSpec, ...]:
        declared: dict[str, TensorSpec] = {}
        raw = self._metadata.get(key)
        if raw is not None:
            if not isinstance(raw, list):
                raise UsageError(f"model metadata '{key}' is invalid: expected a list")
            declared = {s.name: s for s in (TensorSpec.from_json(e, key) for e in raw)}
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
    def labels(self) -> list[str] | None:
        labels = self._metadata.get(KEY_LABELS)
        if labels is None:
            return None
        if not isinstance(labels, list):
            raise UsageError(f"model metadata '{KEY_LABELS}' is invalid: expected a list of names")
        return [str(x) for x in labels]

    @property
    def preprocess(self) -> dict[str, Any] | None:
        pre = self._metadata.get(KEY_PREPROCESS)
        if pre is None:
            return None
        if not isinstance(pre, dict) or not isinstance(pre.get("kind"), str):
            raise UsageError(
                f"model metadata '{KEY_PREPROCESS}' is invalid: expected an object with a 'kind'"
            )
        return dict(pre)

    @property
    def task(self) -> str | None:
        task = self._metadata.get(KEY_TASK)
        return task if isinstance(task, str) and task else None

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

    def _expects(self) -> str:
        return ", ".join(f"'{s.name}' {s.describe()}" for s in self._inputs)

    def _bind(self, args: tuple[object, ...], kwargs: Mapping[str, object]) -> dict[str, object]:
        names = [s.name for s in self._inputs]
        if len(args) > len(names):
            raise UsageError(
                f"the model takes {len(names)} input(s) ({self._expects()}), got {len(args)} positional"
            )
        values: dict[str, object] = dict(zip(names, args, strict=False))
        for key, value in kwargs.items():
            if key not in names:
                raise UsageError(
                    f"unknown input '{key}'{did_you_mean(key, names)}; the model's inputs are: {self._expects()}"
                )
            if key in values:
                raise UsageError(f"input '{key}' given both by position and by name")
            values[key] = value
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
            raise UsageError(
                f"onnxruntime failed to run '{self._path.name}' on inputs {shapes} "
                f"(the model expects {self._expects()}): {e}"
            ) from e
        return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}

    # -- files -----------------------------------------------------------------------------------

    def _preprocess_for(self, kind: str, path: Path, needs: str, instead: str) -> Mapping[str, Any]:
        """The preprocessing metadata of ``kind`` for a single-input model, else a clear refusal."""
        pre = self.preprocess
        if pre is None or pre.get("kind") != kind:
            raise UsageError(
                f"cannot predict from {kind} '{path.name}': the model has no {kind} preprocessing "
                f"metadata ({KEY_PREPROCESS} kind '{kind}'{needs}); {instead}"
            )
        if len(self._inputs) != 1:
            article = "an" if kind[0] in "aeiou" else "a"
            raise UsageError(
                f"{article} {kind} gives one input but the model takes {len(self._inputs)}: {self._expects()}"
            )
        return pre

    def _feeds_from_file(self, path: Path) -> tuple[dict[str, NDArray[Any]], str | None]:
        suffix = path.suffix.lower()
        names = [s.name for s in self._inputs]
        if suffix in ARRAY_SUFFIXES:
            return dict(load_arrays(path, names)), None
        if suffix in IMAGE_SUFFIXES:
            pre = self._preprocess_for("image", path, "", "pass the input as .npy or .npz")
            return {names[0]: load_image(path, pre, self._inputs[0])}, None
        if suffix in TEXT_SUFFIXES:
            pre = self._preprocess_for("text", path, " with a 'vocab'", "pass token ids as .npy")
            text = read_text(path)
            return {names[0]: encode_text(text, text_vocab(pre))}, text
        raise unsupported_file(path)

    def _is_language_model(self, out: NDArray[Any]) -> bool:
        if self.task is not None:
            return self.task == "language_model"
        pre = self.preprocess
        vocab = pre.get("vocab") if pre and pre.get("kind") == "text" else None
        return isinstance(vocab, list) and out.ndim == 3 and out.shape[-1] == len(vocab)

    def _is_classifier(self, out: NDArray[Any]) -> bool:
        if self.task is not None:
            return self.task == "classification"
        return self.labels is not None or out.ndim == 2

    def _top_k(
        self, probs: NDArray[np.float64], k: int, names: Sequence[str] | None
    ) -> list[list[dict[str, Any]]]:
        rows: list[list[dict[str, Any]]] = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[:k]
            rows.append(
                [
                    {
                        "label": names[i] if names is not None and i < len(names) else str(int(i)),
                        "index": int(i),
                        "prob": float(row[i]),
                    }
                    for i in order
                ]
            )
        return rows

    def predict_file(self, path: str | os.PathLike[str], top_k: int = 5) -> dict[str, Any]:
        """Run the model on a file and return a JSON-ready result.

        Supported: ``.npy`` (the single input), ``.npz`` (arrays by input name, or one array), images
        ``.png/.jpg/.jpeg/.bmp`` (preprocessed per the ``image`` metadata) and ``.txt`` (encoded per
        the ``text`` metadata; one trailing newline is dropped).

        Result: ``{"task", "outputs": {name: nested lists}}``; classifiers add ``"top_k"``: per sample
        a list of ``{"label", "index", "prob"}`` (softmax applied unless the output already sums to
        1); language models give instead ``"top_k"`` for the next token after the last position, with
        characters as labels, and ``"text"`` (the prompt), without the full logits.
        """
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
            raise UsageError(f"top_k must be a positive integer, got {top_k!r}")
        file = Path(path)
        check_file(file)
        if file.suffix.lower() not in (*ARRAY_SUFFIXES, *IMAGE_SUFFIXES, *TEXT_SUFFIXES):
            raise unsupported_file(file)
        feeds, text = self._feeds_from_file(file)
        outputs = self(**feeds)
        first = next(iter(outputs.values()))
        result: dict[str, Any] = {"task": self.task}
        if self._is_language_model(first):
            if first.ndim != 3:
                raise UsageError(
                    f"language model output '{self._outputs[0].name}' has shape {first.shape}; "
                    "expected [batch, seq, vocab]"
                )
            pre = self.preprocess or {}
            vocab = pre.get("vocab") if pre.get("kind") == "text" else None
            chars = [str(c) for c in vocab] if isinstance(vocab, list) else None
            result["task"] = "language_model"
            if text is not None:
                result["text"] = text
            result["top_k"] = self._top_k(_as_probabilities(first[:, -1, :]), top_k, chars)
            return result
        result["outputs"] = {k: v.tolist() for k, v in outputs.items()}
        if self._is_classifier(first) and first.ndim in (1, 2):
            scores = first.reshape(1, -1) if first.ndim == 1 else first
            result["top_k"] = self._top_k(_as_probabilities(scores), top_k, self.labels)
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
    metadata = _parse_metadata(proto)
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
        raise UsageError(f"onnxruntime cannot load '{model_path}': {e}") from e
    return Model(session, metadata, model_path)
