"""specc export --kv-cache: the decode model in ONNX, verified against the *uncached* PyTorch model, and
the specc.generation metadata every language-model export carries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import SPECS, run_cli
from lm_specs import DECODERS, NOT_DECODABLE, one_thread, spec_file, torch_greedy

from specc.contracts.generation import GenerationInfo
from specc.errors import UsageError
from specc.export import export_spec
from specc.nn import build
from specc.runtime import load, read_info
from specc.runtime.generate import KEY_GENERATION, Generator, Options


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def _generation(path: Path) -> GenerationInfo:
    """The ``specc.generation`` field of the file's typed metadata (the contract's reader)."""
    info = read_info(path).generation
    assert info is not None
    return info


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_cached_export_equals_uncached_model(tmp_path: Path, name: str) -> None:
    spec = spec_file(tmp_path, name, DECODERS[name])
    out = tmp_path / f"{name}.onnx"
    with one_thread():
        report = export_spec(spec, out, kv_cache=True)
    assert report["ok"] and report["kv_cache"] and out.is_file()
    sizes = [c["sizes"] for c in report["parity"]]
    assert {s["batch"] for s in sizes} == {1, 2} and len({s["prompt"] for s in sizes}) >= 2
    assert all(s["steps"] == 3 for s in sizes)
    compared = set(report["parity"][0]["outputs"])
    info = _generation(out)
    assert compared == {"logits", *(c.output for c in info.cache)}  # logits vs uncached, cache vs torch
    assert info.cache and info.kind == "causal_lm"
    session_inputs = [i.name for i in onnx.load(str(out)).graph.input]
    assert session_inputs[-len(info.cache) :] == [c.input for c in info.cache]
    # greedy with the cache = greedy re-running the prefix = the uncached PyTorch model's greedy
    gen = Generator(out)
    cached = gen.generate("1 2 3", Options(max_new_tokens=8)).ids
    assert gen.generate("1 2 3", Options(max_new_tokens=8, use_cache=False)).ids == cached
    assert cached == torch_greedy(build(spec).eval(), [1, 2, 3], 8)


@pytest.mark.parametrize("name", sorted(NOT_DECODABLE))
def test_layers_that_cannot_step_exit_2(tmp_path: Path, name: str) -> None:
    text, words = NOT_DECODABLE[name]
    out = tmp_path / "m.onnx"
    res = run_cli("export", str(spec_file(tmp_path, name, text)), "--out", str(out), "--kv-cache")
    assert res.code == 2, res.err
    assert words in res.err and not out.exists()


def test_usage_errors(tmp_path: Path) -> None:
    spec = str(spec_file(tmp_path, "m", DECODERS["fused_sinusoidal"]))
    out = str(tmp_path / "m.onnx")
    for extra, words in [
        (["--int8"], "--kv-cache cannot be combined with --optimize, --int8 or --fp16"),
        (["--static"], "--kv-cache exports a dynamic past length; drop --static"),
        (["--exporter", "dynamo"], "--kv-cache is exported with the torchscript exporter"),
    ]:
        res = run_cli("export", spec, "--out", out, "--kv-cache", *extra)
        assert res.code == 2 and words in res.err, res.err
    res = run_cli("export", spec, "--out", str(tmp_path / "m.pt"), "--kv-cache")
    assert res.code == 2 and "the output must end in .onnx, got 'm.pt'" in res.err
    res = run_cli("export", spec, "--out", str(tmp_path / "no" / "m.onnx"), "--kv-cache")
    assert res.code == 2 and "output folder does not exist" in res.err
    res = run_cli("export", str(SPECS / "seq2seq_attention.yaml"), "--out", out, "--kv-cache")
    assert res.code == 2 and "is a seq2seq model" in res.err
    assert not Path(out).exists()


def test_verification_compares_with_the_uncached_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decode model that ignores the past length (positions restart at 0) fails verification, exit
    3, and is kept as M.failed.onnx; the PyTorch check would have named it first (turned off here)."""
    from specc.export import cached
    from specc.nn.sequence_modules import LearnedPositions

    def wrong(
        self: LearnedPositions, inputs: tuple[torch.Tensor, ...], past: object, offset: object
    ) -> object:
        return self.forward(inputs[0]), ()

    monkeypatch.setattr(LearnedPositions, "forward_cached", wrong)
    spec = str(spec_file(tmp_path, "m", DECODERS["separate_gqa_window_mask"]))
    res = run_cli("export", spec, "--out", str(tmp_path / "m.onnx"), "--kv-cache")
    assert res.code == 2 and "positional_encoding gives other values" in res.err, res.err
    monkeypatch.setattr(cached, "check_decoding", lambda *a, **k: None)
    with one_thread():
        res = run_cli("export", spec, "--out", str(tmp_path / "m.onnx"), "--kv-cache")
    assert res.code == 3, res.err
    assert "with a key/value cache failed verification: output 'logits' differs" in res.err
    assert (tmp_path / "m.failed.onnx").is_file() and not (tmp_path / "m.onnx").exists()


def test_plain_exports_say_how_to_generate(tmp_path: Path) -> None:
    """Without --kv-cache a language model still records its roles (no cache: each step re-runs the
    prefix); models that generate nothing get no specc.generation."""
    with one_thread():
        export_spec(SPECS / "gpt2_small.yaml", tmp_path / "g.onnx", scale="tiny")
        export_spec(SPECS / "lenet.yaml", tmp_path / "lenet.onnx")
        masked = spec_file(tmp_path, "masked_lm", NOT_DECODABLE["non_causal"][0])
        export_spec(masked, tmp_path / "mlm.onnx")
    info = _generation(tmp_path / "g.onnx")
    assert (info.kind, info.tokens, info.logits, info.vocab_size) == ("causal_lm", "tokens", "logits", 128)
    assert info.cache == [] and info.max_positions == 32 and info.tokenizer.kind == "ids"
    assert KEY_GENERATION not in _meta(tmp_path / "lenet.onnx")
    assert KEY_GENERATION not in _meta(tmp_path / "mlm.onnx")  # bidirectional: nothing to generate
    res = run_cli("generate", str(tmp_path / "lenet.onnx"), "--prompt", "1 2")
    assert res.code == 2 and "cannot generate: its metadata has no 'specc.generation'" in res.err
    data = json.loads((tmp_path / "g.onnx.json").read_text())
    assert data["kv_cache"] is False and data["ok"]
    assert np.isfinite(data["max_diff"]["logits"]["max_abs"])
    # specc.generation is a field of the typed metadata: a file whose record does not validate is
    # refused by specc.runtime.load (before any session), with the key named
    proto = onnx.load(str(tmp_path / "g.onnx"))
    for prop in proto.metadata_props:
        if prop.key == KEY_GENERATION:
            record = json.loads(prop.value)
            assert record["vocab_size"] == 128
            prop.value = json.dumps({**record, "eos_id": 500})
    onnx.save(proto, str(tmp_path / "bad.onnx"))
    with pytest.raises(
        UsageError, match=r"model metadata 'specc.generation' is invalid: .*special token id 500"
    ):
        load(tmp_path / "bad.onnx")
    res = run_cli("generate", str(tmp_path / "bad.onnx"), "--prompt", "1 2")
    assert res.code == 2 and "'specc.generation' is invalid" in res.err


def test_interrupted_cached_export_keeps_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--kv-cache is published as one step like every export: Ctrl-C while verifying leaves the
    previous export exactly as it was (model, manifest, report; no work folder)."""
    import hashlib

    from specc.export import cached

    spec = str(spec_file(tmp_path, "m", DECODERS["fused_sinusoidal"]))
    folder = tmp_path / "e"
    folder.mkdir()
    out = folder / "m.onnx"
    with one_thread():
        res = run_cli("export", spec, "--out", str(out), "--kv-cache")
    assert res.code == 0, res.err

    def files() -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    before = files()
    assert set(before) == {"m.onnx", "m.onnx.sha256", "m.onnx.json"}
    assert json.loads((folder / "m.onnx.json").read_text())["kv_cache"] is True

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cached, "cached_parity", interrupted)
    with one_thread():
        res = run_cli("export", spec, "--out", str(out), "--kv-cache", "--seed", "1")
    assert res.code == 130, res.err
    assert files() == before
    load(out)  # the manifest still verifies


def test_decode_model_exporter_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode model goes through the same exporter guard as a plain export: an exporter failure is
    exit 4 naming the decode model, a full disk is a write failure (exit 2) naming the file, and
    neither leaves a file or work folder behind."""
    import errno

    from specc.export import cached

    spec = str(spec_file(tmp_path, "m", DECODERS["fused_sinusoidal"]))
    folder = tmp_path / "e"
    folder.mkdir()
    out = folder / "m.onnx"

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Unsupported: ONNX export of operator foo\nIR graph ...")

    monkeypatch.setattr(cached.torch.onnx, "export", broken)
    res = run_cli("export", spec, "--out", str(out), "--kv-cache")
    assert res.code == 4, res.err
    assert (
        "error: torch.onnx.export (torchscript, opset 17) of the decode model failed: "
        "Unsupported: ONNX export of operator foo (SPECC_DEBUG=1" in res.err
    )
    assert list(folder.iterdir()) == []

    def full(model: object, args: object, path: str, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(cached.torch.onnx, "export", full)
    res = run_cli("export", spec, "--out", str(out), "--kv-cache")
    assert res.code == 2, res.err
    assert (
        "No space left on device" in res.err and "m.onnx" in res.err and "decode model failed" not in res.err
    )
    assert list(folder.iterdir()) == []
