"""Classification and regression metrics in numpy (checked against scikit-learn in the tests).

Written here rather than taken from torchmetrics (which needs torch, and ``specc eval`` of an ONNX
file must not) or scikit-learn (whose import costs ~1 s, more than the metrics themselves): a
confusion matrix is one ``np.add.at``, and everything else follows from it with the definitions
scikit-learn uses (``zero_division=0``: a class never predicted has precision 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from specc.atomic import atomic_path


def confusion(y_true: NDArray[np.int64], y_pred: NDArray[np.int64], num_classes: int) -> NDArray[np.int64]:
    """``m[i, j]``: samples of class ``i`` predicted as ``j``."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (y_true, y_pred), 1)
    return m


def _ratio(num: NDArray[Any], den: NDArray[Any]) -> NDArray[np.float64]:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def top_k_accuracy(scores: NDArray[Any], y_true: NDArray[np.int64], k: int) -> float:
    """Fraction of samples whose class is among the ``k`` highest scores (ties: the lower index wins)."""
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((order == y_true[:, None]).any(axis=1).mean()) if len(y_true) else 0.0


def classification_report(
    scores: NDArray[Any], y_true: NDArray[np.int64], labels: Sequence[str] | None, ks: Sequence[int] = (5,)
) -> dict[str, Any]:
    """Accuracy, top-k accuracies, per-class precision/recall/F1/support, macro and weighted means,
    and the confusion matrix of ``scores`` (N, C) against integer targets."""
    n, c = scores.shape
    y_pred = np.argmax(scores, axis=1).astype(np.int64)
    m = confusion(y_true, y_pred, c)
    tp = np.diag(m).astype(np.float64)
    support = m.sum(axis=1)
    precision = _ratio(tp, m.sum(axis=0))
    recall = _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    names = [labels[i] if labels is not None and i < len(labels) else str(i) for i in range(c)]
    present = (support > 0) | (m.sum(axis=0) > 0)  # the classes that occur (scikit-learn's averages)
    weights = support.astype(np.float64)

    def mean(values: NDArray[np.float64], w: NDArray[Any] | None) -> float:
        if not present.any() or (w is not None and not w[present].sum()):
            return 0.0
        return float(np.average(values[present], weights=None if w is None else w[present]))

    return {
        "samples": int(n),
        "accuracy": float((y_pred == y_true).mean()) if n else 0.0,
        "top_k": {f"top{k}": top_k_accuracy(scores, y_true, k) for k in sorted(set(ks)) if 1 < k < c},
        "per_class": [
            {
                "label": names[i],
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i in range(c)
        ],
        "macro": {k: mean(v, None) for k, v in (("precision", precision), ("recall", recall), ("f1", f1))},
        "weighted": {
            k: mean(v, weights) for k, v in (("precision", precision), ("recall", recall), ("f1", f1))
        },
        "labels": names,
        "confusion_matrix": m.tolist(),
    }


def regression_report(pred: NDArray[Any], y_true: NDArray[Any]) -> dict[str, Any]:
    """Mean squared and absolute error, and R² (per target value, averaged: scikit-learn's
    ``uniform_average``; a constant target counts 1 if predicted exactly, else 0)."""
    p = pred.reshape(len(pred), -1).astype(np.float64)
    t = y_true.reshape(len(y_true), -1).astype(np.float64)
    err = p - t
    residual = (err**2).sum(axis=0)
    total = ((t - t.mean(axis=0)) ** 2).sum(axis=0)
    r2 = np.where(
        total > 0, 1.0 - residual / np.where(total > 0, total, 1.0), (residual == 0).astype(np.float64)
    )
    return {
        "samples": len(p),
        "mse": float((err**2).mean()),
        "mae": float(np.abs(err).mean()),
        "r2": float(r2.mean()),
    }


def plot_confusion(path: Any, matrix: Sequence[Sequence[int]], labels: Sequence[str], title: str) -> None:
    """The confusion matrix as a PNG (rows: true class, columns: predicted), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    m = np.asarray(matrix)
    c = len(m)
    side = min(2.5 + 0.45 * c, 24.0)
    fig = Figure(figsize=(side, side * 0.9), dpi=100)
    ax = fig.subplots()
    im = ax.imshow(m, cmap="Blues")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ticks = range(c)
    shown = [str(s)[:16] for s in labels]
    ax.set_xticks(ticks, shown, rotation=90 if c > 8 else 0)
    ax.set_yticks(ticks, shown)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if c <= 30:
        top = m.max() if m.size else 0
        for i in range(c):
            for j in range(c):
                ax.text(
                    j,
                    i,
                    str(m[i, j]),
                    ha="center",
                    va="center",
                    color="white" if m[i, j] > top / 2 else "black",
                )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
