"""Sequence ops (issue 4): shape rules, numerical equivalence with torch.nn, ONNX + onnxruntime parity."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from specc.ops import OPS, InferContext, ShapeMismatch, TensorType

T_ = TensorType
F32, I64, BOOL = "float32", "int64", "bool"


def infer(op: str, args: dict[str, Any], *types: TensorType) -> Any:
    return OPS[op].model_validate(args).infer(list(types), InferContext({"seq": 10, "src": 6}))


def build(op: str, args: dict[str, Any], *types: TensorType) -> nn.Module:
    spec = OPS[op].model_validate(args)
    return spec.build(list(types), spec.infer(list(types), InferContext()))


# ---- shape rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "args", "types", "outs", "params", "macs"),
    [
        ("embedding", {"num_embeddings": 100, "embedding_dim": 8}, [T_(("seq",), I64)], [("seq", 8)], 800, 0),
        ("positional_encoding", {}, [T_(("seq", 8))], [("seq", 8)], 0, 80),
        ("positional_encoding", {"kind": "learned", "max_len": 32}, [T_(("seq", 8))], [("seq", 8)], 256, 80),
        # rnn: 1 gate; (h·(f+h) + 2h) per direction and layer
        ("rnn", {"hidden_size": 4}, [T_(("seq", 3))], [("seq", 4)], 4 * 3 + 16 + 8, 10 * 4 * 7),
        (
            "gru",
            {"hidden_size": 4, "num_layers": 2, "bidirectional": True, "output": "both"},
            [T_(("seq", 3))],
            [("seq", 8), (4, 4)],
            2 * (12 * 3 + 48 + 24) + 2 * (12 * 8 + 48 + 24),
            10 * (2 * 12 * 7 + 2 * 12 * 12),
        ),
        (
            "lstm",
            {"hidden_size": 5, "output": "state", "bias": False},
            [T_((7, 2))],
            [(1, 5)],
            20 * 2 + 100,
            7 * 20 * 7,
        ),
        ("lstm", {"hidden_size": 5}, [T_(("seq", 2)), T_((1, 5)), T_((1, 5))], [("seq", 5)], 180, 10 * 140),
        (
            "dot_product_attention",
            {},
            [T_(("seq", 4)), T_(("src", 4)), T_(("src", 6))],
            [("seq", 6)],
            0,
            10 * 6 * 10,
        ),
        ("dot_product_attention", {"causal": True}, [T_(("seq", 4))], [("seq", 4)], 0, 10 * 10 * 8),
        (  # leading axes (windows, heads) are kept: attention inside each
            "dot_product_attention",
            {"causal": True},
            [T_((3, 2, "seq", 4))],
            [(3, 2, "seq", 4)],
            0,
            6 * 10 * 10 * 8,
        ),
        (
            "additive_attention",
            {"num_hiddens": 5},
            [T_(("seq", 3)), T_(("src", 4)), T_(("src",), BOOL)],
            [("seq", 4)],
            5 * 4 + 5 * 3 + 5,
            10 * 3 * 5 + 6 * 4 * 5 + 10 * 6 * 9,
        ),
        (
            "multihead_attention",
            {"num_heads": 2},
            [T_(("seq", 8))],
            [("seq", 8)],
            3 * 64 + 24 + 64 + 8,
            10 * 64 * 2 + 10 * 8 * 16 + 2 * 100 * 8,
        ),
        (
            "multihead_attention",
            {"num_heads": 2, "bias": False},
            [T_(("seq", 8)), T_(("src", 8)), T_(("src",), BOOL)],
            [("seq", 8)],
            4 * 64,
            10 * 128 + 6 * 128 + 2 * 60 * 8,
        ),
        (
            "multihead_attention",
            {"num_heads": 2, "qkv": "separate"},
            [T_(("seq", 8)), T_(("src", 4))],
            [("seq", 8)],
            (64 + 8) + 2 * (32 + 8) + (64 + 8),
            10 * 128 + 6 * 64 + 2 * 60 * 8,
        ),
        ("select", {"index": 0}, [T_(("seq", 8))], [(8,)], 0, 0),
        ("select", {"index": -1, "dim": 1}, [T_((3, 4, 5))], [(3, 5)], 0, 0),
        ("broadcast", {"dim": 0}, [T_((6,)), T_(("seq", 3))], [("seq", 6)], 0, 0),
    ],
)
def test_shape_rules(
    op: str,
    args: dict[str, Any],
    types: list[TensorType],
    outs: list[tuple[Any, ...]],
    params: int,
    macs: int,
) -> None:
    got = infer(op, args, *types)
    assert [t.shape for t in got.outputs] == outs
    assert got.params == params
    assert got.macs == macs
    assert got.outputs[0].dtype == "float32" or op in ("select", "broadcast")


@pytest.mark.parametrize(
    ("op", "args", "types", "message"),
    [
        ("multihead_attention", {"num_heads": 3}, [T_(("seq", 8))], "not divisible by num_heads 3"),
        ("multihead_attention", {"num_heads": 2}, [T_(("seq", 8)), T_(("s", 4))], "use qkv: separate"),
        (
            "multihead_attention",
            {"num_heads": 2},
            [T_(("seq", 8)), T_((5,), BOOL)],
            "key mask must be (seq,)",
        ),
        (
            "multihead_attention",
            {"num_heads": 2},
            [T_(("seq",), BOOL), T_(("seq", 8))],
            "then an optional bool",
        ),
        ("gru", {"hidden_size": 4}, [T_(("seq", 3)), T_((2, 4))], "initial state must be (1, 4)"),
        ("rnn", {"hidden_size": 4}, [T_((3,))], "2-d input"),
        ("positional_encoding", {"max_len": 4}, [T_((5, 8))], "longer than max_len 4"),
        ("select", {"index": 5}, [T_((5, 8))], "index 5 is out of range"),
        ("dot_product_attention", {}, [T_(("seq", 4)), T_(("seq", 5))], "same feature size"),
        ("dot_product_attention", {}, [T_((2, "seq", 4)), T_((3, "seq", 4))], "same leading axes"),
        (
            "dot_product_attention",
            {},
            [T_((2, "seq", 4)), T_(("seq",), BOOL)],
            "key mask needs (seq, features)",
        ),
        ("dot_product_attention", {}, [T_((4,))], "(..., seq, features)"),
    ],
)
def test_shape_errors(op: str, args: dict[str, Any], types: list[TensorType], message: str) -> None:
    with pytest.raises(ShapeMismatch, match=None) as info:
        infer(op, args, *types)
    assert message in str(info.value)


def test_embedding_rejects_bad_padding_idx() -> None:
    with pytest.raises(ValueError, match="padding_idx 10"):
        OPS["embedding"].model_validate({"num_embeddings": 10, "embedding_dim": 2, "padding_idx": 10})


def test_padding_vector_starts_at_zero_under_any_init(tmp_path: Any) -> None:
    """A spec-level init (BERT: normal 0.02) must not overwrite the zero padding row (as HF's init)."""
    from specc.nn import build as build_spec

    spec = tmp_path / "emb.yaml"
    spec.write_text(
        "specc: 1\nname: emb\ninputs: {ids: {shape: [seq], dtype: int64}}\ndims: {seq: 8}\n"
        "defaults: {init: {kind: normal, std: 1.0}}\n"
        "layers: [embedding: {num_embeddings: 20, embedding_dim: 4, padding_idx: 3, name: emb}]\n"
    )
    weight = build_spec(spec, seed=0).get_submodule("emb").weight
    assert torch.count_nonzero(weight[3]) == 0 and torch.count_nonzero(weight[:3]) == 12
    assert 0.5 < weight[4:].std().item() < 1.5  # the normal(0, 1) init did happen elsewhere


# ---- numerical equivalence with torch.nn --------------------------------------------------------


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=atol, rtol=1e-5), (a - b).abs().max().item()


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
def test_recurrent_matches_torch(kind: str) -> None:
    torch.manual_seed(0)
    args = {"hidden_size": 6, "num_layers": 2, "bidirectional": True, "output": "both"}
    x_t, h_t = T_(("seq", 3)), T_((4, 6))
    ins = [x_t, h_t, h_t] if kind == "lstm" else [x_t, h_t]
    ours = build(kind, args, *ins).eval()
    ref = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}[kind](
        3, 6, num_layers=2, bidirectional=True, batch_first=True
    ).eval()
    ref.load_state_dict(ours.state_dict())
    x, h0, c0 = torch.randn(3, 7, 3), torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    if kind == "lstm":
        y, state = ours(x, h0, c0)
        y_ref, (h_ref, _) = ref(x, (h0.transpose(0, 1).contiguous(), c0.transpose(0, 1).contiguous()))
    else:
        y, state = ours(x, h0)
        y_ref, h_ref = ref(x, h0.transpose(0, 1).contiguous())
    close(y, y_ref)
    close(state, h_ref.transpose(0, 1))
    y0, _ = ours(x)  # no initial state = zeros
    close(y0, ref(x)[0])


@pytest.mark.parametrize("case", ["self_mask", "causal", "cross", "no_bias"])
def test_multihead_attention_matches_torch(case: str) -> None:
    torch.manual_seed(0)
    e, heads, b, tq, tk = 16, 4, 3, 7, 5
    q, kv = torch.randn(b, tq, e), torch.randn(b, tk, e)
    keep = torch.rand(b, tq) > 0.3
    keep[:, 0] = True
    bias = case != "no_bias"
    ref = nn.MultiheadAttention(e, heads, batch_first=True, bias=bias).eval()
    if case == "self_mask":
        ours = build("multihead_attention", {"num_heads": heads}, T_(("t", e)), T_(("t",), BOOL))
        ours.load_state_dict(ref.state_dict())
        got = ours.eval()(q, keep)
        want = ref(q, q, q, key_padding_mask=~keep, need_weights=False)[0]
    elif case == "causal":
        ours = build("multihead_attention", {"num_heads": heads, "causal": True}, T_(("t", e)))
        ours.load_state_dict(ref.state_dict())
        got = ours.eval()(q)
        mask = nn.Transformer.generate_square_subsequent_mask(tq)
        want = ref(q, q, q, attn_mask=mask, need_weights=False)[0]
    else:
        ours = build("multihead_attention", {"num_heads": heads, "bias": bias}, T_(("t", e)), T_(("s", e)))
        ours.load_state_dict(ref.state_dict())
        got = ours.eval()(q, kv)
        want = ref(q, kv, kv, need_weights=False)[0]
    close(got, want)


def _layer_spec(block: str, d: int, heads: int, ffn: int, decoder: bool) -> str:
    inputs = f"x: {{shape: [seq, {d}]}}" + (f", memory: {{shape: [mem, {d}]}}" if decoder else "")
    call = f"{{{block}: {{d_model: {d}, num_heads: {heads}, dim_feedforward: {ffn}, dropout: 0.0"
    call += ", from: [x, memory]}}" if decoder else "}}"
    return f"specc: 1\nname: layer\ninclude: [std:transformer]\ninputs: {{{inputs}}}\nlayers:\n  - {call}\n"


def _flow_order(names: list[str], decoder: bool, norm_first: bool) -> list[str]:
    """torch layer parameter names in the order specc's block registers them (data flow)."""
    subs = [("self_attn", "norm1"), ("multihead_attn", "norm2")] if decoder else [("self_attn", "norm1")]
    subs.append(("linear", "norm3" if decoder else "norm2"))
    order: list[str] = []
    for body, norm in subs:
        body_names = [n for n in names if n.startswith(body)]
        norm_names = [n for n in names if n.startswith(norm + ".")]
        order += norm_names + body_names if norm_first else body_names + norm_names
    return order


@pytest.mark.parametrize("decoder", [False, True], ids=["encoder", "decoder"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_transformer_layers_match_torch(decoder: bool, norm_first: bool) -> None:
    from specc.api import check_text
    from specc.nn import build as build_spec

    torch.manual_seed(0)
    d, heads, ffn = 16, 4, 32
    cls = nn.TransformerDecoderLayer if decoder else nn.TransformerEncoderLayer
    ref = cls(d, heads, ffn, dropout=0.0, batch_first=True, norm_first=norm_first).eval()
    block = ("decoder_layer" if decoder else "encoder_layer") + ("_pre" if norm_first else "")
    model = build_spec(check_text(_layer_spec(block, d, heads, ffn, decoder))).eval()
    ref_params = dict(ref.named_parameters())
    ours = list(model.parameters())
    order = _flow_order(list(ref_params), decoder, norm_first)
    assert [tuple(p.shape) for p in ours] == [tuple(ref_params[n].shape) for n in order]
    with torch.no_grad():
        for p, name in zip(ours, order, strict=True):
            p.copy_(ref_params[name])
    x, mem = torch.randn(2, 9, d), torch.randn(2, 6, d)
    if decoder:
        mask = nn.Transformer.generate_square_subsequent_mask(9)
        close(model(x, mem), ref(x, mem, tgt_mask=mask, tgt_is_causal=True))
    else:
        close(model(x), ref(x))


def test_dot_product_attention_matches_reference() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 3)
    keep = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    ours = build("dot_product_attention", {}, T_(("t", 8)), T_(("s", 8)), T_(("s", 3)), T_(("s",), BOOL))
    want = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, :])
    close(ours(q, k, v, keep), want)


def test_dot_product_attention_keeps_leading_axes() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 2, 4, 8), torch.randn(2, 3, 2, 6, 8), torch.randn(2, 3, 2, 6, 5)
    ours = build("dot_product_attention", {}, T_((3, 2, "t", 8)), T_((3, 2, "s", 8)), T_((3, 2, "s", 5)))
    close(ours(q, k, v), nn.functional.scaled_dot_product_attention(q, k, v))
    causal = build("dot_product_attention", {"causal": True}, T_((3, 2, "t", 8)))
    close(causal(q), nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True))


def test_additive_attention_matches_d2l_formula() -> None:
    torch.manual_seed(0)
    ours = build("additive_attention", {"num_hiddens": 5}, T_(("t", 3)), T_(("s", 4)), T_(("s", 2)))
    q, k, v = torch.randn(2, 1, 3), torch.randn(2, 6, 4), torch.randn(2, 6, 2)
    features = torch.tanh(q @ ours.W_q.weight.T + (k @ ours.W_k.weight.T))  # (2, 6, 5): Tq = 1
    weights = (features @ ours.w_v.weight.T).squeeze(-1).softmax(-1)
    close(ours(q, k, v), (weights[:, None, :] @ v))


def test_fully_masked_row_is_finite() -> None:
    ours = build("multihead_attention", {"num_heads": 2}, T_(("t", 8)), T_(("t",), BOOL))
    out = ours(torch.randn(1, 3, 8), torch.zeros(1, 3, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_sinusoidal_table_and_buffer() -> None:
    module = build("positional_encoding", {"max_len": 50}, T_(("seq", 6)))
    assert list(module.parameters()) == [] and "pe" not in module.state_dict()
    out = module(torch.zeros(1, 3, 6))[0]
    t, i = 2, 1  # P[t, 2i] = sin(t / 10000^(2i/d)), P[t, 2i+1] = cos(...)
    assert out[t, 2 * i].item() == pytest.approx(np.sin(t / 10000 ** (2 * i / 6)), abs=1e-6)
    assert out[t, 2 * i + 1].item() == pytest.approx(np.cos(t / 10000 ** (2 * i / 6)), abs=1e-6)


# ---- ONNX export (TorchScript exporter) + onnxruntime parity -------------------------------------

VOCAB = 11
CASES: dict[str, tuple[str, dict[str, Any], list[tuple[tuple[Any, ...], str]]]] = {
    "embedding": ("embedding", {"num_embeddings": VOCAB, "embedding_dim": 6, "scale": True}, [(("T",), I64)]),
    "pos_sin": ("positional_encoding", {"max_len": 64}, [(("T", 6), F32)]),
    "pos_learned": ("positional_encoding", {"kind": "learned", "max_len": 32}, [(("T", 6), F32)]),
    "rnn": ("rnn", {"hidden_size": 5, "num_layers": 2, "output": "both"}, [(("T", 3), F32)]),
    "gru_bi_h0": (
        "gru",
        {"hidden_size": 5, "num_layers": 2, "bidirectional": True, "output": "both"},
        [(("T", 3), F32), ((4, 5), F32)],
    ),
    "lstm_bi": (
        "lstm",
        {"hidden_size": 5, "num_layers": 2, "bidirectional": True, "output": "both"},
        [(("T", 3), F32)],
    ),
    "lstm_h0_c0": (
        "lstm",
        {"hidden_size": 5, "output": "state"},
        [(("T", 3), F32), ((1, 5), F32), ((1, 5), F32)],
    ),
    "dot_causal": ("dot_product_attention", {"causal": True}, [(("T", 4), F32)]),
    "dot_windows": ("dot_product_attention", {}, [((3, 2, "T", 4), F32)]),
    "dot_masked": (
        "dot_product_attention",
        {},
        [(("T", 4), F32), (("S", 4), F32), (("S", 3), F32), (("S",), BOOL)],
    ),
    "additive": (
        "additive_attention",
        {"num_hiddens": 6},
        [(("T", 4), F32), (("S", 3), F32), (("S",), BOOL)],
    ),
    "mha_self_causal": ("multihead_attention", {"num_heads": 2, "causal": True}, [(("T", 8), F32)]),
    "mha_self_mask": (
        "multihead_attention",
        {"num_heads": 2, "qkv": "separate"},
        [(("T", 8), F32), (("T",), BOOL)],
    ),
    "mha_cross": (
        "multihead_attention",
        {"num_heads": 4},
        [(("T", 8), F32), (("S", 8), F32), (("S",), BOOL)],
    ),
    # issue 11: decoder attention (GQA/MQA, rotary, causal + padding, sliding window), RMSNorm, reshape
    "mha_gqa_rope_mask": (
        "multihead_attention",
        {"num_heads": 4, "num_kv_heads": 2, "qkv": "llama", "bias": False, "causal": True, "rope": {}},
        [(("T", 16), F32), (("T",), BOOL)],
    ),
    "mha_mqa_window": (
        "multihead_attention",
        {"num_heads": 4, "num_kv_heads": 1, "head_dim": 6, "causal": True, "sliding_window": 4},
        [(("T", 16), F32)],
    ),
    "mha_rope_positions": (
        "multihead_attention",
        {"num_heads": 2, "qkv": "llama", "causal": True, "rope": {"theta": 500.0, "rotary_dim": 4}},
        [(("T", 16), F32), (("T",), BOOL), (("T",), I64)],
    ),
    "rms_norm": ("norm", {"kind": "rms", "eps": 1e-5}, [(("T", 6), F32)]),
    "reshape_heads": ("reshape", {"shape": ["T", 2, -1]}, [(("T", 8), F32)]),
    "select_last": ("select", {"index": -1}, [(("T", 6), F32)]),
    "broadcast": ("broadcast", {"dim": 0}, [((6,), F32), (("T", 2), F32)]),
}


def _sample(shape: tuple[Any, ...], dtype: str, batch: int, t: int, gen: torch.Generator) -> torch.Tensor:
    dims = [batch, *(t if d == "T" else t + 2 if d == "S" else d for d in shape)]
    if dtype == I64:
        return torch.randint(0, VOCAB, dims, generator=gen)
    if dtype == BOOL:
        keep = torch.rand(dims, generator=gen) > 0.3
        keep[:, 0] = True
        return keep
    return torch.randn(dims, generator=gen)


@pytest.mark.filterwarnings("ignore:Exporting a model to ONNX with a batch_size other than 1")
@pytest.mark.parametrize("case", list(CASES))
def test_onnx_parity(case: str) -> None:
    import onnxruntime as ort

    op, args, specs = CASES[case]
    module = build(op, args, *(T_(s, d) for s, d in specs)).eval()
    gen = torch.Generator().manual_seed(0)
    names = [f"in{i}" for i in range(len(specs))]
    axes = {
        n: {0: "batch", **{i + 1: d for i, d in enumerate(s) if isinstance(d, str)}}
        for n, (s, _) in zip(names, specs, strict=True)
    }
    example = tuple(_sample(s, d, 2, 8, gen) for s, d in specs)
    with torch.no_grad():
        n_out = len(module(*example)) if isinstance(module(*example), tuple) else 1
    outs = [f"out{i}" for i in range(n_out)]
    axes.update({o: {0: "batch"} for o in outs})
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module,
            example,
            buf,
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=outs,
            dynamic_axes=axes,
        )
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        for t in (5, 17):
            feeds = tuple(_sample(s, d, batch, t, gen) for s, d in specs)
            with torch.no_grad():
                ref = module(*feeds)
            refs = ref if isinstance(ref, tuple) else (ref,)
            got = session.run(None, {n: f.numpy() for n, f in zip(names, feeds, strict=True)})
            for r, g in zip(refs, got, strict=True):
                np.testing.assert_allclose(
                    g, r.numpy(), atol=1e-5, rtol=1e-4, err_msg=f"{case} B={batch} T={t}"
                )
