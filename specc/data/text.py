"""Character-level text as token windows, streamed from the file where it can be (torch-free).

A text file is read in chunks twice at most, never whole: a first pass finds its characters (the
vocabulary) and length. A plain-ASCII file without carriage returns is then memory-mapped and each
window's ids are looked up from its bytes when the window is read, so a corpus larger than RAM
trains. Other files (non-ASCII UTF-8, CRLF line ends) are converted once into compact ids (1, 2 or
4 bytes a character) held in memory within the data budget.

Ids: 0 is pad/unknown, the characters of the vocabulary are ``1..V-1`` in code-point order.
Window ``k`` of a split holds ``x = ids[s + kT : s + kT + T]`` and ``y`` the same shifted by one.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from specc.data.splits import Array, DataBudget, Index, Split
from specc.errors import DataError

if TYPE_CHECKING:
    from specc.data.augment import Augmenter

CHUNK = 1 << 22  # 4 MiB per read


class TextWindows(Split):
    """``count`` windows of ``seq_len`` ids starting at character ``start`` of ``ids`` (any int array,
    or a uint8 byte map with ``lut`` turning bytes into ids)."""

    def __init__(self, ids: Array, start: int, count: int, seq_len: int, lut: Array | None = None) -> None:
        self.ids, self.start, self.count, self.seq_len, self.lut = ids, start, count, seq_len, lut

    def __len__(self) -> int:
        return self.count

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.seq_len,)

    @property
    def target_shape(self) -> tuple[int, ...]:
        return (self.seq_len,)

    @property
    def lazy(self) -> bool:
        return self.lut is not None

    def take(self, idx: Index, aug: Augmenter | None = None, epoch: int = 0) -> tuple[Array, Array]:
        ids = np.asarray(idx, dtype=np.int64)
        t = self.seq_len
        pos = self.start + ids[:, None] * t + np.arange(t + 1)  # (B, T+1)
        raw = self.ids[pos.reshape(-1)].reshape(pos.shape) if len(ids) else np.zeros((0, t + 1), np.int64)
        window = (self.lut[raw] if self.lut is not None else raw).astype(np.int64)
        return np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])


def read_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks (errors name the file)."""
    if not path.exists():
        raise DataError(f"text file '{path}' does not exist")
    if not path.is_file():
        raise DataError(f"text file '{path}' is not a file")
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
    except OSError as e:
        raise DataError(f"cannot read text file '{path}': {e.strerror or e}") from e


def scan(path: Path) -> tuple[list[str], int, bool]:
    """First pass: the sorted characters of a UTF-8 file (after CRLF -> LF and without a BOM), its
    length in characters, and whether it is plain ASCII without carriage returns (memory-mappable)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    chars: set[str] = set()
    length = 0
    offset = 0
    plain = True
    blank = True
    last_cr = False
    for chunk in read_chunks(path):
        if plain and (max(chunk) >= 0x80 or b"\r" in chunk):
            plain = False
        try:
            text = decoder.decode(chunk)
        except UnicodeDecodeError as e:
            raise DataError(
                f"text file '{path}' is not UTF-8 text (bad byte at offset {offset + e.start})"
            ) from e
        offset += len(chunk)
        text, last_cr = _newlines(text, last_cr)
        chars.update(text)
        length += len(text)
        blank = blank and not text.strip()
    try:
        tail, _ = _newlines(decoder.decode(b"", final=True), last_cr)
    except UnicodeDecodeError as e:
        raise DataError(f"text file '{path}' is not UTF-8 text (it ends inside a character)") from e
    chars.update(tail)
    length += len(tail)
    if blank and not tail.strip():
        raise DataError(f"text file '{path}' is empty")
    return sorted(chars), length, plain


def _newlines(text: str, after_cr: bool) -> tuple[str, bool]:
    """CRLF and lone CR -> LF, across chunk boundaries (``after_cr``: the previous chunk ended in CR)."""
    if after_cr and text.startswith("\n"):
        text = text[1:]
    ends_cr = text.endswith("\r")
    return text.replace("\r\n", "\n").replace("\r", "\n"), ends_cr


def compact_ids(path: Path, vocab: list[str], length: int, budget: DataBudget) -> Array:
    """Second pass (files that cannot be mapped): every character's id, in the smallest dtype."""
    dtype = np.uint8 if len(vocab) <= 256 else (np.uint16 if len(vocab) <= 65536 else np.uint32)
    budget.check(f"the token ids of text file '{path}'", (length,), np.dtype(dtype).itemsize)
    codes = np.asarray([ord(c) for c in vocab[1:]], dtype=np.uint32)
    out = np.empty(length, dtype=dtype)
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pos = 0
    last_cr = False
    for chunk in [*read_chunks(path), b""]:
        text, last_cr = _newlines(decoder.decode(chunk, final=not chunk), last_cr)
        arr = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        out[pos : pos + len(arr)] = np.searchsorted(codes, arr) + 1
        pos += len(arr)
    return out


def byte_lut(vocab: list[str]) -> Array:
    """Byte -> id table of an ASCII vocabulary (unknown bytes map to 0)."""
    lut = np.zeros(256, dtype=np.int64)
    for i, c in enumerate(vocab[1:], start=1):
        lut[ord(c)] = i
    return lut


def ids_of_str(text: str) -> tuple[Array, list[str]]:
    """Ids and vocabulary of an in-memory string (``text:stdlib``)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    chars = np.unique(codes)
    ids = (np.searchsorted(chars, codes) + 1).astype(np.int64)
    return ids, [""] + [chr(int(c)) for c in chars]


def memmap_bytes(path: Path) -> Any:
    """The file's bytes, memory-mapped read-only."""
    try:
        return np.memmap(path, dtype=np.uint8, mode="r")
    except (OSError, ValueError) as e:
        raise DataError(f"cannot map text file '{path}': {e}") from e
