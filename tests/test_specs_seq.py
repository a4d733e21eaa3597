"""Sequence-model specs (issue 4): check, build, forward + backward at two sequence lengths,
inferred shapes == real shapes, and the large ones against hand-written references on the meta device."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import SPECS
from reference_models import EXPECTED_PARAMS, REFERENCES, param_shapes

from specc.api import check
from specc.graph import Graph
from specc.nn import CompiledModel, build

SEQ_SPECS = [
    "rnn_lm",
    "gru_lm",
    "lstm_lm",
    "lstm_deep_lm",
    "bilstm_classifier",
    "seq2seq",
    "seq2seq_attention",
    "transformer",
    "bert_base",
    "gpt2_small",
    "llama",
]
LARGE = {"transformer", "bert_base", "gpt2_small"}


def tiny(name: str) -> Graph:
    return check(SPECS / f"{name}.yaml", scale="tiny")


def vocab_of(graph: Graph, input_name: str) -> int:
    """The exclusive bound of an int64 input's values (the embedding that reads it)."""
    bound = graph.index_bound(input_name)
    assert bound is not None, f"no op bounds the ids of input {input_name}"
    return bound


def make_inputs(graph: Graph, batch: int, seq: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    symbols = list(dict.fromkeys(d for t in graph.inputs.values() for d in t.shape if isinstance(d, str)))
    out = []
    for name, t in graph.inputs.items():
        # different symbols get different lengths (src_seq = seq, tgt_seq = seq + 1)
        dims = [batch, *(seq + symbols.index(d) if isinstance(d, str) else d for d in t.shape)]
        if t.dtype == "int64":
            out.append(torch.randint(0, vocab_of(graph, name), dims, generator=gen))
        elif t.dtype == "bool":
            keep = torch.rand(dims, generator=gen) > 0.2
            keep[:, 0] = True
            out.append(keep)
        else:
            out.append(torch.randn(dims, generator=gen))
    return out


def expected_shape(
    graph: Graph, shape: tuple[Any, ...], sizes: dict[str, int], batch: int
) -> tuple[int, ...]:
    return (batch, *(sizes[d] if isinstance(d, str) else d for d in shape))


@pytest.mark.parametrize("name", SEQ_SPECS)
def test_spec_checks(name: str) -> None:
    graph = check(SPECS / f"{name}.yaml")
    assert graph.params > 0
    text = (SPECS / f"{name}.yaml").read_text()
    assert text.startswith("#") and "specc check" in text and "specc build" in text


@pytest.mark.parametrize("name", SEQ_SPECS)
def test_tiny_forward_backward_any_length(name: str) -> None:
    graph = tiny(name)
    model = build(graph)
    assert sum(p.numel() for p in model.parameters()) == graph.params
    assert [tuple(p.shape) for p in model.parameters()] == graph.param_shapes()
    for seq in (5, 17):
        inputs = make_inputs(graph, 2, seq)
        sizes = {
            d: x.shape[i + 1]
            for x, t in zip(inputs, graph.inputs.values(), strict=True)
            for i, d in enumerate(t.shape)
            if isinstance(d, str)
        }
        out = model(*inputs)
        outs = out if isinstance(out, tuple) else (out,)
        for got, want in zip(outs, graph.output_types().values(), strict=True):
            assert tuple(got.shape) == expected_shape(graph, want.shape, sizes, 2)
            assert torch.isfinite(got).all()
        sum(o.float().pow(2).mean() for o in outs).backward()  # type: ignore[union-attr]
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        model.zero_grad()


def test_lm_head_is_tied() -> None:
    model = build(tiny("gpt2_small"))
    assert model.lm_head.weight is model.wte.weight
    model = build(tiny("transformer"))
    assert model.logits.weight is model.tgt_embedding.weight


# ---- large specs: parameter totals and ordered shapes, on the meta device ----------------------


def meta_model(name: str) -> CompiledModel:
    return build(SPECS / f"{name}.yaml", device="meta")


def reference(name: str) -> torch.nn.Module:
    with torch.device("meta"):
        return REFERENCES[name]()


@pytest.mark.parametrize("name", ["bert_base", "gpt2_small"])
def test_large_spec_matches_reference(name: str) -> None:
    model = meta_model(name)
    assert model.graph.params == EXPECTED_PARAMS[name]
    assert sum(p.numel() for p in model.parameters()) == EXPECTED_PARAMS[name]
    assert param_shapes(model) == param_shapes(reference(name)) == model.graph.param_shapes()


def _flow_order(ref: torch.nn.Module) -> list[tuple[int, ...]]:
    """nn.Transformer's parameter shapes, each layer's listed in data-flow order (norms after their
    sub-layer) — the order in which specc registers them."""
    shapes: list[tuple[int, ...]] = []
    for stack, subs in (
        ("encoder", [("self_attn", "norm1"), ("linear", "norm2")]),
        ("decoder", [("self_attn", "norm1"), ("multihead_attn", "norm2"), ("linear", "norm3")]),
    ):
        for layer in getattr(ref, stack).layers:
            params = dict(layer.named_parameters())
            for body, norm in subs:
                shapes += [tuple(p.shape) for n, p in params.items() if n.startswith(body)]
                shapes += [tuple(p.shape) for n, p in params.items() if n.startswith(norm + ".")]
        shapes += [tuple(p.shape) for p in getattr(ref, stack).norm.parameters()]
    return shapes


def test_transformer_stacks_match_torch() -> None:
    model = meta_model("transformer")
    stack = [
        tuple(p.shape)
        for n, p in model.named_parameters()
        if n.split(".")[0] in ("encoder", "encoder_norm", "decoder", "decoder_norm")
    ]
    assert sum(map(_numel, stack)) == EXPECTED_PARAMS["transformer_stacks"] == 44_140_544
    assert stack == _flow_order(reference("transformer_stacks"))
    vocab, d = 32000, 512
    assert model.graph.params == 44_140_544 + 2 * vocab * d  # + src/tgt embeddings; the output layer is tied


def _numel(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


# ---- tiny BERT / GPT-2: same numbers as the hand-written references ----------------------------


def _copy_in_order(model: torch.nn.Module, ref: torch.nn.Module) -> None:
    with torch.no_grad():
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            q.copy_(p)


def test_tiny_bert_matches_reference() -> None:
    from reference_models import BertModel

    model = build(tiny("bert_base")).eval()
    ref = BertModel(vocab_size=64, max_position=32, num_layers=2, hidden=16, heads=2, intermediate=32).eval()
    _copy_in_order(model, ref)
    tokens, types, mask = make_inputs(model.graph, 3, 9)
    types = types.remainder(2)
    seq, pooled = model(tokens, types, mask)
    ref_seq, ref_pooled = ref(tokens, mask.long(), types)
    torch.testing.assert_close(seq, ref_seq, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pooled, ref_pooled, atol=1e-5, rtol=1e-5)


def test_tiny_gpt2_matches_reference() -> None:
    from reference_models import GPT2LMHeadModel

    model = build(tiny("gpt2_small")).eval()
    ref = GPT2LMHeadModel(vocab_size=128, n_positions=32, num_layers=2, hidden=16, heads=2).eval()
    _copy_in_order(model, ref)
    (tokens,) = make_inputs(model.graph, 2, 11)
    torch.testing.assert_close(model(tokens), ref(tokens), atol=1e-5, rtol=1e-5)


# ---- weight tying and relative references --------------------------------------------------------

TIED = """specc: 1
name: tied
inputs: {tokens: {shape: [seq], dtype: int64}}
layers:
  - embedding: {num_embeddings: 20, embedding_dim: 8, name: emb, init: {kind: normal, std: 0.5}}
  - gru: {hidden_size: 8}
  - linear: {out_features: %s, bias: false, tie: %s, init: zeros, name: head}
"""


def test_tie_shares_counts_once_and_keeps_owner_init() -> None:
    from specc.api import check_text

    graph = check_text(TIED % (20, "emb"))
    model = build(graph)
    assert model.head.weight is model.emb.weight
    assert (
        graph.params == sum(p.numel() for p in model.parameters()) == 20 * 8 + graph.node("1").inferred.params
    )
    assert model.emb.weight.std().item() == pytest.approx(0.5, rel=0.2)  # the owner's init, not zeros
    out = model(torch.randint(0, 20, (2, 5)))
    out.sum().backward()
    assert model.emb.weight.grad is not None


def test_tie_errors() -> None:
    from specc.api import check_text
    from specc.errors import BuildError, LowerError

    with pytest.raises(LowerError, match="unknown reference 'embb'.*did you mean 'emb'"):
        check_text(TIED % (20, "embb"))
    with pytest.raises(
        BuildError, match=r"cannot tie 'weight' of shape \(21, 8\) to 'emb.weight' of shape \(20, 8\)"
    ):
        build(check_text(TIED % (21, "emb")), device="meta")


def test_minus_one_in_first_item_of_a_body_is_its_input() -> None:
    from specc.api import check_text

    spec = """specc: 1
name: rel
include: [std:transformer]
inputs: {x: {shape: [seq, 8]}, mask: {shape: [seq], dtype: bool}}
layers:
  - repeat: 2
    body: {bert_layer: {d_model: 8, num_heads: 2, dim_feedforward: 16, from: [-1, mask]}}
"""
    graph = check_text(spec)
    first = graph.node("0.0.sa.attention")
    assert [r.node for r in first.inputs] == ["x", "mask"]
    assert [r.node for r in graph.node("0.1.sa.attention").inputs] == ["0.0.ff.then.norm2", "mask"]
