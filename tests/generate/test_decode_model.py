"""Step-by-step decoding in PyTorch (specc.nn.decode): every position-mixing layer carries its state,
and decoding a sequence in chunks gives what the uncached model gives on the whole of it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lm_specs import DECODERS, NOT_DECODABLE, random_inputs, spec_file

from specc.errors import BuildError
from specc.nn import build
from specc.nn.decode import DecodeModel, check_decoding, find_roles, step_feeds


def _build(tmp_path: Path, name: str, text: str) -> torch.nn.Module:
    model = build(spec_file(tmp_path, name, text), seed=3).eval()
    torch.manual_seed(4)
    with torch.no_grad():  # every parameter random (biases too), so that a mixed-up cache shows
        for p in model.parameters():
            p.normal_(0, 0.4)
    return model


def _decode(decoder: DecodeModel, full: dict[str, torch.Tensor], chunks: list[int]) -> torch.Tensor:
    """The logits of every chunk, concatenated along the sequence axis."""
    batch = next(iter(full.values())).shape[0]
    past = decoder.empty_cache(batch)
    outs, start = [], 0
    with torch.inference_mode():
        for length in chunks:
            result = decoder(*step_feeds(decoder.signature, full, start, start + length), *past)
            n_out = len(result) - len(past)
            outs.append(result[0])
            past = list(result[n_out:])
            start += length
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("name", sorted(DECODERS))
@pytest.mark.parametrize("chunks", [[1] * 7, [4, 1, 2], [7]])
def test_chunks_equal_the_whole_sequence(tmp_path: Path, name: str, chunks: list[int]) -> None:
    model = _build(tmp_path, name, DECODERS[name])
    decoder = DecodeModel(model)
    full = random_inputs(model.graph, batch=3, length=sum(chunks), seed=len(chunks))
    with torch.inference_mode():
        ref = model(*[full[n] for n in model.graph.inputs])
    got = _decode(decoder, full, chunks)
    real = full.get("mask", torch.ones(ref.shape[:2], dtype=torch.bool))
    diff = (got - ref).abs()[real]  # padded queries see no key: their value is not a token's
    assert float(diff.max()) <= 1e-5 + 1e-5 * float(ref.abs().max()), f"max |Δ| {float(diff.max())}"
    check_decoding(decoder, full, chunks)  # every node, not only the logits


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_empty_cache_is_the_plain_model(tmp_path: Path, name: str) -> None:
    """A past of length 0 runs the prompt exactly as the uncached forward does."""
    model = _build(tmp_path, name, DECODERS[name])
    decoder = DecodeModel(model)
    full = random_inputs(model.graph, batch=2, length=6)
    with torch.inference_mode():
        ref = model(*[full[n] for n in model.graph.inputs])
        got = decoder(*[full[n] for n in model.graph.inputs], *decoder.empty_cache(2))[0]
    assert torch.equal(got, ref)


def test_signature_names_shapes_and_roles(tmp_path: Path) -> None:
    model = _build(tmp_path, "m", DECODERS["separate_gqa_window_mask"])
    sig = DecodeModel(model).signature
    assert sig.roles.tokens == "tokens" and sig.roles.attention_mask == "mask"
    assert sig.max_positions == 24  # the learned position table
    assert [(t.name, t.shape) for t in sig.inputs] == [
        ("tokens", ("batch", "seq")),
        ("mask", ("batch", "total_seq")),  # the key mask spans past and new tokens
        ("past_key.0", ("batch", 2, "past_seq", 4)),  # 2 key/value heads of 16 / 4
        ("past_value.0", ("batch", 2, "past_seq", 4)),
        ("past_key.1", ("batch", 4, "past_seq", 4)),
        ("past_value.1", ("batch", 4, "past_seq", 4)),
    ]
    assert sig.output_names == [
        "logits",
        "present_key.0",
        "present_value.0",
        "present_key.1",
        "present_value.1",
    ]
    assert sig.outputs[1].shape == ("batch", 2, "total_seq", 4)
    rec = DecodeModel(_build(tmp_path, "r", DECODERS["recurrent_dot_product"])).signature
    assert [c.input for c in rec.cache] == [
        "past_hidden.0",
        "past_key.1",
        "past_hidden.2",
        "past_hidden.3",
        "past_cell.3",
    ]
    assert rec.cache[0].past_shape == ("batch", 2, 16) and rec.max_positions is None


@pytest.mark.parametrize("name", sorted(NOT_DECODABLE))
def test_layers_that_cannot_step_are_named(tmp_path: Path, name: str) -> None:
    text, words = NOT_DECODABLE[name]
    model = _build(tmp_path, name, text)
    with pytest.raises(BuildError, match=words.replace("(", r"\(")) as err:
        decoder = DecodeModel(model)
        check_decoding(decoder, random_inputs(model.graph, batch=2, length=6), [3, 1, 2])
    assert f"{name}.yaml:" in str(err.value)  # the spec location of the node


def test_not_a_causal_lm(tmp_path: Path) -> None:
    from conftest import SPECS

    with pytest.raises(BuildError, match="is a seq2seq model"):
        DecodeModel(build(SPECS / "seq2seq_attention.yaml"))
    with pytest.raises(BuildError, match="'lenet' is not a language model"):
        find_roles(build(SPECS / "lenet.yaml").graph)
    assert find_roles(build(SPECS / "seq2seq_attention.yaml").graph).source_mask == "src_mask"
