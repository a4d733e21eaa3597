"""``specc generate``: text (or token ids) from an exported language model or seq2seq model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from specc.cli.app import app, log_to_stderr, say
from specc.cli.spec_cmds import JsonOpt
from specc.errors import printable


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="an exported .onnx language model or seq2seq model")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="the text to continue (seq2seq: the source)")],
    max_new_tokens: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            "--max-new-tokens", "-n", help="tokens to generate at most (default 64; seq2seq: the model's)"
        ),
    ] = None,
    temperature: Annotated[
        float, typer.Option("--temperature", "-t", help="0 = greedy (default); > 0 samples")
    ] = 0.0,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="sample from the k most likely")] = None,  # noqa: UP045
    top_p: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option("--top-p", help="sample from the smallest set with this probability, in (0, 1]"),
    ] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="seed of the sampler")] = None,  # noqa: UP045
    stop: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option("--stop", help="stop when the text contains this string (repeatable)"),
    ] = None,
    beams: Annotated[int, typer.Option("--beams", help="beam search with N beams (greedy when 1)")] = 1,
    no_cache: Annotated[
        bool,
        typer.Option("--no-cache", help="re-run the whole prefix every step even if the model has a cache"),
    ] = False,
    tokenizer: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--tokenizer", help="tokenizer.json for a model exported without one"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate from a prompt with onnxruntime (no torch): greedy, sampling (temperature, top-k, top-p,
    seed) or beam search, until eos, a --stop string or --max-new-tokens. Models exported with
    --kv-cache run one step per token."""
    from specc.runtime.generate import Generator, Options

    log_to_stderr()
    options = Options(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        stop=tuple(stop or ()),
        beams=beams,
        use_cache=not no_cache,
    )
    options.check()  # before the model is loaded
    gen = Generator(model, tokenizer=tokenizer)
    stream = gen.stream(prompt, options)
    if as_json:
        for _ in stream:
            pass
        assert stream.result is not None
        print(json.dumps(stream.result.to_json(), indent=2))
        return
    seq2seq = gen.info.kind == "seq2seq"
    if not seq2seq:
        print(printable(prompt), end="", flush=True)
    for piece in stream:
        print(printable(piece), end="", flush=True)
    print()
    result = stream.result
    assert result is not None
    cache = "cache" if result.cached else "no cache"
    say(
        f"[{len(result.ids)} tokens, {result.stop_reason}, {result.tokens_per_s:.1f} tokens/s, {cache}]",
        err=True,
    )
