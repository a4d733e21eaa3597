"""``specc train`` on data read through DataLoader workers: image folders, tables with --label, and
bad data met mid-run (a clean error naming the file, exit 2, no traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import run_cli
from PIL import Image

CNN = """specc: 1
name: tinyimg
inputs: {image: {shape: [3, 8, 8]}}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - act
  - global_avgpool
  - linear: {out_features: 2, name: logits}
train: {epochs: 1, batch_size: 8, num_workers: 1, augment: [resized_crop, flip, color_jitter]}
"""


def _images(root: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(root / cls / f"{i}.png")


def test_image_folder_with_workers_and_a_truncated_val_image(tmp_path: Path) -> None:
    spec = tmp_path / "cnn.yaml"
    spec.write_text(CNN)
    _images(tmp_path / "imgs" / "train", 8, 0)
    _images(tmp_path / "imgs" / "val", 2, 1)
    ok = run_cli(
        "train", str(spec), "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "r"), "--quiet"
    )
    assert ok.code == 0, ok.err
    data = json.loads((tmp_path / "r" / "data.json").read_text())
    assert data["sizes"] == {"train": 13, "val": 4, "test": 3}  # test carved from train/, stratified
    bad = tmp_path / "imgs" / "val" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:60])
    failed = run_cli(
        "train", str(spec), "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "r2"), "--quiet"
    )
    assert failed.code == 2, failed.err
    assert f"cannot read image '{bad}'" in failed.err and "Traceback" not in failed.err


def test_csv_with_label_column(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = ["kind,x1,x2,shade"]
    for i in range(60):
        k = i % 2
        lines.append(f"{'up' if k else 'down'},{rng.normal() + 2 * k:.3f},,{['dark', 'light'][i % 3 == 0]}")
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "mlp.yaml"
    spec.write_text(
        "specc: 1\nname: t\ninputs: {x: {shape: [4]}}\nlayers:\n  - linear: {out_features: 2, name: logits}\n"
        "train: {epochs: 2, batch_size: 16, lr: 0.05}\n"
    )
    res = run_cli(
        "train",
        str(spec),
        "--data",
        str(tmp_path / "t.csv"),
        "--label",
        "kind",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    )
    assert res.code == 0, res.err
    assert "column 'shade': categorical, one-hot over 2 categories" in res.out
    pre = json.loads((tmp_path / "r" / "data.json").read_text())["preprocess"]
    assert pre["label_column"] == "kind" and pre["categories"] == {"shade": ["dark", "light"]}
    assert json.loads((tmp_path / "r" / "data.json").read_text())["data"]["label"] == "kind"
    wrong = run_cli("train", str(spec), "--data", "digits", "--label", "kind", "--out", str(tmp_path / "r3"))
    assert wrong.code == 2 and "--label names a column of a table" in wrong.err
