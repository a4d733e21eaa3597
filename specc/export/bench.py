"""``specc bench``: batch-1 latency and batch-N throughput of the deployment engines, side by side.

Engines: torch eager, ``torch.compile`` (in a child process with a time cap, so a slow or failing
compile is reported as skipped instead of hanging the run), onnxruntime fp32 and int8 (what
``specc export --int8`` writes: static QDQ for models with Conv, calibrated here on random inputs,
which is right for timing only; dynamic quantisation otherwise). Given an ``.onnx`` file only the
onnxruntime rows are measured.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

Feeds = dict[str, NDArray[Any]]
Fn = Callable[[Feeds], Any]
DEFAULT_SEQ = 128


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 32
    iters: int = 50
    warmup: int = 5
    seq: int = DEFAULT_SEQ
    compile: bool = True
    compile_timeout_s: float = 180.0
    threads: int | None = None


def time_calls(fn: Fn, feeds: Feeds, iters: int, warmup: int) -> list[float]:
    """Wall time (seconds) of ``iters`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(feeds)
    times = []
    for _ in range(max(1, iters)):
        t = time.perf_counter()
        fn(feeds)
        times.append(time.perf_counter() - t)
    return times


def row(engine: str, fn: Fn, one: Feeds, many: Feeds, s: BenchSettings, note: str = "") -> dict[str, Any]:
    """Median/p90 batch-1 latency (ms) and batch-N throughput (samples/s) of one engine."""
    lat = time_calls(fn, one, s.iters, s.warmup)
    thr = time_calls(fn, many, max(1, s.iters // 4), max(1, s.warmup // 2))
    batch = len(next(iter(many.values())))
    return {
        "engine": engine,
        "latency_ms": {"median": 1e3 * statistics.median(lat), "p90": 1e3 * float(np.percentile(lat, 90))},
        "throughput_per_s": batch / statistics.median(thr),
        "note": note,
    }


def skipped(engine: str, note: str) -> dict[str, Any]:
    return {"engine": engine, "latency_ms": None, "throughput_per_s": None, "note": note}


# ----------------------------------------------------------------------------------- engines


def bench_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with specc's latency settings (:mod:`specc.runtime.session`)."""
    import onnxruntime as ort

    from specc.runtime.session import session_options

    return ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )


def ort_fn(path: Path, threads: int | None = None) -> Fn:
    from specc.export.verify import ort_runner

    run = ort_runner(bench_session(path, threads))
    return lambda feeds: run(feeds)


def torch_fn(model: Any, input_names: Sequence[str]) -> Fn:
    import torch

    def run(feeds: Feeds) -> Any:
        with torch.inference_mode():
            return model(*[torch.from_numpy(feeds[n]) for n in input_names])

    return run


def onnx_feeds(path: Path, batch: int, seq: int, seed: int = 0) -> Feeds:
    """Random inputs for an ONNX file from its declared inputs (metadata names, else the graph's)."""
    from specc.runtime import load

    model = load(path, verify_manifest=False)
    rng = np.random.default_rng(seed)
    feeds: Feeds = {}
    for spec in model.inputs:
        shape = tuple(
            batch if i == 0 and not isinstance(d, int) else d if isinstance(d, int) else seq
            for i, d in enumerate(spec.shape)
        )
        if spec.dtype == "float32":
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32)
        elif spec.dtype == "bool":
            feeds[spec.name] = np.ones(shape, dtype=bool)
        else:
            feeds[spec.name] = rng.integers(0, 8, size=shape).astype(spec.dtype)
    return feeds


def onnx_rows(fp32: Path, s: BenchSettings, int8: tuple[Path, str] | None) -> list[dict[str, Any]]:
    one, many = onnx_feeds(fp32, 1, s.seq), onnx_feeds(fp32, s.batch, s.seq)
    rows = [row("onnxruntime fp32", ort_fn(fp32, s.threads), one, many, s)]
    if int8 is not None:
        rows.append(row("onnxruntime int8", ort_fn(int8[0], s.threads), one, many, s, int8[1]))
    return rows


def _quantized(src: Path, folder: Path, seq: int) -> tuple[Path, str]:
    """The int8 variant ``specc export --int8`` would write (random calibration inputs) and a note."""
    from specc.export.quantize import Calibration, quantize_int8

    dst = folder / (src.stem + ".int8.onnx")
    info = quantize_int8(src, dst, Calibration(onnx_feeds(src, 16, seq, seed=1), "random inputs"))
    if info["mode"] == "static":
        return dst, "static int8 (QDQ; random calibration: timing only)"
    return dst, "dynamic int8" + (" (Conv stays fp32)" if "note" in info else "")


# ----------------------------------------------------------------------------------- compile


def _compile_child(
    spec: str, sets: tuple[str, ...], scale: str | None, weights: str | None, s: BenchSettings, queue: Any
) -> None:
    try:
        import torch

        from specc.export.samples import SampleSizes, make_inputs, symbols_of
        from specc.export.source import load_source

        model = load_source(spec, weights=weights, sets=sets, scale=scale).model.eval()
        graph = model.graph
        sym = {k: s.seq for k in symbols_of(graph)}
        one, many = (make_inputs(graph, SampleSizes(b, sym)) for b in (1, s.batch))
        compiled = torch.compile(model, dynamic=False)
        t = time.perf_counter()
        fn = torch_fn(compiled, list(graph.inputs))
        fn(one), fn(many)
        note = f"compile + first calls {time.perf_counter() - t:.1f} s"
        queue.put(row("torch.compile", fn, one, many, s, note))
    except Exception as e:  # any compile failure becomes a skipped row
        queue.put(skipped("torch.compile", f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:160]}"))


def compile_row(
    spec: str, sets: tuple[str, ...], scale: str | None, weights: str | None, s: BenchSettings
) -> dict[str, Any]:
    """Measure ``torch.compile`` in a spawned child; skip it past ``compile_timeout_s``."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_compile_child, args=(spec, sets, scale, weights, s, queue), daemon=True)
    proc.start()
    try:
        return dict(queue.get(timeout=s.compile_timeout_s))
    except Exception:  # queue.Empty: the cap was hit
        return skipped("torch.compile", f"skipped: did not finish within {s.compile_timeout_s:.0f} s")
    finally:
        if proc.is_alive():
            proc.terminate()
        proc.join(5)


# ----------------------------------------------------------------------------------- drivers


def bench_onnx(path: str | Path, s: BenchSettings = BenchSettings(), int8: bool = True) -> dict[str, Any]:
    """onnxruntime rows for an ONNX file (plus its int8 quantisation unless it is one already)."""
    src = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        q = _quantized(src, Path(tmp), s.seq) if int8 and ".int8" not in src.name else None
        rows = onnx_rows(src, s, q)
    return {"model": str(src), "settings": s.__dict__, "rows": rows}


def bench_spec(
    spec: str | Path,
    s: BenchSettings = BenchSettings(),
    *,
    sets: Sequence[str] = (),
    scale: str | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """torch eager, torch.compile, onnxruntime fp32 and int8 for a spec."""
    from specc.export import ExportOptions, export_model
    from specc.export.samples import SampleSizes, make_inputs, symbols_of
    from specc.export.source import load_source

    model = load_source(spec, weights=weights, sets=tuple(sets), scale=scale).model.eval()
    graph = model.graph
    sym = {k: s.seq for k in symbols_of(graph)}
    one, many = (make_inputs(graph, SampleSizes(b, sym)) for b in (1, s.batch))
    rows = [row("torch eager", torch_fn(model, list(graph.inputs)), one, many, s)]
    if s.compile:
        rows.append(compile_row(str(spec), tuple(sets), scale, weights, s))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / f"{graph.name}.onnx"
        export_model(model, graph, fp32, ExportOptions(batches=(1, 2)))
        q, note = _quantized(fp32, Path(tmp), s.seq)
        rows.append(row("onnxruntime fp32", ort_fn(fp32, s.threads), one, many, s))
        rows.append(row("onnxruntime int8", ort_fn(q, s.threads), one, many, s, note))
    return {"model": str(spec), "spec_name": graph.name, "settings": s.__dict__, "rows": rows}


def table(result: dict[str, Any]) -> str:
    """A text table of the rows, with each engine's speed-up over the first row."""
    rows = result["rows"]
    base = next((r for r in rows if r["latency_ms"]), None)
    lines = [
        f"{'engine':<20} {'b1 median ms':>12} {'b1 p90 ms':>10} {'b' + str(result['settings']['batch']) + ' samples/s':>14} {'speed-up':>8}  note"
    ]  # noqa: E501
    for r in rows:
        if r["latency_ms"] is None:
            lines.append(f"{r['engine']:<20} {'-':>12} {'-':>10} {'-':>14} {'-':>8}  {r['note']}")
            continue
        med = r["latency_ms"]["median"]
        speed = base["latency_ms"]["median"] / med if base else 1.0
        lines.append(
            f"{r['engine']:<20} {med:>12.3f} {r['latency_ms']['p90']:>10.3f} "
            f"{r['throughput_per_s']:>14.1f} {speed:>7.2f}x  {r['note']}"
        )
    return "\n".join(lines)
