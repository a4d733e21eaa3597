"""int8 quantisation of a verified export: dynamic for matmul models, static (calibrated) for CNNs.

``auto`` (what ``specc export --int8`` does) picks by what the model is made of and what data there is:

* a model with ``Conv`` and calibration data (``--calibration FILE|FOLDER``, or the training split of
  the run folder's data set) → **static** QDQ quantisation: int8 weights per output channel, uint8
  activations with ranges measured on the calibration samples (MinMax). onnxruntime runs it as
  ``QLinearConv``; ResNet-18 at batch 1 ran 2.9-3.1x faster than fp32 onnxruntime (benchmarks/RESULTS.md).
* otherwise → **dynamic** quantisation of the weight matmuls (activations quantised at run time);
  ``Conv`` stays fp32 in that mode, because a dynamically quantised Conv (``ConvInteger``) is several
  times slower than fp32 on CPU. The report says so and how to get the static variant.

The calibration inputs are checked against the model's inputs exactly like ``specc predict``'s.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from numpy.typing import NDArray

from specc.atomic import atomic_path
from specc.errors import UsageError
from specc.runtime.inputs import (
    ARRAY_SUFFIXES,
    IMAGE_SUFFIXES,
    TensorSpec,
    check_input,
    load_arrays,
    load_image,
)

log = logging.getLogger(__name__)

Int8Mode = Literal["auto", "dynamic", "static"]
INT8_MODES: tuple[str, ...] = ("auto", "dynamic", "static")
#: Samples the static ranges are measured on (a seeded random subset when more are given).
CALIBRATION_SAMPLES = 256
CALIBRATION_BATCH = 16
CONV_OPS = ("Conv", "ConvTranspose")

#: Op types dynamic quantisation quantises. Measured on a 4-layer BERT-base-width encoder (T = 128,
#: batch 1, 2-core AVX-512 VNNI CPU, onnxruntime 1.32): quantising only the weight matmuls is as
#: fast as adding Gather/Transpose/EmbedLayerNormalization (the rest of onnxruntime's IntegerOps
#: list) and halves the output error (rel. L2 0.67 % vs 1.2 %). quantize_dynamic rewrites Gemm
#: (2-d Linear) to MatMul first.
DYNAMIC_OP_TYPES = ("MatMul", "Attention", "LSTM")
INT8_OPS = (
    "MatMulInteger",
    "ConvInteger",
    "QAttention",
    "DynamicQuantizeLSTM",
    "QEmbedLayerNormalization",
    "DynamicQuantizeMatMul",
    "QGemm",
    "QLinearConv",
    "QLinearMatMul",
)


@dataclass(frozen=True)
class Calibration:
    """Representative inputs, by input name, each with the batch axis first; and where they came from."""

    feeds: dict[str, NDArray[Any]]
    source: str

    @property
    def samples(self) -> int:
        return len(next(iter(self.feeds.values())))


@contextlib.contextmanager
def _root_log_level(level: int) -> Iterator[None]:
    root = logging.getLogger()
    old = root.level
    root.setLevel(max(old, level))
    try:
        yield
    finally:
        root.setLevel(old)


def op_types(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _int8_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        if node.op_type in INT8_OPS or node.op_type == "QuantizeLinear":
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def quantize_int8(
    src: Path, dst: Path, calibration: Calibration | None = None, mode: Int8Mode = "auto"
) -> dict[str, Any]:
    """Write the int8 variant of ``src`` to ``dst``; returns what was done (for the report)."""
    if mode not in INT8_MODES:
        raise UsageError(f"unknown int8 mode '{mode}'; choose one of {', '.join(INT8_MODES)}")
    has_conv = bool(op_types(src) & set(CONV_OPS))
    if mode == "static" and calibration is None:
        raise UsageError(
            "static int8 quantisation needs calibration data: pass --calibration FILE|FOLDER "
            "(.npy/.npz arrays or a folder of images) or a run folder whose data set is known"
        )
    if mode == "static" or (mode == "auto" and has_conv and calibration is not None):
        assert calibration is not None
        return quantize_static_int8(src, dst, calibration)
    info = quantize_dynamic_int8(src, dst)
    if has_conv:
        info["note"] = (
            "Conv layers stay fp32 in dynamic quantisation (ConvInteger is slower than fp32 on "
            "CPU); give calibration data (--calibration, or a run folder with its data set) "
            "for static int8 Conv"
        )
    return info


def quantize_dynamic_int8(src: Path, dst: Path) -> dict[str, Any]:
    """Dynamic int8 quantisation of the weight matmuls (activations quantised at run time).

    Settings (measured, see ``DYNAMIC_OP_TYPES``): QOperator form (``MatMulInteger`` /
    ``DynamicQuantizeMatMul`` after onnxruntime's load-time fusion; static QDQ was slower and 4x
    less accurate on BERT), signed int8 weights (uint8 weights take onnxruntime's u8u8 path: 1.7x
    slower), per-tensor scales without ``reduce_range`` (per-channel: same speed and error here, and
    the saturation risk of per-channel int8 on non-VNNI CPUs), ``MatMulConstBOnly`` (only matmuls
    with a weight operand; activation x activation matmuls of attention stay fp32: quantising them
    too was 10-15 % slower). Quantise the plain export rather than the BERT-fused one.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _root_log_level(logging.ERROR), atomic_path(dst) as tmp:  # "consider pre-processing" warning
        # DefaultTensorType: outputs of fused contrib ops (Attention, ...) have no inferred type
        quantize_dynamic(
            str(src),
            str(tmp),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(DYNAMIC_OP_TYPES),
            per_channel=False,
            reduce_range=False,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT, "MatMulConstBOnly": True},
        )
    counts = _int8_counts(dst)
    info: dict[str, Any] = {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "mode": "dynamic",
        "weight_type": "QInt8",
        "per_channel": False,
        "op_types": list(DYNAMIC_OP_TYPES),
        "int8_ops": counts,
    }
    if not counts:
        info["note"] = "no op was quantised: the file is fp32"
    return info


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over in-memory arrays, in batches."""

    def __init__(self, feeds: Mapping[str, NDArray[Any]], batch: int) -> None:
        n = len(next(iter(feeds.values())))
        self._batches = iter([{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, n, batch)])

    def get_next(self) -> dict[str, NDArray[Any]] | None:
        return next(self._batches, None)


def fixed_batch(path: Path) -> int | None:
    """The batch size of a model exported with ``--static`` (first input's first axis), else None."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim if graph.input else []
    return (
        int(dims[0].dim_value) if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    )


def quantize_static_int8(src: Path, dst: Path, calibration: Calibration) -> dict[str, Any]:
    """Static QDQ quantisation: per-channel int8 weights, uint8 activations calibrated (MinMax) on
    ``calibration``. The model is pre-processed first (onnxruntime's shape inference and graph
    optimisation, as onnxruntime.quantization recommends); where that fails the export is used as is."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    batch = fixed_batch(src) or CALIBRATION_BATCH
    with (
        tempfile.TemporaryDirectory(prefix=".specc-quant-", dir=dst.parent) as work,
        _root_log_level(logging.ERROR),
    ):
        model_in = Path(work) / "pre.onnx"
        preprocessed = True
        try:
            quant_pre_process(str(src), str(model_in))
        except Exception as e:  # symbolic shape inference does not know every graph
            log.info("quantisation pre-processing skipped for %s: %s", src.name, e)
            model_in, preprocessed = src, False
        with atomic_path(dst) as tmp:
            try:
                quantize_static(
                    str(model_in),
                    str(tmp),
                    _Reader(calibration.feeds, batch),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    reduce_range=False,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
            except Exception as e:  # onnxruntime's own exception types, raised while running the inputs
                if type(e).__module__.startswith("onnxruntime"):
                    raise UsageError(
                        f"static int8 calibration could not run '{src.name}' on the calibration "
                        f"inputs ({calibration.source}): {str(e).splitlines()[0][:400]}"
                    ) from e
                raise
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "mode": "static",
        "format": "QDQ",
        "weight_type": "QInt8 (per channel)",
        "activation_type": "QUInt8",
        "calibration": "MinMax",
        "calibration_samples": calibration.samples,
        "calibration_source": calibration.source,
        "preprocessed": preprocessed,
        "int8_ops": _int8_counts(dst),
    }


# ------------------------------------------------------------------------------------ calibration


def _subset(feeds: dict[str, NDArray[Any]], limit: int, seed: int = 0) -> dict[str, NDArray[Any]]:
    n = len(next(iter(feeds.values())))
    if n <= limit:
        return feeds
    idx = np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))
    return {k: v[idx] for k, v in feeds.items()}


def load_calibration(
    path: Path,
    inputs: Sequence[TensorSpec],
    preprocess: Mapping[str, Any] | None,
    limit: int = CALIBRATION_SAMPLES,
) -> Calibration:
    """Calibration inputs from a file or folder, checked against the model's ``inputs`` exactly like
    ``specc predict``'s: ``.npy`` (a single-input model) or ``.npz`` (one array per input name), each
    with the batch axis first; or a folder of images (PNG/JPEG/BMP, sub-folders included, e.g. one
    per class), preprocessed as in training (``preprocess``: the run folder's image preprocessing)."""

    names = [s.name for s in inputs]
    if path.is_dir():
        images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UsageError(f"calibration folder '{path}' holds no images ({', '.join(IMAGE_SUFFIXES)})")
        if preprocess is None or preprocess.get("kind") != "image" or len(names) != 1:
            raise UsageError(
                f"cannot calibrate from the images in '{path}': images need the image preprocessing "
                "of a training run (give --weights RUN_FOLDER) and a single-input model; "
                "otherwise pass preprocessed arrays as .npy/.npz"
            )
        images = [images[i] for i in sorted(np.random.default_rng(0).permutation(len(images))[:limit])]
        raw = {names[0]: np.concatenate([load_image(p, preprocess, inputs[0]) for p in images])}
    elif path.suffix.lower() in ARRAY_SUFFIXES:
        raw = load_arrays(path, names)
    else:
        raise UsageError(f"--calibration '{path}': expected a .npy/.npz file or a folder of images")
    symbols: dict[str, tuple[int, str]] = {}
    feeds = {s.name: check_input(s.name, raw[s.name], s, symbols)[0] for s in inputs}
    sizes = {len(v) for v in feeds.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise UsageError(
            f"--calibration '{path}': every input needs the same, non-zero number of samples, "
            f"got {', '.join(f'{k} {len(v)}' for k, v in feeds.items())}"
        )
    return Calibration(_subset(feeds, limit), str(path))
