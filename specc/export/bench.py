"""``specc bench``: batch-1 latency and batch-N throughput of the deployment engines, measured so
that their ratios survive a busy machine.

Engines: torch eager, ``torch.compile`` (in a child process with a time cap, so a slow or failing
compile is reported as skipped instead of hanging the run), onnxruntime fp32 and int8 (for an
``.onnx`` file: onnxruntime only, and its existing ``M.int8.onnx`` when the manifest verifies it).

How it times (why the ratios hold): the engines are measured in **interleaved rounds**: each round
times one block of calls of every engine, batch 1 then batch N, in an order that rotates from round
to round, so a slowdown of the machine hits every engine of that round. A block is ``number`` calls
(at least ``iters / rounds`` and at least ~10 ms) timed as one, with the garbage collector paused:
``torch.utils.benchmark.Timer`` for the torch engines (it sets the thread count and synchronises
CUDA), ``timeit`` (the same core) for onnxruntime, whose thread pool is its own. Each engine's
speed-up is the ratio of its block to the first engine's block **in the same round**; the table
gives the median with p10 and p90 over rounds. When the blocks of one engine spread by more than
``NOISY`` (p90 − p10 over the median), the result carries a warning: the machine is busy and single
figures move, though paired ratios move less.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import platform
import tempfile
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.benchmark import Timer

from specc.errors import UsageError
from specc.export import ExportOptions, export_model
from specc.export.quantize import Calibration, quantize_int8
from specc.export.samples import SampleSizes, make_inputs, symbols_of
from specc.export.source import load_source
from specc.export.variants import variant_path
from specc.export.verify import ort_runner
from specc.runtime import load
from specc.runtime.model import check_manifest, read_info
from specc.runtime.session import session_options

Feeds = dict[str, NDArray[Any]]
Fn = Callable[[Feeds], Any]
Kind = Literal["one", "many"]
KINDS: tuple[Kind, Kind] = ("one", "many")
DEFAULT_SEQ = 128
NOISY = 0.10
MIN_BLOCK_S = 0.01


@dataclass(frozen=True)
class BenchSettings:
    batch: int = 32
    iters: int = 50
    """Timed calls per engine at each batch size, over all rounds (blocks may hold more: ~10 ms)."""
    warmup: int = 5
    rounds: int = 10
    seq: int = DEFAULT_SEQ
    compile: bool = True
    compile_timeout_s: float = 180.0
    threads: int | None = None


# ----------------------------------------------------------------------------------- engines


class Engine(Protocol):
    """Something to time: ``block(kind, number)`` runs ``number`` calls on the batch-1 (``one``) or
    batch-N (``many``) inputs and returns their total seconds."""

    name: str
    note: str

    def block(self, kind: Kind, number: int) -> float: ...

    def close(self) -> None: ...


@dataclass
class InProcess:
    """An engine running in this process: a function of the feeds and how to time it."""

    name: str
    fn: Fn
    feeds: dict[str, Feeds]
    note: str = ""
    torch_timer: bool = False
    threads: int | None = None

    def block(self, kind: Kind, number: int) -> float:
        feeds = self.feeds[kind]
        if self.torch_timer:
            threads = self.threads or torch.get_num_threads()  # Timer's own default is 1 thread
            timer = Timer(stmt="fn(feeds)", globals={"fn": self.fn, "feeds": feeds}, num_threads=threads)
            return float(timer.timeit(number).raw_times[0])
        return timeit.Timer(lambda: self.fn(feeds)).timeit(number)

    def close(self) -> None:
        pass


@dataclass
class Skipped:
    name: str
    note: str


# ----------------------------------------------------------------------------------- the rounds


@dataclass
class Samples:
    """Seconds per call of every block of one engine, by batch kind, in round order."""

    one: list[float] = field(default_factory=list)
    many: list[float] = field(default_factory=list)


def calls_per_block(engine: Engine, kind: Kind, s: BenchSettings) -> int:
    """Warm the engine up and choose how many calls one block makes."""
    for _ in range(s.warmup):
        engine.block(kind, 1)
    probe = max(engine.block(kind, 1), 1e-9)
    return max(1, math.ceil(s.iters / s.rounds), math.ceil(MIN_BLOCK_S / probe))


def rounds(
    engines: Sequence[Engine], s: BenchSettings
) -> tuple[dict[str, Samples], dict[str, dict[str, int]], dict[str, str]]:
    """Time every engine in interleaved rounds (order rotating each round). An engine that fails
    (a compile child that died or hung) leaves the rounds; its note says why."""
    number: dict[str, dict[str, int]] = {}
    failed: dict[str, str] = {}
    for e in engines:
        try:
            number[e.name] = {k: calls_per_block(e, k, s) for k in KINDS}
        except Exception as exc:  # noqa: BLE001 - reported in the engine's row
            failed[e.name] = f"failed: {type(exc).__name__}: {exc}"
    running = [e for e in engines if e.name not in failed]
    samples = {e.name: Samples() for e in running}
    for r in range(s.rounds):
        shift = r % max(1, len(running))
        for kind in KINDS:
            for e in [*running[shift:], *running[:shift]]:
                if e.name in failed:
                    continue
                n = number[e.name][kind]
                try:
                    getattr(samples[e.name], kind).append(e.block(kind, n) / n)
                except Exception as exc:  # noqa: BLE001 - reported in the engine's row
                    failed[e.name] = f"failed in round {r + 1}: {type(exc).__name__}: {exc}"
    return {k: v for k, v in samples.items() if k not in failed}, number, failed


def spread(values: Sequence[float]) -> dict[str, float]:
    """p10, p50 and p90 (linear interpolation between order statistics)."""
    arr = np.asarray(values, dtype=np.float64)
    p10, p50, p90 = np.percentile(arr, [10, 50, 90])
    return {"p10": float(p10), "p50": float(p50), "p90": float(p90)}


def summarize(
    engines: Sequence[Engine | Skipped],
    samples: dict[str, Samples],
    number: dict[str, dict[str, int]],
    batch: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows (latency, throughput and the paired speed-up over the first timed engine) and warnings."""
    timed = [e for e in engines if e.name in samples]
    base = samples[timed[0].name] if timed else None
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for e in engines:
        if e.name not in samples or base is None:
            rows.append(
                {
                    "engine": e.name,
                    "latency_ms": None,
                    "throughput_per_s": None,
                    "speedup": None,
                    "note": e.note,
                }
            )
            continue
        got = samples[e.name]
        latency = spread([1e3 * t for t in got.one])
        ratios = [b / t for b, t in zip(base.one, got.one, strict=True)]
        rows.append(
            {
                "engine": e.name,
                "latency_ms": latency,
                "throughput_per_s": spread([batch / t for t in got.many]),
                "speedup": spread(ratios),
                "calls_per_block": number[e.name],
                "note": e.note,
            }
        )
        width = (latency["p90"] - latency["p10"]) / latency["p50"]
        if width > NOISY:
            warnings.append(
                f"{e.name}: batch-1 blocks spread {100 * width:.0f} % (p10-p90 over the median): the machine "
                "is busy or throttling; single figures move, paired speed-ups less (see their p10-p90)"
            )
    return rows, warnings


def run_engines(engines: Sequence[Engine | Skipped], s: BenchSettings, batch: int) -> dict[str, Any]:
    """Time the engines that run, summarise all of them, close them."""
    live = [e for e in engines if not isinstance(e, Skipped)]
    try:
        samples, number, failed = rounds(live, s)
    finally:
        for e in live:
            e.close()
    shown = [Skipped(e.name, failed[e.name]) if e.name in failed else e for e in engines]
    rows, warnings = summarize(shown, samples, number, batch)
    return {"rows": rows, "warnings": warnings}


# ----------------------------------------------------------------------------------- the machine


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for pkg in ("specc", "torch", "onnxruntime", "onnx", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def machine_record(s: BenchSettings, torch_threads: int | None) -> dict[str, Any]:
    """Which machine, threads and library versions the figures come from."""
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_name(),
        "logical_cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "threads": {
            "requested": s.threads,
            "torch": torch_threads,
            "onnxruntime": s.threads
            if s.threads is not None
            else "onnxruntime default (one per physical core)",
        },
        "versions": versions(),
    }


# ----------------------------------------------------------------------------------- onnxruntime


def bench_session(path: Path, threads: int | None = None) -> Any:
    """An onnxruntime CPU session with specc's latency settings (:mod:`specc.runtime.session`)."""
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
    )


def ort_engine(
    name: str, path: Path, feeds: dict[str, Feeds], threads: int | None, note: str = ""
) -> InProcess:
    run = ort_runner(bench_session(path, threads))
    return InProcess(name, lambda f: run(f), feeds, note)


def onnx_feeds(path: Path, batch: int, seq: int, seed: int = 0) -> Feeds:
    """Random inputs for an ONNX file from its declared inputs (metadata names, else the graph's)."""

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


def _quantized(src: Path, folder: Path, seq: int) -> tuple[Path, str]:
    """The int8 variant ``specc export --int8`` would write (random calibration inputs) and a note."""

    dst = folder / (src.stem + ".int8.onnx")
    info = quantize_int8(src, dst, Calibration(onnx_feeds(src, 16, seq, seed=1), "random inputs"))
    if info["mode"] == "static":
        return dst, "static int8 (QDQ; random calibration: timing only)"
    return dst, "dynamic int8" + (" (Conv stays fp32)" if "note" in info else "")


def existing_int8(fp32: Path) -> tuple[Path | None, str]:
    """``M.int8.onnx`` next to ``M.onnx`` if its manifest verifies it and its metadata make it the
    int8 variant of the same spec; else ``None`` and why not."""

    path = variant_path(fp32, "int8")
    if not path.is_file():
        return None, ""
    try:
        if check_manifest(path) is None:
            return None, f"{path.name} has no manifest ({path.name}.sha256)"
        meta, own = read_info(path), read_info(fp32)
    except UsageError as e:
        return None, str(e)
    if meta.variant != "int8" or meta.spec_hash != own.spec_hash:
        return None, f"{path.name} is not the int8 variant of {fp32.name} (metadata differ)"
    return path, f"{path.name} (specc export --int8; manifest verified)"


def onnx_engines(
    fp32: Path, s: BenchSettings, int8: tuple[Path, str] | None, feeds: dict[str, Feeds]
) -> list[Engine | Skipped]:
    engines: list[Engine | Skipped] = [ort_engine("onnxruntime fp32", fp32, feeds, s.threads)]
    if int8 is not None:
        engines.append(ort_engine("onnxruntime int8", int8[0], feeds, s.threads, int8[1]))
    return engines


# ----------------------------------------------------------------------------------- torch


def torch_fn(model: Any, input_names: Sequence[str]) -> Fn:
    def run(feeds: Feeds) -> Any:
        with torch.inference_mode():
            return model(*[torch.from_numpy(feeds[n]) for n in input_names])

    return run


class Compiled:
    """``torch.compile`` in a spawned child that times blocks on request (a pipe), so it takes part
    in the interleaved rounds while a hung or failed compile cannot take the run down."""

    name = "torch.compile"

    def __init__(self, conn: Any, proc: Any, note: str, timeout_s: float) -> None:
        self.conn, self.proc, self.note, self.timeout_s = conn, proc, note, timeout_s

    def block(self, kind: Kind, number: int) -> float:
        self.conn.send(("block", kind, number))
        if not self.conn.poll(self.timeout_s):
            raise TimeoutError(f"torch.compile block did not finish within {self.timeout_s:.0f} s")
        return float(self.conn.recv())

    def close(self) -> None:
        try:
            self.conn.send(("stop", "one", 0))
        except (OSError, EOFError):
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)


def _compile_child(
    spec: str, sets: tuple[str, ...], scale: str | None, weights: str | None, s: BenchSettings, conn: Any
) -> None:
    try:
        if s.threads is not None:
            torch.set_num_threads(s.threads)
        model = load_source(spec, weights=weights, sets=sets, scale=scale, run_flags=True).model.eval()
        graph = model.graph
        sym = {k: s.seq for k in symbols_of(graph)}
        feeds = {
            "one": make_inputs(graph, SampleSizes(1, sym)),
            "many": make_inputs(graph, SampleSizes(s.batch, sym)),
        }
        start = time.perf_counter()
        engine = InProcess(
            "torch.compile", torch_fn(torch.compile(model, dynamic=False), list(graph.inputs)), feeds
        )
        engine.torch_timer, engine.threads = True, s.threads
        engine.block("one", 1), engine.block("many", 1)
        conn.send(("ready", f"compile + first calls {time.perf_counter() - start:.1f} s"))
    except Exception as e:  # any compile failure becomes a skipped row
        conn.send(
            ("failed", f"skipped: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
        )
        return
    while True:
        what, kind, number = conn.recv()
        if what == "stop":
            return
        conn.send(engine.block(kind, number))


def compile_engine(
    spec: str, sets: tuple[str, ...], scale: str | None, weights: str | None, s: BenchSettings
) -> Compiled | Skipped:
    """Start the compile child; a failure or a compile over ``compile_timeout_s`` is a skipped row."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_compile_child, args=(spec, sets, scale, weights, s, child), daemon=True)
    proc.start()
    if parent.poll(s.compile_timeout_s):
        status, note = parent.recv()
        if status == "ready":
            return Compiled(parent, proc, note, s.compile_timeout_s)
    else:
        note = f"skipped: did not finish within {s.compile_timeout_s:g} s"
    proc.terminate()
    proc.join(5)
    return Skipped("torch.compile", note)


# ----------------------------------------------------------------------------------- drivers


def bench_onnx(path: str | Path, s: BenchSettings = BenchSettings(), int8: bool = True) -> dict[str, Any]:
    """onnxruntime rows for an ONNX file, with its int8 variant: the existing, manifest-verified
    ``M.int8.onnx`` if there is one, else a quantisation made here (unless the file is int8 itself)."""
    src = Path(path)
    feeds = {"one": onnx_feeds(src, 1, s.seq), "many": onnx_feeds(src, s.batch, s.seq)}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        q: tuple[Path, str] | None = None
        if int8 and ".int8" not in src.name:
            found, why = existing_int8(src)
            if found is not None:
                q = (found, why)
            else:
                if why:
                    notes.append(f"not reusing the int8 file: {why}; quantised again for timing")
                q = _quantized(src, Path(tmp), s.seq)
        result = run_engines(onnx_engines(src, s, q, feeds), s, s.batch)
    result["warnings"] = notes + result["warnings"]
    return {"model": str(src), "settings": asdict(s), "machine": machine_record(s, None), **result}


def bench_spec(
    spec: str | Path,
    s: BenchSettings = BenchSettings(),
    *,
    sets: Sequence[str] = (),
    scale: str | None = None,
    weights: str | None = None,
) -> dict[str, Any]:
    """torch eager, torch.compile, onnxruntime fp32 and int8 for a spec."""

    if s.threads is not None:
        torch.set_num_threads(s.threads)
    model = load_source(spec, weights=weights, sets=tuple(sets), scale=scale, run_flags=True).model.eval()
    graph = model.graph
    sym = {k: s.seq for k in symbols_of(graph)}
    feeds = {
        "one": make_inputs(graph, SampleSizes(1, sym)),
        "many": make_inputs(graph, SampleSizes(s.batch, sym)),
    }
    eager = InProcess(
        "torch eager", torch_fn(model, list(graph.inputs)), feeds, torch_timer=True, threads=s.threads
    )
    engines: list[Engine | Skipped] = [eager]
    if s.compile:
        engines.append(compile_engine(str(spec), tuple(sets), scale, weights, s))
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / f"{graph.name}.onnx"
        export_model(model, graph, fp32, ExportOptions(batches=(1, 2)))
        engines += onnx_engines(fp32, s, _quantized(fp32, Path(tmp), s.seq), feeds)
        result = run_engines(engines, s, s.batch)
    return {
        "model": str(spec),
        "spec_name": graph.name,
        "settings": asdict(s),
        "machine": machine_record(s, torch.get_num_threads()),
        **result,
    }


def table(result: dict[str, Any]) -> str:
    """A text table: median batch-1 latency (p10-p90), batch-N throughput and the paired speed-up
    over the first row (p10-p90), then the machine and any warnings."""
    batch = result["settings"]["batch"]
    head = f"{'engine':<18} {'b1 ms p50 (p10-p90)':>24} {'b' + str(batch) + ' samples/s':>14} {'speed-up (p10-p90)':>22}  note"
    lines = [head]
    for r in result["rows"]:
        if r["latency_ms"] is None:
            lines.append(f"{r['engine']:<18} {'-':>24} {'-':>14} {'-':>22}  {r['note']}")
            continue
        lat, thr, sp = r["latency_ms"], r["throughput_per_s"], r["speedup"]
        lat_text = f"{lat['p50']:.3f} ({lat['p10']:.3f}-{lat['p90']:.3f})"
        sp_text = f"{sp['p50']:.2f}x ({sp['p10']:.2f}-{sp['p90']:.2f})"
        lines.append(f"{r['engine']:<18} {lat_text:>24} {thr['p50']:>14.1f} {sp_text:>22}  {r['note']}")
    m = result["machine"]
    load = m["load_average"]
    lines.append(
        f"{m['cpu']}, {m['logical_cpus']} logical CPUs, threads: torch {m['threads']['torch']}, "
        f"onnxruntime {m['threads']['onnxruntime']}"
        + (f"; load average {load[0]:.1f}" if load else "")
        + f"; {result['settings']['rounds']} interleaved rounds"
    )
    lines += [f"warning: {w}" for w in result["warnings"]]
    return "\n".join(lines)
