"""Commands on exported models: export, predict, bench (``specc eval`` is in :mod:`specc.cli.eval_cmd`)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from specc.cli.app import app, exit_code_of, log_to_stderr, say
from specc.cli.spec_cmds import (
    IncludeRootOpt,
    JsonOpt,
    MaxParamsOpt,
    ScaleOpt,
    SetOpt,
    use_include_roots,
    use_max_params,
)
from specc.errors import ExportVerificationError, SpecError, UsageError

ExporterOpt = Annotated[
    str, typer.Option("--exporter", help="torchscript (default: fast, opset 17) or dynamo (opset 18)")
]  # noqa: E501


@app.command("export")
def export_cmd(
    spec: Path,
    out: Annotated[Path, typer.Option("--out", "-o", help="the .onnx file to write")],
    weights: Annotated[
        Path | None,
        typer.Option("--weights", "-w", help=".safetensors file or a `specc train` run folder"),
    ] = None,  # noqa: UP045, E501
    sets: SetOpt = None,
    scale: ScaleOpt = None,
    exporter: ExporterOpt = "torchscript",
    opset: Annotated[
        int | None, typer.Option("--opset", help="ONNX opset (default 17 torchscript, 18 dynamo)")
    ] = None,  # noqa: UP045, E501
    static: Annotated[
        bool, typer.Option("--static", help="fixed batch 1 and symbol sizes from dims:")
    ] = False,
    atol: Annotated[float, typer.Option("--atol", help="parity tolerance: |Δ| <= atol + rtol·|ref|")] = 1e-4,
    rtol: Annotated[float, typer.Option("--rtol", help="parity tolerance: |Δ| <= atol + rtol·|ref|")] = 1e-3,
    optimize: Annotated[
        bool, typer.Option("--optimize", help="also write M.opt.onnx (onnxruntime-optimised)")
    ] = False,  # noqa: E501
    int8: Annotated[
        bool,
        typer.Option(
            "--int8",
            help="also write M.int8.onnx and check it (static for CNNs with calibration data, else dynamic)",
        ),
    ] = False,  # noqa: E501
    int8_mode: Annotated[
        str, typer.Option("--int8-mode", help="auto (default), dynamic or static quantisation")
    ] = "auto",  # noqa: E501
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="static int8 calibration inputs: .npy/.npz or a folder of images (default: the run's training split)",
        ),
    ] = None,  # noqa: UP045, E501
    fp16: Annotated[bool, typer.Option("--fp16", help="also write M.fp16.onnx and check it")] = False,
    kv_cache: Annotated[
        bool,
        typer.Option(
            "--kv-cache",
            help="causal language models: export for step-by-step decoding (past_*/present_* cache "
            "inputs/outputs), verified against the uncached model",
        ),
    ] = False,
    tokenizer: Annotated[
        Path | None,
        typer.Option(
            "--tokenizer", help="a Hugging Face tokenizer.json stored in the metadata for specc generate"
        ),
    ] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option(help="seed for initialisation without --weights")] = 0,
    as_json: JsonOpt = False,
    include_root: IncludeRootOpt = None,
    max_params: MaxParamsOpt = None,
) -> None:
    """Export to ONNX, verify parity with PyTorch in onnxruntime (exit 3 on a miss, 4 when the exporter
    fails), write metadata, the SHA-256 manifest M.onnx.sha256 and the report M.onnx.json. With --json
    stdout holds JSON whatever happens: the report, or {"ok": false, "exit_code", "error", "message"}."""
    try:
        use_include_roots(include_root)
        use_max_params(max_params)
        report = _export(
            spec=spec,
            out=out,
            weights=weights,
            sets=sets or [],
            scale=scale,
            exporter=exporter,
            opset=opset,
            static=static,
            atol=atol,
            rtol=rtol,
            optimize=optimize,
            int8=int8,
            int8_mode=int8_mode,
            calibration=calibration,
            fp16=fp16,
            kv_cache=kv_cache,
            tokenizer=tokenizer,
            seed=seed,
        )
    except BaseException as exc:
        if as_json and not isinstance(exc, SystemExit):
            print(json.dumps(_error_json(exc, out), indent=2))
        raise
    if as_json:
        print(json.dumps(report, indent=2))
        return
    say(_summary(report))


def _error_json(exc: BaseException, out: Path) -> dict[str, object]:
    """What ``specc export --json`` prints when it fails; the exit code is the one :func:`fail` uses."""
    from specc.export import failed_path, report_path

    code = exit_code_of(exc)
    data: dict[str, object] = {
        "ok": False,
        "exit_code": code,
        "error": type(exc).__name__,
        "message": str(exc),
    }
    if isinstance(exc, SpecError):
        data["errors"] = [d.to_json() for d in exc.diagnostics]
    failed = report_path(failed_path(out))
    if isinstance(exc, ExportVerificationError) and failed.is_file():
        data["report"] = json.loads(failed.read_text())
    return data


def _export(
    *,
    spec: Path,
    out: Path,
    weights: Path | None,
    sets: list[str],
    scale: str | None,
    exporter: str,
    opset: int | None,
    static: bool,
    atol: float,
    rtol: float,
    optimize: bool,
    int8: bool,
    int8_mode: str,
    calibration: Path | None,
    fp16: bool,
    kv_cache: bool,
    tokenizer: Path | None,
    seed: int,
) -> dict[str, object]:
    from specc.export import ExportOptions, export_spec
    from specc.export.variants import Variant

    log_to_stderr()
    if not (math.isfinite(atol) and math.isfinite(rtol) and atol >= 0 and rtol >= 0):
        raise UsageError("--atol and --rtol must be finite and non-negative")
    if (int8_mode != "auto" or calibration is not None) and not int8:
        raise UsageError("--int8-mode and --calibration go with --int8")
    options = ExportOptions(exporter=exporter, opset=opset, static=static, atol=atol, rtol=rtol)  # type: ignore[arg-type]
    options.check()
    chosen = (("opt", optimize), ("int8", int8), ("fp16", fp16))
    variants: list[Variant] = [k for k, on in chosen if on]  # type: ignore[misc]
    report = export_spec(
        spec,
        out,
        weights=weights,
        sets=sets,
        scale=scale,
        seed=seed,
        options=options,
        variants=variants,
        calibration=calibration,
        int8_mode=int8_mode,  # type: ignore[arg-type]
        kv_cache=kv_cache,
        tokenizer=tokenizer,
    )
    return report


def _summary(report: dict[str, object]) -> str:
    diffs = report["max_diff"]
    assert isinstance(diffs, dict)
    worst = max((d["max_abs"] for d in diffs.values()), default=0.0)
    sizes = report["sizes_tested"]
    assert isinstance(sizes, list)
    lines = [
        f"wrote {report['model']} ({report['exporter']}, opset {report['opset']}, {report['size_bytes']:,} bytes)",
        f"parity ok at {len(sizes)} size(s): max |Δ| {worst:.3g}; sha256 {report['sha256']}",
    ]
    variants = report["variants"]
    assert isinstance(variants, dict)
    for kind, v in variants.items():
        on_data = v.get("output_change_on_data")
        where = "validation data" if on_data else "random inputs"
        change = max(o["max_abs"] for o in (on_data or v["output_change"]).values())
        acc = v.get("accuracy")
        acc_text = f", accuracy {acc['fp32']:.4f} -> {acc[kind]:.4f}" if acc else ""
        mode = f" ({v['mode']})" if v.get("mode") else ""
        lines.append(f"wrote {v['file']}{mode}: max |Δ| vs fp32 {change:.3g} ({where}){acc_text}")
        if v.get("note"):
            lines.append(f"  note: {v['note']}")
    return "\n".join(lines)


@app.command()
def predict(
    model: Path,
    input_file: Annotated[
        Path,
        typer.Option(
            "--input",
            "-i",
            help="a folder of images, an image, .npy/.npz arrays, a .csv or a .txt (raw data)",
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", help="classes to show")] = 5,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="write the predictions to a .csv or .jsonl file (streamed)"),
    ] = None,  # noqa: UP045
    batch_size: Annotated[int, typer.Option("--batch-size", help="samples per onnxruntime call")] = 256,
    preprocessed: Annotated[
        bool,
        typer.Option(
            "--preprocessed",
            help=".npy/.npz arrays are model inputs already (skip the recorded preprocessing)",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run an exported model on raw data with onnxruntime (no torch): the model's recorded
    preprocessing is applied, inputs are checked first (NaN/inf refused)."""
    from specc.runtime import load
    from specc.runtime.predict import Options, check_output, dumps, predict, write_predictions

    log_to_stderr()
    if batch_size < 1:
        raise UsageError("--batch-size must be positive")
    if output is not None:
        check_output(output)
    loaded = load(model)
    if output is not None:
        warnings: list[str] = []

        def rows() -> Iterator[dict[str, object]]:
            opts = Options(batch_size=batch_size, preprocessed=preprocessed)
            for _, _, res in predict(loaded, input_file, top_k, opts):
                warnings.extend(w for w in res.warnings if w not in warnings)
                yield from res.rows

        count = write_predictions(output, rows())
        for w in warnings:
            say(f"warning: {w}", err=True)
        say(
            dumps({"output": str(output), "predictions": count, "warnings": warnings})
            if as_json
            else f"wrote {count} prediction(s) to {output}"
        )
        return
    result = loaded.predict_file(input_file, top_k=top_k, preprocessed=preprocessed)
    for w in result.get("warnings", []):
        say(f"warning: {w}", err=True)
    if as_json:
        print(dumps(result))
        return
    for sample, rows_ in zip(result["ids"], result.get("top_k", []), strict=False):
        shown = ", ".join(
            f"{r['label']} {r['prob']:.4f}" if r["prob"] is not None else f"{r['label']} nan" for r in rows_
        )
        say(f"sample {sample}: {shown}")
    if "top_k" not in result:
        for name, value in result.get("outputs", {}).items():
            say(f"{name}: {dumps(value)[:2000]}")


@app.command()
def bench(
    target: Annotated[Path, typer.Argument(help="a spec, or an exported .onnx file")],
    batch: Annotated[int, typer.Option("--batch", help="batch size of the throughput test")] = 32,
    iters: Annotated[
        int, typer.Option("--iters", help="timed calls per engine and batch size, over all rounds")
    ] = 50,
    rounds: Annotated[
        int, typer.Option("--rounds", help="interleaved rounds (one block per engine each)")
    ] = 10,
    warmup: Annotated[int, typer.Option("--warmup", help="untimed calls first")] = 5,
    seq: Annotated[int, typer.Option("--seq", help="size of symbolic axes (sequence length)")] = 128,
    threads: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option("--threads", help="intra-op threads of torch and onnxruntime (default: theirs)"),
    ] = None,
    weights: Annotated[
        Path | None, typer.Option("--weights", "-w", help=".safetensors or run folder")
    ] = None,  # noqa: UP045
    sets: SetOpt = None,
    scale: ScaleOpt = None,
    no_compile: Annotated[bool, typer.Option("--no-compile", help="skip torch.compile")] = False,
    compile_timeout: Annotated[
        float, typer.Option("--compile-timeout", help="seconds before torch.compile is skipped")
    ] = 180.0,  # noqa: E501
    as_json: JsonOpt = False,
    include_root: IncludeRootOpt = None,
    max_params: MaxParamsOpt = None,
) -> None:
    """Batch-1 latency and batch throughput of torch eager, torch.compile, onnxruntime fp32 and
    int8 (with an .onnx file: onnxruntime only), timed in interleaved rounds with paired
    speed-ups (median, p10-p90); the machine, threads and versions go with the figures."""
    from specc.export.bench import BenchSettings, bench_onnx, bench_spec, table

    log_to_stderr()
    use_include_roots(include_root)
    use_max_params(max_params)
    if batch < 1 or iters < 1 or rounds < 1 or warmup < 0 or seq < 1 or (threads is not None and threads < 1):
        raise UsageError(
            "--batch, --iters, --rounds, --seq and --threads must be positive, --warmup non-negative"
        )
    if not (math.isfinite(compile_timeout) and compile_timeout > 0):
        raise UsageError(f"--compile-timeout must be a positive number of seconds, got {compile_timeout}")
    s = BenchSettings(
        batch=batch,
        iters=iters,
        rounds=rounds,
        warmup=warmup,
        seq=seq,
        compile=not no_compile,
        compile_timeout_s=compile_timeout,
        threads=threads,
    )
    if not target.is_file():
        raise UsageError(f"file not found: {target}")
    if target.suffix == ".onnx":
        result = bench_onnx(target, s)
    else:
        result = bench_spec(
            target, s, sets=sets or [], scale=scale, weights=str(weights) if weights else None
        )
    say(json.dumps(result, indent=2) if as_json else table(result))
