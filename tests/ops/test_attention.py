"""multihead_attention for today's decoders (issue 11): grouped-query and multi-query heads, head_dim,
the llama projection layout, rotary embeddings, causal + padding + sliding-window masks, the SDPA
path against the matmul/softmax path, and symbolic reshape. References are written here by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from specc.nn.sequence_modules import MultiheadAttention, Rotary
from specc.ops import OPS, InferContext, ShapeMismatch, TensorType

T_ = TensorType
BOOL, I64 = "bool", "int64"


def infer(op: str, args: dict[str, Any], *types: TensorType) -> Any:
    return OPS[op].model_validate(args).infer(list(types), InferContext({"seq": 10}))


def build(args: dict[str, Any], *types: TensorType) -> MultiheadAttention:
    spec = OPS["multihead_attention"].model_validate(args)
    module = spec.build(list(types), spec.infer(list(types), InferContext()))
    assert isinstance(module, MultiheadAttention)
    torch.manual_seed(1)
    with torch.no_grad():  # biases and weights all random, so that a mixed-up layout shows
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module.eval()


# ---- shape rules ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "shapes"),
    [
        # GQA, llama names, no bias: q (H·d, E), k/v (K·d, E), o (E, H·d)
        (
            {"num_heads": 8, "num_kv_heads": 2, "qkv": "llama", "bias": False},
            [(32, 32), (8, 32), (8, 32), (32, 32)],
        ),
        # MQA with head_dim set (8 heads of 16 on E = 32), separate layout with biases
        (
            {"num_heads": 8, "num_kv_heads": 1, "head_dim": 16, "qkv": "separate"},
            [(128, 32), (128,), (16, 32), (16,), (16, 32), (16,), (32, 128), (32,)],
        ),
        # fused GQA: one in_proj of q + 2 kv rows
        ({"num_heads": 4, "num_kv_heads": 2}, [(32 + 2 * 16, 32), (64,), (32, 32), (32,)]),
    ],
)
def test_gqa_parameter_shapes(args: dict[str, Any], shapes: list[tuple[int, ...]]) -> None:
    got = infer("multihead_attention", args, T_(("seq", 32)))
    assert got.param_shapes == shapes
    module = build(args, T_(("seq", 32)))
    assert [tuple(p.shape) for p in module.parameters()] == shapes
    assert got.outputs[0].shape == ("seq", 32)


def test_llama_parameter_names() -> None:
    module = build(
        {"num_heads": 4, "num_kv_heads": 2, "qkv": "llama", "bias": False, "rope": {}}, T_(("seq", 16))
    )
    assert list(module.state_dict()) == [f"{n}_proj.weight" for n in "qkvo"]  # rotary holds nothing


def test_macs_count_grouped_projections() -> None:
    e, h, kv, d, t = 32, 8, 2, 4, 10
    got = infer("multihead_attention", {"num_heads": h, "num_kv_heads": kv, "qkv": "llama"}, T_(("seq", e)))
    assert got.macs == 2 * t * e * h * d + t * kv * d * 2 * e + 2 * t * t * h * d
    rope = infer("multihead_attention", {"num_heads": h, "num_kv_heads": kv, "rope": {}}, T_(("seq", e)))
    assert rope.macs == got.macs + 2 * (t * h * d + t * kv * d)


@pytest.mark.parametrize(
    ("args", "types", "message"),
    [
        ({"num_heads": 4, "num_kv_heads": 3}, [T_(("seq", 8))], "not divisible by num_kv_heads 3"),
        ({"num_heads": 2, "sliding_window": 4}, [T_(("seq", 8))], "sliding_window needs causal"),
        ({"num_heads": 2, "rope": {"rotary_dim": 3}}, [T_(("seq", 8))], "rotary_dim 3 must be even"),
        ({"num_heads": 2, "rope": {"rotary_dim": 6}}, [T_(("seq", 8))], "<= head_dim 4"),
        ({"num_heads": 2, "rope": {}, "qkv": "separate"}, [T_(("seq", 8)), T_(("s", 8))], "rope needs self"),
        ({"num_heads": 2}, [T_(("seq", 8)), T_(("seq",), I64)], "only used by rope"),
        ({"num_heads": 2, "rope": {}}, [T_(("seq", 8)), T_((5,), I64)], "positions must be (seq,) int64"),
        (
            {"num_heads": 2, "rope": {}},
            [T_(("seq", 8)), T_(("seq",), I64), T_(("seq",), BOOL)],
            "then an optional",
        ),
        ({"num_heads": 3}, [T_(("seq", 8))], "or set head_dim"),
    ],
)
def test_attention_errors(args: dict[str, Any], types: list[TensorType], message: str) -> None:
    with pytest.raises((ShapeMismatch, ValueError)) as info:
        infer("multihead_attention", args, *types)
    assert message in str(info.value)


def test_rope_theta_accepts_an_int_and_refuses_junk() -> None:
    op = OPS["multihead_attention"].model_validate({"num_heads": 2, "rope": {"theta": 500000}})
    assert op.rope is not None and op.rope.theta == 500000.0  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="scale"):
        OPS["multihead_attention"].model_validate({"num_heads": 2, "rope": {"scale": 2}})


# ---- hand-written references --------------------------------------------------------------------


def rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float, dim: int) -> torch.Tensor:
    """RoPE as a complex rotation: feature pair (i, i + dim/2) is the complex number x_i + j·x_{i+dim/2},
    multiplied by exp(j · position · theta^(-2i/dim)); features past ``dim`` pass through."""
    half = dim // 2
    z = torch.complex(x[..., :half].double(), x[..., half:dim].double())
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / dim)
    angle = positions.double()[..., None] * freq  # (..., T, half)
    z = z * torch.polar(torch.ones_like(angle), angle)
    return torch.cat((z.real, z.imag, x[..., dim:].double()), dim=-1).float()


def reference_attention(
    x: torch.Tensor,
    m: MultiheadAttention,
    keep: torch.Tensor | None,
    *,
    causal: bool,
    window: int | None = None,
    positions: torch.Tensor | None = None,
    theta: float = 10000.0,
    rotary_dim: int | None = None,
) -> torch.Tensor:
    """Grouped-query attention with key/value heads repeated per group (transformers' repeat_kv), an
    explicit float mask and per-head loops."""
    b, t, _ = x.shape
    h, kv, d = m.num_heads, m.num_kv_heads, m.head_dim
    q = m.q_proj(x).view(b, t, h, d).transpose(1, 2)
    k = m.k_proj(x).view(b, t, kv, d).transpose(1, 2)
    v = m.v_proj(x).view(b, t, kv, d).transpose(1, 2)
    if m.rotary is not None:
        pos = positions if positions is not None else torch.arange(t).expand(b, t)
        q = rope_complex(q, pos[:, None], theta, rotary_dim or d)
        k = rope_complex(k, pos[:, None], theta, rotary_dim or d)
    k, v = (z.repeat_interleave(h // kv, dim=1) for z in (k, v))
    allowed = torch.ones(b, t, t, dtype=torch.bool)
    if causal:
        i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
        allowed &= j <= i
        if window is not None:
            allowed &= j > i - window
    if keep is not None:
        allowed &= keep[:, None, :]
    heads = []
    for head in range(h):
        scores = q[:, head] @ k[:, head].transpose(-1, -2) / math.sqrt(d)
        scores = scores.masked_fill(~allowed, float("-inf"))
        heads.append(torch.softmax(scores, -1) @ v[:, head])
    return m.o_proj(torch.cat(heads, dim=-1))


def padding(b: int, t: int) -> torch.Tensor:
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[0, :2] = False  # left padding
    keep[-1, t - 3 :] = False  # right padding
    return keep


@pytest.mark.parametrize(
    ("heads", "kv_heads", "rope", "window"),
    [
        (4, 4, None, None),
        (4, 2, None, None),
        (4, 1, None, None),
        (4, 2, {}, None),
        (6, 3, {"theta": 500.0}, 3),
    ],
    ids=["mha", "gqa", "mqa", "gqa_rope", "gqa_rope_window"],
)
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "causal_padding"])
def test_decoder_attention_matches_reference(
    heads: int, kv_heads: int, rope: dict[str, Any] | None, window: int | None, masked: bool
) -> None:
    e, b, t = 24, 3, 9
    args: dict[str, Any] = {"num_heads": heads, "num_kv_heads": kv_heads, "qkv": "llama", "causal": True}
    args.update({"bias": True, "rope": rope, "sliding_window": window})
    types = [T_(("seq", e))] + ([T_(("seq",), BOOL)] if masked else [])
    m = build(args, *types)
    x = torch.randn(b, t, e, generator=torch.Generator().manual_seed(0))
    keep = padding(b, t) if masked else None
    with torch.no_grad():
        got = m(x, keep) if masked else m(x)
        want = reference_attention(
            x, m, keep, causal=True, window=window, theta=(rope or {}).get("theta", 10000.0)
        )
    # compare real tokens only: a padded query's row may see no key at all (left padding under the
    # causal mask, right padding under a sliding window), where the reference gives NaN
    rows = keep if keep is not None else torch.ones(b, t, dtype=torch.bool)
    torch.testing.assert_close(got[rows], want[rows], rtol=1e-5, atol=1e-5)


def test_partial_rotary_and_positions_input() -> None:
    """rotary_dim < head_dim rotates the first features only; an int64 positions input replaces 0..T-1."""
    e, b, t = 32, 2, 7
    args = {"num_heads": 4, "num_kv_heads": 2, "qkv": "llama", "rope": {"rotary_dim": 4}, "causal": True}
    m = build(args, T_(("seq", e)), T_(("seq",), I64))
    x = torch.randn(b, t, e)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 2, 3, 4]])
    with torch.no_grad():
        got = m(x, positions)
        want = reference_attention(x, m, None, causal=True, positions=positions, rotary_dim=4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rope_is_relative() -> None:
    """Shifting every position by the same offset (a cache's past length) leaves attention unchanged."""
    m = build(
        {"num_heads": 2, "qkv": "llama", "rope": {}, "causal": True}, T_(("seq", 16)), T_(("seq",), I64)
    )
    x = torch.randn(2, 6, 16)
    base = torch.arange(6).expand(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(m(x, base + 37), m(x, base), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(m(x, base.flip(-1)), m(x, base), atol=1e-3)  # positions matter


def test_rotary_tables_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")  # a dev dependency: CI has it
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, rope_theta=10000.0)
    hf = LlamaRotaryEmbedding(cfg)
    positions = torch.randint(0, 500, (2, 11))
    q, k = torch.randn(2, 4, 11, 16), torch.randn(2, 4, 11, 16)
    cos, sin = hf(q, positions)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)
    rot = Rotary(16, 10000.0)
    ours_cos, ours_sin = rot.tables(positions, q.dtype)
    assert torch.equal(ours_cos, cos) and torch.equal(ours_sin, sin)
    c, s = ours_cos[:, None], ours_sin[:, None]
    assert torch.equal(rot(q, c, s), want_q) and torch.equal(rot(k, c, s), want_k)


# ---- SDPA path == matmul/softmax path -----------------------------------------------------------

SDPA_RTOL, SDPA_ATOL = 1e-5, 1e-6  # the tolerance the docs state


@pytest.mark.parametrize(
    "args",
    [
        {"num_heads": 4, "causal": True},
        {"num_heads": 4, "num_kv_heads": 2, "qkv": "llama", "causal": True, "rope": {}},
        {"num_heads": 4, "num_kv_heads": 1, "qkv": "llama", "causal": True, "sliding_window": 3},
        {"num_heads": 4, "qkv": "separate"},
    ],
    ids=["causal", "gqa_rope", "mqa_window", "bidirectional"],
)
@pytest.mark.parametrize("masked", [False, True])
def test_sdpa_equals_math(args: dict[str, Any], masked: bool) -> None:
    m = build(args, T_(("seq", 32)), *([T_(("seq",), BOOL)] if masked else []))
    b, t = 3, 11
    x = torch.randn(b, t, 32)
    keep = padding(b, t) if masked else None
    q, k, v = (
        m._heads(z, n)
        for z, n in zip(m._project((x,)), (m.num_heads, m.num_kv_heads, m.num_kv_heads), strict=True)
    )
    with torch.no_grad():
        sdpa, math_ = m._attend_sdpa(q, k, v, keep), m._attend_math(q, k, v, keep)
    torch.testing.assert_close(sdpa, math_, rtol=SDPA_RTOL, atol=SDPA_ATOL)
    if masked:  # a fully masked (left-padded, causal) row stays finite on both paths
        assert torch.isfinite(sdpa).all() and torch.isfinite(math_).all()


def test_dropout_training_uses_the_math_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With active attention dropout the weights are dropped by nn.Dropout (the seeded RNG stream of
    the math path); eval and dropout 0 go through SDPA."""
    m = build({"num_heads": 2, "dropout": 0.5, "causal": True}, T_(("seq", 8)))
    calls: list[str] = []
    for name in ("_attend_math", "_attend_sdpa"):
        real = getattr(m, name)
        monkeypatch.setattr(m, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    x = torch.randn(2, 5, 8)
    m.train()(x)
    m.eval()(x)
    assert calls == ["_attend_math", "_attend_sdpa"]
    torch.manual_seed(3)
    first = m.train()(x)
    torch.manual_seed(3)
    assert torch.equal(first, m(x))


def test_bf16_autocast_runs_grouped_rope() -> None:
    m = build(
        {"num_heads": 4, "num_kv_heads": 2, "qkv": "llama", "rope": {}, "causal": True}, T_(("seq", 16))
    )
    x = torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), m(x), rtol=0.05, atol=0.05)


# ---- RMSNorm ------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [None, 1e-5])
def test_rms_norm_equals_torch(eps: float | None) -> None:
    from specc.ops.norm import make_norm

    ours = make_norm("rms", ("seq", 12), eps)
    ref = nn.RMSNorm([12], eps=eps)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in ref.named_parameters()
    ]
    with torch.no_grad():
        ours.weight.normal_()  # type: ignore[operator]
        ref.weight.copy_(ours.weight)  # type: ignore[arg-type]
    x = torch.randn(3, 5, 12) * 4
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-6, atol=1e-6)
    image = make_norm("rms", (3, 4, 4), eps)  # whole-sample RMSNorm([C, H, W]) keeps working
    torch.testing.assert_close(image(torch.ones(2, 3, 4, 4)), torch.ones(2, 3, 4, 4), rtol=1e-5, atol=1e-5)


# ---- reshape over symbolic axes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "x", "out"),
    [
        (["seq", 32, -1], ("seq", 2048), ("seq", 32, 64)),
        ([-1, 2048], ("seq", 32, 64), ("seq", 2048)),
        (["seq", -1], ("seq", "n", 4), ("seq", "n*4")),
        ([16, 5, 5], (400,), (16, 5, 5)),
        (["seq", 4, 8], ("seq", 32), ("seq", 4, 8)),
    ],
)
def test_reshape_symbolic_shapes(shape: list[Any], x: tuple[Any, ...], out: tuple[Any, ...]) -> None:
    assert infer("reshape", {"shape": shape}, T_(x)).outputs[0].shape == out


@pytest.mark.parametrize(
    ("shape", "x", "message"),
    [
        (["tgt", -1], ("seq", 8), "'tgt' in shape ['tgt', -1] is not a symbolic axis"),
        ([4, 8], ("seq", 32), "the sizes differ"),
        (["seq", 3, -1], ("seq", 32), "cannot reshape"),
        (["seq", -1, -1], ("seq", 32), "at most one -1"),
    ],
)
def test_reshape_symbolic_errors(shape: list[Any], x: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ShapeMismatch, match=None) as info:
        infer("reshape", {"shape": shape}, T_(x))
    assert message in str(info.value)


def test_reshape_reads_named_axes_at_run_time() -> None:
    op = OPS["reshape"].model_validate({"shape": ["seq", 4, -1]})
    module = op.build([T_(("seq", 32))], op.infer([T_(("seq", 32))], InferContext()))
    for t in (3, 9):
        x = torch.randn(2, t, 32)
        assert torch.equal(module(x), x.reshape(2, t, 4, 8))
    back = OPS["reshape"].model_validate({"shape": [-1, 32]})
    module = back.build([T_(("seq", 4, 8))], back.infer([T_(("seq", 4, 8))], InferContext()))
    assert module(torch.zeros(2, 5, 4, 8)).shape == (2, 5, 32)


def test_heads_split_with_reshape_in_a_spec() -> None:
    """The issue's example: a (seq, 2048) projection split into 32 heads without per-head selects."""
    from specc.api import check_text

    graph = check_text(
        "specc: 1\nname: heads\ninputs: {x: {shape: [seq, 64]}}\nvars: {heads: 8}\n"
        "layers:\n  - linear: 64\n  - reshape: [seq, $heads, -1]\n  - reshape: [seq, -1]\n",
        "heads.yaml",
    )
    assert [n.outputs[0].shape for n in graph.nodes] == [("seq", 64), ("seq", 8, 8), ("seq", 64)]
