"""`specc eval`: metrics equal scikit-learn's; a run and its export give the same figures on the
run's test split; labelled files (CSV, image folders) are read raw with the model's preprocessing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from specc.evaluation.metrics import classification_report, regression_report


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed: int) -> None:
    from sklearn import metrics as skm

    rng = np.random.default_rng(seed)
    c = 6
    scores = rng.normal(size=(300, c))
    y = rng.integers(0, c - 1, 300)  # class 5 never occurs: zero support, maybe predicted
    scores[:, 5] -= 0.5 * seed  # seed 0: class 5 predicted sometimes; later seeds less or never
    report = classification_report(scores, y, [f"c{i}" for i in range(c)], ks=(3,))
    pred = scores.argmax(1)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert report["top_k"]["top3"] == pytest.approx(skm.top_k_accuracy_score(y, scores, k=3, labels=range(c)))
    p, r, f, s = skm.precision_recall_fscore_support(y, pred, labels=range(c), zero_division=0)
    got = report["per_class"]
    np.testing.assert_allclose([g["precision"] for g in got], p)
    np.testing.assert_allclose([g["recall"] for g in got], r)
    np.testing.assert_allclose([g["f1"] for g in got], f)
    assert [g["support"] for g in got] == s.tolist()
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average=avg, zero_division=0)
        assert [report[avg][k] for k in ("precision", "recall", "f1")] == pytest.approx([p, r, f])
    assert report["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=range(c)).tolist()
    t = rng.normal(size=(50, 2))
    q = t + rng.normal(scale=0.3, size=(50, 2))
    reg = regression_report(q, t)
    assert reg["mse"] == pytest.approx(skm.mean_squared_error(t, q))
    assert reg["mae"] == pytest.approx(skm.mean_absolute_error(t, q))
    assert reg["r2"] == pytest.approx(skm.r2_score(t, q))


def test_run_and_onnx_agree_on_the_runs_test_split(
    wine_run: tuple[Path, Path], wine_onnx: Path, tmp_path: Path
) -> None:
    _, run = wine_run
    r = run_cli("eval", str(run), "--json")
    assert r.code == 0, r.err
    torch_report = json.loads(r.out)
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert torch_report["samples"] == 36 and torch_report["data"] == "wine (test split)"
    assert torch_report["accuracy"] == pytest.approx(final["test_accuracy"], abs=1e-12)
    out = tmp_path / "ev"
    r = run_cli("eval", str(wine_onnx), "--data", str(run), "--out", str(out))
    assert r.code == 0, r.err
    assert "accuracy" in r.out and "class_0" in r.out
    onnx_report = json.loads((out / "eval.json").read_text())
    assert onnx_report["confusion_matrix"] == torch_report["confusion_matrix"]
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 36 and {"id", "true", "predicted", "correct"} == set(rows[0])
    r = run_cli("eval", str(wine_onnx), "--data", str(run), "--split", "val", "--json")
    assert json.loads(r.out)["accuracy"] == pytest.approx(final["val_accuracy"], abs=1e-12)


def test_labelled_csv_is_read_raw_and_labels_are_names(wine_onnx: Path, tmp_path: Path) -> None:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    with (tmp_path / "w.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*bunch.feature_names, "kind"])
        for row, t in zip(bunch.data, bunch.target, strict=True):
            w.writerow([*row.tolist(), f"class_{t}"])
    r = run_cli("eval", str(wine_onnx), "--data", str(tmp_path / "w.csv"), "--label", "kind", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["samples"] == 178 and report["accuracy"] > 0.85  # standardised as in training
    assert [c["support"] for c in report["per_class"]] == np.bincount(bunch.target).tolist()
    r = run_cli("eval", str(wine_onnx), "--data", str(tmp_path / "w.csv"))
    assert r.code == 2 and "no label column" in r.err
    (tmp_path / "odd.csv").write_text(
        ",".join([*bunch.feature_names, "label"]) + "\n" + ",".join(["1"] * 13 + ["grape"]) + "\n"
    )
    r = run_cli("eval", str(wine_onnx), "--data", str(tmp_path / "odd.csv"))
    assert r.code == 2 and "label 'grape' is not a class of the model" in r.err
    r = run_cli("eval", str(wine_onnx))
    assert r.code == 2 and "--data is needed for an .onnx model" in r.err
