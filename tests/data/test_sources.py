"""Data read on demand and bad data: image folders (split layout, stratified), tar shards,
memory-mapped .npy, streamed text, tables (label, categories, missing values), budgets."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import specc.data.datasets as datasets_module
from specc.data import ArraySplit, load_dataset, split_indices
from specc.data.images import ImageSplit
from specc.errors import DataError


def _png(path: Path, rng: np.random.Generator, size: tuple[int, int] = (10, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)


def _folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls, n in counts.items():
        for i in range(n):
            _png(root / cls / f"{i}.png", rng)
    return root


def test_split_indices_stratified_and_pure() -> None:
    labels = np.repeat([0, 1, 2], [60, 30, 10])
    tr, va, te = split_indices(100, 3, 0.1, 0.2, "x", labels=labels)
    assert sorted([*tr, *va, *te]) == list(range(100))
    assert np.bincount(labels[va]).tolist() == [6, 3, 1] and np.bincount(labels[te]).tolist() == [12, 6, 2]
    again = split_indices(100, 3, 0.1, 0.2, "x", labels=labels)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again, strict=True))


def test_image_folder_is_lazy_stratified_and_reads_in_batches(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"a": 20, "b": 10})
    ds = load_dataset(
        str(root), input_shape=(3, 8, 8), input_dtype="float32", val_fraction=0.2, test_fraction=0.2
    )
    assert isinstance(ds.train, ImageSplit) and ds.train.lazy
    assert np.bincount(ds.val.y).tolist() == [4, 2] and np.bincount(ds.test.y).tolist() == [4, 2]
    batches = list(ds.train.batches(7))
    assert [len(b[1]) for b in batches] == [7, 7, 4]
    x = np.concatenate([b[0] for b in batches])
    assert x.shape == (18, 3, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)  # train statistics
    assert any("decoded on demand" in n for n in ds.notes)


def test_image_folder_train_val_test_layout(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _folder(root / "train", {"cat": 6, "dog": 6})
    _folder(root / "val", {"cat": 2, "dog": 1}, seed=1)
    ds = load_dataset(str(root), input_shape=(3, 8, 8), input_dtype="float32", test_fraction=0.25)
    assert ds.class_names == ["cat", "dog"]
    assert len(ds.val) == 3 and ds.val.y.tolist() == [0, 0, 1]
    assert len(ds.test) == 3 and len(ds.train) == 9  # test carved from train/, stratified
    _folder(root / "test", {"cow": 1}, seed=2)
    with pytest.raises(DataError, match="class folders the training folder lacks: cow"):
        load_dataset(str(root), input_shape=(3, 8, 8), input_dtype="float32")


def _shards(root: Path, folder: Path) -> None:
    root.mkdir(parents=True)
    files = sorted(folder.rglob("*.png"))
    for s in range(2):
        with tarfile.open(root / f"shard-{s:06d}.tar", "w") as tf:
            for i, f in enumerate(files[s::2]):
                key = f"{s}_{i:04d}"
                tf.add(f, arcname=f"{key}.png")
                cls = str(["a", "b"].index(f.parent.name)).encode()
                info = tarfile.TarInfo(f"{key}.cls")
                info.size = len(cls)
                tf.addfile(info, io.BytesIO(cls))


def test_tar_shards_decode_like_the_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "imgs", {"a": 6, "b": 6})
    _shards(tmp_path / "shards", folder)
    ds = load_dataset(str(tmp_path / "shards"), input_shape=(3, 8, 8), input_dtype="float32")
    assert ds.num_classes == 2 and len(ds.train) + len(ds.val) + len(ds.test) == 12
    x, y = ds.train.take(np.arange(len(ds.train)))
    assert x.shape == (len(ds.train), 3, 8, 8) and set(y.tolist()) == {0, 1}
    bad = tmp_path / "bad"
    bad.mkdir()
    with tarfile.open(bad / "s.tar", "w") as tf:
        tf.add(next(folder.rglob("*.png")), arcname="k1.png")
    with pytest.raises(DataError, match=r"sample 'k1' needs .* a class member \(k1.cls\)"):
        load_dataset(str(bad), input_shape=(3, 8, 8), input_dtype="float32")


def test_bad_images_are_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"a": 3, "b": 3})
    with pytest.raises(DataError, match=r"above the budget of 100 \(train.max_image_pixels\)") as err:
        load_dataset(str(root), input_shape=(3, 8, 8), input_dtype="float32", max_image_pixels=100)
    assert str(root / "a" / "0.png") in str(err.value)
    (root / "b" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="cannot read image") as err:
        load_dataset(str(root), input_shape=(3, 8, 8), input_dtype="float32")
    assert str(root / "b" / "notes.txt") in str(err.value)
    (root / "b" / "notes.txt").unlink()
    good = (root / "b" / "0.png").read_bytes()
    (root / "b" / "0.png").write_bytes(good[: len(good) // 2])  # truncated: the header still reads
    with pytest.raises(DataError, match="cannot read image .* truncated") as err:
        ds = load_dataset(str(root), input_shape=(3, 8, 8), input_dtype="float32")
        for sp in (ds.train, ds.val, ds.test):  # training images are decoded for the statistics
            sp.take(np.arange(len(sp)))
    assert str(root / "b" / "0.png") in str(err.value)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_dataset(str(empty), input_shape=(3, 8, 8), input_dtype="float32")
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(str(empty / "a"), input_shape=(3, 8, 8), input_dtype="float32")


def test_symbolic_spatial_axes_are_budgeted(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        for i in range(2):
            _png(tmp_path / "big" / cls / f"{i}.png", rng, size=(300, 200))
    with pytest.raises(DataError, match=r"size 200x300 of the first image .* data budget") as err:
        load_dataset(
            str(tmp_path / "big"), input_shape=(3, "H", "W"), input_dtype="float32", max_data_bytes=100_000
        )
    assert "give the spec fixed H and W" in str(err.value)
    ds = load_dataset(
        str(tmp_path / "big"),
        input_shape=(3, "H", "W"),
        input_dtype="float32",
        val_fraction=0,
        test_fraction=0,
    )
    assert ds.sample_shape == (3, 200, 300)


def test_nan_features_and_wrong_labels_are_named(tmp_path: Path) -> None:
    x = np.ones((20, 3), np.float32)
    x[13, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(20) % 2)
    with pytest.raises(DataError, match="row 13 holds NaN"):
        load_dataset(str(tmp_path / "nan.npz"), input_shape=None, input_dtype="float32")
    np.savez(tmp_path / "words.npz", x=np.ones((20, 3)), y=np.array(["a", "b"] * 10))
    with pytest.raises(DataError, match="regression but the labels are not numbers"):
        load_dataset(str(tmp_path / "words.npz"), input_shape=None, input_dtype="float32", task="regression")
    np.savez(tmp_path / "half.npz", x=np.ones((20, 3)), y=np.linspace(0, 1, 20))
    with pytest.raises(DataError, match="classification but the labels are not integers"):
        load_dataset(
            str(tmp_path / "half.npz"), input_shape=None, input_dtype="float32", task="classification"
        )


def test_memory_mapped_npy_equals_in_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 256, size=(60, 6, 6), dtype=np.uint8))
    np.save(tmp_path / "y.npy", np.arange(60) % 3)
    whole = load_dataset(str(tmp_path / "x.npy"), input_shape=(1, 6, 6), input_dtype="float32")
    monkeypatch.setattr(datasets_module, "MMAP_BYTES", 0)
    mapped = load_dataset(str(tmp_path / "x.npy"), input_shape=(1, 6, 6), input_dtype="float32")
    assert isinstance(whole.train, ArraySplit) and not isinstance(mapped.train, ArraySplit)
    for a, b in ((whole.train, mapped.train), (whole.val, mapped.val), (whole.test, mapped.test)):
        np.testing.assert_array_equal(a.y, b.y)
        np.testing.assert_allclose(a.x, b.x, atol=1e-5)
    assert mapped.preprocess["scale"] == whole.preprocess["scale"]
    bad = rng.normal(size=(30, 4)).astype(np.float32)
    bad[21, 2] = np.inf
    np.save(tmp_path / "x_bad.npy", bad)
    np.save(tmp_path / "y_bad.npy", np.arange(30) % 2)
    with pytest.raises(DataError, match="row 21 holds NaN or infinite"):
        load_dataset(str(tmp_path / "x_bad.npy"), input_shape=None, input_dtype="float32")


@pytest.mark.parametrize(
    "text", ["one two three four five six seven eight nine ten. " * 40, "héllo wörld\r\n" * 80]
)
def test_text_file_windows_equal_the_in_memory_ids(tmp_path: Path, text: str) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(text.encode())
    ds = load_dataset(str(path), input_shape=(16,), input_dtype="int64")
    assert ds.train.lazy == text.isascii()
    clean = text.replace("\r\n", "\n")
    vocab = ds.preprocess["vocab"]
    assert isinstance(vocab, list) and vocab == ["", *sorted(set(clean))]
    ids = np.asarray([vocab.index(c) for c in clean])
    x, y = ds.train.take(np.arange(len(ds.train)))
    np.testing.assert_array_equal(x.ravel(), ids[: x.size])
    np.testing.assert_array_equal(y.ravel(), ids[1 : x.size + 1])


def test_table_label_categories_and_missing_values(tmp_path: Path) -> None:
    rows = ["age,colour,income,kind"]
    for i in range(40):
        age = "" if i == 5 else str(20 + i)
        colour = ["red", "green", "blue", ""][i % 4]
        rows.append(f"{age},{colour},{1000 + 10 * i},{'yes' if i % 2 else 'no'}")
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    ds = load_dataset(str(path), input_shape=None, input_dtype="float32", label="kind")
    pre = ds.preprocess
    assert ds.class_names == ["no", "yes"] and ds.sample_shape == (5,)  # age, income + 3 colours
    assert pre["categories"] == {"colour": ["blue", "green", "red"]} and pre["label_column"] == "kind"
    assert pre["feature_names"] == ["age", "income", "colour=blue", "colour=green", "colour=red"]
    assert isinstance(pre["impute"], list) and len(pre["impute"]) == 2
    assert any("1 missing values imputed with the training mean" in n for n in ds.notes)
    assert ds.options["label"] == "kind"
    x = np.concatenate([ds.train.x, ds.val.x, ds.test.x])
    assert np.isfinite(x).all() and set(np.unique(x[:, 2:])) <= {0.0, 1.0}
    with pytest.raises(DataError, match="no column 'knd'.*did you mean 'kind'"):
        load_dataset(str(path), input_shape=None, input_dtype="float32", label="knd")
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow.csv as pcsv

    nulls = pcsv.ConvertOptions(strings_can_be_null=True)
    pq.write_table(pcsv.read_csv(path, convert_options=nulls), tmp_path / "t.parquet")
    again = load_dataset(str(tmp_path / "t.parquet"), input_shape=(5,), input_dtype="float32", label="kind")
    np.testing.assert_allclose(again.train.x, ds.train.x)
    with pytest.raises(DataError, match=r"samples of shape \(5,\) but the spec input shape is \(4,\)"):
        load_dataset(str(path), input_shape=(4,), input_dtype="float32", label="kind")


def test_split_reads_through_dataloader_workers_identically() -> None:
    torch = pytest.importorskip("torch")
    from specc.data import make_augmenter
    from specc.train.batches import ModelIO, SplitDataset, TrainBatches, make_loader

    ds = load_dataset("digits", input_shape=(1, 8, 8), input_dtype="float32")
    io_ = ModelIO(("image",), ((1, 8, 8),), ("float32",), "logits", (10,))
    aug = make_augmenter(
        ["crop", "flip", "color_jitter"], seed=0, mean=ds.preprocess["mean"], std=ds.preprocess["std"]
    )  # type: ignore[arg-type]
    runs = []
    for workers in (0, 2):
        sampler = TrainBatches(len(ds.train), 100, seed=0, rank=0, world=1)
        sampler.set_epoch(1, 3)
        loader = make_loader(
            SplitDataset(ds.train, ds.task, io_, aug), sampler, workers, persistent=workers > 0
        )
        runs.append([b for b in loader])
    assert len(runs[0]) == len(runs[1]) == 13 - 3
    for a, b in zip(*runs, strict=True):
        assert all(torch.equal(s, t) for s, t in zip(a, b, strict=True))


def test_data_layer_never_imports_torch() -> None:
    import subprocess
    import sys

    code = "import sys, specc.data, specc.data.images, specc.data.tables, specc.data.text; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
