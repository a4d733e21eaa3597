"""Text generation with an exported model, on onnxruntime only (no torch).

>>> from specc.runtime.generate import Generator, Options
>>> gen = Generator("lm.onnx")                      # reads specc.generation from the metadata
>>> gen.generate("The ", Options(max_new_tokens=40)).text                    # greedy
>>> gen.generate("The ", Options(temperature=0.8, top_k=20, top_p=0.9, seed=0)).text
>>> for piece in gen.stream("The ", Options(max_new_tokens=40)): print(piece, end="")

Causal language models decode from a prompt: with a key/value cache (``specc export --kv-cache``)
the prompt runs once and each new token is one step over that token alone; without one (or with
``use_cache=False``) every step re-runs the whole prefix. Both give the same tokens. Seq2seq models
take the prompt as the source and decode from the bos token, re-running the decoder on the target
prefix (greedy, sampling, or beam search with ``beams > 1``). Generation stops at the eos token,
at a stop string, after ``max_new_tokens`` or at the model's longest sequence.

Token selection: greedy (``temperature=0``, the default) takes the most likely token (the first of
equals); sampling divides the logits by ``temperature``, keeps the ``top_k`` most likely, then the
smallest set whose probability reaches ``top_p``, and draws with ``numpy.random.default_rng(seed)``.
Ids the model cannot turn into text (beyond the vocabulary, the padding id) are never chosen.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from specc.contracts.generation import GenerationInfo
from specc.contracts.onnx_metadata import key
from specc.errors import UsageError
from specc.runtime.model import Model, load
from specc.runtime.tokenize import MAX_PROMPT_CHARS, Chars, Codec, HuggingFace, codec_for

MAX_NEW_TOKENS = 1 << 20
MAX_BEAMS = 64
DEFAULT_NEW_TOKENS = 64

StopReason = Literal["eos", "stop", "length", "max_positions"]


@dataclass(frozen=True)
class Options:
    """How to generate (see the module notes)."""

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    beams: int = 1
    length_penalty: float = 1.0
    use_cache: bool = True

    def check(self) -> None:
        """Refuse options that make no sense, before anything runs."""
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            raise UsageError(f"max_new_tokens must be in 1..{MAX_NEW_TOKENS}, got {self.max_new_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise UsageError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"top_k must be a positive integer, got {self.top_k}")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if (self.top_k is not None or self.top_p is not None) and self.temperature == 0:
            raise UsageError(
                "top_k and top_p filter a sampled distribution: give a temperature > 0 (0 = greedy)"
            )
        if not 1 <= self.beams <= MAX_BEAMS:
            raise UsageError(f"beams must be in 1..{MAX_BEAMS}, got {self.beams}")
        if self.beams > 1 and self.temperature > 0:
            raise UsageError("beam search is deterministic: use beams or a temperature, not both")
        if not math.isfinite(self.length_penalty):
            raise UsageError(f"length_penalty must be finite, got {self.length_penalty}")
        if any(not s for s in self.stop):
            raise UsageError("a stop string must not be empty")


@dataclass
class Generation:
    """The result: the prompt, the new token ids and their text, and why generation stopped."""

    prompt: str
    prompt_ids: list[int]
    ids: list[int]
    text: str
    stop_reason: StopReason
    cached: bool
    seconds: float = 0.0
    score: float | None = None

    @property
    def tokens_per_s(self) -> float:
        return len(self.ids) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "prompt_ids": self.prompt_ids,
            "text": self.text,
            "ids": self.ids,
            "stop_reason": self.stop_reason,
            "cached": self.cached,
            "new_tokens": len(self.ids),
            "seconds": round(self.seconds, 4),
            "tokens_per_s": round(self.tokens_per_s, 2),
            **({"score": self.score} if self.score is not None else {}),
        }


KEY_GENERATION = key("generation")


def read_info(model: Model) -> tuple[GenerationInfo, str | None]:
    """``specc.generation`` and the ``specc.tokenizer`` text of a loaded model (its typed metadata)."""
    info = model.info.generation
    if info is None:
        what = f"'{model.path.name}'" + (f" ({model.task})" if model.task else "")
        raise UsageError(
            f"{what} cannot generate: its metadata has no '{KEY_GENERATION}'. Causal language models "
            "and seq2seq models get it when exported (specc export ...; --kv-cache for step-by-step "
            "decoding); other models give predictions (specc predict)"
        )
    return info, model.info.tokenizer


class Generator:
    """Generates with one loaded model; see the module notes."""

    def __init__(self, model: Model | str | os.PathLike[str], *, tokenizer: str | Path | None = None) -> None:
        self.model = model if isinstance(model, Model) else load(model)
        self.info, stored = read_info(self.model)
        self.codec: Codec = codec_for(self.info, stored, tokenizer)
        inputs = {s.name for s in self.model.inputs}
        outputs = {s.name for s in self.model.outputs}
        info = self.info
        wanted_in = [info.tokens, info.attention_mask, info.positions, info.source, info.source_mask]
        wanted_in += [c.input for c in info.cache]
        wanted_out = [info.logits, *(c.output for c in info.cache)]
        missing = [n for n in wanted_in if n is not None and n not in inputs]
        missing += [n for n in wanted_out if n not in outputs]
        if missing:
            raise UsageError(
                f"model metadata '{KEY_GENERATION}' names {', '.join(missing)}, which the graph of "
                f"'{self.model.path.name}' does not have"
            )
        extra = inputs - {n for n in wanted_in if n is not None}
        if extra:
            raise UsageError(
                f"the model takes inputs that generation does not feed: {', '.join(sorted(extra))}"
            )
        self._blocked = self._blocked_ids()

    @property
    def cached(self) -> bool:
        """Whether the model carries a key/value cache (or recurrent states) between steps."""
        return bool(self.info.cache)

    def _blocked_ids(self) -> NDArray[np.bool_]:
        """Ids never chosen: beyond what the codec can write, the padding id (unless it is eos)."""
        info = self.info
        blocked = np.zeros(info.vocab_size, dtype=bool)
        size = self.codec.size if isinstance(self.codec, Chars | HuggingFace) else info.vocab_size
        blocked[size:] = True
        if info.pad_id is not None and info.pad_id != info.eos_id:
            blocked[info.pad_id] = True
        if info.kind == "seq2seq" and info.bos_id is not None and info.bos_id != info.eos_id:
            blocked[info.bos_id] = True
        return blocked

    # -- prompt -----------------------------------------------------------------------------------

    def encode(self, prompt: str) -> list[int]:
        """The prompt's ids, checked against the model's vocabulary."""
        if len(prompt) > MAX_PROMPT_CHARS:
            raise UsageError(f"the prompt is longer than {MAX_PROMPT_CHARS:,} characters")
        ids = self.codec.encode(prompt)
        info = self.info
        bad = [i for i in ids if not 0 <= i < info.vocab_size]
        if bad:
            raise UsageError(
                f"prompt token id {bad[0]} is outside the model's vocabulary 0..{info.vocab_size - 1}"
            )
        if info.kind == "causal_lm" and not ids:
            if info.bos_id is None:
                raise UsageError("the prompt is empty and the model has no bos token to start from")
            ids = [info.bos_id]
        if info.kind == "seq2seq" and not ids:
            raise UsageError("the source prompt is empty")
        return ids

    def limit(self, prompt_ids: Sequence[int], options: Options) -> tuple[int, StopReason]:
        """How many tokens to generate at most, and the stop reason when that many are generated."""
        info = self.info
        wanted = options.max_new_tokens or info.max_new_tokens or DEFAULT_NEW_TOKENS
        if info.kind == "seq2seq" or info.max_positions is None:
            return wanted, "length"
        room = info.max_positions - len(prompt_ids)
        if room < 1:
            raise UsageError(
                f"the prompt is {len(prompt_ids)} tokens; the model takes at most {info.max_positions} "
                "in all, leaving no room to generate"
            )
        return (wanted, "length") if wanted <= room else (room, "max_positions")

    # -- generating ---------------------------------------------------------------------------------

    def generate(self, prompt: str, options: Options = Options()) -> Generation:
        """Generate a continuation (causal LM) or a target sequence (seq2seq) for ``prompt``."""
        stream = self.stream(prompt, options)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def stream(self, prompt: str, options: Options = Options()) -> Stream:
        """Like :meth:`generate`, yielding the text as it grows (beam search: all at the end)."""
        options.check()
        prompt_ids = self.encode(prompt)
        return Stream(self, prompt, prompt_ids, options, *self.limit(prompt_ids, options))

    def stepper(self, prompt_ids: Sequence[int], batch: int, use_cache: bool) -> Stepper:
        if self.info.kind == "seq2seq":
            return Seq2seqStepper(self.model.session, self.info, prompt_ids, batch)
        return CausalStepper(self.model.session, self.info, prompt_ids, batch, use_cache and self.cached)

    def select(self, logits: NDArray[Any], options: Options, rng: np.random.Generator) -> int:
        """The next token from one row of logits."""
        z = np.where(self._blocked, -np.inf, logits.astype(np.float64))
        if options.temperature == 0:
            return int(np.argmax(z))
        z = z / options.temperature
        if options.top_k is not None and options.top_k < z.size:
            kth = np.partition(z, -options.top_k)[-options.top_k]
            z = np.where(z < kth, -np.inf, z)
        probs = _softmax(z)
        if options.top_p is not None and options.top_p < 1:
            order = np.argsort(-probs, kind="stable")
            before = np.cumsum(probs[order]) - probs[order]  # mass of the more likely tokens
            keep = np.zeros_like(probs, dtype=bool)
            keep[order[before < options.top_p]] = True
            probs = np.where(keep, probs, 0.0)
            probs /= probs.sum()
        return int(rng.choice(probs.size, p=probs))

    def log_probs(self, logits: NDArray[Any]) -> NDArray[np.float64]:
        z = np.where(self._blocked, -np.inf, logits.astype(np.float64))
        z = z - z.max(axis=-1, keepdims=True)
        out: NDArray[np.float64] = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        return out


def _softmax(z: NDArray[np.float64]) -> NDArray[np.float64]:
    e = np.exp(z - z.max())
    out: NDArray[np.float64] = e / e.sum()
    return out


class Stream:
    """Iterates over the generated text in pieces; ``result`` holds the :class:`Generation` once done."""

    def __init__(
        self,
        gen: Generator,
        prompt: str,
        prompt_ids: list[int],
        options: Options,
        limit: int,
        reason: StopReason,
    ) -> None:
        self.gen, self.prompt, self.prompt_ids, self.options = gen, prompt, prompt_ids, options
        self.limit, self.limit_reason = limit, reason
        self.result: Generation | None = None

    def __iter__(self) -> Iterator[str]:
        limit, reason = self.limit, self.limit_reason
        start = time.perf_counter()
        if self.options.beams > 1:
            yield from self._beams(limit, reason)
        else:
            yield from self._tokens(limit, reason)
        assert self.result is not None
        self.result.seconds = time.perf_counter() - start

    def _finish(self, ids: list[int], text: str, reason: StopReason, score: float | None = None) -> None:
        cached = self.gen.cached and self.options.use_cache and self.gen.info.kind == "causal_lm"
        self.result = Generation(self.prompt, self.prompt_ids, ids, text, reason, cached, score=score)

    def _beams(self, limit: int, limit_reason: StopReason) -> Iterator[str]:
        ids, reason, score = beam_search(self.gen, self.prompt_ids, limit, self.options)
        text, cut = _cut_at_stop(self.gen.codec.decode(ids), self.options.stop)
        self._finish(ids, text, "stop" if cut else limit_reason if reason == "length" else reason, score)
        yield text

    def _tokens(self, limit: int, reason: StopReason) -> Iterator[str]:
        gen, stops = self.gen, self.options.stop
        ids: list[int] = []
        emitted = 0
        text = ""
        for token in sample(gen, self.prompt_ids, limit, self.options):
            if token == gen.info.eos_id:
                reason = "eos"
                break
            ids.append(token)
            text, cut = _cut_at_stop(gen.codec.decode(ids), stops)
            if cut:
                reason = "stop"
                break
            safe = _safe_end(text, stops)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        if len(text) > emitted:
            yield text[emitted:]
        self._finish(ids, text, reason)


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _safe_end(text: str, stops: Sequence[str]) -> int:
    """How much of ``text`` can be shown: not a tail that may start a stop string, nor an unfinished
    multi-byte character (``\\ufffd`` at the end, from a byte-level tokenizer)."""
    end = len(text)
    while end > 0 and text[end - 1] == "\ufffd":
        end -= 1
    hold = max((k for s in stops for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
    return end - hold


# ------------------------------------------------------------------------------------------ steppers


@dataclass
class Stepper:
    """Runs the model for a batch of sequences: :meth:`first` on the prompt, then :meth:`step` with one
    new token per row; both return the next-token logits ``(B, V)``."""

    session: Any
    info: GenerationInfo
    prompt: Sequence[int]
    batch: int
    ids: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = np.repeat(np.asarray([list(self.prompt)], dtype=np.int64), self.batch, axis=0)

    def first(self) -> NDArray[np.float32]:
        raise NotImplementedError

    def step(self, tokens: NDArray[np.int64]) -> NDArray[np.float32]:
        raise NotImplementedError

    def reorder(self, rows: NDArray[np.int64]) -> None:
        self.ids = self.ids[rows]

    def _run(self, names: list[str], feeds: dict[str, NDArray[Any]]) -> list[NDArray[Any]]:
        try:
            return [np.asarray(v) for v in self.session.run(names, feeds)]
        except Exception as e:  # onnxruntime's own exception types
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise UsageError(f"onnxruntime failed while generating (inputs {shapes}): {e}") from e


@dataclass
class CausalStepper(Stepper):
    """A causal LM: with a cache, each step feeds the new token and the carried tensors; without,
    the whole sequence so far."""

    use_cache: bool = True
    past: dict[str, NDArray[np.float32]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.past = {c.input: np.zeros(self._shape(c.shape), np.float32) for c in self.info.cache}

    def _shape(self, shape: Sequence[int | str]) -> list[int]:
        return [self.batch if d == "batch" else 0 if d == "past_seq" else int(d) for d in shape]

    def _feed(self, new: NDArray[np.int64], total: int) -> NDArray[np.float32]:
        info = self.info
        t = new.shape[1]
        feeds: dict[str, NDArray[Any]] = {info.tokens: new}
        if info.attention_mask is not None:
            feeds[info.attention_mask] = np.ones((self.batch, total if self.use_cache else t), dtype=bool)
        if info.positions is not None:
            feeds[info.positions] = np.repeat(
                np.arange(total - t, total, dtype=np.int64)[None], self.batch, 0
            )
        names = [info.logits, *(c.output for c in info.cache)]
        if self.use_cache or info.cache:  # an uncached run of a cached file starts from an empty cache
            feeds.update(self.past if self.use_cache else self._empty())
        out = self._run(names, feeds)
        if self.use_cache:
            self.past = {c.input: v for c, v in zip(info.cache, out[1:], strict=True)}
        return out[0][:, -1, :]

    def _empty(self) -> dict[str, NDArray[np.float32]]:
        return {c.input: np.zeros(self._shape(c.shape), np.float32) for c in self.info.cache}

    def first(self) -> NDArray[np.float32]:
        return self._feed(self.ids, self.ids.shape[1])

    def step(self, tokens: NDArray[np.int64]) -> NDArray[np.float32]:
        self.ids = np.concatenate([self.ids, tokens[:, None]], axis=1)
        new = tokens[:, None] if self.use_cache else self.ids
        return self._feed(new, self.ids.shape[1])

    def reorder(self, rows: NDArray[np.int64]) -> None:
        super().reorder(rows)
        self.past = {k: v[rows] for k, v in self.past.items()}


@dataclass
class Seq2seqStepper(Stepper):
    """A seq2seq model: the source stays, the decoder input grows from ``[bos]``; every step re-runs the
    model on the target prefix."""

    src: NDArray[np.int64] = field(init=False)

    def __post_init__(self) -> None:
        info = self.info
        if info.bos_id is None:
            raise UsageError("the seq2seq model's metadata has no bos id to start decoding from")
        src = list(self.prompt)
        if info.source_length is not None and info.pad_id is not None and len(src) < info.source_length:
            src += [info.pad_id] * (info.source_length - len(src))  # padded as in training
        self.src = np.repeat(np.asarray([src], dtype=np.int64), self.batch, axis=0)
        self.ids = np.full((self.batch, 1), info.bos_id, dtype=np.int64)

    def _logits(self) -> NDArray[np.float32]:
        info = self.info
        assert info.source is not None
        feeds: dict[str, NDArray[Any]] = {info.source: self.src, info.tokens: self.ids}
        if info.source_mask is not None:
            feeds[info.source_mask] = (
                self.src != info.pad_id if info.pad_id is not None else np.ones_like(self.src, dtype=bool)
            )
        return self._run([info.logits], feeds)[0][:, -1, :]

    def first(self) -> NDArray[np.float32]:
        return self._logits()

    def step(self, tokens: NDArray[np.int64]) -> NDArray[np.float32]:
        self.ids = np.concatenate([self.ids, tokens[:, None]], axis=1)
        return self._logits()


# ------------------------------------------------------------------------------------------ search


def sample(gen: Generator, prompt_ids: Sequence[int], limit: int, options: Options) -> Iterator[int]:
    """Greedy or sampled tokens, one at a time (``limit`` of them at most)."""
    rng = np.random.default_rng(options.seed)
    stepper = gen.stepper(prompt_ids, 1, options.use_cache)
    logits = stepper.first()
    for k in range(limit):
        token = gen.select(logits[0], options, rng)
        yield token
        if k + 1 < limit and token != gen.info.eos_id:
            logits = stepper.step(np.asarray([token], dtype=np.int64))


def beam_search(
    gen: Generator, prompt_ids: Sequence[int], limit: int, options: Options
) -> tuple[list[int], StopReason, float]:
    """Beam search with ``options.beams`` beams: each step keeps the most likely continuations (sum of
    log-probabilities); a beam that produces eos is finished. Stops when ``beams`` are finished or at
    ``limit`` tokens; the best finished (else alive) beam by ``score / length ** length_penalty`` wins
    (Hugging Face's beam scorer with ``early_stopping=True``)."""
    n = options.beams
    eos = gen.info.eos_id
    stepper = gen.stepper(prompt_ids, n, options.use_cache)
    logits = stepper.first()
    scores = np.full(n, -np.inf)
    scores[0] = 0.0  # the beams start identical: expand only the first
    tokens: list[list[int]] = [[] for _ in range(n)]
    finished: list[tuple[float, list[int]]] = []

    def final(score: float, seq: list[int]) -> float:
        return float(score / max(1, len(seq)) ** options.length_penalty)

    for _ in range(limit):
        total = scores[:, None] + gen.log_probs(logits)  # (beams, V)
        flat = np.argsort(-total, axis=None, kind="stable")[: 2 * n]
        alive: list[tuple[int, int, float]] = []
        for rank, index in enumerate(flat):
            row, tok = divmod(int(index), total.shape[1])
            score = float(total[row, tok])
            if not math.isfinite(score):
                break
            if tok == eos:
                if rank < n:  # an eos outside the best n candidates does not finish a beam
                    finished.append((final(score, tokens[row] + [tok]), tokens[row]))
            else:
                alive.append((row, tok, score))
            if len(alive) == n:
                break
        if len(finished) >= n or not alive:
            break
        alive += [alive[-1]] * (n - len(alive))  # pad with copies (never better than the last)
        rows = np.asarray([a[0] for a in alive], dtype=np.int64)
        tokens = [tokens[r] + [t] for r, t, _ in alive]
        scores = np.asarray([s for _, _, s in alive])
        stepper.reorder(rows)
        logits = stepper.step(np.asarray([t for _, t, _ in alive], dtype=np.int64))
    if finished:
        score, best = max(finished, key=lambda f: f[0])
        return best, "eos", score
    i = int(np.argmax(scores))
    return tokens[i], "length", final(float(scores[i]), tokens[i])
