"""CLI commands on specs: check (no torch), render, schema, ops, build limits, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli, write_spec

SMALL = """specc: 1
name: small
inputs: {image: {shape: [1, 8, 8]}}
vars: {width: 4}
defaults: {activation: relu}
layers:
  - conv2d: {out_channels: $width, kernel_size: 3, padding: 1}
  - act
  - global_avgpool
  - linear: {out_features: 3, name: logits}
outputs: [logits]
labels: [a, b, c]
"""


def test_check_ok_and_json(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SMALL)
    result = run_cli("check", str(spec))
    assert result.code == 0, result.err
    assert "small: 55 params" in result.out
    report = json.loads(run_cli("check", "--json", str(spec)).out)
    assert report["params"] == 55 and report["outputs"] == {"logits": ["batch", 3]}
    verbose = run_cli("check", "-v", str(spec)).out
    assert "global_avgpool" in verbose and "total" in verbose


def test_check_many_files_reports_all(tmp_path: Path) -> None:
    good = write_spec(tmp_path, SMALL, "good.yaml")
    bad = write_spec(tmp_path, SMALL.replace("kernel_size: 3", "kernel_size: 0"), "bad.yaml")
    result = run_cli("check", str(good), str(bad), str(tmp_path / "missing.yaml"))
    assert result.code == 2
    assert "good.yaml: ok" in result.out
    assert "bad.yaml:7:" in result.err and "missing.yaml" in result.err


def test_check_does_not_import_torch(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SMALL)
    code = (
        "import sys; from specc.cli import main\n"
        "try:\n    main(['check', sys.argv[1]])\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        "assert 'torch' not in sys.modules, 'check imported torch'\n"
        "assert 'onnx' not in sys.modules\n"
        "assert 'numpy' not in sys.modules and 'specc.data' not in sys.modules, 'check imported the data layer'\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(spec)], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("clean")


def test_render_resolves_defaults_and_vars(tmp_path: Path) -> None:
    import yaml

    spec = write_spec(tmp_path, SMALL)
    result = run_cli("render", str(spec), "--set", "width=6")
    assert result.code == 0, result.err
    doc = yaml.safe_load(result.out)
    assert doc["vars"] == {"width": 6}
    assert doc["layers"][0]["conv2d"]["out_channels"] == 6
    assert doc["layers"][1]["act"]["fn"] == "relu"  # the default, made visible
    assert doc["layers"][0]["conv2d"]["init"] == "default"
    assert f"# {6 * 9 + 6 + 6 * 3 + 3:,} parameters" in result.out
    again = write_spec(tmp_path, result.out, "rendered.yaml")  # render output is a spec
    assert run_cli("check", str(again)).code == 0


def test_set_unknown_key_gets_hint(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SMALL)
    result = run_cli("check", str(spec), "--set", "defaults.activaton=gelu")
    assert result.code == 2
    assert (
        "<--set>:1:1: defaults.activaton: unknown key 'activaton' (did you mean 'activation'?)" in result.err
    )


def test_schema_lists_ops() -> None:
    result = run_cli("schema")
    schema = json.loads(result.out)
    layer_variants = schema["$defs"]["Layer"]["anyOf"]
    named = {v["required"][0] for v in layer_variants if v.get("type") == "object" and "required" in v}
    assert {"conv2d", "linear", "norm", "residual", "repeat"} <= named


def test_ops_listing_and_detail() -> None:
    listing = run_cli("ops").out
    assert "conv2d" in listing and "global_avgpool" in listing
    detail = run_cli("ops", "conv2d")
    # rendered Markdown (plain when piped): the example as YAML lines, the table without pipes
    assert "- conv2d: {out_channels: 64" in detail.out and "```" not in detail.out
    assert re.search(r"\n out_channels +int > 0 +required", detail.out)
    assert run_cli("ops", "conv3d").code == 2


def test_build_refuses_huge_spec_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    def no_allocation(*args: object, **kwargs: object) -> None:
        raise AssertionError("a Linear was constructed: the budget must refuse before allocating")

    monkeypatch.setattr(torch.nn.Linear, "__init__", no_allocation)
    spec = write_spec(
        tmp_path, "specc: 1\nname: huge\ninputs: {x: {shape: [400000]}}\nlayers:\n  - linear: 250000\n"
    )
    result = run_cli("build", str(spec))
    assert result.code == 2
    assert "100,000,250,000 parameters" in result.err


def test_missing_file_and_no_traceback(tmp_path: Path) -> None:
    result = run_cli("check", str(tmp_path / "nope.yaml"))
    assert result.code == 2 and "no such file" in result.err and "Traceback" not in result.err
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    result = run_cli("check", str(tmp_path / "bin.yaml"))
    assert result.code == 2 and "not UTF-8" in result.err


def test_schema_describes_every_key() -> None:
    schema = json.loads(run_cli("schema").out)
    variants = schema["$defs"]["Layer"]["anyOf"]
    by_key = {next(iter(v["required"])): v for v in variants if v.get("type") == "object" and "required" in v}
    residual = by_key["residual"]["properties"]
    assert {"residual", "shortcut", "then", "drop_path", "name", "from", "if"} <= set(residual)
    assert "x-specc" not in json.dumps(schema)  # every item points at the Layer definition
    basic = by_key["basic"]["properties"]["basic"]["anyOf"][0]  # std:resnet's block, with its parameters
    assert set(basic["properties"]) == {"out", "stride", "name", "from"} and basic["required"] == ["out"]
    assert "if" in by_key["conv2d"]["properties"]
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert train["lr"]["exclusiveMinimum"] == 0 and "optimizer" in train
    block = schema["$defs"]["BlockDef"]["properties"]
    assert block["layers"]["items"] == {"$ref": "#/$defs/Layer"}


def test_include_root_option(tmp_path: Path) -> None:
    lib_dir, spec_dir = tmp_path / "lib", tmp_path / "spec"
    lib_dir.mkdir()
    spec_dir.mkdir()
    (lib_dir / "blocks.yaml").write_text("specc: 1\nblocks:\n  twice:\n    layers: [relu, relu]\n")
    spec = write_spec(
        spec_dir, SMALL.replace("layers:\n", "include: [../lib/blocks.yaml]\nlayers:\n  - twice\n")
    )
    refused = run_cli("check", str(spec))
    assert refused.code == 2 and "resolves outside the spec's folder" in refused.err
    assert run_cli("check", str(spec), "--include-root", str(lib_dir)).code == 0
    assert run_cli("check", str(spec)).code == 2  # the option does not outlive its command
    missing = run_cli("check", str(spec), "--include-root", str(tmp_path / "nope"))
    assert missing.code == 2 and "not a folder" in missing.err


def test_schema_accepts_every_bundled_spec_and_refuses_mistakes() -> None:
    import jsonschema
    import yaml

    validator = jsonschema.Draft202012Validator(json.loads(run_cli("schema").out))
    for spec in sorted((ROOT / "specs").glob("*.yaml")):
        errors = list(validator.iter_errors(yaml.safe_load(spec.read_text())))
        assert not errors, (spec.name, [e.message for e in errors][:3])
    good = yaml.safe_load(SMALL)
    assert not list(validator.iter_errors(good))
    for broken in (
        {**good, "layers": [{"repeat": 2, "bdy": ["relu"]}]},
        {**good, "layers": [{"residual": ["relu"], "shortcut": "sometimes"}]},
        {**good, "layers": [{"basic": {"out": 8, "strid": 2}}]},
        {**good, "train": {"lr": -1}},
    ):
        assert list(validator.iter_errors(broken)), broken
