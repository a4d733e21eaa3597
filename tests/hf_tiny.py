"""Tiny random `transformers` configurations shared by the parity and import tests (nothing is
downloaded: every reference model is built from a config and randomly initialised)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import transformers
from conftest import SPECS, Result, run_cli


def tiny_gpt2(**changes: Any) -> transformers.GPT2Config:
    """GPT-2 at `specs/gpt2_small.yaml`'s tiny scale (16 wide, 2 layers, 2 heads, 32 positions)."""
    sizes: dict[str, Any] = dict(
        vocab_size=128, n_positions=32, n_embd=16, n_layer=2, n_head=2, bos_token_id=None, eos_token_id=None
    )
    return transformers.GPT2Config(**{**sizes, **changes})


def tiny_vit(**changes: Any) -> transformers.ViTConfig:
    """ViT at `specs/vit_b_16.yaml`'s tiny scale (32x32 images, 8x8 patches, 16 wide, 2 layers)."""
    sizes: dict[str, Any] = dict(
        image_size=32,
        patch_size=8,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=10,
        layer_norm_eps=1e-6,
        attn_implementation="eager",
    )
    return transformers.ViTConfig(**{**sizes, **changes})


def weights_import(source: Path, spec: str, out: Path, *args: str) -> Result:
    """``specc weights import SOURCE --spec specs/SPEC.yaml --scale tiny --out OUT ARGS...``."""
    spec_path = SPECS / f"{spec}.yaml"
    return run_cli(
        "weights",
        "import",
        str(source),
        "--spec",
        str(spec_path),
        "--scale",
        "tiny",
        "--out",
        str(out),
        *args,
    )
