"""specc deployment runtime: load an exported ONNX model and run it without torch.

>>> from specc.runtime import load
>>> model = load("lenet.onnx")                    # checks manifest and external data first
>>> model(image=x)["logits"]                      # inputs checked against the metadata
>>> model.predict_file("digit.png", top_k=3)      # preprocessing from the metadata

Only numpy, onnx, onnxruntime and Pillow are needed; see :mod:`specc.runtime.model` for the
metadata keys the exporter writes and the integrity manifest format.
"""

from __future__ import annotations

from specc.runtime.inputs import TensorSpec
from specc.runtime.model import METADATA_KEYS, Model, load, read_metadata

__all__ = ["METADATA_KEYS", "Model", "TensorSpec", "load", "read_metadata"]
