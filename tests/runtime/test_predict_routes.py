"""Every input route of `specc predict` applies the model's recorded preprocessing, or refuses.

The models come from real (tiny) training runs and `specc export` (fixtures in conftest)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli, train_run

from specc.errors import UsageError
from specc.runtime import load

WINE_ROWS = [0, 1, 60, 61, 130, 131]  # true classes 0 0 1 1 2 2


def _wine_raw() -> tuple[np.ndarray, np.ndarray, list[str]]:
    from sklearn.datasets import load_wine

    bunch = load_wine()
    return bunch.data.astype(np.float32), bunch.target, [str(n) for n in bunch.feature_names]


def test_wine_raw_npy_gives_the_right_classes(wine_onnx: Path, tmp_path: Path) -> None:
    """The raw (unstandardised) features are standardised with the recorded train mean/std: the six
    samples of classes 0 0 1 1 2 2 come back as those classes (before: class_0 for all six)."""
    x, y, _ = _wine_raw()
    np.save(tmp_path / "wine_raw.npy", x[WINE_ROWS])
    r = run_cli(
        "predict", str(wine_onnx), "--input", str(tmp_path / "wine_raw.npy"), "--top-k", "1", "--json"
    )
    assert r.code == 0, r.err
    got = [row[0]["label"] for row in json.loads(r.out)["top_k"]]
    assert got == [f"class_{c}" for c in y[WINE_ROWS]]
    # --preprocessed: arrays that already are model inputs are not standardised again
    model = load(wine_onnx)
    pre = model.info.preprocess
    assert pre is not None and pre.kind == "features"
    standardised = (x[WINE_ROWS] - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    np.save(tmp_path / "std.npy", standardised)
    as_inputs = model.predict_file(tmp_path / "std.npy", top_k=1, preprocessed=True)
    raw = model.predict_file(tmp_path / "wine_raw.npy", top_k=1)
    np.testing.assert_allclose(as_inputs["outputs"]["output"], raw["outputs"]["output"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(raw["outputs"]["output"], model(standardised)["output"], rtol=1e-5, atol=1e-5)


def test_csv_rows_by_feature_name_to_csv_and_jsonl(wine_onnx: Path, tmp_path: Path) -> None:
    x, y, names = _wine_raw()
    rows = [0, 60, 130]
    with (tmp_path / "wine.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", *reversed(names)])  # other order, plus a label column: picked by name
        for i in rows:
            w.writerow([f"class_{y[i]}", *reversed(x[i].tolist())])
    out = tmp_path / "pred.csv"
    r = run_cli(
        "predict", str(wine_onnx), "--input", str(tmp_path / "wine.csv"), "--output", str(out), "--top-k", "2"
    )
    assert r.code == 0, r.err
    assert "wrote 3 prediction(s)" in r.out
    table = list(csv.DictReader(out.open()))
    assert [t["id"] for t in table] == ["2", "3", "4"]  # line numbers of the CSV
    assert [t["label"] for t in table] == [f"class_{y[i]}" for i in rows]
    assert {"prob", "label_2", "prob_2"} <= set(table[0])
    jsonl = tmp_path / "pred.jsonl"
    r = run_cli("predict", str(wine_onnx), "--input", str(tmp_path / "wine.csv"), "-o", str(jsonl))
    assert r.code == 0, r.err
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [ln["top_k"][0]["label"] for ln in lines] == [t["label"] for t in table]
    # a missing feature column or a bad cell is named
    (tmp_path / "bad.csv").write_text("alcohol,label\n1.0,a\n")
    r = run_cli("predict", str(wine_onnx), "--input", str(tmp_path / "bad.csv"))
    assert r.code == 2 and "missing: malic_acid" in r.err
    cells = [f"{v}" for v in x[0].tolist()]
    cells[3] = ""
    (tmp_path / "gap.csv").write_text(",".join(names) + "\n" + ",".join(cells) + "\n")
    r = run_cli("predict", str(wine_onnx), "--input", str(tmp_path / "gap.csv"))
    assert r.code == 2 and f"gap.csv:2: column '{names[3]}': is empty (missing value)" in r.err


def test_non_finite_inputs_are_refused_and_json_has_no_nan(wine_onnx: Path, tmp_path: Path) -> None:
    x, _, _ = _wine_raw()
    bad = x[:3].copy()
    bad[1, 4] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    r = run_cli("predict", str(wine_onnx), "--input", str(tmp_path / "nan.npy"), "--json")
    assert r.code == 2 and "1 NaN/infinite value(s) (the first at index [1, 4])" in r.err
    model = load(wine_onnx)
    with pytest.raises(UsageError, match="NaN/infinite"):
        model(np.full((1, 13), np.inf, np.float32))
    # outputs that overflow are null in JSON, with a warning; the text is valid JSON
    np.save(tmp_path / "huge.npy", np.full((1, 13), 3e38, np.float32))
    r = run_cli("predict", str(wine_onnx), "--input", str(tmp_path / "huge.npy"), "--preprocessed", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
    assert None in doc["outputs"]["output"][0] and "NaN/infinite" in r.err


def test_flattened_image_model_runs_on_an_image_file(tmp_path: Path) -> None:
    """A model trained on flattened digits (input (64,), preprocess image 8x8 flatten) takes a PNG:
    resized, scaled, standardised, then flattened as in training."""
    from PIL import Image

    spec, run = train_run(
        tmp_path,
        "specc: 1\nname: flat\ninputs: {x: {shape: [64]}}\nlayers: [linear: 10]\ntrain: {epochs: 1}\n",
        "digits",
    )
    out = tmp_path / "flat.onnx"
    assert run_cli("export", str(spec), "-w", str(run), "--out", str(out)).code == 0
    model = load(out)
    pre = model.info.preprocess
    assert pre is not None and pre.kind == "image" and pre.flatten and pre.size == [8, 8]
    from sklearn.datasets import load_digits

    digit = load_digits().images[0]  # 0..16
    Image.fromarray((digit * 255 / 16).round().astype(np.uint8)).save(tmp_path / "d.png")
    result = model.predict_file(tmp_path / "d.png", top_k=1)
    mean, std = np.float32(pre.mean[0]), np.float32(pre.std[0])
    manual = ((np.asarray(Image.open(tmp_path / "d.png"), np.float32) / 255 - mean) / std).reshape(1, 64)
    np.testing.assert_allclose(result["outputs"]["output"], model(manual)["output"], rtol=1e-5, atol=1e-5)
    # the same digit as a raw array in the training data's units (0..16, scale 1/16), flat or 8x8
    np.save(tmp_path / "raw.npy", digit[None].astype(np.float32))
    np.save(tmp_path / "flat.npy", digit.reshape(1, 64).astype(np.float32))
    a, b = model.predict_file(tmp_path / "raw.npy"), model.predict_file(tmp_path / "flat.npy")
    np.testing.assert_allclose(a["outputs"]["output"], b["outputs"]["output"], rtol=1e-6)
    np.testing.assert_allclose(a["outputs"]["output"], result["outputs"]["output"], atol=2e-2)
    np.save(tmp_path / "wrong.npy", np.zeros((2, 9, 9), np.float32))
    with pytest.raises(UsageError, match=r"takes 1x8x8 images flattened to 64 values"):
        model.predict_file(tmp_path / "wrong.npy")


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` x ``height`` pixels (and holds none)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_image_folder_bulk_and_forged_sizes(tmp_path: Path) -> None:
    """A folder of images is predicted in batches into a CSV; an image claiming 10^8 pixels is not
    decoded; a model whose metadata claims an enormous preprocess size is refused at load."""
    from PIL import Image

    from specc.export.metadata import get_metadata

    rng = np.random.default_rng(0)
    data = tmp_path / "imgs"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (10, 10), np.uint8)).save(data / c / f"{i}.png")
    spec, run = train_run(
        tmp_path,
        "specc: 1\nname: img\ninputs: {image: {shape: [1, 10, 10]}}\n"
        "layers: [flatten, linear: 2]\ntrain: {epochs: 1, val_fraction: 0.2, test_fraction: 0.2}\n",
        str(data),
    )
    out = tmp_path / "img.onnx"
    assert run_cli("export", str(spec), "-w", str(run), "--out", str(out)).code == 0
    r = run_cli(
        "predict", str(out), "--input", str(data), "--output", str(tmp_path / "p.csv"), "--batch-size", "5"
    )
    assert r.code == 0, r.err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert [r_["id"] for r_ in rows] == [f"{c}/{i}.png" for c in "ab" for i in range(6)]
    assert {r_["label"] for r_ in rows} <= {"a", "b"}
    r = run_cli("eval", str(out), "--data", str(data), "--json")  # sub-folder names are the labels
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["samples"] == 12 and [c["support"] for c in report["per_class"]] == [6, 6]
    assert report["accuracy"] == pytest.approx(np.mean([r_["label"] == r_["id"][0] for r_ in rows]))
    (tmp_path / "bomb.png").write_bytes(_png_header(10_000, 10_000))  # 10^8 pixels, 57 bytes
    r = run_cli("predict", str(out), "--input", str(tmp_path / "bomb.png"))
    assert r.code == 2 and "is 10000x10000 pixels, over the budget of 89,478,485; refusing to decode" in r.err
    proto = onnx.load(str(out))
    meta = get_metadata(proto)
    pre = json.loads(meta["specc.preprocess"])
    pre["size"] = [50000, 50000]
    for p in proto.metadata_props:
        if p.key == "specc.preprocess":
            p.value = json.dumps(pre)
    onnx.save(proto, str(tmp_path / "forged.onnx"))
    r = run_cli("predict", str(tmp_path / "forged.onnx"), "--input", str(data / "a" / "0.png"))
    assert r.code == 2 and "model metadata 'specc.preprocess' is invalid" in r.err
    assert "less than or equal to 16384" in r.err


def test_array_headers_are_checked_before_reading(wine_onnx: Path, tmp_path: Path) -> None:
    """An .npy whose header claims far more data than the file holds (285 TiB here) is refused
    before anything is allocated; so is a .npz member over the budget."""
    from numpy.lib import format as npf

    with (tmp_path / "forged.npy").open("wb") as f:
        npf.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (6 * 10**12, 13)})
        f.write(b"\0" * 104)
    r = run_cli("predict", str(wine_onnx), "--input", str(tmp_path / "forged.npy"))
    assert r.code == 2, r.err
    assert "the header claims 312,000,000,000,000 bytes" in r.err and "truncated or forged" in r.err
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    r = run_cli("predict", str(wine_onnx), "--input", str(tmp_path / "obj.npy"))
    assert r.code == 2 and "object (pickled) arrays are refused" in r.err


def test_csv_rows_of_a_table_get_the_runs_encoding(tmp_path: Path) -> None:
    """A table with a categorical column and missing values: the runtime's CSV route turns every row
    into exactly the features the data layer trained on (imputation, standardisation, one-hot)."""
    from specc.contracts.run_folder import RunFolder
    from specc.runtime.inputs import read_csv

    rng = np.random.default_rng(0)
    lines = ["kind,x1,x2,shade"]
    for i in range(60):
        x2 = "" if i % 7 == 0 else f"{rng.normal():.3f}"
        lines.append(
            f"{'up' if i % 2 else 'down'},{rng.normal() + 3 * (i % 2):.3f},{x2},{['dark', 'light'][i % 3 == 0]}"
        )
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    spec, run = train_run(
        tmp_path,
        "specc: 1\nname: t\ninputs: {x: {shape: [4]}}\nlayers: [linear: 2]\ntrain: {epochs: 1}\n",
        str(tmp_path / "t.csv"),
        "--label",
        "kind",
    )
    record = RunFolder(run).read_data()
    assert record.data.label == "kind"
    raw = np.concatenate([record.preprocess.from_table(t, (4,)) for t in read_csv(tmp_path / "t.csv", 16)])
    ds = record.data.load()
    trained = np.concatenate([s.x for s in (ds.train, ds.val, ds.test)])
    order = np.lexsort(raw.T[::-1])
    np.testing.assert_allclose(raw[order], trained[np.lexsort(trained.T[::-1])], rtol=1e-5, atol=1e-6)
    out = tmp_path / "t.onnx"
    assert run_cli("export", str(spec), "-w", str(run), "--out", str(out)).code == 0
    r = run_cli("eval", str(out), "--data", str(tmp_path / "t.csv"), "--label", "kind", "--json")
    assert r.code == 0 and json.loads(r.out)["samples"] == 60, r.err
