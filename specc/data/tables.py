"""Tables (CSV, Parquet) read with pyarrow: a label column, numeric and categorical features,
missing values (torch-free).

Policy, fitted on the training split only and recorded in ``preprocess`` so inference repeats it:

* the label column is ``--label COL``, else a column named ``label``, ``target`` or ``y``, else the
  last one; a row without a label is refused, naming the row;
* a column of numbers is a numeric feature; a missing value (empty cell, ``NA``, ``NaN``, null) is
  imputed with the training split's mean of the column (``impute``); an infinite value is refused;
* any other column (strings, booleans) is categorical and one-hot encoded over the categories seen in
  the training split (``categories``, sorted); a missing or unseen category encodes as all zeros;
* numeric features are then standardised with the training split's mean/std; one-hot columns are not.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from specc.data.splits import Array, DataBudget
from specc.errors import DataError, did_you_mean

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
LABEL_COLUMNS = ("label", "target", "y")
_MISSING_TEXT = ["", "NA", "N/A", "NaN", "nan", "NULL", "null", "None"]


@dataclass
class Table:
    """A table's columns: numeric features (float64, NaN = missing), categorical ones (object arrays of
    str, None = missing), and the label column (numbers or strings)."""

    path: Path
    columns: list[str]
    numeric: dict[str, Array]
    categorical: dict[str, Array]
    label_name: str
    label: Array
    rows: int


def read_table(path: Path, label: str | None, budget: DataBudget) -> Table:
    """Read a CSV or Parquet file with pyarrow (budget checked on the file size first)."""
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read table '{path}': {e.strerror or e}") from None
    budget.check(f"table '{path}'", (size,), 2, "; a table is read into memory whole")
    at = _read_arrow(path)
    names = [str(n) for n in at.column_names]
    if at.num_rows == 0:
        raise DataError(f"table '{path}' has a header but no data rows")
    if len(names) < 2:
        raise DataError(f"table '{path}': need at least one feature column and one label column")
    if label is not None and label not in names:
        raise DataError(
            f"table '{path}' has no column '{label}'{did_you_mean(label, names)}; columns: {', '.join(names)}"
        )
    if label is None:
        lowered = [n.lower() for n in names]
        found = [lowered.index(n) for n in LABEL_COLUMNS if n in lowered]
        label = names[found[0] if found else len(names) - 1]
    numeric: dict[str, Array] = {}
    categorical: dict[str, Array] = {}
    for name in names:
        if name == label:
            continue
        col = at.column(name)
        if _is_numeric(col.type):
            values = col.to_numpy(zero_copy_only=False).astype(np.float64)
            bad = np.isinf(values)
            if bad.any():
                raise DataError(
                    f"{_row(path, int(np.flatnonzero(bad)[0]))}: column '{name}' holds an infinite value"
                )
            numeric[name] = values
        else:
            categorical[name] = np.asarray(
                [None if v is None else str(v) for v in col.to_pylist()], dtype=object
            )
    y = _label_values(path, label, at.column(label))
    return Table(path, names, numeric, categorical, label, y, at.num_rows)


def _read_arrow(path: Path) -> Any:
    try:
        import pyarrow as pa
        import pyarrow.csv as pcsv
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - pyarrow is a dependency
        raise DataError(f"table '{path}' needs pyarrow, which is not installed") from e
    try:
        if path.suffix.lower() == ".csv":
            return pcsv.read_csv(
                path,
                read_options=pcsv.ReadOptions(use_threads=False),
                convert_options=pcsv.ConvertOptions(null_values=_MISSING_TEXT, strings_can_be_null=True),
            )
        return pq.read_table(path)
    except pa.ArrowInvalid as e:
        where = _bad_csv_line(path) if path.suffix.lower() == ".csv" else None
        raise DataError(where or f"cannot read table '{path}': {_arrow_message(path, e)}") from None
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"cannot read table '{path}': {e}") from None


def _bad_csv_line(path: Path) -> str | None:
    """``path:LINE: ...`` for the first row whose field count differs from the header's (pyarrow's
    message quotes the row but not its line)."""

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = csv.reader(f)
            width = None
            for row in rows:
                if not row:
                    continue
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    return f"{path}:{rows.line_num}: expected {width} fields, found {len(row)}"
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return f"cannot read table '{path}': {e}"
    return None


def _arrow_message(path: Path, e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "Empty CSV file" in text:
        return "the file is empty"
    return text


def _is_numeric(t: Any) -> bool:
    import pyarrow.types as pt

    return bool(pt.is_integer(t) or pt.is_floating(t) or pt.is_null(t))


def _row(path: Path, i: int) -> str:
    """``path:LINE`` of data row ``i`` of a CSV (blank lines skipped, as pyarrow does), else
    ``path: row i`` (only called on an error, so the file is scanned again here)."""
    if path.suffix.lower() != ".csv":
        return f"{path}: row {i}"

    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        seen = -2  # the header is row -1
        for row in rows:
            if row and any(c.strip() for c in row):
                seen += 1
                if seen == i:
                    return f"{path}:{rows.line_num}"
    return f"{path}: row {i}"


def _label_values(path: Path, name: str, col: Any) -> Array:
    values = col.to_pylist()
    missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and np.isnan(v))]
    if missing:
        raise DataError(
            f"{_row(path, missing[0])}: the label column '{name}' is empty ({len(missing)} rows are)"
        )
    if _is_numeric(col.type):
        arr = col.to_numpy(zero_copy_only=False)
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise DataError(
                f"{_row(path, int(np.flatnonzero(~np.isfinite(arr))[0]))}: label column '{name}' is not finite"
            )
        return np.asarray(arr)
    return np.asarray([str(v) for v in values], dtype=np.str_)


@dataclass(frozen=True)
class TableEncoding:
    """What turns a table's rows into features (fitted on the training rows)."""

    numeric: list[str]
    mean: list[float]
    std: list[float]
    impute: list[float]
    categories: dict[str, list[str]]

    @property
    def feature_names(self) -> list[str]:
        return [*self.numeric, *(f"{c}={v}" for c, vs in self.categories.items() for v in vs)]

    def transform(self, t: Table, budget: DataBudget) -> Array:
        """Features of every row: standardised numeric columns, then one-hot categories (float32)."""
        width = len(self.feature_names)
        budget.check(f"the features of table '{t.path}'", (t.rows, width), 4)
        out = np.zeros((t.rows, width), dtype=np.float32)
        for j, name in enumerate(self.numeric):
            col = t.numeric[name]
            col = np.where(np.isnan(col), self.impute[j], col)
            out[:, j] = (col - self.mean[j]) / self.std[j]
        j = len(self.numeric)
        for name, cats in self.categories.items():
            index = {c: k for k, c in enumerate(cats)}
            codes = np.asarray([index.get(v, -1) if v is not None else -1 for v in t.categorical[name]])
            hit = codes >= 0
            out[np.flatnonzero(hit), j + codes[hit]] = 1.0
            j += len(cats)
        return out


def fit_encoding(t: Table, train_rows: Array) -> tuple[TableEncoding, list[str]]:
    """Fit the imputation, standardisation and categories on the training rows; returns notes."""
    notes: list[str] = []
    names = list(t.numeric)
    impute, mean, std = [], [], []
    for name in names:
        col = t.numeric[name][train_rows]
        present = col[~np.isnan(col)]
        fill = float(present.mean()) if len(present) else 0.0
        filled = np.where(np.isnan(col), fill, col)
        impute.append(fill)
        mean.append(float(filled.mean()))
        s = float(filled.std())
        std.append(s if s > 1e-8 else 1.0)
        missing = int(np.isnan(t.numeric[name]).sum())
        if missing:
            notes.append(
                f"column '{name}': {missing} missing values imputed with the training mean {fill:.6g}"
            )
    categories: dict[str, list[str]] = {}
    for name, col in t.categorical.items():
        seen = sorted({v for v in col[train_rows] if v is not None})
        categories[name] = seen
        missing = int(sum(v is None for v in col))
        notes.append(
            f"column '{name}': categorical, one-hot over {len(seen)} categories of the training split"
            + (f" ({missing} missing values encode as all zeros)" if missing else "")
        )
    return TableEncoding(names, mean, std, impute, categories), notes
