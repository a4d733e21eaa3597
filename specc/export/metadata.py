"""ONNX metadata and the SHA-256 manifest the runtime verifies.

This module is the one writer of :class:`specc.contracts.onnx_metadata.OnnxMetadata` (the reader is
:mod:`specc.runtime`); the preprocessing and labels come from the run folder's
:class:`~specc.contracts.run_folder.DataRecord`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

import specc
from specc.atomic import atomic_write_text, sha256_file
from specc.contracts.generation import GenerationInfo
from specc.contracts.onnx_metadata import METADATA_KEYS, TASKS, OnnxMetadata, TensorEntry
from specc.contracts.preprocess import Preprocess
from specc.export.samples import BATCH, input_dims
from specc.graph import Graph
from specc.runtime.model import manifest_path


def input_entries(graph: Graph, static: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """``specc.inputs`` of the metadata: name, shape with the batch axis (sizes from ``static``), dtype."""
    return [
        {"name": n, "shape": input_dims(graph, n, static), "dtype": t.dtype} for n, t in graph.inputs.items()
    ]


def build_metadata(
    graph: Graph,
    *,
    labels: Sequence[str] | None = None,
    preprocess: Preprocess | None = None,
    task: str | None = None,
    static: Mapping[str, int] | None = None,
    generation: GenerationInfo | None = None,
    tokenizer: str | None = None,
    signature: tuple[Sequence[TensorEntry], Sequence[TensorEntry]] | None = None,
) -> OnnxMetadata:
    """The metadata of an exported graph.

    ``static`` fixes the batch axis and symbols (``--static``); shapes then hold only ints. The
    spec's ``labels:`` win over the data's class names. ``generation`` and ``tokenizer`` describe a
    language model (:mod:`specc.export.generation`); ``signature`` (inputs, outputs) replaces the
    graph's own for a file with other inputs and outputs (``--kv-cache``).
    """
    outputs = []
    for name, t in graph.output_types().items():
        dims: list[int | str] = [BATCH, *t.shape]
        if static is not None:
            dims = [static.get(d, d) if isinstance(d, str) else d for d in dims]
        outputs.append(TensorEntry(name=name, shape=list(dims), dtype=t.dtype))
    inputs = [TensorEntry.model_validate(e) for e in input_entries(graph, static)]
    if signature is not None:
        inputs, outputs = list(signature[0]), list(signature[1])
    chosen_labels = list(graph.labels) if graph.labels else (list(labels) if labels else None)
    return OnnxMetadata(
        version=specc.__version__,
        spec_name=graph.name,
        spec_hash=graph.spec_sha256 or None,
        inputs=inputs,
        outputs=outputs,
        labels=chosen_labels,
        preprocess=preprocess,
        task=task if task in TASKS else ("classification" if chosen_labels else None),  # type: ignore[arg-type]
        generation=generation,
        tokenizer=tokenizer,
    )


def set_metadata(proto: onnx.ModelProto, meta: OnnxMetadata) -> None:
    """Replace the ``specc.*`` metadata_props of ``proto`` with ``meta`` (other keys are kept)."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in METADATA_KEYS]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    for key, value in meta.to_props().items():
        proto.metadata_props.add(key=key, value=value)


def get_metadata(proto: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in proto.metadata_props}


def write_manifest(model_path: Path, extra_files: Sequence[Path] = ()) -> Path:
    """Write ``M.onnx.sha256`` (``sha256sum`` format) for the model and its external-data files."""
    lines = [f"{sha256_file(f)}  {f.name}" for f in (model_path, *extra_files)]
    target = manifest_path(model_path)
    atomic_write_text(target, "\n".join(lines) + "\n")
    return target
