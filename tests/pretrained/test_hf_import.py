"""Published checkpoints into the bundled specs (issue 16): small random transformers models saved with
``save_pretrained`` and a torchvision-layout ResNet state dict, imported with ``specc weights import``,
give the reference's outputs; a specc GPT-2 run exported back is reproduced by transformers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import SPECS, run_cli
from hf_tiny import tiny_gpt2, tiny_vit, weights_import

import specc
from specc.export.source import load_weights
from specc.nn import CompiledModel, build
from specc.pretrained.hf_export import export_hf

transformers = pytest.importorskip("transformers")  # in the dev extra: CI runs these tests


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max())


def randomise(model: torch.nn.Module) -> None:
    """Norm gains and biases away from 1/0, so a swapped name cannot hide."""
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + (1.0 if p.dim() == 1 else 0.0))


def imported(tmp_path: Path, ref: Any, spec: str, sets: list[str]) -> CompiledModel:
    """Save ``ref`` as a HF folder, run ``specc weights import`` into ``spec``, load the result."""
    folder = tmp_path / "hf"
    ref.save_pretrained(folder)
    out = tmp_path / "w.safetensors"
    args = [str(folder), "--spec", str(SPECS / f"{spec}.yaml"), "--out", str(out)]
    result = run_cli("weights", "import", *args, *[a for s in sets for a in ("--set", s)])
    assert result.code == 0, result.err
    model = build(SPECS / f"{spec}.yaml", sets=tuple(sets)).eval()
    load_weights(model, out)
    return model


def test_gpt2_import(tmp_path: Path) -> None:
    cfg = tiny_gpt2(vocab_size=96, n_positions=24)
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    randomise(ref)
    sets = ["vocab=96", "n_positions=24", "hidden=16", "num_heads=2", "num_layers=2"]
    model = imported(tmp_path, ref, "gpt2_small", sets)
    assert model.lm_head.weight is model.wte.weight
    ids = torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(model(ids), ref(input_ids=ids).logits) <= 1e-5


def test_bert_import(tmp_path: Path) -> None:
    cfg = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        attn_implementation="eager",
    )
    ref = transformers.BertModel(cfg).eval()
    randomise(ref)
    sets = ["vocab=64", "max_positions=32", "hidden=16", "num_heads=2", "num_layers=2", "intermediate=32"]
    model = imported(tmp_path, ref, "bert_base", sets)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (2, 9), generator=gen)
    types = torch.randint(0, 2, (2, 9), generator=gen)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        seq, pooled = model(ids, types, mask)
        want = ref(input_ids=ids, token_type_ids=types, attention_mask=mask.long())
    assert rel_err(seq[mask], want.last_hidden_state[mask]) <= 1e-5
    assert rel_err(pooled, want.pooler_output) <= 1e-5


def test_llama_import(tmp_path: Path) -> None:
    cfg = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    ref = transformers.LlamaForCausalLM(cfg).eval()
    randomise(ref)
    model = imported(
        tmp_path,
        ref,
        "llama",
        [
            "vocab=128",
            "hidden=32",
            "num_layers=2",
            "num_heads=4",
            "num_kv_heads=2",
            "intermediate=64",
            "max_positions=64",
        ],
    )
    ids = torch.randint(0, 128, (2, 13), generator=torch.Generator().manual_seed(0))
    keep = torch.ones(2, 13, dtype=torch.bool)
    with torch.no_grad():
        assert rel_err(model(ids, keep), ref(input_ids=ids, attention_mask=keep.long()).logits) <= 1e-5


def test_vit_import(tmp_path: Path) -> None:
    """ViTForImageClassification: the ViTModel encoder plus the classifier on the class token."""
    cfg = tiny_vit()
    ref = transformers.ViTForImageClassification(cfg).eval()
    randomise(ref)
    model = imported(
        tmp_path,
        ref,
        "vit_b_16",
        ["res=32", "patch_size=8", "classes=10", "hidden=16", "num_layers=2", "num_heads=2", "mlp_dim=32"],
    )
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(model(x), ref(pixel_values=x).logits) <= 1e-5


def test_config_that_contradicts_the_spec_is_refused(tmp_path: Path) -> None:
    """A head count changes no tensor shape: config.json is checked against the spec's variables."""
    cfg = tiny_gpt2(n_head=4)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "hf")
    out = tmp_path / "w.safetensors"
    result = weights_import(tmp_path / "hf", "gpt2_small", out)
    assert result.code == 2
    assert "n_head is 4 there, the spec's num_heads is 2 (--set num_heads=4)" in result.err
    assert not out.exists()


def test_shape_mismatch_names_tensor_node_and_file(tmp_path: Path) -> None:
    cfg = tiny_gpt2()
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "hf")
    out = tmp_path / "w.safetensors"
    bare = tmp_path / "hf" / "model.safetensors"  # a bare state dict: no config.json to check first
    result = weights_import(bare, "gpt2_small", out, "--set", "n_positions=16", "--map", "hf-gpt2")
    assert result.code == 2
    assert (
        f"tensor wpe.weight has shape [32, 16] in {tmp_path / 'hf' / 'model.safetensors'} but [16, 16]"
        in result.err
    )
    assert "node 'wpe' (" in result.err and "gpt2_small.yaml:" in result.err  # the spec location
    assert not out.exists()


def test_torchvision_resnet_state_dict(tmp_path: Path) -> None:
    """A torchvision-layout ResNet-18 (tests/reference_models.py) saved with torch.save, read with
    weights_only=True; downsample.* become the spec's shortcut.*; BatchNorm statistics come along."""
    from reference_models import BasicBlock, ResNet

    ref = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=10).eval()
    randomise(ref)
    with torch.no_grad():
        for name, buf in ref.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    torch.save(ref.state_dict(), tmp_path / "resnet18.pth")
    out = tmp_path / "w.safetensors"
    result = run_cli(
        "weights",
        "import",
        str(tmp_path / "resnet18.pth"),
        "--spec",
        str(SPECS / "resnet18.yaml"),
        "--set",
        "classes=10",
        "--out",
        str(out),
    )
    assert result.code == 0, result.err
    assert "map torchvision-resnet" in result.out
    model = build(SPECS / "resnet18.yaml", sets=("classes=10",)).eval()
    load_weights(model, out)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(model(x), ref(x)) <= 1e-5


def _tokenizer_json(path: Path) -> bytes:
    """A small Hugging Face tokenizer (the `tokenizers` package), saved as tokenizer.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate("abcdefghijklmnopqrstuvwxyz .")}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="."))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.save(str(path))
    return path.read_bytes()


def test_gpt2_run_exports_to_transformers(tmp_path: Path) -> None:
    """A real tiny `specc train` GPT-2 run, started from a Hugging Face folder with a tokenizer.json,
    keeps the tokenizer in the run; written back as a Hugging Face folder it loads in transformers with
    no missing or unexpected keys, gives the run's logits and carries the tokenizer."""
    start = tmp_path / "start"
    cfg = tiny_gpt2()
    transformers.GPT2LMHeadModel(cfg).save_pretrained(start)
    tokenizer = _tokenizer_json(start / "tokenizer.json")
    imported = tmp_path / "w.safetensors"
    result = weights_import(start, "gpt2_small", imported)
    assert result.code == 0, result.err
    assert (tmp_path / "w.tokenizer.json").read_bytes() == tokenizer
    run = tmp_path / "run"
    result = run_cli(
        "train",
        "--init-from",
        str(imported),
        str(SPECS / "gpt2_small.yaml"),
        "--scale",
        "tiny",
        "--data",
        "text:stdlib",
        "--out",
        str(run),
        "--quiet",
        "--set",
        "train.epochs=1",
        "--set",
        "train.num_samples=64",
        "--set",
        "train.batch_size=16",
    )
    assert result.code == 0, result.err
    assert f"weights from {imported}: loaded" in result.out
    assert (run / "tokenizer.json").read_bytes() == tokenizer
    hf = tmp_path / "hf"
    result = run_cli("weights", "export", str(run), "--format", "hf", "--out", str(hf))
    assert result.code == 0, result.err
    assert (hf / "tokenizer.json").read_bytes() == tokenizer
    config = json.loads((hf / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_embd"] == 16
    ref, info = transformers.GPT2LMHeadModel.from_pretrained(hf, output_loading_info=True)
    assert not any(info.values()), info  # no missing, unexpected or mismatched keys
    model = specc.load_run(run)  # the run's spec and weights, checked, in eval mode
    ids = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert rel_err(ref.eval()(input_ids=ids).logits, model(ids)) <= 1e-5
    assert run_cli("weights", "export", str(run), "--out", str(hf)).code == 2  # never over a folder


def test_vit_model_without_head_needs_allow_partial(tmp_path: Path) -> None:
    """ViTModel has no classifier: the spec's head is listed, the pooler left out by the map."""
    cfg = tiny_vit()
    transformers.ViTModel(cfg).save_pretrained(tmp_path / "hf")
    refused = weights_import(tmp_path / "hf", "vit_b_16", tmp_path / "w.safetensors")
    assert (
        refused.code == 2
        and "2 spec tensor(s) not in" in refused.err
        and "head.weight, head.bias" in refused.err
    )
    result = weights_import(tmp_path / "hf", "vit_b_16", tmp_path / "w.safetensors", "--allow-partial")
    assert result.code == 0, result.err
    assert "not in the file (kept as initialised): head.weight, head.bias" in result.out
    assert "left out by the name map: pooler.dense.bias, pooler.dense.weight" in result.out


def test_llama_exports_to_transformers(tmp_path: Path) -> None:
    model = build(SPECS / "llama.yaml", scale="tiny", seed=3).eval()
    export_hf(model, tmp_path / "hf")
    ref = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf", attn_implementation="eager").eval()
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(0))
    keep = torch.ones(1, 10, dtype=torch.bool)
    with torch.no_grad():
        assert rel_err(ref(input_ids=ids).logits, model(ids, keep)) <= 1e-5
