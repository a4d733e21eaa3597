"""specc — a declarative model-spec compiler: YAML → static shapes → PyTorch → ONNX.

Attributes are loaded lazily so that ``import specc.runtime`` (deployment) pulls in neither the
compiler nor torch; :func:`check` never imports torch, :func:`build` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = [
    "SpecError",
    "SpeccError",
    "__version__",
    "build",
    "check",
    "check_text",
    "compile_graph",
    "load_run",
]

if TYPE_CHECKING:
    from specc.api import check, check_text, compile_graph
    from specc.errors import SpeccError, SpecError
    from specc.nn import CompiledModel


def build(spec: Any, **kwargs: Any) -> CompiledModel:
    """Compile a spec (path, document or graph) to a torch ``nn.Module`` (see :func:`specc.nn.build`)."""
    from specc.nn import build as _build

    return _build(spec, **kwargs)


def load_run(run: Any) -> CompiledModel:
    """A ``specc train`` run folder's network with its weights, in eval mode (see :func:`specc.pretrained.run.load_run`)."""
    from specc.pretrained.run import load_run as _load_run

    return _load_run(run)


def __getattr__(name: str) -> Any:
    if name in ("check", "check_text", "compile_graph"):
        from specc import api

        return getattr(api, name)
    if name in ("SpecError", "SpeccError"):
        from specc import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'specc' has no attribute {name!r}")
