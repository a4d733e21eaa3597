"""The onnxruntime session settings every specc component uses (runtime, verification, benchmarks).

Latency settings for CPU inference: graph optimisation level ALL (onnxruntime's own fusions and the
NCHWc layout at load), sequential execution, one inter-op thread, ``threads`` intra-op threads
(default: onnxruntime's choice, one per physical core); spinning of the intra-op pool stays on
(turning it off cost 10-40 % at batch 1 on a 2-core machine).

One onnxruntime fusion is turned off: ``SkipLayerNormFusion`` (residual ``Add`` + ``LayerNormalization``
→ ``SkipLayerNormalization``). Its CPU kernel took 215 us per BERT-base layer where the ``Add`` and
``LayerNormalization`` it replaces took 37 us (onnxruntime 1.32, T = 128, 2-core AVX-512 CPU): the
int8 BERT encoder ran 12 % faster without it, fp32 unchanged (benchmarks/RESULTS.md). A user who
loads a specc model with plain onnxruntime gets the same effect with
``options.add_session_config_entry("optimization.disable_specified_optimizers", "SkipLayerNormFusion")``.
"""

from __future__ import annotations

from typing import Any, Literal

DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
DISABLE_KEY = "optimization.disable_specified_optimizers"


def session_options(
    threads: int | None = None,
    *,
    optimization: Literal["all", "none"] = "all",
    log_level: int = 3,
    cpu_fusions: bool = True,
) -> Any:
    """``onnxruntime.SessionOptions`` with specc's settings (see the module docstring);
    ``cpu_fusions=False`` keeps every onnxruntime fusion (for GPU providers, where the fused
    kernels are the fast ones)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = log_level
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    if threads is not None:
        options.intra_op_num_threads = threads
    if optimization == "none":
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    else:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if cpu_fusions:
            options.add_session_config_entry(DISABLE_KEY, ",".join(DISABLED_OPTIMIZERS))
    return options
