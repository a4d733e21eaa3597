"""The preprocessing a model expects: one model per ``kind``, a discriminated union of them.

Written by the data layer (``Dataset.preprocess``) into ``RUN/data.json`` and the ONNX metadata
(``specc.preprocess``); read by export (checked against the spec's input), by the runtime and by
``specc predict``/``specc eval``, which turn raw inputs into model inputs with the methods here:

* :meth:`from_array` — a raw ``.npy``/``.npz`` array in the training data's units (e.g. pixel values
  0..255 of an image folder, unstandardised CSV features);
* :meth:`from_image` — an image file (8-bit pixels scaled to [0, 1], then as in training);
* :meth:`from_text` — a text file (characters → ids);
* :meth:`from_table` — rows of a CSV file with a header.

A route a kind does not support is refused with a :class:`~specc.errors.UsageError` that says what
the model takes. Adding a kind is one class here (fields, checks, the routes it supports) and one
entry in :data:`Preprocess`.

Every size is bounded (:data:`MAX_IMAGE_SIDE`, :data:`MAX_IMAGE_ELEMENTS`, :data:`MAX_VALUES`), so a
forged ``size: [50000, 50000]`` is refused when the contract is read, before anything is allocated.
Numpy and (for images) Pillow only; no torch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, TypeAdapter, model_validator

from specc.contracts.base import Contract, parse
from specc.errors import UsageError
from specc.limits import DEFAULT_MAX_IMAGE_PIXELS

#: Largest side of an image the preprocessing may resize to.
MAX_IMAGE_SIDE = 16384
#: Largest ``channels * height * width`` of one preprocessed image (256 MB of float32).
MAX_IMAGE_ELEMENTS = 1 << 26
#: Largest image a file may decode to (pixels), checked from its header before decoding (Pillow's own
#: decompression-bomb warning threshold, as the training data layer uses).
MAX_DECODE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
#: Longest list (mean/std per feature, vocabulary) a preprocessing record may hold.
MAX_VALUES = 1 << 21

Dim = int | str | None
"""One axis of a model input's per-sample shape: a size, a symbol (``"seq"``) or unknown."""

Floats = Annotated[list[float], Field(min_length=1, max_length=MAX_VALUES)]
Positive = Annotated[float, Field(gt=0)]


@dataclass(frozen=True)
class Table:
    """Rows of a CSV file: the header, the rows as text cells, and where they came from (for errors)."""

    header: list[str]
    rows: list[list[str]]
    source: str
    first_line: int = 2

    def column(self, name: str) -> int:
        return self.header.index(name)

    def where(self, row: int, col: int) -> str:
        return f"{self.source}:{self.first_line + row}: column '{self.header[col]}'"


class _Kind(Contract):
    """What every kind has; the routes refuse unless a kind implements them."""

    kind: str

    def fits(self, sample: Sequence[Dim]) -> str | None:
        """Why this preprocessing cannot produce the model input of per-sample ``sample`` shape (None: it can)."""
        return None

    def raw_rank(self, shape: Sequence[int], sample: Sequence[Dim]) -> int:
        """The rank of one raw sample when raw arrays of ``shape`` are given (one more: a batch)."""
        return len(sample)

    def from_array(self, x: NDArray[Any], sample: Sequence[Dim]) -> NDArray[Any]:
        """A raw array (one sample or a batch) → model input. Default: the array is the input (ids)."""
        return x

    def from_image(self, path: Path, sample: Sequence[Dim]) -> NDArray[np.float32]:
        raise self._refuse(f"image '{path.name}'", "pass the input as .npy or .npz")

    def from_text(self, text: str, sample: Sequence[Dim]) -> NDArray[np.int64]:
        raise self._refuse("text", "pass token ids as .npy")

    def from_table(self, table: Table, sample: Sequence[Dim]) -> NDArray[Any]:
        raise self._refuse(f"CSV rows ('{table.source}')", "pass the input as .npy or .npz")

    def _refuse(self, what: str, instead: str) -> UsageError:
        return UsageError(
            f"cannot use {what}: the model's preprocessing (specc.preprocess kind '{self.kind}') "
            f"does not take it; {instead}"
        )


def _standardise(x: NDArray[Any], mean: Sequence[float], std: Sequence[float], trailing: int) -> NDArray[Any]:
    """``(x - mean) / std`` with one value per index of axis ``-(trailing + 1)`` (broadcast), float32."""
    m = np.asarray(mean, np.float32).reshape(-1, *([1] * trailing))
    s = np.asarray(std, np.float32).reshape(-1, *([1] * trailing))
    return np.ascontiguousarray((x.astype(np.float32) - m) / s, dtype=np.float32)


def _float_array(x: NDArray[Any], scale: float | None, what: str) -> NDArray[np.float32]:
    if x.dtype.kind not in "biuf":
        raise UsageError(f"{what}: expected numbers, got {x.dtype} values")
    out = x.astype(np.float32)
    return out * np.float32(scale) if scale is not None else out


class ImagePreprocess(_Kind):
    """``x = ((raw * scale) - mean[c]) / std[c]`` per channel, images resized to ``size`` first,
    then flattened to one vector if ``flatten``. ``size``/``channels`` are absent for image-shaped
    arrays (``.npz`` data), whose shape is the spec's."""

    kind: Literal["image"] = "image"
    mean: Floats
    std: Annotated[list[Positive], Field(min_length=1, max_length=MAX_VALUES)]
    size: (
        Annotated[list[Annotated[int, Field(ge=1, le=MAX_IMAGE_SIDE)]], Field(min_length=2, max_length=2)]
        | None
    ) = None
    channels: Annotated[int, Field(ge=1, le=4096)] | None = None
    scale: Positive | None = Field(None, description="raw array units → [0, 1] (1/255 for 8-bit pixels)")
    flatten: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ImagePreprocess:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std {len(self.std)}")
        if self.channels is not None and len(self.mean) not in (1, self.channels):
            raise ValueError(f"mean/std have {len(self.mean)} values for {self.channels} channels")
        if self.size is not None and (self.channels or 1) * self.size[0] * self.size[1] > MAX_IMAGE_ELEMENTS:
            raise ValueError(
                f"size {self.size} x {self.channels or 1} channels is over the budget of "
                f"{MAX_IMAGE_ELEMENTS:,} values per image"
            )
        if self.flatten and (self.size is None or self.channels is None):
            raise ValueError("flatten needs size and channels")
        return self

    def geometry(self, sample: Sequence[Dim]) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the images the model takes (recorded, else the input's)."""
        c, size = self.channels, self.size
        if not self.flatten and len(sample) == 3:
            c = c if c is not None else (sample[0] if isinstance(sample[0], int) else None)
            if size is None and isinstance(sample[1], int) and isinstance(sample[2], int):
                size = [sample[1], sample[2]]
        if c is None or size is None:
            raise UsageError(
                "the model's image preprocessing records no size/channels and its input shape "
                f"{tuple(sample)} does not give them; pass the input as .npy or .npz"
            )
        return c, size[0], size[1]

    def fits(self, sample: Sequence[Dim]) -> str | None:
        if self.flatten:
            c, h, w = self.geometry(sample)
            if len(sample) != 1 or (isinstance(sample[0], int) and sample[0] != c * h * w):
                return f"flattened {c}x{h}x{w} images give ({c * h * w},) but the input is {tuple(sample)}"
            return None
        if len(sample) < 2:
            return f"images (C, H, W) do not fit the input shape {tuple(sample)}"
        if self.channels is not None and isinstance(sample[0], int) and sample[0] != self.channels:
            return f"{self.channels}-channel images do not fit the input shape {tuple(sample)}"
        if isinstance(sample[0], int) and len(self.mean) not in (1, sample[0]):
            return f"mean/std have {len(self.mean)} values for the {sample[0]} channels of {tuple(sample)}"
        if self.size is not None and len(sample) == 3:
            for want, have in zip(self.size, sample[1:], strict=True):
                if isinstance(have, int) and have != want:
                    return f"images of size {self.size} do not fit the input shape {tuple(sample)}"
        return None

    def raw_rank(self, shape: Sequence[int], sample: Sequence[Dim]) -> int:
        if not self.flatten:
            return len(sample)
        c, h, w = self.geometry(sample)
        if len(shape) >= 1 and shape[-1] == c * h * w:
            return 1
        return 3 if len(shape) >= 3 and tuple(shape[-3:]) == (c, h, w) else 2

    def from_array(self, x: NDArray[Any], sample: Sequence[Dim]) -> NDArray[Any]:
        x = _float_array(x, self.scale, "raw image array")
        if not self.flatten:
            trailing = max(len(sample) - 1, 0)
            if x.ndim < len(sample) or (
                isinstance(sample[0], int) and x.shape[x.ndim - len(sample)] != sample[0]
            ):
                raise UsageError(
                    f"raw image array of shape {x.shape}: expected (C, ...) or (N, C, ...) matching the "
                    f"input shape {tuple(sample)}"
                )
            return _standardise(x, self.mean, self.std, trailing)
        c, h, w = self.geometry(sample)
        if x.ndim in (1, 2) and x.shape[-1] == c * h * w:
            x = x.reshape(*x.shape[:-1], c, h, w)
        elif x.ndim in (2, 3) and c == 1 and x.shape[-2:] == (h, w):
            x = x.reshape(*x.shape[:-2], 1, h, w)
        if x.ndim not in (3, 4) or x.shape[-3:] != (c, h, w):
            raise UsageError(
                f"raw image array of shape {x.shape}: the model takes {c}x{h}x{w} images flattened to "
                f"{c * h * w} values; pass (N, {c}, {h}, {w}), (N, {c * h * w}) or resize the images first"
            )
        out = _standardise(x, self.mean, self.std, 2)
        return out.reshape(*out.shape[:-3], c * h * w)

    def from_image(self, path: Path, sample: Sequence[Dim]) -> NDArray[np.float32]:
        """Read an image file as the model was trained: ``(1, C, H, W)`` (or ``(1, C*H*W)``) float32.

        Open, check the decoded size against :data:`MAX_DECODE_PIXELS`, convert to ``L`` (1 channel)
        or ``RGB`` (3), resize to ``size`` (bilinear), scale 8-bit pixels to [0, 1], standardise
        per channel, HWC → CHW.
        """
        from PIL import Image, UnidentifiedImageError

        c, h, w = self.geometry(sample)
        if c not in (1, 3):
            raise UsageError(f"image files give 1 (grey) or 3 (RGB) channels; the model takes {c}")
        try:
            with warnings.catch_warnings():  # the budget below is ours; Pillow's warning adds nothing
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                raw = Image.open(path)
            with raw:
                if raw.width * raw.height > MAX_DECODE_PIXELS:
                    raise UsageError(
                        f"image '{path}' is {raw.width}x{raw.height} pixels, over the budget of "
                        f"{MAX_DECODE_PIXELS:,}; refusing to decode it"
                    )
                img = raw.convert("L" if c == 1 else "RGB")
            img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as e:
            raise UsageError(f"cannot read image '{path}': {e}") from e
        chw = (arr[np.newaxis] if arr.ndim == 2 else arr.transpose(2, 0, 1))[np.newaxis]
        out = _standardise(chw, self.mean, self.std, 2)
        return out.reshape(1, -1) if self.flatten else out


class _LastAxis(_Kind):
    """Standardised per index of the last axis: ``x = ((raw * scale) - mean[i]) / std[i]``."""

    mean: Floats
    std: Annotated[list[Positive], Field(min_length=1, max_length=MAX_VALUES)]
    scale: Positive | None = None

    @model_validator(mode="after")
    def _same_length(self) -> _LastAxis:
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std {len(self.std)}")
        return self

    def fits(self, sample: Sequence[Dim]) -> str | None:
        last = sample[-1] if sample else None
        if not sample or (isinstance(last, int) and last != len(self.mean)):
            return f"{len(self.mean)} standardised values per step do not fit the input shape {tuple(sample)}"
        return None

    def from_array(self, x: NDArray[Any], sample: Sequence[Dim]) -> NDArray[Any]:
        x = _float_array(x, self.scale, f"raw {self.kind} array")
        if x.ndim < 1 or x.shape[-1] != len(self.mean):
            raise UsageError(
                f"raw {self.kind} array of shape {x.shape}: the model takes {len(self.mean)} values "
                f"on the last axis (input shape {tuple(sample)})"
            )
        return _standardise(x, self.mean, self.std, 0)


class FeaturesPreprocess(_LastAxis):
    """Standardised features, in the order of ``feature_names`` (the CSV columns, by name).

    A table's encoding (``columns`` given): the numeric ``columns`` (a missing value imputed with
    ``impute``), standardised with ``mean``/``std``, then for each column of ``categories`` one
    one-hot value per category (a missing or unseen one: all zeros); ``feature_names`` names every
    resulting feature (``col=value`` for the one-hot ones). Without ``columns``, ``mean``/``std``
    cover every feature.
    """

    kind: Literal["features"] = "features"
    feature_names: Annotated[list[str], Field(max_length=MAX_VALUES)] | None = None
    columns: Annotated[list[str], Field(max_length=MAX_VALUES)] | None = None
    label_column: str | None = None
    impute: Annotated[list[float], Field(max_length=MAX_VALUES)] | None = None
    categories: dict[str, Annotated[list[str], Field(max_length=MAX_VALUES)]] | None = None

    @property
    def width(self) -> int:
        """Number of features the model takes."""
        return len(self.mean) + sum(len(v) for v in (self.categories or {}).values())

    @model_validator(mode="after")
    def _names(self) -> FeaturesPreprocess:
        if self.feature_names is not None and len(self.feature_names) != self.width:
            raise ValueError(f"{len(self.feature_names)} feature_names for {self.width} features")
        if self.columns is not None and len(self.columns) != len(self.mean):
            raise ValueError(f"{len(self.columns)} numeric columns but {len(self.mean)} mean/std values")
        if self.impute is not None and len(self.impute) != len(self.mean):
            raise ValueError(f"{len(self.impute)} impute values for {len(self.mean)} numeric columns")
        if self.categories and self.columns is None:
            raise ValueError("categories need the numeric columns (columns)")
        if self.width > MAX_VALUES:
            raise ValueError(f"{self.width:,} features are over the budget of {MAX_VALUES:,}")
        return self

    def fits(self, sample: Sequence[Dim]) -> str | None:
        last = sample[-1] if sample else None
        if len(sample) != 1 or (isinstance(last, int) and last != self.width):
            return f"{self.width} features do not fit the input shape {tuple(sample)}"
        return None

    def from_array(self, x: NDArray[Any], sample: Sequence[Dim]) -> NDArray[Any]:
        """Raw features: the first ``len(mean)`` standardised, one-hot ones (if any) as they are."""
        if x.ndim < 1 or x.shape[-1] != self.width:
            raise UsageError(
                f"raw features of shape {x.shape}: the model takes {self.width} features "
                f"(input shape {tuple(sample)})"
            )
        n = len(self.mean)
        x = _float_array(x, self.scale, "raw features")
        head = _standardise(x[..., :n], self.mean, self.std, 0)
        return np.ascontiguousarray(np.concatenate([head, x[..., n:]], axis=-1), dtype=np.float32)

    def from_table(self, table: Table, sample: Sequence[Dim]) -> NDArray[Any]:
        """CSV rows → features, the columns found by name (all columns when no names were recorded)."""
        if self.columns is None:
            names = self.feature_names or []
            cols = _find(table, names) if names else list(range(len(table.header)))
            if not names and len(cols) != self.width:
                raise UsageError(
                    f"{table.source}: {len(cols)} columns ({', '.join(table.header)}) but the model takes "
                    f"{self.width} features and records no feature names; drop the other columns"
                )
            x = np.empty((len(table.rows), len(cols)), np.float64)
            for r, row in enumerate(table.rows):
                for j, c in enumerate(cols):
                    x[r, j] = _number(row[c], table, r, c)
            return self.from_array(x, sample)
        return self._encode(table)

    def _encode(self, table: Table) -> NDArray[np.float32]:
        assert self.columns is not None
        cats = self.categories or {}
        numeric, categorical = _find(table, self.columns), _find(table, list(cats))
        out = np.zeros((len(table.rows), self.width), np.float32)
        for r, row in enumerate(table.rows):
            for j, c in enumerate(numeric):
                text = row[c].strip()
                if text in MISSING and self.impute is not None:
                    value = self.impute[j]
                else:
                    value = _number(row[c], table, r, c)
                out[r, j] = (value - self.mean[j]) / self.std[j]
            k = len(numeric)
            for values, c in zip(cats.values(), categorical, strict=True):
                text = row[c].strip()
                if text in values:
                    out[r, k + values.index(text)] = 1.0
                k += len(values)
        return out


#: CSV cells that mean "missing" (imputed where the model records how).
MISSING = frozenset({"", "NA", "N/A", "NaN", "nan", "NULL", "null", "None"})


def _find(table: Table, names: Sequence[str]) -> list[int]:
    missing = [n for n in names if n not in table.header]
    if missing:
        raise UsageError(
            f"{table.source}: the model takes the columns {', '.join(names)}; missing: {', '.join(missing)}"
        )
    return [table.column(n) for n in names]


class SequencePreprocess(_LastAxis):
    """Float sequences ``(T, F)`` standardised per feature (the last axis)."""

    kind: Literal["sequence"] = "sequence"


def _number(cell: str, table: Table, row: int, col: int) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        what = "is empty (missing value)" if not text else f"{text[:40]!r} is not a number"
        raise UsageError(f"{table.where(row, col)}: {what}") from None
    if not math.isfinite(value):
        raise UsageError(f"{table.where(row, col)}: {text!r} is not a finite number")
    return value


class TextPreprocess(_Kind):
    """Characters → ids: entry *i* of ``vocab`` is the character of id *i*; unknown characters → ``unk``."""

    kind: Literal["text"] = "text"
    vocab: Annotated[list[str], Field(min_length=1, max_length=MAX_VALUES)]
    vocab_size: Annotated[int, Field(ge=1)] | None = None
    pad: Annotated[int, Field(ge=0)] = 0
    unk: Annotated[int, Field(ge=0)] = 0
    seq_len: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _ids(self) -> TextPreprocess:
        n = len(self.vocab)
        if self.vocab_size is not None and self.vocab_size != n:
            raise ValueError(f"vocab_size {self.vocab_size} but the vocab has {n} entries")
        if self.pad >= n or self.unk >= n:
            raise ValueError(f"pad {self.pad} / unk {self.unk} are not ids of a {n}-entry vocab")
        return self

    def fits(self, sample: Sequence[Dim]) -> str | None:
        return None if len(sample) == 1 else f"token ids (T,) do not fit the input shape {tuple(sample)}"

    def from_text(self, text: str, sample: Sequence[Dim]) -> NDArray[np.int64]:
        """``(1, T)`` int64 ids of the characters of ``text``."""
        index: dict[str, int] = {}
        for i, ch in enumerate(self.vocab):
            index.setdefault(ch, i)
        return np.asarray([[index.get(ch, self.unk) for ch in text]], dtype=np.int64)


class TokensPreprocess(_Kind):
    """Synthetic token sequences: ids as they are (``pad``/``bos``/``eos`` and the symbol range)."""

    kind: Literal["tokens"] = "tokens"
    pad: Annotated[int, Field(ge=0)] = 0
    bos: Annotated[int, Field(ge=0)] | None = None
    eos: Annotated[int, Field(ge=0)] | None = None
    vocab_size: Annotated[int, Field(ge=1)] | None = None
    seq_len: Annotated[int, Field(ge=1)] | None = None
    symbols: Annotated[list[int], Field(min_length=2, max_length=2)] | None = None


class RawPreprocess(_Kind):
    """Nothing is done: the arrays are the model's inputs (integer data)."""

    kind: Literal["raw"] = "raw"


Preprocess = Annotated[
    ImagePreprocess
    | FeaturesPreprocess
    | SequencePreprocess
    | TextPreprocess
    | TokensPreprocess
    | RawPreprocess,
    Field(discriminator="kind"),
]
"""Any preprocessing record; ``kind`` picks the model."""

_ADAPTER: TypeAdapter[Preprocess] = TypeAdapter(Preprocess)


def parse_preprocess(data: Any, where: str) -> Preprocess:
    """Validate a preprocessing record (e.g. ``Dataset.preprocess`` or parsed metadata)."""
    if isinstance(data, _Kind):
        return data  # type: ignore[return-value]
    return parse(_Wrapper, {"preprocess": data}, where).preprocess


class _Wrapper(Contract):
    preprocess: Preprocess


def preprocess_json(pre: Preprocess) -> dict[str, Any]:
    """The JSON form (unset optional fields left out, so records stay as short as the data layer's)."""
    out: dict[str, Any] = _ADAPTER.dump_python(pre, mode="json", exclude_none=True)
    return out
