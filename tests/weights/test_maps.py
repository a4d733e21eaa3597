"""The name maps of published checkpoints (:mod:`specc.weights.maps`) against full-size references."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import SPECS

from specc.nn import build
from specc.weights.maps import MAPS

transformers = pytest.importorskip("transformers")  # in the dev extra: CI runs these tests


@pytest.mark.parametrize(
    ("spec", "make"),
    [
        ("gpt2_small", lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config())),
        ("bert_base", lambda: transformers.BertModel(transformers.BertConfig())),
    ],
)
def test_full_size_maps_fit_on_shapes(spec: str, make: Any) -> None:
    """The full-size specs take the full-size checkpoints' tensors, name for name and shape for shape
    (meta tensors: nothing is allocated)."""
    with torch.device("meta"):
        ref = make()
    mapped, unmatched, _ = MAPS[f"hf-{spec.split('_')[0]}"].to_spec(ref.state_dict())
    own = build(SPECS / f"{spec}.yaml", device="meta").state_dict()
    stored = {k: v for k, v in own.items() if k != "lm_head.weight"}  # GPT-2's head is tied to wte
    assert not unmatched
    assert {k: tuple(v.shape) for k, v in mapped.items()} == {k: tuple(v.shape) for k, v in stored.items()}
