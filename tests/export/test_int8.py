"""`specc export --int8`: static (calibrated) quantisation of CNNs, calibration inputs and their errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli

from specc.runtime import load

SPEC = """specc: 1
name: small_cnn
inputs: {image: {shape: [1, 12, 12]}}
layers:
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
  - norm
  - act
  - maxpool2d: 2
  - conv2d: {out_channels: 16, kernel_size: 3, padding: 1}
  - act
  - maxpool2d: 2
  - flatten
  - linear: {out_features: 10}
"""


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small CNN trained on digits for a few epochs: (spec, run folder)."""
    root = tmp_path_factory.mktemp("int8")
    spec = root / "small_cnn.yaml"
    spec.write_text(SPEC)
    run = root / "run"
    r = run_cli(
        "train",
        str(spec),
        "--data",
        "digits",
        "--out",
        str(run),
        "--quiet",
        "--device",
        "cpu",
        "--set",
        "train.epochs=4",
        "--set",
        "train.optimizer=adamw",
        "--set",
        "train.lr=0.01",
        "--set",
        "train.augment=none",
    )
    assert r.code == 0, r.err
    return spec, run


def test_static_int8_from_the_run_folder(trained: tuple[Path, Path], tmp_path: Path) -> None:
    spec, run = trained
    out = tmp_path / "m.onnx"
    r = run_cli("export", str(spec), "-w", str(run), "--out", str(out), "--int8", "--json")
    assert r.code == 0, r.err
    v = json.loads(r.out)["variants"]["int8"]
    assert v["mode"] == "static" and v["calibration_source"] == "digits (training split)"
    assert 0 < v["calibration_samples"] <= 256
    int8 = Path(v["file"])
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= _ops(int8)
    weights = {i.name: i for i in onnx.load(str(int8)).graph.initializer}
    assert any(
        w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 4 for w in weights.values()
    )  # conv kernels
    acc = v["accuracy"]
    assert acc["fp32"] > 0.8, acc  # the network learnt something, so the comparison means something
    assert acc["int8"] >= acc["fp32"] - 0.03, acc
    # the int8 file runs through specc.runtime with its manifest and agrees with fp32 on real digits
    from specc.data import load_dataset

    x = load_dataset("digits", input_shape=(1, 12, 12), input_dtype="float32", seed=0).test.x[:64]
    a, b = load(out)(x)["output"].argmax(1), load(int8)(x)["output"].argmax(1)
    assert (a == b).mean() >= 0.95


def test_static_export_with_static_int8_from_the_run_folder(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    """--static fixes the batch at 1: calibration, output change and accuracy feed it one sample at a time."""
    spec, run = trained
    r = run_cli(
        "export", str(spec), "-w", str(run), "--out", str(tmp_path / "s.onnx"), "--static", "--int8", "--json"
    )
    assert r.code == 0, r.err
    v = json.loads(r.out)["variants"]["int8"]
    assert v["mode"] == "static" and v["accuracy"]["int8"] >= v["accuracy"]["fp32"] - 0.03
    assert v["output_change_on_data"]["output"]["top1_agree"] >= 0.95
    dims = onnx.load(str(tmp_path / "s.int8.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 1, 12, 12]


def test_images_need_the_run_folders_preprocessing(tmp_path: Path) -> None:
    from PIL import Image

    from specc.nn import build, save_weights

    spec = tmp_path / "small_cnn.yaml"
    spec.write_text(SPEC)
    save_weights(build(spec, seed=1), tmp_path / "w.safetensors")
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "images" / "a.png")
    r = run_cli(
        "export",
        str(spec),
        "-w",
        str(tmp_path / "w.safetensors"),
        "--out",
        str(tmp_path / "m.onnx"),
        "--int8",
        "--calibration",
        str(tmp_path / "images"),
    )
    assert r.code == 2 and "give --weights RUN_FOLDER" in r.err and not (tmp_path / "m.onnx").exists()


def test_dynamic_mode_keeps_conv_fp32_and_says_so(trained: tuple[Path, Path], tmp_path: Path) -> None:
    spec, run = trained
    r = run_cli(
        "export",
        str(spec),
        "-w",
        str(run),
        "--out",
        str(tmp_path / "m.onnx"),
        "--int8",
        "--int8-mode",
        "dynamic",
    )
    assert r.code == 0, r.err
    assert "(dynamic)" in r.out and "Conv layers stay fp32" in r.out
    ops = _ops(tmp_path / "m.int8.onnx")
    assert "Conv" in ops and "MatMulInteger" in ops and "QuantizeLinear" not in ops


def test_calibration_from_npz_and_from_an_image_folder(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from PIL import Image

    spec, run = trained
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", image=rng.standard_normal((40, 1, 12, 12)).astype(np.float32))
    r = run_cli(
        "export",
        str(spec),
        "-w",
        str(run),
        "--out",
        str(tmp_path / "a.onnx"),
        "--int8",
        "--calibration",
        str(tmp_path / "cal.npz"),
        "--json",
    )
    assert r.code == 0, r.err
    v = json.loads(r.out)["variants"]["int8"]
    assert (
        v["mode"] == "static"
        and v["calibration_samples"] == 40
        and v["calibration_source"].endswith("cal.npz")
    )
    folder = tmp_path / "images"
    for i in range(5):  # the training layout: one sub-folder per class
        (folder / f"class{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(
            folder / f"class{i % 2}" / f"{i}.png"
        )
    (folder / "notes.txt").write_text("not an image: ignored")
    r = run_cli(
        "export",
        str(spec),
        "-w",
        str(run),
        "--out",
        str(tmp_path / "b.onnx"),
        "--int8",
        "--calibration",
        str(folder),
        "--json",
    )
    assert r.code == 0, r.err
    v = json.loads(r.out)["variants"]["int8"]
    assert v["mode"] == "static" and v["calibration_samples"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--int8", "--int8-mode", "static"], "static int8 quantisation needs calibration data"),
        (["--int8", "--calibration", "{tmp}/wrong.npy"], "input 'image': expected shape"),
        (["--int8", "--calibration", "{tmp}/missing.npz"], "calibration data not found"),
        (["--int8", "--calibration", "{tmp}/empty"], "holds no images"),
        (["--int8", "--int8-mode", "fast"], "unknown int8 mode 'fast'"),
        (["--calibration", "{tmp}/wrong.npy"], "--int8-mode and --calibration go with --int8"),
    ],
)
def test_bad_calibration_is_a_usage_error(
    trained: tuple[Path, Path], tmp_path: Path, args: list[str], message: str
) -> None:
    spec, run = trained
    if "needs calibration data" in message:  # bare weights: no run data to calibrate on
        run = run / "model.safetensors"
    np.save(tmp_path / "wrong.npy", np.zeros((4, 3, 12, 12), np.float32))  # 3 channels, the model takes 1
    (tmp_path / "empty").mkdir()
    out = tmp_path / "m.onnx"
    r = run_cli(
        "export", str(spec), "-w", str(run), "--out", str(out), *[a.format(tmp=tmp_path) for a in args]
    )
    assert r.code == 2, (r.code, r.err)
    assert message in r.err and "Traceback" not in r.err
    assert not out.exists() and not (tmp_path / "m.int8.onnx").exists()  # refused before anything is written


# Freshly initialised, these compute (almost) nothing, so a relative int8 error means nothing: the
# fan-out init of depthwise convs (torchvision's, kept by the specs) shrinks MobileNetV2/EfficientNet
# activations to ~1e-11 in eval mode (BatchNorm with fresh running statistics), and ViT's head starts at
# zeros. For them the test checks that the quantiser handles their op patterns, not the error.
DEGENERATE_AT_INIT = {"mobilenet_v2", "efficientnet_b0", "vit_b_16"}
# Specs whose static per-tensor int8 error with random calibration is above the 5 % bound (a strict
# xfail). ConvNeXt was (6.2 %) with the previous builder's weights (torch's init drawn, then the spec's);
# with every weight drawn once it is 3.3 % at seed 0 (4.7 % and 4.2 % at seeds 1 and 2): close to the
# bound (LayerNorm over channels after every depthwise conv, GELU MLPs), within it.
INT8_ABOVE_5_PERCENT: set[str] = set()


def _conv_specs() -> list[object]:
    from specc.api import check
    from specc.lang.document import load_spec

    cases = []
    for path in sorted((Path(__file__).resolve().parents[2] / "specs").glob("*.yaml")):
        scale = "tiny" if "tiny" in load_spec(path, (), None).spec.scales else None
        if any(type(n.op).__name__.startswith("Conv") for n in check(path, (), scale).nodes):
            marks = (
                [pytest.mark.xfail(reason="static int8 error 6.2 % > 5 % on random weights", strict=True)]
                if path.stem in INT8_ABOVE_5_PERCENT
                else []
            )
            cases.append(pytest.param(path, scale, id=path.stem, marks=marks))
    return cases


@pytest.mark.parametrize(("path", "scale"), _conv_specs())
def test_every_bundled_cnn_quantises_statically(path: Path, scale: str | None, tmp_path: Path) -> None:
    """Static int8 on every bundled CNN (tiny scale, random weights and calibration inputs): the
    quantiser handles each op pattern (concat, ceil-mode pools, dense blocks, residual adds, 1x1
    shortcuts) and the int8 model stays close to fp32 on inputs like the calibration ones."""
    from specc.api import check
    from specc.export import ExportOptions, export_model
    from specc.export.quantize import Calibration, quantize_int8
    from specc.export.samples import SampleSizes, make_inputs
    from specc.nn import build

    graph = check(path, (), scale)
    if graph.params > 8_000_000:
        pytest.skip(f"{graph.params:,} parameters at scale {scale}")
    fp32 = tmp_path / "m.onnx"
    export_model(build(graph, seed=0).eval(), graph, fp32, ExportOptions(batches=(1, 2)))
    feeds = make_inputs(graph, SampleSizes(16, {}), seed=0)
    info = quantize_int8(fp32, tmp_path / "m.int8.onnx", Calibration(feeds, "random"))
    assert info["mode"] == "static" and info["int8_ops"].get("QuantizeLinear", 0) > 0
    x = {k: v[:8] for k, v in make_inputs(graph, SampleSizes(8, {}), seed=1).items()}
    a = next(iter(load(fp32, verify_manifest=False)(**x).values()))
    b = next(iter(load(tmp_path / "m.int8.onnx", verify_manifest=False)(**x).values()))
    if path.stem in DEGENERATE_AT_INIT:
        assert np.linalg.norm(a) < 1e-6 and b.shape == a.shape and np.isfinite(b).all()
        return
    assert np.linalg.norm(a - b) / np.linalg.norm(a) < 0.05


def test_calibration_ids_out_of_the_embedding_range_are_refused(tmp_path: Path) -> None:
    spec = tmp_path / "emb.yaml"
    spec.write_text(
        "specc: 1\nname: emb_mlp\ninputs: {ids: {shape: [12], dtype: int64}}\n"
        "layers: [embedding: {num_embeddings: 50, embedding_dim: 8}, flatten, linear: 3]\n"
    )
    np.savez(tmp_path / "cal.npz", ids=np.arange(24).reshape(2, 12) * 3)  # ids up to 69
    r = run_cli(
        "export",
        str(spec),
        "--out",
        str(tmp_path / "m.onnx"),
        "--int8",
        "--int8-mode",
        "static",
        "--calibration",
        str(tmp_path / "cal.npz"),
    )
    assert r.code == 2, r.err
    assert "calibration input 'ids'" in r.err and "holds ids 0..69, but the model takes 0..49" in r.err
    assert not (tmp_path / "m.int8.onnx").exists()
