"""``specc bench``: the structure and the logic of the measurement (never its timings).

Fake engines with scripted block times check the interleaving, the paired ratios and the noise
warning; a real exported model checks the reuse of an existing, manifest-verified ``M.int8.onnx``,
the threads and the JSON record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_cli

from specc.export.bench import BenchSettings, Kind, Skipped, rounds, run_engines, spread

SPEC = """specc: 1
name: tiny
inputs: {image: {shape: [1, 12, 12]}}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3}
  - relu
  - flatten
  - linear: 10
"""


@dataclass
class Machine:
    """How slow the machine is in each round; the first ``untimed`` blocks (warm-up and probes of
    every engine) run at full speed."""

    slowdown: list[float]
    engines: int
    untimed: int
    blocks: int = 0

    def factor(self) -> float:
        self.blocks += 1
        timed = self.blocks - 1 - self.untimed
        return 1.0 if timed < 0 else self.slowdown[timed // (2 * self.engines)]


@dataclass
class Fake:
    """An engine whose call takes ``per_call`` seconds (8x at the big batch) times the slowdown."""

    name: str
    per_call: float
    log: list[tuple[str, Kind, int]]
    machine: Machine
    note: str = ""
    closed: bool = False

    def block(self, kind: Kind, number: int) -> float:
        self.log.append((self.name, kind, number))
        return self.per_call * number * self.machine.factor() * (8 if kind == "many" else 1)

    def close(self) -> None:
        self.closed = True


def fakes(
    slowdown: list[float], s: BenchSettings, *costs: float
) -> tuple[list[Fake], list[tuple[str, Kind, int]]]:
    log: list[tuple[str, Kind, int]] = []
    machine = Machine(slowdown, len(costs), untimed=len(costs) * 2 * (s.warmup + 1))
    return [Fake(f"e{i}", c, log, machine) for i, c in enumerate(costs)], log


def test_rounds_interleave_every_engine_in_a_rotating_order() -> None:
    s = BenchSettings(batch=8, iters=6, rounds=3, warmup=1)
    engines, log = fakes([1.0] * 3, s, 0.02, 0.01, 0.04)
    samples, number, failed = rounds(engines, s)
    assert failed == {}
    timed = log[-3 * 2 * 3 :]  # after warm-up and probes: rounds x kinds x engines
    for r in range(3):
        block = timed[6 * r : 6 * r + 6]
        assert [(n, k) for n, k, _ in block[:3]] == [(f"e{(r + i) % 3}", "one") for i in range(3)]
        assert [(n, k) for n, k, _ in block[3:]] == [(f"e{(r + i) % 3}", "many") for i in range(3)]
    assert all(len(samples[e.name].one) == len(samples[e.name].many) == 3 for e in engines)
    assert all(number[e.name]["one"] >= 2 for e in engines)  # iters / rounds calls at least


def test_paired_speedups_cancel_a_machine_that_slows_down_between_rounds() -> None:
    s = BenchSettings(batch=8, iters=4, rounds=5, warmup=0)
    engines, _ = fakes([1.0, 3.0, 1.5, 6.0, 2.0], s, 0.02, 0.01)  # every round at its own speed
    result = run_engines(engines, s, batch=8)
    base, fast = result["rows"]
    assert base["speedup"] == {"p10": 1.0, "p50": 1.0, "p90": 1.0}
    assert fast["speedup"]["p10"] == pytest.approx(2.0) and fast["speedup"]["p90"] == pytest.approx(2.0)
    assert fast["latency_ms"]["p90"] > 2 * fast["latency_ms"]["p10"]  # single figures do move
    assert any("e1: batch-1 blocks spread" in w for w in result["warnings"])
    assert all(e.closed for e in engines)


def test_a_quiet_machine_gives_no_warning_and_skipped_engines_keep_their_row() -> None:
    s = BenchSettings(batch=4, iters=2, rounds=4, warmup=0)
    engines, _ = fakes([1.0] * 4, s, 0.02, 0.005)
    result = run_engines([engines[0], Skipped("torch.compile", "skipped: boom"), engines[1]], s, batch=4)
    assert result["warnings"] == []
    assert [r["engine"] for r in result["rows"]] == ["e0", "torch.compile", "e1"]
    assert result["rows"][1]["latency_ms"] is None and result["rows"][1]["note"] == "skipped: boom"
    assert result["rows"][2]["speedup"]["p50"] == pytest.approx(4.0)
    assert result["rows"][2]["throughput_per_s"]["p50"] == pytest.approx(4 / (0.005 * 8))


def test_spread_is_p10_p50_p90() -> None:
    assert spread(list(range(11))) == {"p10": 1.0, "p50": 5.0, "p90": 9.0}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    spec = folder / "tiny.yaml"
    spec.write_text(SPEC)
    r = run_cli("export", str(spec), "--out", str(folder / "tiny.onnx"), "--int8")
    assert r.code == 0, r.err
    assert (folder / "tiny.int8.onnx.sha256").is_file()
    return folder / "tiny.onnx"


BENCH = ["--json", "--iters", "2", "--rounds", "2", "--warmup", "0", "--batch", "4", "--threads", "1"]


def test_bench_onnx_reuses_the_verified_int8_file(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import specc.export.quantize as quantize

    def no_quantising(*a: object, **k: object) -> None:
        raise AssertionError("re-quantised although M.int8.onnx exists")

    monkeypatch.setattr(quantize, "quantize_int8", no_quantising)
    r = run_cli("bench", str(exported), *BENCH)
    assert r.code == 0, r.err
    result = json.loads(r.out)
    rows = {row["engine"]: row for row in result["rows"]}
    assert set(rows) == {"onnxruntime fp32", "onnxruntime int8"}
    assert (
        "tiny.int8.onnx" in rows["onnxruntime int8"]["note"]
        and "manifest verified" in rows["onnxruntime int8"]["note"]
    )
    machine = result["machine"]
    assert machine["threads"]["onnxruntime"] == 1 and machine["threads"]["requested"] == 1
    assert machine["cpu"] and machine["logical_cpus"] >= 1 and len(machine["load_average"]) == 3
    assert set(machine["versions"]) >= {"specc", "onnxruntime", "numpy"}
    for row in result["rows"]:
        assert set(row["latency_ms"]) == {"p10", "p50", "p90"} and row["throughput_per_s"]["p50"] > 0
    assert result["settings"]["rounds"] == 2


def test_a_tampered_int8_file_is_not_reused(exported: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(exported.parent, folder)
    int8 = folder / "tiny.int8.onnx"
    int8.write_bytes(int8.read_bytes() + b"\0")  # the manifest no longer matches
    r = run_cli("bench", str(folder / "tiny.onnx"), *BENCH)
    assert r.code == 0, r.err
    result = json.loads(r.out)
    note = {row["engine"]: row["note"] for row in result["rows"]}["onnxruntime int8"]
    assert "random calibration" in note or "dynamic int8" in note
    assert any("not reusing the int8 file" in w and "SHA-256 mismatch" in w for w in result["warnings"])


def test_bench_refuses_bad_options(exported: Path) -> None:
    for args in (["--threads", "0"], ["--rounds", "0"], ["--iters", "0"]):
        r = run_cli("bench", str(exported), *args)
        assert r.code == 2 and "must be positive" in r.err, r.err


def test_a_compile_over_its_time_cap_becomes_a_skipped_row(tmp_path: Path) -> None:
    from specc.export.bench import bench_spec

    spec = tmp_path / "tiny.yaml"
    spec.write_text(SPEC)
    s = BenchSettings(batch=2, iters=1, rounds=1, warmup=0, compile_timeout_s=0.2, threads=1)
    result = bench_spec(spec, s)
    rows = {row["engine"]: row for row in result["rows"]}
    assert list(rows) == ["torch eager", "torch.compile", "onnxruntime fp32", "onnxruntime int8"]
    assert rows["torch.compile"]["latency_ms"] is None
    assert rows["torch.compile"]["note"] == "skipped: did not finish within 0.2 s"
    assert rows["onnxruntime fp32"]["speedup"]["p50"] > 0


def test_an_engine_failing_midway_leaves_the_rounds_with_its_reason() -> None:
    s = BenchSettings(batch=4, iters=2, rounds=4, warmup=0)
    log: list[tuple[str, Kind, int]] = []
    machine = Machine([1.0] * 8, 3, untimed=3 * 2)

    class Dies(Fake):
        def block(self, kind: Kind, number: int) -> float:
            if len([x for x in log if x[0] == self.name]) >= 4:
                raise EOFError("child exited")
            return super().block(kind, number)

    base, fast = Fake("e0", 0.02, log, machine), Fake("e1", 0.01, log, machine)
    dying = Dies("compile", 0.01, log, machine)
    result = run_engines([base, dying, fast], s, batch=4)
    rows = {r["engine"]: r for r in result["rows"]}
    assert rows["compile"]["latency_ms"] is None and rows["compile"]["note"].startswith("failed in round")
    assert "EOFError: child exited" in rows["compile"]["note"]
    assert rows["e1"]["speedup"]["p50"] == pytest.approx(2.0) and dying.closed
