"""ONNX metadata and the SHA-256 manifest the runtime verifies.

The keys and their formats are defined by :mod:`specc.runtime.model` (the reader); this module is
the one writer. Values are strings; list/dict values are JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

import specc
from specc.atomic import atomic_write_text, sha256_file
from specc.export.samples import BATCH, input_dims
from specc.graph import Graph
from specc.runtime.model import (
    JSON_KEYS,
    KEY_INPUTS,
    KEY_LABELS,
    KEY_OUTPUTS,
    KEY_PREPROCESS,
    KEY_SPEC_HASH,
    KEY_SPEC_NAME,
    KEY_TASK,
    KEY_VERSION,
    METADATA_KEYS,
    TASKS,
    manifest_path,
)


def input_entries(graph: Graph, static: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """``specc.inputs`` of the metadata: name, shape with the batch axis (sizes from ``static``), dtype."""
    return [
        {"name": n, "shape": input_dims(graph, n, static), "dtype": t.dtype} for n, t in graph.inputs.items()
    ]


def build_metadata(
    graph: Graph,
    *,
    labels: Sequence[str] | None = None,
    preprocess: Mapping[str, Any] | None = None,
    task: str | None = None,
    static: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The metadata of an exported graph (values not yet serialised; ``None`` entries are omitted).

    ``static`` fixes the batch axis and symbols (``--static``); shapes then hold only ints.
    """
    inputs = input_entries(graph, static)
    outputs = []
    for name, t in graph.output_types().items():
        dims: list[int | str] = [BATCH, *t.shape]
        if static is not None:
            dims = [static.get(d, d) if isinstance(d, str) else d for d in dims]
        outputs.append({"name": name, "shape": dims, "dtype": t.dtype})
    chosen_labels = list(graph.labels) if graph.labels else (list(labels) if labels else None)
    meta: dict[str, Any] = {
        KEY_VERSION: specc.__version__,
        KEY_SPEC_NAME: graph.name,
        KEY_SPEC_HASH: graph.spec_sha256,
        KEY_INPUTS: inputs,
        KEY_OUTPUTS: outputs,
        KEY_LABELS: chosen_labels,
        KEY_PREPROCESS: dict(preprocess) if preprocess else None,
        KEY_TASK: task if task in TASKS else ("classification" if chosen_labels else None),
    }
    return {k: v for k, v in meta.items() if v is not None}


def set_metadata(proto: onnx.ModelProto, meta: Mapping[str, Any]) -> None:
    """Replace the ``specc.*`` metadata_props of ``proto`` with ``meta`` (other keys are kept)."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in METADATA_KEYS]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    for key in METADATA_KEYS:
        if key not in meta:
            continue
        value = meta[key]
        text = json.dumps(value, separators=(",", ":")) if key in JSON_KEYS else str(value)
        proto.metadata_props.add(key=key, value=text)


def get_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def write_manifest(model_path: Path, extra_files: Sequence[Path] = ()) -> Path:
    """Write ``M.onnx.sha256`` (``sha256sum`` format) for the model and its external-data files."""
    lines = [f"{sha256_file(f)}  {f.name}" for f in (model_path, *extra_files)]
    target = manifest_path(model_path)
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target
