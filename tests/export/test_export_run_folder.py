"""`specc export` of a run folder reads its typed record: the run's own splits (any seed), a
preprocessing that must fit the spec, and weights that must be finite; parity fails on garbage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import WINE_SPEC, run_cli, train_run
from safetensors.torch import load_file, save_file

from specc.data import load_dataset


def test_accuracy_and_calibration_use_the_runs_own_splits(tmp_path: Path) -> None:
    """A run trained with train.seed=3: the export's accuracy is measured on exactly that run's
    validation split (before: data.json had no seed, so the seed-0 split was rebuilt, partly made of
    training samples) and calibration draws from exactly its training split."""
    from specc.export import load_eval_data, run_calibration
    from specc.export.source import load_source

    spec, run = train_run(
        tmp_path, WINE_SPEC.replace("epochs: 2", "epochs: 1"), "wine", "--set", "train.seed=3"
    )
    record = json.loads((run / "data.json").read_text())
    assert record["data"]["seed"] == 3 and record["data"]["val_fraction"] == 0.1
    r = run_cli("export", str(spec), "-w", str(run), "--out", str(tmp_path / "m.onnx"), "--int8", "--json")
    assert r.code == 0, r.err
    acc = json.loads(r.out)["variants"]["int8"]["accuracy"]
    final = json.loads((run / "metrics.json").read_text())["final"]
    assert acc["split"] == f"wine (validation, {record['sizes']['val']} samples)"
    assert acc["fp32"] == pytest.approx(final["val_accuracy"], abs=1e-12)  # torch's figure, same samples

    source = load_source(spec, weights=run)
    seeded = load_dataset("wine", input_shape=(13,), input_dtype="float32", seed=3)
    default = load_dataset("wine", input_shape=(13,), input_dtype="float32", seed=0)
    evald = load_eval_data(source)
    assert evald is not None
    np.testing.assert_array_equal(evald.feeds["x"], seeded.val.x)
    assert not np.array_equal(evald.feeds["x"], default.val.x)
    calib = run_calibration(source)
    assert calib is not None
    train_rows = {row.tobytes() for row in seeded.train.x}
    assert all(row.tobytes() in train_rows for row in calib.feeds["x"])
    assert not {row.tobytes() for row in seeded.val.x} & {row.tobytes() for row in calib.feeds["x"]}


def test_non_finite_weights_are_refused_naming_the_tensor(
    wine_run: tuple[Path, Path], tmp_path: Path
) -> None:
    spec, run = wine_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    weights = load_file(str(copy / "model.safetensors"))
    weights["0.weight"][:] = float("nan")
    save_file(weights, str(copy / "model.safetensors"))
    r = run_cli("export", str(spec), "-w", str(copy), "--out", str(tmp_path / "m.onnx"))
    assert r.code == 2, r.err
    assert "tensor '0.weight' [16, 13] holds 208 NaN/infinite value(s)" in r.err
    assert not (tmp_path / "m.onnx").exists()


def test_outputs_that_are_not_finite_fail_verification(wine_run: tuple[Path, Path], tmp_path: Path) -> None:
    """Finite weights whose outputs overflow: NaN/inf on both sides is not parity (it used to pass as
    `max |Δ| 0`): exit 3 naming the output, and the report is valid JSON."""
    spec, run = wine_run
    weights = load_file(str(run / "model.safetensors"))
    weights["0.weight"][:] = 3e38
    weights["logits.weight"][:] = 3e38
    save_file(weights, str(tmp_path / "big.safetensors"))
    r = run_cli(
        "export", str(spec), "-w", str(tmp_path / "big.safetensors"), "--out", str(tmp_path / "m.onnx")
    )
    assert r.code == 3, r.err
    assert "output 'output' is not finite at batch=1" in r.err
    report = json.loads(
        (tmp_path / "m.failed.onnx.json").read_text(),
        parse_constant=lambda c: pytest.fail(f"{c} in the report"),
    )
    assert report["ok"] is False


def test_a_preprocessing_that_does_not_fit_the_spec_is_refused(
    wine_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """The run's data.json is checked against the spec exported with it: a forged image size is
    invalid (budget), and a record for another input shape does not fit."""
    _, run = wine_run
    other = tmp_path / "other.yaml"
    other.write_text(WINE_SPEC.replace("shape: [13]", "shape: [12]"))
    r = run_cli("export", str(other), "-w", str(run), "--out", str(tmp_path / "m.onnx"))
    assert r.code == 2, r.err
    assert (
        "preprocess does not fit the spec's input 'x' (12,): 13 features do not fit the input shape (12,)"
        in r.err
    )
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    record = json.loads((copy / "data.json").read_text())
    record["preprocess"] = {
        "kind": "image",
        "mean": [0.5],
        "std": [0.2],
        "size": [50000, 50000],
        "channels": 1,
    }
    (copy / "data.json").write_text(json.dumps(record))
    spec = run.parent / "run.yaml"
    r = run_cli("export", str(spec), "-w", str(copy), "--out", str(tmp_path / "m.onnx"))
    assert r.code == 2 and f"{copy / 'data.json'} is invalid: preprocess.image.size.0" in r.err


def test_the_runs_scale_and_sets_apply_unless_given(tmp_path: Path) -> None:
    """A run trained with `--scale small --set width=4` exports from the spec and the run folder alone
    (the run's flags apply first); flags given to export apply on top and still have to fit."""
    scaled = WINE_SPEC.replace("linear: 16", "linear: $width").replace(
        "layers:", "vars: {width: 16}\nscales: {small: {width: 8}}\nlayers:"
    )
    spec, run = train_run(tmp_path, scaled, "wine", "--scale", "small", "--set", "width=4", "--epochs", "1")
    out = tmp_path / "m.onnx"
    r = run_cli("export", str(spec), "-w", str(run), "--out", str(out), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["ok"] is True
    model = onnx.load(str(out))
    assert sum(int(np.prod(t.dims)) for t in model.graph.initializer) == 13 * 4 + 4 + 4 * 3 + 3
    r = run_cli("export", str(spec), "-w", str(run), "--out", str(out), "--set", "width=8")
    assert r.code == 2 and "do not fit the spec" in r.err
