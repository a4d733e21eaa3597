"""Parameters are initialised once: torch's default or the spec's ``init``, never both.

Specs that keep torch's default initialisation must give bit-identical weights to the previous
builder, which built every module with torch's init and then drew the spec's init over it: that
builder is re-implemented here (``previous_build``) and compared on every bundled spec.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from conftest import SPECS

from specc.api import check, check_text
from specc.graph import Graph
from specc.nn import apply_init, build
from specc.nn.compiled import _init_tensor, sets_init

ALL_SPECS = sorted(SPECS.glob("*.yaml"))


def graph_of(spec: Path) -> Graph:
    return check(spec, (), "tiny" if "\n  tiny:" in spec.read_text() else None)


def previous_build(graph: Graph, seed: int = 0) -> dict[str, torch.Tensor]:
    """The builder before init-once: torch's init for every module, ties, then the spec's init."""
    torch.manual_seed(seed)
    modules = {}
    for node in graph.nodes:
        assert node.inferred is not None
        modules[node.path] = node.op.build([graph.type_of(r) for r in node.inputs], node.inferred)
    for tie in graph.ties:
        setattr(modules[tie.node], tie.param, getattr(modules[tie.owner], tie.param))
    seen: set[int] = set()
    for node in graph.nodes:
        any_rank = type(node.op).init_any_rank
        for name, p in modules[node.path].named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            leaf = name.rsplit(".", 1)[-1]
            if p.dim() >= (0 if any_rank else 2) and "weight" in leaf:
                _init_tensor(p, node.op.init)
            elif "bias" in leaf:
                _init_tensor(p, node.op.bias_init)
    return {f"{path}.{k}": v for path, m in modules.items() for k, v in m.state_dict(keep_vars=False).items()}


def spec_sets_init(graph: Graph) -> bool:
    return any(sets_init(n.op.init) or sets_init(n.op.bias_init) for n in graph.nodes)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda p: p.stem)
def test_default_init_is_bit_identical_to_the_previous_builder(spec: Path) -> None:
    graph = graph_of(spec)
    if spec_sets_init(graph):
        pytest.skip("sets init: its random stream changes by design (see test_spec_init_*)")
    before = previous_build(graph)
    after = build(graph, seed=0).state_dict()
    assert set(after) <= set(before)
    for key, value in after.items():
        assert torch.equal(value, before[key]), key


SETS_INIT = [s for s in ALL_SPECS if spec_sets_init(graph_of(s))]


def test_the_specs_that_set_init_include_every_family() -> None:
    # they are checked by the test below, the others by the bit-identical test above
    names = {s.stem for s in SETS_INIT}
    assert {"bert_base", "gpt2_small", "llama", "vit_b_16", "convnext_tiny", "mobilenet_v2"} <= names


@pytest.mark.parametrize("spec", SETS_INIT, ids=lambda p: p.stem)
def test_every_parameter_is_written_once(spec: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Spec init or torch's default, never both, on every bundled spec that sets init (attention with
    GQA/RoPE, RMSNorm, parameter/scale with constant init, batch norms with running statistics)."""
    import specc.nn.compiled as compiled

    graph = graph_of(spec)
    writes: list[torch.Tensor] = []  # held, so no address is reused during the build
    inside = [False]
    for fn in (
        "kaiming_uniform_",
        "kaiming_normal_",
        "xavier_uniform_",
        "xavier_normal_",
        "uniform_",
        "normal_",
        "trunc_normal_",
        "ones_",
        "zeros_",
        "constant_",
    ):
        original = getattr(nn.init, fn)

        def spy(*a: object, _orig: object = original, **k: object) -> object:
            t = a[0] if a else k["tensor"]
            assert isinstance(t, torch.Tensor)
            if t.device.type != "meta" and not inside[0]:
                writes.append(t)
            return _orig(*a, **k)  # type: ignore[operator]

        monkeypatch.setattr(nn.init, fn, spy)
    original_init = compiled._init_tensor

    def spec_init(t: torch.Tensor, s: object) -> None:
        writes.append(t)
        inside[0] = True
        try:
            original_init(t, s)  # type: ignore[arg-type]
        finally:
            inside[0] = False

    monkeypatch.setattr(compiled, "_init_tensor", spec_init)
    model = build(graph, seed=0)
    counts: dict[int, int] = {}
    for t in writes:
        counts[t.data_ptr()] = counts.get(t.data_ptr(), 0) + 1
    for name, p in model.named_parameters():
        assert counts.get(p.data_ptr(), 0) <= 1, f"{name} initialised twice"
    for node in graph.nodes:
        module = model.get_submodule(node.path)
        for name, p in module.named_parameters():
            if compiled.param_init(name, p, node.op) is not None and name not in node.op.tied():
                assert counts.get(p.data_ptr(), 0) == 1, f"{node.path}.{name}: spec init did not run"
            init = node.op.init
            if (
                isinstance(init, compiled.InitSpec)
                and init.kind == "constant"
                and type(node.op).init_any_rank
            ):
                assert torch.all(p == init.value), f"{node.path}.{name}"
        for name, b in module.named_buffers():
            if "running_mean" in name or "num_batches" in name:
                assert torch.all(b == 0), f"{node.path}.{name}"
            elif "running_var" in name:
                assert torch.all(b == 1), f"{node.path}.{name}"


@pytest.fixture
def default_inits_forbidden(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every torch default initialiser records a call on a real (non-meta) tensor."""
    calls: list[str] = []
    for fn in ("kaiming_uniform_", "xavier_uniform_", "uniform_", "normal_", "ones_", "zeros_"):
        original = getattr(nn.init, fn)

        def spy(*a: object, _fn: str = fn, _orig: object = original, **k: object) -> object:
            t = a[0] if a else k["tensor"]
            assert isinstance(t, torch.Tensor)
            if t.device.type != "meta":
                calls.append(_fn)
            return _orig(*a, **k)  # type: ignore[operator]

        monkeypatch.setattr(nn.init, fn, spy)
    return calls


@pytest.mark.parametrize("name", ["bert_base", "gpt2_small", "llama"])
def test_spec_init_runs_once_without_torch_defaults(name: str, default_inits_forbidden: list[str]) -> None:
    graph = graph_of(SPECS / f"{name}.yaml")
    draws: list[tuple[int, ...]] = []
    import specc.nn.compiled as compiled

    original = compiled._init_tensor

    def counting(t: torch.Tensor, spec: object) -> None:
        draws.append(tuple(t.shape))
        original(t, spec)  # type: ignore[arg-type]

    compiled._init_tensor = counting  # type: ignore[assignment]
    try:
        model = build(graph, seed=0)
    finally:
        compiled._init_tensor = original  # type: ignore[assignment]
    # torch's initialisers only ran for parameters the spec leaves alone: LayerNorm weights (ones)
    assert set(default_inits_forbidden) <= {"ones_"}
    norm_weights = [p for n, p in model.named_parameters() if p.dim() == 1 and "norm" in n or "ln" in n]
    assert default_inits_forbidden.count("ones_") <= len(norm_weights)
    # the spec's init ran once per parameter it covers: every matrix and bias (tied ones once)
    covered = [p for n, p in model.named_parameters() if p.dim() >= 2 or "bias" in n.rsplit(".", 1)[-1]]
    assert sorted(draws) == sorted(tuple(p.shape) for p in covered)
    for n, p in model.named_parameters():
        if p.dim() >= 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.25), n
        elif "bias" in n:
            assert torch.all(p == 0), n
        else:
            assert torch.all(p == 1), n


def test_tied_weights_and_padding_rows_survive() -> None:
    gpt = build(graph_of(SPECS / "gpt2_small.yaml"), seed=0)
    assert gpt.lm_head.weight is gpt.wte.weight
    assert len({id(p) for p in gpt.parameters()}) == len(list(gpt.parameters()))
    bert = build(graph_of(SPECS / "bert_base.yaml"), seed=0)
    emb = bert.word_embeddings.weight
    assert torch.all(emb[0] == 0) and emb[1:].abs().sum() > 0
    before = emb.detach().clone()
    apply_init(bert, seed=1)  # a re-draw keeps the padding row at zero and changes the rest
    assert torch.all(emb[0] == 0) and not torch.equal(emb, before)
    again = build(graph_of(SPECS / "bert_base.yaml"), seed=0)
    for (k, a), (_, b) in zip(
        build(graph_of(SPECS / "bert_base.yaml"), seed=0).state_dict().items(),
        again.state_dict().items(),
        strict=True,
    ):
        assert torch.equal(a, b), k  # seeded builds are reproducible


MIXED = """specc: 1
name: mixed
inputs: {x: {shape: [3, 8, 8]}}
defaults: {norm: batch}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, init: kaiming_normal, name: conv}
  - norm: {bias_init: ones, name: bn}
  - flatten
  - linear: {out_features: 400, init: {kind: normal, std: 0.05}, name: fc}
"""


def test_partial_spec_init_keeps_torch_defaults_for_the_rest(default_inits_forbidden: list[str]) -> None:
    model = build(check_text(MIXED), seed=0)
    conv, bn, fc = model.conv, model.bn, model.fc
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 27), rel=0.2)  # kaiming_normal
    fan_in = 3 * 3 * 3
    assert 0 < conv.bias.abs().max().item() <= 1 / math.sqrt(fan_in)  # torch's default bias
    assert fc.weight.std().item() == pytest.approx(0.05, rel=0.05)
    assert 0 < fc.bias.abs().max().item() <= 1 / math.sqrt(4 * 6 * 6)
    # BatchNorm (buffers: built as before): running stats fresh, its bias from the spec
    assert torch.all(bn.running_mean == 0) and torch.all(bn.running_var == 1)
    assert int(bn.num_batches_tracked) == 0 and torch.all(bn.weight == 1) and torch.all(bn.bias == 1)
    # the weight matrices' default (kaiming_uniform_) never ran on real memory: only the biases
    # were drawn by torch (uniform_), plus BatchNorm's own ones/zeros
    assert "kaiming_uniform_" not in default_inits_forbidden
    assert default_inits_forbidden.count("uniform_") == 2


def test_build_leaves_the_garbage_collector_as_it_found_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import gc

    import specc.nn.compiled as compiled

    assert gc.isenabled()
    build(check_text(MIXED))
    assert gc.isenabled()
    gc.disable()
    try:
        build(check_text(MIXED))
        assert not gc.isenabled()
    finally:
        gc.enable()

    def fails(*args: object) -> None:
        assert not gc.isenabled()  # paused while modules are created
        raise RuntimeError("module construction failed")

    monkeypatch.setattr(compiled, "construct", fails)
    with pytest.raises(RuntimeError, match="construction failed"):
        build(check_text(MIXED))
    assert gc.isenabled()
