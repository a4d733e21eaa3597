"""Reading a weights source and importing it into a built spec.

A source is one of:

- a Hugging Face model folder: ``config.json`` plus ``model.safetensors``, a sharded
  ``model.safetensors.index.json``, or ``pytorch_model.bin`` (read with ``torch.load(weights_only=True)``);
  a ``tokenizer.json`` next to them travels with the weights;
- a specc run folder (its final weights, else its newest valid checkpoint);
- a state-dict file: ``.safetensors``, or ``.pt``/``.pth``/``.bin`` read with ``weights_only=True``
  (a ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped); ``W.tokenizer.json`` next
  to ``W.safetensors`` is its tokenizer.

Nothing is downloaded: every source is a local path.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.contracts.run_folder import RunFolder
from specc.errors import UsageError
from specc.weights.fit import LoadReport, load_state
from specc.weights.maps import MAPS, NameMap, map_for_model_type
from specc.weights.store import complete_ties, read_state

__all__ = ["Source", "import_into", "open_source"]

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"  # a Hugging Face folder's (a run folder keeps the same name)
_SAFETENSORS_INDEX = "model.safetensors.index.json"
_BIN_INDEX = "pytorch_model.bin.index.json"
_MAX_JSON_BYTES = 16 * 2**20
_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass
class Source:
    """Tensors read from a source, with what it says about itself."""

    path: Path
    tensors: dict[str, torch.Tensor]
    kind: str  # "hf", "run" or "file"
    config: dict[str, Any] = field(default_factory=dict)
    tokenizer: Path | None = None

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return value if isinstance(value, str) else None


def _read_json(file: Path) -> Any:
    try:
        if file.stat().st_size > _MAX_JSON_BYTES:
            raise UsageError(f"{file} is larger than {_MAX_JSON_BYTES:,} bytes")
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read {file}: {exc}") from None


def _torch_file(file: Path) -> dict[str, torch.Tensor]:
    """A pickled state dict, with ``weights_only=True`` (no code runs) and memory-mapped."""
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # zip, unpickling and weights_only errors all land here
        raise UsageError(
            f"cannot read {file} as a state dict (torch.load, weights_only=True): {exc}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise UsageError(f"{file} does not hold a state dict (a mapping of names to tensors)")
    return dict(obj)


def _state_file(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        return read_state(file)[0]
    return _torch_file(file)


def _sharded(folder: Path, index_name: str) -> dict[str, torch.Tensor]:
    index = _read_json(folder / index_name)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict):
        raise UsageError(f"{folder / index_name}: no weight_map")
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise UsageError(f"{folder / index_name}: bad shard name {shard!r}")
        tensors.update(_state_file(folder / shard))
    return tensors


def _hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / "model.safetensors").is_file():
        return read_state(folder / "model.safetensors")[0]
    if (folder / _SAFETENSORS_INDEX).is_file():
        return _sharded(folder, _SAFETENSORS_INDEX)
    if (folder / "pytorch_model.bin").is_file():
        return _torch_file(folder / "pytorch_model.bin")
    if (folder / _BIN_INDEX).is_file():
        return _sharded(folder, _BIN_INDEX)
    raise UsageError(
        f"{folder} has {CONFIG_FILE} but no model.safetensors, {_SAFETENSORS_INDEX} or pytorch_model.bin"
    )


def open_source(path: str | os.PathLike[str]) -> Source:
    """Read the tensors of a Hugging Face folder, a specc run folder or a state-dict file.

    Raises:
        UsageError: The path does not exist or cannot be read as any of them.
    """
    src = Path(path)
    if src.is_dir():
        if (src / CONFIG_FILE).is_file():
            config = _read_json(src / CONFIG_FILE)
            if not isinstance(config, dict):
                raise UsageError(f"{src / CONFIG_FILE}: expected a JSON object")
            tokenizer = src / TOKENIZER_FILE
            return Source(src, _hf_tensors(src), "hf", config, tokenizer if tokenizer.is_file() else None)
        run = RunFolder(src)
        return Source(src, read_state(run.weights_file())[0], "run", tokenizer=run.tokenizer)
    if not src.is_file():
        raise UsageError(f"weights source not found: {src}")
    if src.suffix not in _FILE_SUFFIXES:
        raise UsageError(
            f"{src}: not a weights file; give a .safetensors/.pt/.pth/.bin state dict, a Hugging Face "
            "model folder or a specc run folder"
        )
    companion = src.with_name(f"{src.stem}.{TOKENIZER_FILE}")  # written by `specc weights import`
    return Source(src, _state_file(src), "file", tokenizer=companion if companion.is_file() else None)


def _config_value(config: dict[str, Any], key: str) -> Any:
    if key in config:
        return config[key]
    rope = config.get("rope_parameters")  # transformers 5 keeps rope_theta there
    return rope.get(key) if isinstance(rope, dict) else None


def check_config(name_map: NameMap, config: dict[str, Any], spec_vars: dict[str, Any], where: Path) -> None:
    """Refuse a ``config.json`` whose sizes or constants differ from the spec's variables (a head count
    or an epsilon changes no tensor shape, so the shape checks alone would not see it)."""
    problems = []
    for key, var in name_map.config_vars:
        theirs, ours = _config_value(config, key), spec_vars.get(var)
        if theirs is None or ours is None:
            continue
        same = (
            math.isclose(float(theirs), float(ours), rel_tol=1e-9)
            if isinstance(theirs, (int, float)) and isinstance(ours, (int, float))
            else theirs == ours
        )
        if not same:
            problems.append(f"{key} is {theirs!r} there, the spec's {var} is {ours!r} (--set {var}={theirs})")
    if problems:
        raise UsageError(f"{where / CONFIG_FILE} does not describe this spec: " + "; ".join(problems))


def pick_map(source: Source, model: nn.Module, name: str | None) -> NameMap:
    """The name map asked for, the one of the source's ``model_type``, else the one that accounts for
    most of the model's tensors."""
    if name is not None:
        if name not in MAPS:
            raise UsageError(f"--map {name!r}: unknown; known maps: {', '.join(MAPS)}")
        return MAPS[name]
    if source.model_type is not None:
        found = map_for_model_type(source.model_type)
        if found is None:
            raise UsageError(
                f"{source.path / CONFIG_FILE}: model_type {source.model_type!r} has no name map; "
                f"known maps: {', '.join(MAPS)} (--map NAME)"
            )
        return found
    own = set(model.state_dict())

    def covered(candidate: NameMap) -> int:
        try:
            return len(own & set(candidate.to_spec(source.tensors)[0]))
        except UsageError:
            return -1

    return max(MAPS.values(), key=covered)  # ties keep the first: specc's own names


def import_into(
    model: nn.Module,
    source: Source,
    *,
    map_name: str | None = None,
    allow_partial: bool = False,
    skip_mismatched: bool = False,
    hint: str = "",
) -> tuple[LoadReport, NameMap]:
    """Map ``source``'s names to the spec's, check every tensor, and load them into ``model``.

    Raises:
        UsageError: Unknown map, a config that contradicts the spec, or tensors that do not fit
            (see :func:`specc.weights.fit.load_state`).
    """
    name_map = pick_map(source, model, map_name)
    spec_vars = getattr(getattr(model, "graph", None), "vars", None) or {}
    if source.config:
        check_config(name_map, source.config, spec_vars, source.path)
    tensors, unmatched, ignored = name_map.to_spec(source.tensors)
    if source.kind == "run" or name_map is MAPS["specc"]:
        complete_ties(model, tensors)
    for name in unmatched:  # reported under their own names, not as spec names
        tensors.setdefault(name, source.tensors[name])
    report = load_state(
        model,
        tensors,
        source.path,
        allow_partial=allow_partial,
        skip_mismatched=skip_mismatched,
        ignored=ignored,
        hint=hint or f"name map {name_map.name}",
    )
    return report, name_map
