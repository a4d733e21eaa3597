"""specc deployment runtime: load an exported ONNX model and run it without torch.

>>> from specc.runtime import load
>>> model = load("lenet.onnx")                    # checks manifest and external data first
>>> model(image=x)["logits"]                      # model inputs, checked against the metadata
>>> model.predict_file("digit.png", top_k=3)      # raw files, preprocessing from the metadata

Only numpy, onnx, onnxruntime, pydantic and Pillow are needed; see
:mod:`specc.contracts.onnx_metadata` for the metadata the exporter writes, :mod:`specc.runtime.model`
for the integrity manifest and :mod:`specc.runtime.predict` for the input routes.
"""

from __future__ import annotations

from specc.contracts.onnx_metadata import METADATA_KEYS, OnnxMetadata
from specc.runtime.inputs import TensorSpec
from specc.runtime.model import Model, load, read_info, read_metadata

__all__ = ["METADATA_KEYS", "Model", "OnnxMetadata", "TensorSpec", "load", "read_info", "read_metadata"]
