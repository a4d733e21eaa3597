"""Tests of the data layer of ``specc train`` (specc.data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specc.data import BOS_ID, EOS_ID, PAD_ID, SYNTHETIC_VOCAB_SIZE, Dataset, load_dataset
from specc.errors import DataError


def _all_y(ds: Dataset) -> np.ndarray:
    return np.concatenate([ds.train.y, ds.val.y, ds.test.y])


@pytest.mark.parametrize(
    ("name", "shape", "total", "classes"),
    [
        ("iris", (4,), 150, 3),
        ("wine", (13,), 178, 3),
        ("breast_cancer", (30,), 569, 2),
        ("digits", (1, 8, 8), 1797, 10),
    ],
)
def test_sklearn_sets_load(name: str, shape: tuple[int, ...], total: int, classes: int) -> None:
    ds = load_dataset(name, input_shape=shape, input_dtype="float32")
    assert ds.task == "classification"
    assert ds.num_classes == classes and ds.class_names is not None and len(ds.class_names) == classes
    assert len(ds.train) + len(ds.val) + len(ds.test) == total
    assert len(ds.test) == round(total * 0.2) and len(ds.val) == round(total * 0.1)
    for sp in (ds.train, ds.val, ds.test):
        assert sp.x.shape[1:] == shape and sp.x.dtype == np.float32
        assert sp.y.dtype == np.int64 and sp.y.ndim == 1
    assert set(np.unique(_all_y(ds))) == set(range(classes))
    # standardised with train statistics only
    axes = (0,) if len(shape) == 1 else (0, 2, 3)
    np.testing.assert_allclose(ds.train.x.mean(axis=axes), 0.0, atol=1e-4)
    assert isinstance(ds.preprocess["mean"], list) and isinstance(ds.preprocess["std"], list)


def test_wildcard_and_none_shapes() -> None:
    assert load_dataset("iris", input_shape=("F",), input_dtype="float32").sample_shape == (4,)
    assert load_dataset("wine", input_shape=None, input_dtype="bfloat16").sample_shape == (13,)


def test_same_seed_same_splits_other_seed_differs() -> None:
    a = load_dataset("digits", input_shape=(1, 8, 8), input_dtype="float32", seed=3)
    b = load_dataset("digits", input_shape=(1, 8, 8), input_dtype="float32", seed=3)
    c = load_dataset("digits", input_shape=(1, 8, 8), input_dtype="float32", seed=4)
    for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        np.testing.assert_array_equal(sa.x, sb.x)
        np.testing.assert_array_equal(sa.y, sb.y)
    assert not np.array_equal(a.test.y, c.test.y)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_digits_resized(shape: tuple[int, int, int]) -> None:
    ds = load_dataset("digits", input_shape=shape, input_dtype="float32")
    c, h, w = shape
    assert ds.train.x.shape[1:] == shape
    assert f"digits: resized 1x8x8 -> {c}x{h}x{w}" in ds.notes
    assert ds.preprocess["size"] == [h, w] and ds.preprocess["channels"] == c
    assert len(ds.preprocess["mean"]) == c  # type: ignore[arg-type]
    if c == 3:
        np.testing.assert_array_equal(ds.train.x[:, 0], ds.train.x[:, 2])


@pytest.mark.parametrize(("length", "note"), [(64, None), (784, "digits: resized 1x8x8 -> 1x28x28")])
def test_digits_flattened(length: int, note: str | None) -> None:
    ds = load_dataset("digits", input_shape=(length,), input_dtype="float32")
    assert ds.train.x.shape[1:] == (length,)
    assert ds.preprocess["flatten"] is True
    if note:
        assert note in ds.notes


@pytest.mark.parametrize(
    ("source", "shape", "data_shape"),
    [
        ("digits", (2, 8, 8), "(1, 8, 8)"),
        ("digits", (50,), "(1, 8, 8)"),
        ("iris", (5,), "(4,)"),
        ("iris", (1, 2, 2), "(4,)"),
    ],
)
def test_shape_mismatch_names_both_shapes(source: str, shape: tuple[int, ...], data_shape: str) -> None:
    with pytest.raises(DataError) as err:
        load_dataset(source, input_shape=shape, input_dtype="float32")
    msg = str(err.value)
    assert data_shape in msg
    assert str(shape) in msg
    assert source in msg


def test_float_data_refuses_int_dtype_and_tokens_refuse_float() -> None:
    with pytest.raises(DataError, match="int64"):
        load_dataset("iris", input_shape=(4,), input_dtype="int64")
    with pytest.raises(DataError, match="float32"):
        load_dataset("copy", input_shape=(8,), input_dtype="float32")


def test_unknown_source_lists_accepted() -> None:
    with pytest.raises(DataError) as err:
        load_dataset("digts", input_shape=None, input_dtype="float32")
    msg = str(err.value)
    assert "digts" in msg and "did you mean 'digits'" in msg
    assert "text:stdlib" in msg and ".csv" in msg and "image folder" in msg


@pytest.mark.parametrize("name", ["nope.csv", "nope.npz", "nope.txt", "sub/nope", "x.npy"])
def test_missing_file_names_path(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    with pytest.raises(DataError) as err:
        load_dataset(str(path), input_shape=None, input_dtype="float32")
    assert str(path) in str(err.value)


def test_missing_text_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "corpus"
    with pytest.raises(DataError, match="does not exist") as err:
        load_dataset(f"text:{path}", input_shape=None, input_dtype="int64")
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------- CSV


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_string_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = ["virginica", "setosa", "versicolor"]
    lines = ["a,b,c,species"]
    for i in range(30):
        a, b, c = rng.normal(size=3)
        lines.append(f"{a},{b},{c},{names[i % 3]}")
    path = _write(tmp_path / "flowers.csv", "\n".join(lines) + "\n")
    ds = load_dataset(str(path), input_shape=(3,), input_dtype="float32", seed=1)
    assert ds.task == "classification"
    assert ds.class_names == sorted(names) and ds.num_classes == 3
    assert ds.train.x.shape[1:] == (3,) and ds.train.x.dtype == np.float32
    assert len(ds.train) + len(ds.val) + len(ds.test) == 30
    assert np.bincount(_all_y(ds)).tolist() == [10, 10, 10]
    assert ds.preprocess["feature_names"] == ["a", "b", "c"]


def test_csv_label_column_and_regression(tmp_path: Path) -> None:
    rows = [f"{i % 3},{i * 0.5},{i * 1.5 + 0.25}" for i in range(20)]
    path = _write(tmp_path / "reg.csv", "label,u,v\n" + "\n".join(rows))
    ds = load_dataset(str(path), input_shape=(2,), input_dtype="float32")
    assert ds.task == "classification" and ds.num_classes == 3  # integer 'label' column, not the last
    ds2 = load_dataset(str(path), input_shape=(2,), input_dtype="float32", task="regression")
    assert ds2.task == "regression" and ds2.train.y.dtype == np.float32 and ds2.num_classes is None
    path3 = _write(tmp_path / "reg3.csv", "u,v,price\n" + "\n".join(rows))
    ds3 = load_dataset(str(path3), input_shape=(2,), input_dtype="float32")
    assert ds3.task == "regression"


@pytest.mark.parametrize(
    ("bad_line", "match"),
    [
        ("1.0,2.0", "expected 3 fields, found 2"),
        ("1.0,inf,x", "column 'b' holds an infinite value"),
        ("1.0,2,", "the label column 'label' is empty"),
    ],
)
def test_csv_bad_row_names_path_and_line(tmp_path: Path, bad_line: str, match: str) -> None:
    path = _write(tmp_path / "bad.csv", f"a,b,label\n1,2,x\n\n3,4,y\n{bad_line}\n5,6,x\n")
    with pytest.raises(DataError, match=match) as err:
        load_dataset(str(path), input_shape=None, input_dtype="float32")
    assert f"{path}:5:" in str(err.value)


def test_csv_without_header(tmp_path: Path) -> None:
    path = _write(tmp_path / "nohead.csv", "1,2,0\n3,4,1\n")
    with pytest.raises(DataError, match="header") as err:
        load_dataset(str(path), input_shape=None, input_dtype="float32")
    assert str(path) in str(err.value)


# -------------------------------------------------------------------------------------- npz / npy


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = rng.integers(0, 4, size=60)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset(str(path), input_shape=(5,), input_dtype="float32", seed=7)
    assert ds.task == "classification" and ds.num_classes == int(y.max()) + 1
    mean = np.asarray(ds.preprocess["mean"])
    std = np.asarray(ds.preprocess["std"])
    back = np.concatenate([ds.train.x, ds.val.x, ds.test.x]) * std + mean
    ys = _all_y(ds)
    # every original (x, y) pair comes back exactly once
    order = np.lexsort(back.T[::-1])
    orig_order = np.lexsort(x.T[::-1])
    np.testing.assert_allclose(back[order], x[orig_order], atol=1e-5)
    np.testing.assert_array_equal(ys[order], y[orig_order])
    # statistics are those of the training split only
    np.testing.assert_allclose((ds.train.x * std + mean).mean(0), mean, atol=1e-5)
    assert len(ds.train) == 42 and len(ds.val) == 6 and len(ds.test) == 12


def test_npz_with_own_test_split_and_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "imgs.npz"
    np.savez(
        path,
        x_train=rng.integers(0, 256, size=(40, 6, 6, 3), dtype=np.uint8),
        y_train=rng.integers(0, 2, size=40),
        x_test=rng.integers(0, 256, size=(10, 6, 6, 3), dtype=np.uint8),
        y_test=np.arange(10) % 2,
    )
    ds = load_dataset(str(path), input_shape=(3, 6, 6), input_dtype="float32")
    assert ds.train.x.shape[1:] == (3, 6, 6)
    assert len(ds.test) == 10 and ds.test.y.tolist() == (np.arange(10) % 2).tolist()
    assert len(ds.val) == 4 and len(ds.train) == 36
    assert ds.preprocess["kind"] == "image" and ds.preprocess["scale"] == pytest.approx(1 / 255)
    assert any("moved channels first" in n for n in ds.notes)


def test_npy_pair_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    np.save(tmp_path / "x.npy", rng.normal(size=(30, 2, 4)).astype(np.float32))
    np.save(tmp_path / "y.npy", rng.normal(size=(30, 3)))
    ds = load_dataset(str(tmp_path / "x.npy"), input_shape=(8,), input_dtype="float32")
    assert ds.task == "regression" and ds.train.y.shape[1:] == (3,) and ds.train.y.dtype == np.float32
    assert ds.train.x.shape[1:] == (8,)


def test_npy_without_labels(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((10, 2)))
    with pytest.raises(DataError, match="y.npy"):
        load_dataset(str(tmp_path / "x.npy"), input_shape=None, input_dtype="float32")
    np.save(tmp_path / "feats.npy", np.zeros((10, 2)))
    with pytest.raises(DataError, match="feats.npy"):
        load_dataset(str(tmp_path / "feats.npy"), input_shape=None, input_dtype="float32")


def test_npz_refusals(tmp_path: Path) -> None:
    nan = tmp_path / "nan.npz"
    x = np.ones((20, 2))
    x[3, 1] = np.nan
    np.savez(nan, x=x, y=np.zeros(20, dtype=np.int64))
    with pytest.raises(DataError, match="NaN"):
        load_dataset(str(nan), input_shape=None, input_dtype="float32")
    few = tmp_path / "few.npz"
    np.savez(few, x=np.ones((2, 2)), y=np.zeros(2, dtype=np.int64))
    with pytest.raises(DataError, match="too few"):
        load_dataset(str(few), input_shape=None, input_dtype="float32")
    keys = tmp_path / "keys.npz"
    np.savez(keys, a=np.ones(3))
    with pytest.raises(DataError, match="found a") as err:
        load_dataset(str(keys), input_shape=None, input_dtype="float32")
    assert str(keys) in str(err.value)
    obj = tmp_path / "obj.npz"
    np.savez(obj, x=np.array([{"a": 1}] * 10, dtype=object), y=np.zeros(10))
    with pytest.raises(DataError) as err:
        load_dataset(str(obj), input_shape=None, input_dtype="float32")
    assert str(obj) in str(err.value)
    junk = _write(tmp_path / "junk.npz", "not a zip")
    with pytest.raises(DataError) as err:
        load_dataset(str(junk), input_shape=None, input_dtype="float32")
    assert str(junk) in str(err.value)


# ------------------------------------------------------------------------------------ image folder


def _image_folder(root: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, size in (("cat", (20, 14)), ("dog", (12, 12))):
        (root / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(root / cls / f"{i}.png")
    return root


def test_image_folder(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    ds = load_dataset(str(root), input_shape=(3, 16, 16), input_dtype="float32")
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.train.x.shape[1:] == (3, 16, 16) and ds.train.x.dtype == np.float32
    assert len(ds.train) + len(ds.val) + len(ds.test) == 8
    assert np.bincount(_all_y(ds)).tolist() == [4, 4]
    grey = load_dataset(str(root), input_shape=(1, 8, 8), input_dtype="float32")
    assert grey.train.x.shape[1:] == (1, 8, 8) and grey.preprocess["channels"] == 1


def test_image_folder_corrupt_file_named(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError) as err:
        load_dataset(str(root), input_shape=(3, 16, 16), input_dtype="float32")
    assert str(bad) in str(err.value)


def test_image_folder_bad_shape(tmp_path: Path) -> None:
    root = _image_folder(tmp_path / "imgs")
    with pytest.raises(DataError, match=r"\(4, 16, 16\)"):
        load_dataset(str(root), input_shape=(4, 16, 16), input_dtype="float32")


# ---------------------------------------------------------------------------------------------- text


def test_text_stdlib() -> None:
    ds = load_dataset("text:stdlib", input_shape=(64,), input_dtype="int64")
    vocab = ds.preprocess["vocab"]
    assert isinstance(vocab, list) and vocab[0] == "" and len(vocab) < 200
    assert ds.task == "language_model" and ds.num_classes == len(vocab)
    total_chars = sum(sp.x.size for sp in (ds.train, ds.val, ds.test))
    assert total_chars > 200_000
    for sp in (ds.train, ds.val, ds.test):
        assert sp.x.dtype == np.int64 and sp.x.shape[1:] == (64,) and sp.y.shape == sp.x.shape
        np.testing.assert_array_equal(sp.x[:, 1:], sp.y[:, :-1])  # y is x shifted by one
        np.testing.assert_array_equal(sp.x[1:, 0], sp.y[:-1, -1])  # contiguous windows
        assert sp.x.min() >= 1 and sp.x.max() < len(vocab)
    text = "".join(vocab[i] for i in ds.train.x[:20].ravel())
    assert " the " in text
    again = load_dataset("text:stdlib", input_shape=("T",), input_dtype="int64", seq_len=64)
    np.testing.assert_array_equal(again.test.x, ds.test.x)


def test_text_file_and_errors(tmp_path: Path) -> None:
    path = _write(tmp_path / "story.txt", "the quick brown fox jumps over the lazy dog. " * 50)
    ds = load_dataset(str(path), input_shape=(16,), input_dtype="int64")
    assert ds.task == "language_model" and ds.train.x.shape[1:] == (16,)
    ds2 = load_dataset(f"text:{path}", input_shape=None, input_dtype="int64", seq_len=16)
    np.testing.assert_array_equal(ds.train.x, ds2.train.x)
    empty = _write(tmp_path / "empty.txt", "  \n")
    with pytest.raises(DataError, match="empty") as err:
        load_dataset(str(empty), input_shape=None, input_dtype="int64")
    assert str(empty) in str(err.value)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"abc\xff\xfe\x00def")
    with pytest.raises(DataError, match="UTF-8") as err:
        load_dataset(f"text:{binary}", input_shape=None, input_dtype="int64")
    assert str(binary) in str(err.value)
    short = _write(tmp_path / "short.txt", "tiny text")
    with pytest.raises(DataError, match="too short"):
        load_dataset(str(short), input_shape=(16,), input_dtype="int64")
    with pytest.raises(DataError, match=r"seq_len 8 differs"):
        load_dataset(str(path), input_shape=(16,), input_dtype="int64", seq_len=8)


# ---------------------------------------------------------------------------------- synthetic seq2seq


def _target(row: np.ndarray) -> list[int]:
    eos = int(np.flatnonzero(row == EOS_ID)[0])
    assert (row[eos + 1 :] == PAD_ID).all()
    return [int(t) for t in row[:eos]]


@pytest.mark.parametrize("kind", ["copy", "reverse", "sort"])
def test_synthetic_seq2seq(kind: str) -> None:
    ds = load_dataset(kind, input_shape=(12,), input_dtype="int64", num_samples=400, seed=5)
    assert ds.task == "seq2seq" and ds.num_classes == SYNTHETIC_VOCAB_SIZE
    assert ds.preprocess == {
        "kind": "tokens",
        "pad": PAD_ID,
        "bos": BOS_ID,
        "eos": EOS_ID,
        "vocab_size": SYNTHETIC_VOCAB_SIZE,
        "seq_len": 12,
        "symbols": [3, 12],
    }
    assert len(ds.train) + len(ds.val) + len(ds.test) == 400
    for sp in (ds.train, ds.val, ds.test):
        assert sp.x.shape[1:] == (12,) and sp.y.shape[1:] == (13,)
        assert sp.x.dtype == np.int64 and sp.y.dtype == np.int64
        for xr, yr in zip(sp.x, sp.y, strict=True):
            src = xr[xr != PAD_ID].tolist()
            assert len(src) >= 1 and all(3 <= t <= 12 for t in src)
            assert (xr[len(src) :] == PAD_ID).all()
            want = {"copy": src, "reverse": src[::-1], "sort": sorted(src)}[kind]
            assert _target(yr) == want
    again = load_dataset(kind, input_shape=(12,), input_dtype="int64", num_samples=400, seed=5)
    np.testing.assert_array_equal(again.train.y, ds.train.y)
    other = load_dataset(kind, input_shape=(12,), input_dtype="int64", num_samples=400, seed=6)
    assert not np.array_equal(other.train.x, ds.train.x)


# ---------------------------------------------------------------------------------------- augment


def test_augmenter_is_a_pure_function_of_seed_epoch_and_index() -> None:
    from specc.data import make_augmenter

    x = np.arange(3 * 6 * 5, dtype=np.float32).reshape(3, 6, 5) / 90.0
    aug = make_augmenter(["resized_crop", "crop", "flip", "color_jitter"], seed=1, crop_padding=2)
    assert aug is not None and aug.kinds == ("resized_crop", "crop", "flip", "color_jitter")
    a, b = aug.array(x, epoch=2, index=7), aug.array(x, epoch=2, index=7)
    assert a.shape == x.shape and a.dtype == np.float32 and np.array_equal(a, b)
    others = [
        aug.array(x, 3, 7),
        aug.array(x, 2, 8),
        make_augmenter(["resized_crop", "crop", "flip", "color_jitter"], 2).array(x, 2, 7),
    ]  # type: ignore[union-attr]
    assert all(not np.array_equal(a, o) for o in others)
    assert 0.0 <= a.min() and a.max() <= 1.0  # jittered pixel values stay in [0, 1]
    crop_flip = make_augmenter("crop_flip", seed=0)
    assert crop_flip is not None and crop_flip.kinds == ("crop", "flip")
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    windows = [padded[:, r : r + 6, s : s + 5] for r in range(5) for s in range(5)]
    for i in range(20):  # each output is a flipped-or-not window of the zero-padded input
        out = crop_flip.array(x, 0, i)
        assert any(np.array_equal(out, w) or np.array_equal(out, w[:, :, ::-1]) for w in windows)
    assert make_augmenter("none", seed=0) is None
