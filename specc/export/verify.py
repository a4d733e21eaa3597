"""Parity of an ONNX file with the PyTorch model it came from, in onnxruntime.

An output passes when every element satisfies ``|ort - torch| <= atol + rtol * |torch|``; integer
and bool outputs must match exactly. A non-finite value (NaN/inf) on either side fails, even where
both sides agree: parity of garbage with garbage proves nothing (all-NaN weights once passed as
``max |Δ| 0``). The report and the error name the output, the sizes and the index.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from specc.errors import ExportVerificationError
from specc.export.samples import SampleSizes, make_inputs
from specc.graph import Graph
from specc.runtime.session import session_options

ATOL = 1e-4
RTOL = 1e-3

Runner = Callable[[dict[str, NDArray[Any]]], dict[str, NDArray[Any]]]


@dataclass(frozen=True)
class OutputDiff:
    """How far one output is from its reference; ``worst`` is the most out-of-tolerance element."""

    max_abs: float
    max_rel: float
    worst_index: tuple[int, ...]
    worst_ref: float
    worst_got: float
    ok: bool

    def to_json(self) -> dict[str, Any]:
        """JSON data; NaN/inf (which JSON has not) are written as null."""
        return {
            "max_abs": _json_float(self.max_abs),
            "max_rel": _json_float(self.max_rel),
            "worst_index": list(self.worst_index),
            "ref": _json_float(self.worst_ref),
            "got": _json_float(self.worst_got),
            "ok": self.ok,
        }


def _json_float(x: float) -> float | None:
    return x if np.isfinite(x) else None


def compare(ref: NDArray[Any], got: NDArray[Any], atol: float = ATOL, rtol: float = RTOL) -> OutputDiff:
    """Elementwise comparison of one output under ``|Δ| <= atol + rtol·|ref|``."""
    if ref.shape != got.shape:
        return OutputDiff(float("inf"), float("inf"), (), float("nan"), float("nan"), False)
    if ref.size == 0:
        return OutputDiff(0.0, 0.0, (), 0.0, 0.0, True)
    r = ref.astype(np.float64)
    g = got.astype(np.float64)
    exact = ref.dtype.kind in "biu"
    with np.errstate(invalid="ignore"):
        diff = np.abs(g - r)
    diff = np.where(np.isfinite(r) & np.isfinite(g), diff, np.inf)  # NaN == NaN is not parity
    allowed = np.zeros_like(r) if exact else atol + rtol * np.abs(np.nan_to_num(r))
    excess = diff - allowed
    flat = int(np.argmax(excess))
    idx = tuple(int(i) for i in np.unravel_index(flat, ref.shape))
    rel = diff / np.maximum(np.abs(np.nan_to_num(r)), 1e-12)
    return OutputDiff(
        float(diff.max()), float(rel.max()), idx, float(r[idx]), float(g[idx]), bool(excess.max() <= 0.0)
    )


@dataclass
class ParityCase:
    """One parity run: the sizes used and the difference of every output."""

    sizes: SampleSizes
    outputs: dict[str, OutputDiff]

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.outputs.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "sizes": self.sizes.to_json(),
            "ok": self.ok,
            "outputs": {k: v.to_json() for k, v in self.outputs.items()},
        }


def torch_runner(model: Any, input_names: Sequence[str]) -> Runner:
    """Run an ``nn.Module`` (eval mode, no grad) on numpy feeds; returns numpy outputs by name."""

    def run(feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        with torch.inference_mode():
            out = model(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in input_names])
        outs = out if isinstance(out, tuple) else (out,)
        return {
            n: t.detach().float().numpy() if t.is_floating_point() else t.numpy()
            for n, t in zip(model.output_names, outs, strict=True)
        }

    return run


def ort_session(path: Path, *, threads: int | None = None, optimization: str = "all") -> Any:
    import onnxruntime as ort

    options = session_options(threads, optimization="none" if optimization == "none" else "all")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def ort_runner(session: Any) -> Runner:
    names = [o.name for o in session.get_outputs()]

    def run(feeds: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        values = session.run(names, feeds)
        return {n: np.asarray(v) for n, v in zip(names, values, strict=True)}

    return run


def parity(
    reference: Runner,
    candidate: Runner,
    graph: Graph,
    sizes: Sequence[SampleSizes],
    *,
    atol: float = ATOL,
    rtol: float = RTOL,
    seed: int = 0,
) -> list[ParityCase]:
    """Compare two runners on random inputs at every size setting."""
    cases = []
    for k, s in enumerate(sizes):
        feeds = make_inputs(graph, s, seed=seed + k)
        ref, got = reference(feeds), candidate(feeds)
        cases.append(ParityCase(s, {n: compare(ref[n], got[n], atol, rtol) for n in ref}))
    return cases


def worst(cases: Sequence[ParityCase]) -> tuple[ParityCase, str, OutputDiff] | None:
    """The failing case/output with the largest absolute difference, or None when all pass."""
    failing = [(c, n, d) for c in cases for n, d in c.outputs.items() if not d.ok]
    return max(failing, key=lambda t: t[2].max_abs) if failing else None


def raise_on_failure(cases: Sequence[ParityCase], what: str, atol: float, rtol: float) -> None:
    bad = worst(cases)
    if bad is None:
        return
    case, name, d = bad
    sizes = ", ".join(f"{k}={v}" for k, v in case.sizes.to_json().items())
    if not (np.isfinite(d.worst_ref) and np.isfinite(d.worst_got)):
        raise ExportVerificationError(
            f"{what}: output '{name}' is not finite at {sizes}, index {list(d.worst_index)}: "
            f"torch {d.worst_ref:.6g}, onnxruntime {d.worst_got:.6g}; the model computes NaN/inf on "
            "these (random normal) inputs, so parity cannot be shown: check the weights and the spec"
        )
    raise ExportVerificationError(
        f"{what}: output '{name}' differs from PyTorch at {sizes}, index {list(d.worst_index)}: "
        f"onnxruntime {d.worst_got:.6g} vs torch {d.worst_ref:.6g} (|Δ| = {abs(d.worst_got - d.worst_ref):.3g}, "
        f"max |Δ| {d.max_abs:.3g}; tolerance |Δ| <= {atol:g} + {rtol:g}·|ref|)"
    )


def summarise(cases: Sequence[ParityCase]) -> dict[str, dict[str, float | None]]:
    """Max abs/rel difference per output over all cases (null where one was not finite)."""
    out: dict[str, dict[str, float]] = {}
    for c in cases:
        for n, d in c.outputs.items():
            cur = out.setdefault(n, {"max_abs": 0.0, "max_rel": 0.0})
            cur["max_abs"] = max(cur["max_abs"], d.max_abs)
            cur["max_rel"] = max(cur["max_rel"], d.max_rel)
    return {n: {k: _json_float(v) for k, v in d.items()} for n, d in out.items()}
