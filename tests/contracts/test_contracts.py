"""The contract models: today's preprocessing records of every data source validate, bad or
oversized ones are refused with the field named, and the ONNX metadata round-trips through props."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from specc.contracts.onnx_metadata import OnnxMetadata, TensorEntry
from specc.contracts.preprocess import (
    FeaturesPreprocess,
    ImagePreprocess,
    TextPreprocess,
    parse_preprocess,
    preprocess_json,
)
from specc.data import load_dataset
from specc.errors import UsageError


def _sources(tmp_path: Path) -> list[tuple[str, tuple[int | str, ...], str]]:
    from PIL import Image

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "seq.npz", x=rng.normal(size=(40, 5, 3)), y=rng.integers(0, 2, 40))
    np.savez(
        tmp_path / "u8.npz", x=rng.integers(0, 255, (40, 1, 4, 4), dtype=np.uint8), y=rng.integers(0, 2, 40)
    )
    (tmp_path / "t.csv").write_text("a,b,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(30)))
    for c in ("p", "q"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (6, 6, 3), np.uint8)).save(
                tmp_path / "imgs" / c / f"{i}.png"
            )
    return [
        ("digits", (1, 12, 12), "float32"),
        ("digits", (64,), "float32"),
        ("wine", (13,), "float32"),
        ("text:stdlib", (16,), "int64"),
        ("reverse", (8,), "int64"),
        (str(tmp_path / "seq.npz"), (5, 3), "float32"),
        (str(tmp_path / "u8.npz"), (1, 4, 4), "float32"),
        (str(tmp_path / "t.csv"), (2,), "float32"),
        (str(tmp_path / "imgs"), (3, 6, 6), "float32"),
    ]


def test_every_data_source_gives_a_valid_record_that_fits_its_input(tmp_path: Path) -> None:
    """The data layer's ``Dataset.preprocess`` dicts (one writer) validate as they are, round-trip
    through JSON unchanged, and fit the input shape they were made for."""
    for source, shape, dtype in _sources(tmp_path):
        ds = load_dataset(source, input_shape=shape, input_dtype=dtype, num_samples=60)
        record = parse_preprocess(ds.preprocess, source)
        assert record.kind == ds.preprocess["kind"]
        assert preprocess_json(record) == {k: v for k, v in ds.preprocess.items() if v is not None} | (
            {"flatten": False} if record.kind == "image" and "flatten" not in ds.preprocess else {}
        )
        assert record.fits(shape) is None, (source, record.fits(shape))
        assert parse_preprocess(json.loads(json.dumps(preprocess_json(record))), source) == record


def test_raw_arrays_get_the_recorded_standardisation(tmp_path: Path) -> None:
    """from_array applied to the raw values reproduces the data layer's training inputs exactly."""
    from sklearn.datasets import load_wine

    ds = load_dataset("wine", input_shape=(13,), input_dtype="float32", seed=5)
    pre = parse_preprocess(ds.preprocess, "wine")
    raw = load_wine().data.astype(np.float32)
    out = pre.from_array(raw, (13,))
    # every training sample is one standardised raw row
    matches = [np.abs(out - row).max(axis=1).min() for row in ds.train.x[:20]]
    assert max(matches) < 1e-5


@pytest.mark.parametrize(
    ("record", "message"),
    [
        (
            {"kind": "image", "mean": [0.5], "std": [0.2], "size": [50000, 50000]},
            "less than or equal to 16384",
        ),
        (
            {"kind": "image", "mean": [0.5], "std": [0.2], "size": [16000, 16000], "channels": 3},
            "over the budget",
        ),
        ({"kind": "image", "mean": [0.5], "std": [0.0]}, "greater than 0"),
        ({"kind": "features", "mean": [0.1, 0.2], "std": [1.0]}, "mean has 2 values but std 1"),
        ({"kind": "features", "mean": [float("nan")], "std": [1.0]}, "finite number"),
        ({"kind": "features", "mean": [1], "std": [1], "colour": "red"}, "Extra inputs are not permitted"),
        ({"kind": "text", "vocab": ["", "a"], "pad": 7}, "pad 7 / unk 0 are not ids"),
        ({"kind": "pixels", "mean": [0]}, "does not match any of the expected tags"),
        ({"kind": "image", "mean": ["0.5"], "std": [1.0]}, "valid number"),
    ],
)
def test_bad_records_are_refused_naming_the_field(record: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match="RUN/data.json is invalid") as exc:
        parse_preprocess(record, "RUN/data.json")
    assert message in str(exc.value)


def test_fits_names_the_mismatch() -> None:
    image = ImagePreprocess(mean=[0.5], std=[0.2], size=[28, 28], channels=1)
    assert image.fits((1, 28, 28)) is None
    assert "images of size [28, 28] do not fit the input shape (1, 12, 12)" == image.fits((1, 12, 12))
    assert image.fits((3, 28, 28)) == "1-channel images do not fit the input shape (3, 28, 28)"
    flat = ImagePreprocess(mean=[0.5], std=[0.2], size=[8, 8], channels=1, flatten=True)
    assert flat.fits((64,)) is None and flat.fits((63,))
    assert FeaturesPreprocess(mean=[0.0] * 4, std=[1.0] * 4).fits((5,))
    assert TextPreprocess(vocab=["", "a"]).fits(("seq",)) is None


def test_onnx_metadata_round_trips_and_names_a_bad_key() -> None:
    meta = OnnxMetadata(
        version="0.1.0",
        spec_name="m",
        spec_hash="a" * 64,
        inputs=[TensorEntry(name="x", shape=["batch", 4], dtype="float32")],
        outputs=[TensorEntry(name="y", shape=["batch", 3], dtype="float32")],
        labels=["a", "b", "c"],
        preprocess=FeaturesPreprocess(mean=[0.0] * 4, std=[1.0] * 4),
        task="classification",
    )
    props = meta.to_props()
    assert props["specc.spec_name"] == "m" and json.loads(props["specc.labels"]) == ["a", "b", "c"]
    assert OnnxMetadata.from_props({**props, "other.tool": "kept elsewhere"}) == meta
    assert OnnxMetadata.from_props({}) == OnnxMetadata()
    with pytest.raises(UsageError, match="model metadata 'specc.task' is invalid"):
        OnnxMetadata.from_props({**props, "specc.task": "painting"})
    with pytest.raises(UsageError, match="model metadata 'specc.labels' is not valid JSON"):
        OnnxMetadata.from_props({**props, "specc.labels": "[1,"})
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(UsageError, match="'specc.inputs' is nested too deeply"):
        OnnxMetadata.from_props({**props, "specc.inputs": deep})


def test_a_table_encoding_is_applied_to_csv_rows() -> None:
    """The record a table's data layer writes (numeric columns with imputation, one-hot categories)
    turns CSV rows into the features it trained on: columns by name, missing values imputed, a
    missing or unseen category all zeros."""
    from specc.contracts.preprocess import Table

    record = {
        "kind": "features",
        "mean": [1.0, 10.0],
        "std": [2.0, 5.0],
        "feature_names": ["a", "b", "color=blue", "color=red"],
        "columns": ["a", "b"],
        "label_column": "y",
        "impute": [0.5, 12.0],
        "categories": {"color": ["blue", "red"]},
    }
    pre = parse_preprocess(record, "data.json")
    assert isinstance(pre, FeaturesPreprocess) and pre.width == 4 and pre.fits((4,)) is None
    table = Table(
        ["color", "y", "b", "a"],
        [["red", "1", "20", "3"], ["", "0", "NA", "1"], ["green", "1", "5", ""]],
        "t.csv",
    )
    x = pre.from_table(table, (4,))
    np.testing.assert_allclose(
        x, [[1.0, 2.0, 0.0, 1.0], [0.0, 0.4, 0.0, 0.0], [-0.25, -1.0, 0.0, 0.0]], rtol=1e-6
    )
    raw = np.array([[3.0, 20.0, 0.0, 1.0]], np.float32)  # raw arrays: numeric part standardised
    np.testing.assert_allclose(pre.from_array(raw, (4,)), [[1.0, 2.0, 0.0, 1.0]])
    with pytest.raises(UsageError, match="missing: color"):
        pre.from_table(Table(["a", "b"], [["1", "2"]], "t.csv"), (4,))
    with pytest.raises(UsageError, match="4 feature_names for 5 features"):
        parse_preprocess({**record, "categories": {"color": ["blue", "red", "green"]}}, "data.json")


def test_run_weights_are_the_final_file_else_the_newest_valid_checkpoint(tmp_path: Path) -> None:
    """``RunFolder.weights_file()`` (export, ``specc weights``, ``--init-from``, ``specc.load_run``)
    reads the checkpoints :mod:`specc.train.checkpoint` writes, without training code."""
    import torch

    from specc.contracts.run_folder import RunFolder
    from specc.nn import save_weights
    from specc.train.checkpoint import save_checkpoint

    run = RunFolder(tmp_path)
    with pytest.raises(UsageError, match="no model.safetensors and no valid checkpoint"):
        run.weights_file()
    model = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 1, model.state_dict(), {})
    newest = save_checkpoint(tmp_path, 2, model.state_dict(), {})
    assert run.weights_file() == newest / "model.safetensors"
    (newest / "model.safetensors").write_bytes(b"damaged")  # fails its manifest's SHA-256
    assert run.weights_file() == tmp_path / "checkpoints" / "step-00000001" / "model.safetensors"
    final = save_weights(model, tmp_path / "model.safetensors")
    assert run.weights_file() == final
