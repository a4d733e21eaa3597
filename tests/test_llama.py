"""specs/llama.yaml (issue 11): TinyLlama-1.1B's parameter tensors on the meta device, and the tiny
scale's logits equal to transformers.LlamaForCausalLM's with weights copied across."""

from __future__ import annotations

import pytest
import torch
from conftest import SPECS

from specc.nn import CompiledModel, build

transformers = pytest.importorskip("transformers")  # in the dev extra: CI runs these tests

LLAMA = SPECS / "llama.yaml"
TINY = dict(
    vocab_size=128,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)


def hf_config(**sizes: int) -> object:
    """LlamaConfig with TinyLlama's choices (RMSNorm eps 1e-5, RoPE theta 10000, no biases, untied head)."""
    return transformers.LlamaConfig(
        **sizes,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
    )


def hf_name(specc_name: str) -> str:
    """specc state_dict key -> transformers key: the same path under ``model.`` (the LM head is top-level)."""
    return specc_name if specc_name.startswith("lm_head.") else f"model.{specc_name}"


def test_tinyllama_parameters_match_transformers() -> None:
    cfg = hf_config(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
    )
    with torch.device("meta"):
        ref = transformers.LlamaForCausalLM(cfg)
    ours = build(LLAMA, device="meta")
    theirs = {n: tuple(p.shape) for n, p in ref.named_parameters()}
    mine = [(hf_name(n), tuple(p.shape)) for n, p in ours.named_parameters()]
    assert sum(p.numel() for p in ours.parameters()) == 1_100_048_384 == ours.graph.params
    assert sum(p.numel() for p in ref.parameters()) == 1_100_048_384
    assert dict(mine) == theirs and len(mine) == len(theirs)  # same names, same shapes
    # ordered: transformers' order within a layer with each norm moved next to what it feeds
    expected = []
    for name in theirs:
        parts = name.split(".")
        if len(parts) > 3 and parts[3] in ("input_layernorm", "post_attention_layernorm"):
            continue
        if name.endswith("self_attn.q_proj.weight"):
            expected.append(name.replace("self_attn.q_proj", "input_layernorm"))
        if name.endswith("mlp.gate_proj.weight"):
            expected.append(name.replace("mlp.gate_proj", "post_attention_layernorm"))
        expected.append(name)
    assert [n for n, _ in mine] == expected
    assert [s for _, s in mine] == [theirs[n] for n in expected]


def copied(model: CompiledModel, attn: str) -> torch.nn.Module:
    cfg = hf_config(**TINY)
    cfg._attn_implementation = attn
    ref = transformers.LlamaForCausalLM(cfg).eval()
    state = {hf_name(n): p for n, p in model.state_dict().items()}
    ref.load_state_dict(state, strict=True)
    return ref  # type: ignore[no-any-return]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_tiny_logits_equal_transformers_with_padding(attn: str) -> None:
    """Left padding (row 0), right padding (row 1), none (row 2), at T = 5 and 17.

    Only real tokens are compared: a padded position's logits are never used (the loss and
    generation skip them), and what fills them differs by design. A left-padded query under the
    causal mask sees no key at all; specc averages the values there (a finite row), transformers'
    SDPA path unmasks such rows to avoid NaN (its eager path matches specc's)."""
    model = build(LLAMA, scale="tiny", seed=0).eval()
    ref = copied(model, attn)
    gen = torch.Generator().manual_seed(0)
    for t in (5, 17):
        ids = torch.randint(0, TINY["vocab_size"], (3, t), generator=gen)
        keep = torch.ones(3, t, dtype=torch.bool)
        keep[0, :2] = False
        keep[1, t - 2 :] = False
        with torch.no_grad():
            got = model(ids, keep)
            want = ref(input_ids=ids, attention_mask=keep.long()).logits
        scale = want[keep].abs().max()
        assert ((got - want)[keep].abs().max() / scale).item() <= 1e-5, t
        assert (got[2] - want[2]).abs().max() / scale <= 1e-5  # the unpadded row, every position


def test_left_padding_changes_nothing_for_real_tokens() -> None:
    """Rotary attention depends on relative positions only: a left-padded sequence gives the real
    tokens the logits of the unpadded one, although their absolute positions moved by the padding."""
    model = build(LLAMA, scale="tiny", seed=0).eval()
    ids = torch.randint(0, TINY["vocab_size"], (1, 6), generator=torch.Generator().manual_seed(1))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    keep = torch.tensor([[False] * 3 + [True] * 6])
    with torch.no_grad():
        alone = model(ids, torch.ones(1, 6, dtype=torch.bool))
        shifted = model(padded, keep)[:, 3:]
    torch.testing.assert_close(shifted, alone, rtol=1e-5, atol=1e-5)


def test_training_step_matches_transformers_gradients() -> None:
    """Train mode (dropout 0: the SDPA path) and backward agree too, through the copied weights."""
    model = build(LLAMA, scale="tiny", seed=0).train()
    ref = copied(model, "eager").train()
    ids = torch.randint(0, TINY["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(2))
    keep = torch.ones(2, 9, dtype=torch.bool)
    model(ids, keep).logsumexp(-1).mean().backward()
    ref(input_ids=ids, attention_mask=keep.long()).logits.logsumexp(-1).mean().backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None
        torch.testing.assert_close(p.grad, grads[hf_name(name)].grad, rtol=1e-4, atol=1e-7)


def test_docs_mistral_example_equals_mistral() -> None:
    """docs/spec-language.md's Mistral-style decoder: Mistral-7B's parameter count, and at its tiny
    scale the logits of transformers' MistralForCausalLM (sliding window 8 < T = 17, padding mask)."""
    from conftest import ROOT

    from specc.api import check_text

    text = (ROOT / "docs" / "spec-language.md").read_text()
    example = text.split("<!-- mistral-example -->\n```yaml\n", 1)[1].split("```", 1)[0]
    assert check_text(example, "mistral.yaml").params == 7_241_732_096
    model = build(check_text(example, "mistral.yaml", scale="tiny"), seed=0).eval()
    cfg = transformers.MistralConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=8,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    cfg._attn_implementation = "eager"
    ref = transformers.MistralForCausalLM(cfg).eval()
    ref.load_state_dict({hf_name(n): p for n, p in model.state_dict().items()}, strict=True)
    ids = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(3))
    keep = torch.ones(2, 17, dtype=torch.bool)
    keep[0, :3] = False
    with torch.no_grad():
        got, want = model(ids, keep), ref(input_ids=ids, attention_mask=keep.long()).logits
    assert ((got - want)[keep].abs().max() / want[keep].abs().max()).item() <= 1e-5
    no_window = build(check_text(example, "m.yaml", sets=["window=64"], scale="tiny"), seed=0).eval()
    with torch.no_grad():  # the window matters at this length
        assert (no_window(ids, keep) - got)[keep].abs().max() > 1e-4
