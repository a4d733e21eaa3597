"""A two-node run simulated on one machine: two ``specc train --nnodes 2`` launchers (one process each)
meeting at a loopback rendezvous, with loader workers and synchronised BatchNorm, end with the same
weights as one process (BatchNorm statistics all-reduced over the nodes by GroupBatchNorm on gloo)."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from dist_runs import run_train, run_weights, train_cmd, train_env

SPEC = """specc: 1
name: bnnet
inputs: {image: {shape: [1, 8, 8]}}
defaults: {norm: batch, activation: relu}
layers:
  - conv2d: {out_channels: 6, kernel_size: 3, name: conv}
  - norm: {name: bn1}
  - act
  - flatten
  - linear: {out_features: 16, name: fc}
  - norm: {name: bn2}
  - act
  - linear: {out_features: 10, name: logits}
train: {optimizer: sgd, momentum: 0.9, lr: 0.05, batch_size: 32, max_steps: 12, epochs: null,
        sync_batchnorm: true, num_workers: 1, augment: crop_flip, log_every: 4}
"""

# three trainings (two launchers and the single-process run) share the machine with the rest of the
# suite under -n 2: on two loaded cores they have taken over 120 s, so wait up to 300 s for them
TIMEOUT_S = 300

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable"),
]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_nodes_with_workers_and_sync_batchnorm_equal_one_process(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC)
    endpoint = f"127.0.0.1:{_port()}"
    nodes = [
        subprocess.Popen(
            train_cmd(
                spec,
                tmp_path / "two",
                "--nproc-per-node",
                "1",
                "--nnodes",
                "2",
                "--node-rank",
                str(rank),
                "--rdzv-endpoint",
                endpoint,
            ),
            cwd=ROOT,
            env=train_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    try:
        one = run_train(train_cmd(spec, tmp_path / "one"), timeout=TIMEOUT_S)
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in nodes]
    finally:  # a timeout must not leave the launchers running
        for p in nodes:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert one.returncode == 0, one.stdout + one.stderr
    assert "sync_batchnorm: 2 BatchNorm layers synchronised" in outs[0]
    a, b = run_weights(tmp_path / "one"), run_weights(tmp_path / "two")
    for name in a:
        if a[name].is_floating_point():
            rel = ((a[name] - b[name]).abs().max() / a[name].abs().max().clamp_min(1e-12)).item()
            assert rel < 1e-4, (name, rel)
