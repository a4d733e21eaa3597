"""FSDP2 (``--fsdp``): 2 CPU processes (gloo) with ``fully_shard`` per block.

Equivalence: 2 sharded processes with global batch B equal 1 process with batch B (plain MLP).
Checkpoints gather full state dicts on rank 0: SIGTERM + ``--resume --fsdp`` continues exactly, and
the optimizer state is stored by parameter name (loadable with or without FSDP).
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from dist_runs import check_restore_best, mlp_spec, run_train, run_weights, train_cmd, train_env

from specc.lang.train_config import TrainConfig
from specc.nn import build
from specc.train import distributed

SPEC = mlp_spec("fsdpmlp")

dist_only = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fsdp")
    spec = root / "spec.yaml"
    spec.write_text(SPEC)
    two = run_train(train_cmd(spec, root / "two", "--nproc-per-node", "2", "--fsdp"))
    assert two.returncode == 0, two.stdout + two.stderr
    assert "fsdp: parameters sharded over 2 processes (2 blocks + root)" in two.stdout
    return spec, root / "two"


@dist_only
def test_fsdp_two_processes_equal_one_process(runs: tuple[Path, Path], tmp_path: Path) -> None:
    spec, two = runs
    one = run_train(train_cmd(spec, tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    a, b = run_weights(tmp_path / "one"), run_weights(two)
    assert sorted(a) == sorted(b)
    for name in a:
        rel = ((a[name] - b[name]).abs().max() / a[name].abs().max()).item()
        assert rel < 1e-5, (name, rel)
    state = torch.load(two / "checkpoints" / "step-00000024" / "state.pt", weights_only=True)
    assert list(state["optimizer"]["state"]) == [
        "hidden.weight",
        "hidden.bias",
        "logits.weight",
        "logits.bias",
    ]


@dist_only
def test_fsdp_sigterm_and_resume_is_exact(runs: tuple[Path, Path], tmp_path: Path) -> None:
    spec, two = runs
    run = tmp_path / "run"
    proc = subprocess.Popen(
        train_cmd(spec, run, "--nproc-per-node", "2", "--fsdp"),
        cwd=ROOT,
        env=train_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 6 "):
            break
    proc.send_signal(signal.SIGTERM)
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    saved = [line for line in out.splitlines() if line.startswith("saved checkpoint at step ")]
    assert len(saved) == 1, out
    step = int(saved[0].rsplit(" ", 1)[1])
    resumed = run_train(train_cmd(spec, run, "--nproc-per-node", "2", "--fsdp", "--resume"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from step {step}" in resumed.stdout
    a, b = run_weights(two), run_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fsdp_units_split_repeats_and_leave_tied_blocks_to_the_root() -> None:
    model = build(ROOT / "specs" / "gpt2_small.yaml", scale="tiny")
    names = {id(m): n for n, m in model.named_modules()}
    units = [[names[id(m)] for m in group] for group in distributed.fsdp_units(model)]
    # wte and lm_head share a weight: both stay in the root's group; each repeat iteration is one group
    assert units == [
        ["wpe"],
        ["h.0.sa.ln_1", "h.0.sa.attn", "h.0.mlp.ln_2", "h.0.mlp.c_fc", "h.0.mlp.c_proj"],
        ["h.1.sa.ln_1", "h.1.sa.attn", "h.1.mlp.ln_2", "h.1.mlp.c_fc", "h.1.mlp.c_proj"],
        ["ln_f"],
    ]


def test_fsdp_units_of_a_plain_module_are_its_children() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert distributed.fsdp_units(model) == [[model[0]], [model[2]]]


def test_optimizer_state_round_trips_between_index_and_name_keys() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(5, 3)).sum().backward()
    opt.step()
    names = [n for n, _ in model.named_parameters()]
    by_name = distributed.optim_state_by_name(opt.state_dict(), names)
    assert list(by_name["state"]) == names and by_name["param_groups"][0]["params"] == names
    back = distributed.optim_state_by_index(by_name, names)
    assert back["param_groups"] == opt.state_dict()["param_groups"]
    assert all(
        torch.equal(back["state"][i]["momentum_buffer"], opt.state[p]["momentum_buffer"])
        for i, p in enumerate(model.parameters())
    )


def test_fsdp_refuses_fp16() -> None:
    with pytest.raises(ValueError, match="bf16"):
        TrainConfig(fsdp=True, amp="fp16")


@dist_only
def test_fsdp_restore_best_loads_the_best_epoch_into_the_shards(
    runs: tuple[Path, Path], tmp_path: Path
) -> None:
    check_restore_best(runs[0], tmp_path / "run", "--nproc-per-node", "2", "--fsdp")
