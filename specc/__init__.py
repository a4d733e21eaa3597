"""specc — a declarative model-spec compiler: YAML → static shapes → PyTorch → ONNX.

Torch-free entry points are imported here; :func:`build` imports torch when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specc.api import check, check_text, compile_graph
from specc.errors import SpeccError, SpecError

if TYPE_CHECKING:
    from specc.build import CompiledModel

__version__ = "0.1.0"
__all__ = ["SpecError", "SpeccError", "__version__", "build", "check", "check_text", "compile_graph"]


def build(spec: Any, **kwargs: Any) -> CompiledModel:
    """Compile a spec (path, document or graph) to a torch ``nn.Module`` (see :func:`specc.build.build`)."""
    from specc.build import build as _build

    return _build(spec, **kwargs)
