"""Weights on disk: one safetensors convention for every writer and reader of specc.

A state dict is written with each tensor stored once: identical views of one storage (tied
weights such as GPT-2's ``lm_head.weight`` = ``wte.weight``) become one stored tensor plus an alias
in the header (``"specc.aliases": {"lm_head.weight": "wte.weight"}``); other overlapping views are
cloned; non-contiguous tensors made contiguous. Reading gives every name back, the aliases as the
same tensor object. Files written by ``safetensors.torch.save_model`` (no alias header, tied names
dropped) still load: :func:`complete_ties` fills a dropped name from the model's own ties.

Used by the final and best weights of a run, training checkpoints, ``--init-from``, export,
``specc weights`` and distributed training (one writer, one reader). Never ``torch.load`` here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from specc.atomic import atomic_path
from specc.errors import UsageError

__all__ = [
    "ALIASES_KEY",
    "MODEL_FILE",
    "complete_ties",
    "read_metadata",
    "read_shapes",
    "read_state",
    "split_ties",
    "write_state",
    "write_tensors",
]

MODEL_FILE = "model.safetensors"
ALIASES_KEY = "specc.aliases"


def _byte_range(tensor: torch.Tensor) -> tuple[int, int]:
    start = tensor.data_ptr()
    return start, start + tensor.numel() * tensor.element_size()


def split_ties(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict made savable by safetensors: ``(tensors to store, {alias: stored name})``.

    Identical views of one storage (tied weights) are stored once under their first name; other
    overlapping views are cloned; non-contiguous tensors are made contiguous.

    Raises:
        TypeError: A key is not a string or a value not a tensor.
        ValueError: A tensor is on the meta device (it has no data).
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple[Any, ...], str] = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise TypeError(f"model_state: key {name!r} is not a string")
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"model_state[{name!r}]: expected a tensor, got {type(value).__name__}")
        tensor = value.detach()
        if tensor.device.type == "meta":
            raise ValueError(f"model_state[{name!r}]: a meta tensor has no data to save")
        if tensor.numel() > 0:
            view = (
                tensor.device,
                tensor.untyped_storage().data_ptr(),
                tensor.storage_offset(),
                tuple(tensor.shape),
                tensor.stride(),
                tensor.dtype,
            )
            if view in views:
                aliases[name] = views[view]
                continue
            views[view] = name
        tensors[name] = tensor.contiguous()

    # Stored tensors that still share memory must not overlap (safetensors refuses); clone those.
    by_storage: dict[tuple[Any, int], list[str]] = {}
    for name, tensor in tensors.items():
        if tensor.numel() > 0:
            by_storage.setdefault((tensor.device, tensor.untyped_storage().data_ptr()), []).append(name)
    for names in by_storage.values():
        if len(names) < 2:
            continue
        names.sort(key=lambda n: _byte_range(tensors[n]))
        last_stop = _byte_range(tensors[names[0]])[1]
        for name in names[1:]:
            start, stop = _byte_range(tensors[name])
            if start < last_stop:
                tensors[name] = tensors[name].clone()
            else:
                last_stop = stop
    return tensors, aliases


def write_state(
    path: str | os.PathLike[str],
    state: Mapping[str, torch.Tensor] | nn.Module,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a state dict (or a module's) atomically as safetensors, tied tensors once, aliases in
    the header; ``metadata``: extra header entries next to ``format``.

    Raises:
        UsageError: The folder does not exist.
        TypeError, ValueError: See :func:`split_ties`.
    """
    tensors, aliases = split_ties(state.state_dict() if isinstance(state, nn.Module) else state)
    return write_tensors(path, tensors, aliases, metadata)


def write_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, torch.Tensor],
    aliases: Mapping[str, str],
    metadata: Mapping[str, str] | None = None,
    *,
    atomic: bool = True,
) -> Path:
    """Write what :func:`split_ties` returned (``atomic=False``: straight into ``path``, for a
    checkpoint's private temporary folder that is renamed as a whole)."""
    target = Path(path)
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: folder {target.parent} does not exist")
    header = {"format": "pt", **(metadata or {}), ALIASES_KEY: json.dumps(dict(aliases), sort_keys=True)}
    cpu = {k: v.cpu() for k, v in tensors.items()}
    if not atomic:
        save_file(cpu, str(target), metadata=header)
        return target
    with atomic_path(target) as tmp:
        save_file(cpu, str(tmp), metadata=header)
    return target


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The header metadata of a safetensors file (UsageError when it cannot be read)."""

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise UsageError(f"cannot read weights {path}: {exc}") from None


def _aliases(file: Path, metadata: Mapping[str, str]) -> dict[str, str]:
    try:
        aliases = json.loads(metadata.get(ALIASES_KEY, "{}"))
    except (ValueError, RecursionError):
        aliases = None
    if not isinstance(aliases, dict) or not all(isinstance(v, str) for v in aliases.values()):
        raise UsageError(f"cannot read weights {file}: a bad {ALIASES_KEY} header (not a mapping)")
    return aliases


def read_shapes(path: str | os.PathLike[str]) -> dict[str, list[int]]:
    """Every tensor name of a safetensors file (tied names included) with its shape, from the header
    alone (no tensor data is read).

    Raises:
        UsageError: The file cannot be read as safetensors, or its alias header is broken.
    """

    file = Path(path)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - not a dict
            metadata = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types
        raise UsageError(f"cannot read weights {file}: {exc}") from None
    for alias, target in _aliases(file, metadata).items():
        if target not in shapes:
            raise UsageError(
                f"cannot read weights {file}: tied tensor {alias!r} points to missing {target!r}"
            )
        shapes[alias] = shapes[target]
    return shapes


def read_state(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file on the CPU; aliases come back as the same tensor.

    Raises:
        UsageError: The file is missing, not safetensors, or its alias header is broken.
    """

    file = Path(path)
    if not file.is_file():
        raise UsageError(f"weights not found: {file}")
    try:
        tensors = load_file(str(file), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise UsageError(f"cannot read weights {file}: {exc}") from None
    metadata = read_metadata(file)
    aliases = _aliases(file, metadata)
    for alias, target in aliases.items():
        if target not in tensors:
            raise UsageError(
                f"cannot read weights {file}: tied tensor {alias!r} points to missing {target!r}"
            )
        tensors[alias] = tensors[target]
    return tensors, metadata


def complete_ties(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fill names the file left out because the model ties them to a name it has (``save_model``
    files); returns ``tensors`` (changed in place)."""
    groups: dict[int, list[str]] = {}
    for name, t in model.state_dict(keep_vars=True).items():
        groups.setdefault(id(t), []).append(name)
    for names in groups.values():
        present = next((n for n in names if n in tensors), None)
        if present is not None:
            for name in names:
                tensors.setdefault(name, tensors[present])
    return tensors
