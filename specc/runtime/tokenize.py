"""Text ↔ token ids for generation: a character vocabulary, a Hugging Face ``tokenizer.json`` (through
the ``tokenizers`` package) or plain ids. Torch-free.

Why a small class of our own around ``tokenizers``: character-level specc models store their vocabulary
as a list (id = index, ``""`` = padding/unknown) and seq2seq tasks use bare ids; the three kinds share
one interface so the decoding loop does not care which one a model uses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specc.contracts.generation import CharVocab, GenerationInfo, HuggingFaceTokenizer, TokenIds
from specc.errors import UsageError

MAX_TOKENIZER_BYTES = 32 * 1024 * 1024
MAX_PROMPT_CHARS = 1 << 20
EOS_NAMES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[SEP]", "<|eot_id|>")
BOS_NAMES = ("<s>", "<|begin_of_text|>", "<bos>", "[CLS]", "<|startoftext|>")
PAD_NAMES = ("<pad>", "[PAD]", "<|padding|>")


class Codec:
    """Turns prompts into ids and ids into text."""

    kind = "ids"

    def encode(self, prompt: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError


@dataclass
class Chars(Codec):
    """A character vocabulary: ``vocab[i]`` is the character of id ``i``."""

    vocab: list[str]
    kind = "chars"
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        for i, ch in enumerate(self.vocab):
            if ch:
                self._index.setdefault(ch, i)

    def encode(self, prompt: str) -> list[int]:
        unknown = sorted({ch for ch in prompt if ch not in self._index})
        if unknown:
            shown = ", ".join(repr(c) for c in unknown[:10])
            raise UsageError(
                f"the prompt has {len(unknown)} character(s) outside the model's vocabulary of "
                f"{len(self._index)}: {shown}{' ...' if len(unknown) > 10 else ''}"
            )
        return [self._index[ch] for ch in prompt]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] if 0 <= i < len(self.vocab) else "" for i in ids)

    @property
    def size(self) -> int:
        return len(self.vocab)


class HuggingFace(Codec):
    """A ``tokenizers.Tokenizer`` read from ``tokenizer.json`` text (no download, ever)."""

    kind = "huggingface"

    def __init__(self, text: str, where: str) -> None:
        self.text = text
        self.sha256 = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.tokenizer = parse_tokenizer(text, where)

    def encode(self, prompt: str) -> list[int]:
        return list(self.tokenizer.encode(prompt).ids)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    def special_id(self, names: Sequence[str]) -> int | None:
        """The id of the first of ``names`` that the tokenizer has as a token."""
        for name in names:
            i = self.tokenizer.token_to_id(name)
            if i is not None:
                return int(i)
        return None

    @property
    def size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))


class Ids(Codec):
    """No tokenizer: a prompt is token ids separated by spaces or commas (``"3 4 5"``)."""

    kind = "ids"

    def encode(self, prompt: str) -> list[int]:
        parts = [p for p in re.split(r"[\s,]+", prompt.strip()) if p]
        if not all(p.isdigit() and p.isascii() for p in parts):
            raise UsageError(
                f"the model has no vocabulary or tokenizer, so the prompt must be token ids separated by "
                f"spaces (e.g. '3 4 5'), got {prompt[:60]!r}"
            )
        return [int(p) for p in parts]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(str(i) for i in ids)


def parse_tokenizer(text: str, where: str) -> Any:
    """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` text; errors name ``where``."""
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # pragma: no cover - a dependency of specc
        raise UsageError(f"{where}: reading a Hugging Face tokenizer needs the 'tokenizers' package") from e
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises its own exception type
        raise UsageError(f"{where} is not a valid tokenizer.json: {str(e).splitlines()[0][:200]}") from None


def read_tokenizer_file(path: str | Path) -> HuggingFace:
    """Read and check a ``tokenizer.json`` file."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"tokenizer file not found: {file}")
    if file.stat().st_size > MAX_TOKENIZER_BYTES:
        raise UsageError(f"tokenizer file '{file}' is larger than {MAX_TOKENIZER_BYTES:,} bytes")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read tokenizer file '{file}': {e}") from None
    return HuggingFace(text, f"tokenizer file '{file}'")


def codec_for(info: GenerationInfo, stored: str | None, override: str | Path | None) -> Codec:
    """The codec a model's metadata names; ``stored`` is the ``specc.tokenizer`` text, ``override`` a
    ``tokenizer.json`` given by the user (for a model exported without one, or the same file)."""
    tok = info.tokenizer
    if override is not None:
        if isinstance(tok, CharVocab):
            raise UsageError(
                "the model is character-level (its vocabulary is in the metadata); drop --tokenizer"
            )
        given = read_tokenizer_file(override)
        if isinstance(tok, HuggingFaceTokenizer) and given.sha256 != tok.sha256:
            raise UsageError(
                f"tokenizer file '{override}' is not the one the model was exported with "
                f"(sha256 {given.sha256[:12]}..., the model's {tok.sha256[:12]}...)"
            )
        check_vocab(given.size, info.vocab_size, f"tokenizer file '{override}'")
        return given
    if isinstance(tok, CharVocab):
        return Chars(list(tok.vocab))
    if isinstance(tok, HuggingFaceTokenizer):
        if stored is None:
            raise UsageError(
                "the model's metadata names a Hugging Face tokenizer but holds no 'specc.tokenizer'; "
                "pass the tokenizer.json it was exported with (--tokenizer FILE)"
            )
        codec = HuggingFace(stored, "model metadata 'specc.tokenizer'")
        if codec.sha256 != tok.sha256:
            raise UsageError(
                "model metadata 'specc.tokenizer' does not match the sha256 in 'specc.generation'"
            )
        return codec
    assert isinstance(tok, TokenIds)
    return Ids()


def check_vocab(tokenizer_size: int, model_vocab: int, where: str) -> None:
    if tokenizer_size > model_vocab:
        raise UsageError(
            f"{where} has {tokenizer_size:,} tokens but the model's logits cover {model_vocab:,}"
        )
