"""Helpers of the serving tests: models from the real export path, `specc serve` in a subprocess on
127.0.0.1, and a small stdlib HTTP client (every request has a timeout; every loop is bounded)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from conftest import ROOT, SPECS, run_cli

HOST = "127.0.0.1"


def export(spec: str, out: Path, *args: str) -> Path:
    """``specc export specs/SPEC ARGS --out OUT`` (parity-verified, like every export)."""
    result = run_cli("export", str(SPECS / spec), "--out", str(out), *args)
    assert result.code == 0, result.err
    return out


def train_lenet(run: Path) -> Path:
    """A short real `specc train` of LeNet on digits: a run folder with image preprocessing."""
    result = run_cli(
        "train", str(SPECS / "lenet.yaml"), "--data", "digits", "--out", str(run), "--quiet",
        "--device", "cpu", "--set", "train.max_steps=6", "--set", "train.epochs=1",
    )  # fmt: skip
    assert result.code == 0, result.err
    return run


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, lower-cased headers, body)."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def infer_body(inputs: Mapping[str, np.ndarray], binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 infer request for ``inputs`` (binary tensor data or JSON), all outputs binary."""
    from specc.serve.protocol import datatype

    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in inputs.items():
        entry: dict[str, Any] = {"name": name, "shape": list(arr.shape), "datatype": datatype(arr.dtype.name)}
        if binary:
            blob = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        entries.append(entry)
    head = json.dumps({"inputs": entries, "parameters": {"binary_data_output": True}}).encode()
    headers = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    return head + b"".join(blobs), headers


def read_outputs(headers: Mapping[str, str], body: bytes) -> dict[str, np.ndarray]:
    """Outputs of an infer response (binary or JSON)."""
    from specc.serve.protocol import NUMPY_DTYPES

    n = int(headers.get("inference-header-content-length", len(body)))
    meta = json.loads(body[:n])
    out: dict[str, np.ndarray] = {}
    offset = n
    for o in meta["outputs"]:
        dtype = np.dtype(NUMPY_DTYPES[o["datatype"]])
        size = o.get("parameters", {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.asarray(o["data"], dtype=dtype).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(body[offset : offset + size], dtype=dtype).reshape(o["shape"])
            offset += size
    return out


def _wait_ready(server: Server, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if server.proc.poll() is not None:
            raise AssertionError(f"specc serve exited with {server.proc.returncode}")
        with contextlib.suppress(OSError):
            if server.request("GET", "/v2/health/ready", timeout=2)[0] == 200:
                return
        time.sleep(0.05)
    raise AssertionError("specc serve did not become ready in time")


def start(models: list[str], *args: str, ready_s: float = 60.0) -> Server:
    """``specc serve MODELS --port 0 ARGS`` in a subprocess; returns once it is ready."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "specc.cli", "serve", *models, "--host", HOST, "--port", "0", "--log-level", "warning", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise AssertionError(f"specc serve did not start: {line!r}")
    port = int(line.split("listening on http://")[1].split(" ")[0].rsplit(":", 1)[1])
    server = Server(proc, port)
    try:
        _wait_ready(server, ready_s)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


@contextlib.contextmanager
def serving(models: list[str], *args: str) -> Iterator[Server]:
    """A running server, stopped (SIGTERM, then SIGKILL) when the block ends."""
    server = start(models, *args)
    try:
        yield server
    finally:
        server.stop()
