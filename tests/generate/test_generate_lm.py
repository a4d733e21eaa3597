"""specc generate / specc.runtime.generate on causal language models: the char LM trained by
``specc train specs/lstm_lm.yaml --data text:stdlib``, GPT-2 (tiny) and LLaMA (tiny), with the cache
equal token for token to an uncached greedy decode; sampling; a Hugging Face tokenizer; errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import SPECS, run_cli
from lm_specs import one_thread, torch_greedy

from specc.errors import UsageError, printable
from specc.export import export_spec
from specc.export.source import load_source
from specc.nn import build
from specc.runtime.generate import Generator, Options

CHARLM_SETS = ["vocab=128", "embed=16", "hidden=32"]


@pytest.fixture(scope="module")
def charlm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A real (tiny, short) specc train run on stdlib text, exported with and without a cache."""
    root = tmp_path_factory.mktemp("charlm")
    run = root / "run"
    steps = [
        "train.epochs=null",
        "train.max_steps=60",
        "train.lr=0.02",
        "train.batch_size=32",
        "train.seq_len=20",
    ]
    sets = [a for s in [*CHARLM_SETS, *steps] for a in ("--set", s)]
    with one_thread():
        res = run_cli(
            "train", str(SPECS / "lstm_lm.yaml"), "--data", "text:stdlib", "--out", str(run), "--quiet", *sets
        )
        assert res.code == 0, res.err
        for name, extra in (("plain", []), ("cached", ["--kv-cache"])):
            res = run_cli(
                "export",
                str(SPECS / "lstm_lm.yaml"),
                "--weights",
                str(run),
                "--out",
                str(root / f"{name}.onnx"),
                *[a for s in CHARLM_SETS for a in ("--set", s)],
                *extra,
            )
            assert res.code == 0, res.err
    return {"run": run, "plain": root / "plain.onnx", "cached": root / "cached.onnx"}


def test_char_lm_cache_equals_uncached_greedy(charlm: dict[str, Path]) -> None:
    cached, plain = Generator(charlm["cached"]), Generator(charlm["plain"])
    assert cached.cached and not plain.cached
    assert [c.input for c in cached.info.cache] == ["past_hidden.0", "past_cell.0"]
    options = Options(max_new_tokens=40)
    with_cache = cached.generate("The ", options)
    assert with_cache.cached and len(with_cache.ids) == 40 and with_cache.stop_reason == "length"
    assert plain.generate("The ", options).ids == with_cache.ids  # the file without a cache
    assert cached.generate("The ", Options(max_new_tokens=40, use_cache=False)).ids == with_cache.ids
    vocab = cached.codec.vocab  # type: ignore[attr-defined]
    model = load_source(SPECS / "lstm_lm.yaml", weights=charlm["run"], sets=tuple(CHARLM_SETS)).model.eval()
    prompt = [vocab.index(c) for c in "The "]
    with one_thread():
        assert torch_greedy(model, prompt, 40, blocked=len(vocab)) == with_cache.ids  # PyTorch, no cache
    assert with_cache.text == "".join(vocab[i] for i in with_cache.ids)


def test_sampling_is_reproducible_and_filters(charlm: dict[str, Path]) -> None:
    gen = Generator(charlm["cached"])
    greedy = gen.generate("import ", Options(max_new_tokens=30)).ids
    sampled = {
        seed: gen.generate("import ", Options(max_new_tokens=30, temperature=1.0, seed=seed)).ids
        for seed in range(4)
    }
    assert gen.generate("import ", Options(max_new_tokens=30, temperature=1.0, seed=2)).ids == sampled[2]
    assert len({tuple(v) for v in sampled.values()}) > 1  # the seed matters
    # the cache does not change what is drawn
    assert (
        gen.generate("import ", Options(max_new_tokens=30, temperature=1.0, seed=2, use_cache=False)).ids
        == sampled[2]
    )
    # top-k 1 and a tiny top-p keep only the most likely token: greedy, whatever the seed
    assert gen.generate("import ", Options(max_new_tokens=30, temperature=2.0, top_k=1, seed=5)).ids == greedy
    assert (
        gen.generate("import ", Options(max_new_tokens=30, temperature=2.0, top_p=1e-9, seed=6)).ids == greedy
    )
    assert "" not in [gen.codec.decode([i]) for v in sampled.values() for i in v]  # padding never drawn


def test_stop_string_and_stream(charlm: dict[str, Path]) -> None:
    gen = Generator(charlm["cached"])
    sampled = Options(max_new_tokens=40, temperature=1.0, seed=0)
    full = gen.generate("The ", sampled).text
    # a stop string whose first occurrence is a few characters in
    start = next(i for i in range(5, len(full) - 1) if full[i].strip() and full.index(full[i : i + 2]) == i)
    stop = full[start : start + 2]
    with_stop = Options(max_new_tokens=40, temperature=1.0, seed=0, stop=(stop,))
    cut = gen.generate("The ", with_stop)
    assert cut.stop_reason == "stop" and cut.text == full[:start]
    stream = gen.stream("The ", with_stop)
    pieces = list(stream)
    assert "".join(pieces) == cut.text and len(pieces) > 1  # streamed piece by piece
    assert stream.result is not None and stream.result.ids == cut.ids


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (Options(top_p=0.0, temperature=1), "top_p must be in (0, 1], got 0.0"),
        (Options(top_p=1.5, temperature=1), "top_p must be in (0, 1], got 1.5"),
        (Options(top_k=5), "top_k and top_p filter a sampled distribution: give a temperature > 0"),
        (Options(temperature=-1), "temperature must be >= 0 (0 = greedy)"),
        (Options(beams=2, temperature=1), "beam search is deterministic"),
        (Options(max_new_tokens=0), "max_new_tokens must be in 1.."),
        (Options(stop=("",)), "a stop string must not be empty"),
    ],
)
def test_bad_options(charlm: dict[str, Path], options: Options, words: str) -> None:
    with pytest.raises(UsageError) as err:
        Generator(charlm["cached"]).generate("The ", options)
    assert words in str(err.value)


def test_bad_prompts_and_models(charlm: dict[str, Path], tmp_path: Path) -> None:
    gen = Generator(charlm["cached"])
    with pytest.raises(
        UsageError,
        match=r"the prompt has 2 character\(s\) outside the model's vocabulary of 96: '\\x1b', 'é'",
    ):
        gen.generate("caf\x1bé")
    with pytest.raises(UsageError, match="the model is character-level"):
        Generator(charlm["cached"], tokenizer=charlm["cached"])
    res = run_cli("generate", str(charlm["cached"]), "--prompt", "x", "--top-p", "2", "--temperature", "1")
    assert res.code == 2 and "top_p must be in (0, 1], got 2.0" in res.err
    res = run_cli("generate", str(charlm["cached"]), "--prompt", "\x1b[31mred")
    assert res.code == 2 and "outside the model's vocabulary" in res.err and "\x1b" not in res.err


def test_cli_prints_prompt_and_continuation(charlm: dict[str, Path]) -> None:
    res = run_cli("generate", str(charlm["cached"]), "--prompt", "The ", "-n", "20")
    assert res.code == 0, res.err
    expected = Generator(charlm["cached"]).generate("The ", Options(max_new_tokens=20)).text
    assert res.out == printable("The " + expected) + "\n"
    assert "[20 tokens, length," in res.err and "cache]" in res.err
    res = run_cli("generate", str(charlm["plain"]), "--prompt", "The ", "-n", "20", "--json")
    data = json.loads(res.out)
    assert data["text"] == expected and data["cached"] is False and data["new_tokens"] == 20


# ---- GPT-2 and LLaMA (tiny, freshly initialised) ------------------------------------------------


@pytest.mark.parametrize("spec", ["gpt2_small"])  # LLaMA: test_llama_cached_generation_equals_transformers
def test_decoders_cache_equals_uncached_greedy(tmp_path: Path, spec: str) -> None:
    out = tmp_path / f"{spec}.onnx"
    with one_thread():
        export_spec(SPECS / f"{spec}.yaml", out, scale="tiny", kv_cache=True)
    gen = Generator(out)
    prompt = "5 17 3 99 42"
    greedy = gen.generate(prompt, Options(max_new_tokens=20))
    assert greedy.cached and len(greedy.ids) == 20
    assert gen.generate(prompt, Options(max_new_tokens=20, use_cache=False)).ids == greedy.ids
    with one_thread():
        model = build(SPECS / f"{spec}.yaml", scale="tiny").eval()
        assert torch_greedy(model, [5, 17, 3, 99, 42], 20) == greedy.ids
    # beam search reorders the cache with its beams: the same as without a cache
    beams = gen.generate(prompt, Options(max_new_tokens=6, beams=3))
    assert beams.ids == gen.generate(prompt, Options(max_new_tokens=6, beams=3, use_cache=False)).ids
    if spec == "gpt2_small":  # 32 positions: a 30-token prompt leaves room for 2
        long = gen.generate(" ".join(["7"] * 30), Options(max_new_tokens=10))
        assert len(long.ids) == 2 and long.stop_reason == "max_positions"
        with pytest.raises(UsageError, match="the prompt is 32 tokens; the model takes at most 32"):
            gen.generate(" ".join(["7"] * 32))
    with pytest.raises(UsageError, match="prompt must be token ids separated by spaces"):
        gen.generate("hello")
    with pytest.raises(UsageError, match=r"prompt token id 128 is outside the model's vocabulary 0..127"):
        gen.generate("1 128")


LLAMA_SETS = {
    "vocab": 128,
    "max_positions": 64,
    "hidden": 32,
    "num_layers": 2,
    "num_heads": 4,
    "num_kv_heads": 2,  # grouped-query attention: 2 query heads share each key/value head
    "intermediate": 64,
}


def test_llama_cached_generation_equals_transformers(tmp_path: Path) -> None:
    """specs/llama.yaml at a tiny --set size (GQA + RoPE) exported with --kv-cache by the CLI: greedy
    decoding through the cache gives transformers' LlamaForCausalLM.generate (its own key/value cache,
    the same weights) token for token, and the CLI without the cache gives the same text."""
    transformers = pytest.importorskip("transformers")
    from test_llama import TINY, hf_config, hf_name

    sets = [a for k, v in LLAMA_SETS.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "llama.onnx"
    with one_thread():
        res = run_cli(
            "export", str(SPECS / "llama.yaml"), *sets, "--out", str(out), "--kv-cache", "--seed", "3"
        )
    assert res.code == 0, res.err
    gen = Generator(out)
    assert [c.kind for c in gen.info.cache] == ["key", "value"] * 2
    assert all(c.shape[1] == 2 for c in gen.info.cache)  # (batch, kv heads, past_seq, head_dim)
    prompt = [5, 17, 3, 99, 42, 7]
    ours = gen.generate(" ".join(map(str, prompt)), Options(max_new_tokens=24))
    assert ours.cached and len(ours.ids) == 24
    model = build(SPECS / "llama.yaml", sets=tuple(f"{k}={v}" for k, v in LLAMA_SETS.items()), seed=3).eval()
    ref = transformers.LlamaForCausalLM(hf_config(**TINY)).eval()  # the same sizes as LLAMA_SETS
    ref.load_state_dict({hf_name(n): p for n, p in model.state_dict().items()}, strict=True)
    ids = torch.tensor([prompt])
    with one_thread(), torch.no_grad():
        want = ref.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=24,
            do_sample=False,
            use_cache=True,
            eos_token_id=None,
            pad_token_id=0,
        )
    assert want[0, len(prompt) :].tolist() == ours.ids
    with one_thread():
        assert torch_greedy(model, prompt, 24) == ours.ids  # specc's PyTorch model, no cache
    # beam search reorders the grouped key/value cache with its beams: the same as without a cache
    beams = gen.generate("5 17 3", Options(max_new_tokens=6, beams=3))
    assert beams.ids == gen.generate("5 17 3", Options(max_new_tokens=6, beams=3, use_cache=False)).ids
    res = run_cli(
        "generate",
        str(out),
        "--prompt",
        " ".join(map(str, prompt)),
        "--max-new-tokens",
        "24",
        "--no-cache",
        "--json",
    )
    assert res.code == 0, res.err
    assert json.loads(res.out)["ids"] == ours.ids


def test_hugging_face_tokenizer(tmp_path: Path) -> None:
    """A byte-level BPE tokenizer.json built here (no download) goes into the metadata at export and
    turns prompts into ids and ids into text at generation; streaming never splits a character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=280,
        special_tokens=["[UNK]", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(["the cat sat on the mat", "a dog sat on a log, café"] * 20, trainer=trainer)
    file = tmp_path / "tokenizer.json"
    tok.save(str(file))
    out = tmp_path / "g.onnx"
    with one_thread():
        res = run_cli(
            "export", str(SPECS / "gpt2_small.yaml"), "--scale", "tiny", "--set", "vocab=300", "--out", str(out),
            "--kv-cache", "--tokenizer", str(file),
        )  # fmt: skip
    assert res.code == 0, res.err
    gen = Generator(out)
    assert gen.codec.kind == "huggingface" and (gen.info.bos_id, gen.info.eos_id) == (1, 2)
    result = gen.generate("the café", Options(max_new_tokens=12, temperature=1.0, seed=3))
    assert result.prompt_ids == tok.encode("the café").ids
    assert result.text == tok.decode(result.ids)
    pieces = list(gen.stream("the café", Options(max_new_tokens=12, temperature=1.0, seed=3)))
    assert "".join(pieces) == result.text and not any(p.endswith("\ufffd") for p in pieces[:-1])
    assert (
        Generator(out, tokenizer=file).generate("the cat", Options(max_new_tokens=4)).ids
        == gen.generate("the cat", Options(max_new_tokens=4)).ids
    )
    size = tok.get_vocab_size()
    other = tmp_path / "other.json"
    tok.add_tokens(["zebra"])
    tok.save(str(other))
    with pytest.raises(UsageError, match="is not the one the model was exported with"):
        Generator(out, tokenizer=other)
    res = run_cli(
        "export", str(SPECS / "lenet.yaml"), "--out", str(tmp_path / "l.onnx"), "--tokenizer", str(file)
    )
    assert res.code == 2 and "--tokenizer is for language models" in res.err
    res = run_cli(
        "export",
        str(SPECS / "gpt2_small.yaml"),
        "--scale",
        "tiny",
        "--out",
        str(tmp_path / "s.onnx"),
        "--tokenizer",
        str(file),
    )
    assert res.code == 2 and f"has {size} tokens but the model's logits cover 128" in res.err


def test_runtime_does_not_import_torch(charlm: dict[str, Path]) -> None:
    import subprocess

    code = (
        "import sys; from specc.runtime.generate import Generator, Options; "
        f"print(Generator({str(charlm['cached'])!r}).generate('The ', Options(max_new_tokens=5)).text); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.rstrip("\n")) >= 1
