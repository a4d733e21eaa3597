"""A specc network written as a Hugging Face model folder (``config.json`` + ``model.safetensors``).

The name map of the family (:mod:`specc.weights.maps`) read backwards gives the tensor names; its
``config_vars`` give ``config.json`` from the spec's variables, completed by the family's fixed
choices below. Families: GPT-2 (``GPT2LMHeadModel``, LM head tied to ``wte``) and LLaMA
(``LlamaForCausalLM``). A ``tokenizer.json`` of the run travels into the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specc.atomic import atomic_write_text, fsync_dir, temp_name
from specc.contracts.run_folder import RunFolder
from specc.errors import UsageError
from specc.nn import CompiledModel
from specc.pretrained.run import load_run
from specc.weights.maps import GPT2, LLAMA, NameMap
from specc.weights.sources import CONFIG_FILE, TOKENIZER_FILE
from specc.weights.store import MODEL_FILE, split_ties, write_tensors

__all__ = ["FAMILIES", "export_hf", "export_run_hf"]


def _gpt2(v: dict[str, Any]) -> dict[str, Any]:
    special = 50256 if v["vocab"] == 50257 else None  # GPT-2's <|endoftext|>; none in another vocabulary
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "activation_function": "gelu_new",
        "n_inner": None,
        "attn_pdrop": v.get("dropout", 0.0),
        "resid_pdrop": v.get("dropout", 0.0),
        "embd_pdrop": v.get("dropout", 0.0),
        "bos_token_id": special,
        "eos_token_id": special,
        "tie_word_embeddings": True,
        "scale_attn_weights": True,
    }


def _llama(v: dict[str, Any]) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "head_dim": v["hidden"] // v["num_heads"],
        "max_position_embeddings": v.get("max_positions", 2048),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": None,
        "eos_token_id": None,
        "rope_parameters": {"rope_theta": v["theta"], "rope_type": "default"},
    }


@dataclass(frozen=True)
class Family:
    """A Hugging Face model class specc writes: its name map, name prefix and fixed config entries."""

    name_map: NameMap
    prefix: str
    fixed: Callable[[dict[str, Any]], dict[str, Any]]


FAMILIES: dict[str, Family] = {
    "gpt2": Family(GPT2, "transformer.", _gpt2),
    "llama": Family(LLAMA, "", _llama),
}


def hf_config(family: Family, spec_vars: dict[str, Any]) -> dict[str, Any]:
    """``config.json`` of the network: the spec's variables under the family's names + its fixed choices."""
    lacking = [var for _, var in family.name_map.config_vars if var not in spec_vars]
    if lacking:
        raise UsageError(
            f"the spec has no variable(s) {', '.join(lacking)} that {family.name_map.name} needs for config.json"
        )
    config = {key: spec_vars[var] for key, var in family.name_map.config_vars if key != "rope_theta"}
    return {**config, **family.fixed(spec_vars), "dtype": "float32"}


def pick_family(model: CompiledModel, name: str | None) -> Family:
    """The family asked for, else the one whose name map writes every tensor of the network."""
    if name is not None:
        if name not in FAMILIES:
            raise UsageError(f"--family {name!r}: specc writes {', '.join(FAMILIES)}")
        return FAMILIES[name]
    stored, _ = split_ties(model.state_dict())
    for family in FAMILIES.values():
        try:
            family.name_map.from_spec(stored)
        except UsageError:
            continue
        if all(var in model.graph.vars for _, var in family.name_map.config_vars):
            return family
    raise UsageError(
        f"spec '{model.spec_name}' is not one of the layouts specc writes as a Hugging Face folder "
        f"({', '.join(FAMILIES)}); see docs/weights.md"
    )


def export_hf(
    model: CompiledModel,
    out: str | os.PathLike[str],
    *,
    family: str | None = None,
    tokenizer: Path | None = None,
) -> Path:
    """Write ``model`` as a Hugging Face folder ``out`` (config.json, model.safetensors[, tokenizer.json]).

    The folder is written next to ``out`` under a temporary name and renamed into place; an existing
    ``out`` is refused.

    Raises:
        UsageError: ``out`` exists, or the spec is not a layout specc writes.
    """
    target = Path(out)
    if target.exists():
        raise UsageError(f"--out {target} exists; choose a new folder")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write {target}: folder {target.parent} does not exist")
    fam = pick_family(model, family)
    stored, _ = split_ties(model.state_dict())  # tied names (GPT-2's lm_head) are the owner's
    tensors = fam.name_map.from_spec(stored, fam.prefix)
    config = hf_config(fam, model.graph.vars)
    tmp = target.parent / temp_name(target.name)
    tmp.mkdir()
    try:
        write_tensors(tmp / MODEL_FILE, tensors, {}, atomic=False)
        atomic_write_text(tmp / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
        fsync_dir(tmp)
        os.rename(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def export_run_hf(
    run: str | os.PathLike[str], out: str | os.PathLike[str], *, family: str | None = None
) -> Path:
    """``specc weights export RUN --format hf``: the run's spec and weights as a Hugging Face folder."""
    folder = RunFolder(Path(run))
    model = load_run(folder.path)
    return export_hf(model, out, family=family, tokenizer=folder.tokenizer)
