"""The forward plan frees every tensor right after its last reader, and never an output."""

from __future__ import annotations

import torch

from specc.api import check_text
from specc.nn import build

SPEC = """specc: 1
name: planned
inputs: {x: {shape: [8]}}
layers:
  - linear: {out_features: 8, name: a}
  - residual: [linear: {out_features: 8, name: b}, relu]
    shortcut: identity
    name: r
  - linear: {out_features: 4, name: head}
  - relu: {name: tail}
outputs: [head, tail]
"""


def test_each_slot_is_freed_after_its_last_reader() -> None:
    model = build(check_text(SPEC))
    plan, outputs = model.plan, set(model.result_slots)
    last = {slot: t for t, step in enumerate(plan) for slot in step.inputs}
    for t, step in enumerate(plan):
        expected = tuple(sorted({s for s in step.inputs if last[s] == t} - outputs))
        assert step.free == expected
    freed = [s for step in plan for s in step.free]
    assert len(freed) == len(set(freed)) and not outputs & set(freed)
    assert any(len(step.inputs) == 2 and step.free for step in plan)  # the residual add frees both
    head, tail = model(torch.randn(3, 8))
    assert torch.equal(tail, torch.relu(head))
