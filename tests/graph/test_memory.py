"""The static training-memory estimate: its arithmetic, every op's rule against what torch keeps,
whole models against a measured training step, ``--fits`` against a memory cap, and the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, run_cli, write_spec

from specc.api import check, check_text
from specc.errors import UsageError
from specc.graph.memory import estimate_memory, largest_batch, parse_bytes
from specc.ops import OPS, InferContext, TensorType
from specc.ops.base import MemoryContext, Op, OpMemory

CHAIN = """specc: 1
name: chain
inputs: {x: {shape: [32]}}
layers:
  - linear: 16
  - relu
  - flatten
  - linear: 8
"""


def test_parameters_gradients_and_optimizer_state() -> None:
    graph = check_text(CHAIN)
    params = 4 * (32 * 16 + 16 + 16 * 8 + 8)
    for optimizer, copies in (("adamw", 2), ("adam", 2), ("sgd", 1), ("none", 0)):
        est = estimate_memory(graph, 4, optimizer, device="cpu")
        assert (est.params, est.grads, est.optimizer_state) == (params, params, copies * params)
    assert estimate_memory(graph, 4).inputs == 4 * 32 * 4 + 4 * 8  # x and int64 class targets


def test_a_tensor_kept_by_several_ops_is_counted_once() -> None:
    # relu keeps its output, the second linear keeps the same tensor (through a flatten view);
    # the loss keeps fp32 log-probabilities of the logits; the first linear keeps x (the batch)
    est = estimate_memory(check_text(CHAIN), 5)
    assert est.activations == 5 * 16 * 4 + 5 * 8 * 4
    assert [n.kept_bytes for n in est.nodes] == [0, 0, 0, 0]
    assert [n.output_bytes for n in est.nodes] == [5 * 16 * 4, 5 * 16 * 4, 0, 5 * 8 * 4]


def test_autocast_halves_what_low_precision_ops_keep() -> None:
    graph = check_text(CHAIN)
    full, half = estimate_memory(graph, 64), estimate_memory(graph, 64, amp="bf16")
    assert half.params == full.params and half.grads == full.grads  # master weights stay fp32
    # linear 1 keeps a bf16 copy of x and of its weight; relu keeps its bf16 output, which linear 2
    # keeps too, with a bf16 copy of its weight; the loss keeps fp32 log-probabilities
    assert half.activations == 64 * 32 * 2 + 2 * 32 * 16 + 64 * 16 * 2 + 2 * 16 * 8 + 64 * 8 * 4


def test_peak_grows_with_the_batch_and_fits_picks_the_largest() -> None:
    graph = check(ROOT / "specs" / "small_resnet.yaml")
    peaks = [estimate_memory(graph, b).peak for b in (1, 2, 4, 8, 16)]
    assert peaks == sorted(peaks) and peaks[-1] > 4 * peaks[0] - 3 * peaks[0]
    budget = parse_bytes("64MiB")
    best = largest_batch(graph, budget)
    assert best is not None and best.peak <= budget < estimate_memory(graph, best.batch + 1).peak
    assert largest_batch(graph, 1000) is None  # not even the parameters fit


def test_memory_sizes_parse() -> None:
    assert parse_bytes("80GiB") == 80 * 2**30
    assert parse_bytes("24GB") == 24 * 10**9
    assert parse_bytes("1.5 MiB") == int(1.5 * 2**20)
    assert parse_bytes("4096") == 4096
    for bad in ("lots", "-1GB", "0", "3 parsecs", "nanGB"):
        with pytest.raises(UsageError):
            parse_bytes(bad)


def test_an_op_without_its_own_rule_keeps_its_float_inputs() -> None:
    class Unknown(Op):
        op_name = "unknown_for_test"

    ins = [TensorType((4, 4)), TensorType((4,), "int64"), TensorType((4, 4))]
    assert Unknown().memory(ins, [TensorType((4, 4))], MemoryContext()) == OpMemory(keeps_inputs=(0, 2))


# ---- every op's rule against the tensors torch's autograd keeps ----------------------------------


def _examples() -> dict[str, list[Any]]:
    path = ROOT / "tests" / "nn" / "test_builder_contract.py"
    spec = importlib.util.spec_from_file_location("builder_contract_examples", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXAMPLES  # type: ignore[no-any-return]


EXAMPLES = _examples()
# ops whose rule is exact on the CPU but these (recurrent layers: oneDNN's workspace, fitted within 10 %)
APPROXIMATE = {"rnn", "gru", "lstm"}


def kept_per_sample(op: Op, shapes: list[tuple[tuple[int, ...], str]]) -> tuple[int, int]:
    """(measured, estimated) bytes the op keeps for backward per extra sample (CPU, fp32): the
    storages torch's saved-tensor hooks see at batch 4 minus batch 2, halved, parameters excepted."""
    import torch

    types = [TensorType(s, d) for s, d in shapes]  # type: ignore[arg-type]
    inferred = op.infer(types, InferContext())
    module = op.build(types, inferred).train()
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}

    def saved(batch: int) -> int:
        torch.manual_seed(0)
        xs = []
        for s, d in shapes:
            if d == "int64":
                xs.append(torch.randint(0, 4, (batch, *s)))
            elif d == "bool":
                xs.append(torch.ones((batch, *s), dtype=torch.bool))
            else:
                xs.append(torch.randn((batch, *s), requires_grad=True))
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                storages[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = module(*xs)
        del out
        return sum(storages.values())

    ctx = MemoryContext(device="cpu")
    mem = op.memory(types, inferred.outputs, ctx)
    width = {"float32": 4, "int64": 8, "bool": 1}
    estimate = sum(math.prod(types[i].shape) * width[types[i].dtype] for i in mem.keeps_inputs)
    estimate += sum(math.prod(inferred.outputs[i].shape) * 4 for i in mem.keeps_outputs)
    estimate += int(mem.kept * 4 + mem.kept_bytes)
    return (saved(4) - saved(2)) // 2, estimate


F, B = "float32", "bool"
ROPE = {"theta": 10000.0}
# the attention variants whose memory differs: dropout (matmul/softmax form) or not (SDPA), masks,
# grouped-query heads, rotary embeddings, layouts, cross-attention
MORE: dict[str, list[Any]] = {
    "multihead_attention": [
        ({"num_heads": 2, "causal": True}, [((5, 8), F)]),
        ({"num_heads": 2, "qkv": "separate"}, [((5, 8), F), ((5,), B)]),
        ({"num_heads": 2, "causal": True, "rope": ROPE}, [((5, 8), F), ((5,), B)]),
        ({"num_heads": 4, "num_kv_heads": 2, "qkv": "llama", "bias": False, "causal": True, "rope": ROPE},
         [((5, 8), F), ((5,), B)]),
        ({"num_heads": 4, "num_kv_heads": 2, "qkv": "llama", "causal": True, "rope": ROPE}, [((5, 8), F)]),
        ({"num_heads": 2, "causal": True, "dropout": 0.1}, [((5, 8), F)]),
        ({"num_heads": 4, "num_kv_heads": 2, "qkv": "llama", "causal": True, "dropout": 0.1}, [((5, 8), F)]),
        ({"num_heads": 2, "qkv": "llama", "causal": True, "dropout": 0.1, "rope": ROPE}, [((5, 8), F)]),
        ({"num_heads": 2, "dropout": 0.2}, [((5, 8), F), ((7, 8), F), ((7,), B)]),
    ],
    "dot_product_attention": [
        ({"dropout": 0.1}, [((5, 8), F), ((7, 8), F), ((7, 6), F), ((7,), B)]),
        ({"dropout": 0.1}, [((3, 2, 5, 8), F)]),  # leading axes: windows, heads
        ({"causal": True}, [((3, 2, 5, 8), F)]),
    ],
    "dropout": [({"p": 0.0}, [((6,), F)])],
    # recurrent layers at realistic sizes (tiny ones are dominated by oneDNN's block padding)
    "lstm": [({"hidden_size": 256}, [((32, 64), F)]), ({"hidden_size": 128, "bidirectional": True}, [((32, 64), F)])],
    "gru": [({"hidden_size": 256, "num_layers": 2}, [((32, 64), F)])],
    "rnn": [({"hidden_size": 256}, [((32, 64), F)])],
}  # fmt: skip


@pytest.mark.parametrize("op_name", sorted(set(EXAMPLES) | set(MORE)))
def test_op_memory_rule_matches_what_autograd_keeps(op_name: str) -> None:
    cases = MORE[op_name] if op_name in APPROXIMATE else EXAMPLES.get(op_name, []) + MORE.get(op_name, [])
    for args, shapes in cases:
        measured, estimated = kept_per_sample(OPS[op_name].model_validate(args), shapes)
        where = f"{op_name} {args} on {shapes}"
        if op_name in APPROXIMATE:
            assert abs(estimated / measured - 1) <= 0.1, (where, measured, estimated)
        else:
            assert estimated == measured, (where, measured, estimated)


# ---- whole models against a measured training step (CPU) -----------------------------------------

TINY_GPT = ["--scale", "tiny"]


@pytest.mark.parametrize(
    ("spec", "sets", "scale", "batch"),
    [
        ("small_resnet.yaml", [], None, 8),
        ("lenet_bn.yaml", [], None, 32),
        ("gpt2_small.yaml", ["dims.seq=32"], "tiny", 8),
        ("bert_base.yaml", ["dims.seq=32"], "tiny", 8),
        # today's vision ops: upsample, conv_transpose, concat (U-Net); parameter, slice (ViT).
        # ConvNeXt is not here: at its tiny scale (1.6 MB) a constant ~3 MB oneDNN buffer in the
        # backward of its 7x7 depthwise conv dominates; full size is within 5 % (RESULTS.md)
        ("unet.yaml", [], "tiny", 4),
        ("vit_b_16.yaml", [], "tiny", 8),
    ],
)
def test_estimate_is_within_15_percent_of_a_measured_step(
    spec: str, sets: list[str], scale: str | None, batch: int
) -> None:
    from memory_probe import measured_peak

    graph = check(ROOT / "specs" / spec, sets, scale)
    measured = measured_peak(graph, batch)["peak"]
    estimated = estimate_memory(graph, batch, "adamw", "none", "cpu").peak
    assert abs(estimated / measured - 1) <= 0.15, (estimated, measured)


FITS = """specc: 1
name: fits
inputs: {image: {shape: [3, 32, 32]}}
defaults: {norm: batch, activation: relu}
layers:
  - conv2d: {out_channels: 32, kernel_size: 3, padding: 1, bias: false}
  - norm
  - act
  - conv2d: {out_channels: 32, kernel_size: 3, padding: 1, bias: false}
  - norm
  - act
  - maxpool2d: 2
  - global_avgpool
  - linear: 10
"""


def test_fits_picks_a_batch_that_runs_under_the_cap_and_its_double_does_not() -> None:
    from memory_probe import measured_peak

    graph = check_text(FITS)
    cap = parse_bytes("24MiB")
    best = largest_batch(graph, cap, "adamw", "none", "cpu")
    assert best is not None and best.batch >= 4
    assert measured_peak(graph, best.batch)["peak"] <= cap
    assert measured_peak(graph, 2 * best.batch)["peak"] > cap


# ---- the command line ------------------------------------------------------------------------------


def test_check_memory_json_and_text(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CHAIN)
    result = run_cli("check", str(spec), "--memory", "--batch", "8", "--optimizer", "sgd", "--json")
    assert result.code == 0, result.err
    memory = json.loads(result.out)["memory"]
    assert memory["batch"] == 8 and memory["optimizer"] == "sgd"
    assert memory["bytes"]["optimizer_state"] == memory["bytes"]["params"]
    assert memory["bytes"]["peak"] == estimate_memory(check_text(CHAIN), 8, "sgd").peak
    assert [n["path"] for n in memory["nodes"]] == ["0", "1", "2", "3"]
    assert memory["nodes"][0]["output_bytes"] == 8 * 16 * 4
    text = run_cli("check", str(spec), "--memory", "--fits", "1MiB", "--amp", "bf16")
    assert text.code == 0, text.err
    best = largest_batch(check_text(CHAIN), 2**20, amp="bf16")
    assert best is not None
    assert "peak during the step" in text.out
    verbose = run_cli("check", str(spec), "--memory", "-v")
    assert "keeps (new)" in verbose.out and "linear" in verbose.out
    assert f"largest batch that fits 1.00 MiB: {best.batch} (peak" in text.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fits", "80GiB"], "go with --memory"),
        (["--memory", "--optimizer", "lion"], "unknown optimizer 'lion'"),
        (["--memory", "--fits", "much"], "cannot read a memory size"),
        (["--memory", "--batch", "0"], "--batch must be 1 or more"),
        (["--memory", "--device", "tpu"], "unknown device 'tpu'"),
    ],
)
def test_check_memory_refuses_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("check", str(write_spec(tmp_path, CHAIN)), *args)
    assert result.code == 2 and message in result.err, result.err


def test_check_memory_does_not_import_torch(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, CHAIN)
    code = (
        "import sys; from specc.cli import main\n"
        "try:\n    main(['check', sys.argv[1], '--memory', '--fits', '1GiB', '--json'])\n"
        "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'check --memory imported torch'\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["memory"]["fits"]["batch"] > 0
