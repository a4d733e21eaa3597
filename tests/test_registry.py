"""The one registry type, each registry's names against what specs and configs may write, and
third-party ops through the ``specc.ops`` entry-point group (a plugin package on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import get_args

import pytest

from specc.registry import Registry


def test_registry_is_a_read_only_mapping_with_unique_names() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("one", 1)
    reg.add("two")(2)
    reg.register("one", 1)  # the same entry again is harmless (a module imported twice)
    assert dict(reg) == {"one": 1, "two": 2} and "one" in reg and len(reg) == 2
    with pytest.raises(ValueError, match="widget name 'one' registered twice"):
        reg.register("one", 3)
    with pytest.raises(ValueError, match="non-empty name"):
        reg.register("", 4)
    assert reg.unknown("onne") == "unknown widget 'onne' (did you mean 'one'?); known: one, two"


def test_each_registry_holds_exactly_the_names_specs_and_configs_accept() -> None:
    from specc.data import NAMED_SOURCES
    from specc.data.datasets import FILE_TYPES, SOURCES
    from specc.export.variants import VARIANTS, Variant
    from specc.lang.train_config import TrainConfig
    from specc.nn.compiled import INITS
    from specc.ops.base import InitName
    from specc.train.objectives import LOSSES, METRICS

    assert set(INITS) == {*get_args(InitName), "constant"}
    losses = get_args(TrainConfig.model_fields["loss"].annotation)
    assert set(LOSSES) == set(losses) - {"auto"}
    assert set(METRICS) == {"accuracy", "exact_match", "perplexity", "topK"}
    assert set(VARIANTS) == set(get_args(Variant))
    assert set(NAMED_SOURCES) <= set(SOURCES)
    assert {".txt", ".npz", ".npy", ".csv", ".parquet", ".pq", ".tar"} <= set(FILE_TYPES)
    assert all(suffix == suffix.lower() and suffix.startswith(".") for suffix in FILE_TYPES)


def test_an_unknown_export_variant_is_refused_not_turned_into_fp16(tmp_path: Path) -> None:
    from specc.api import check_text
    from specc.errors import UsageError
    from specc.export.variants import make_variant

    graph = check_text("specc: 1\nname: t\ninputs: {x: {shape: [2]}}\nlayers: [linear: 2]\n")
    with pytest.raises(UsageError, match="unknown export variant 'fp8'; known: fp16, int8, opt"):
        make_variant("fp8", tmp_path / "m.onnx", graph, [])  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


PLUGIN = '''
"""A third-party op: y = x * factor (no parameters)."""
from __future__ import annotations

from pydantic import Field

from specc.ops import Inferred, Op, register


@register
class Triple(Op):
    """Multiply by a constant factor.

    Example::

        - times: {factor: 3.0}
    """

    op_name = "times"
    shorthand = "factor"
    factor: float = Field(3.0, description="the factor")

    def infer(self, inputs, ctx):
        return Inferred(outputs=[inputs[0]], macs=ctx.numel(inputs[0].shape))

    def build(self, inputs, inferred):
        import torch

        factor = self.factor

        class Times(torch.nn.Module):
            def forward(self, x):
                return x * factor

        return Times()
'''


def _install_plugin(site: Path, broken: bool = False) -> None:
    """A package as pip installs it: the module plus a .dist-info with its entry points."""
    site.mkdir()
    (site / "specc_times.py").write_text(PLUGIN)
    info = site / "specc_times-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: specc-times\nVersion: 0.1\n")
    entries = "[specc.ops]\ntimes = specc_times\n"
    if broken:
        (site / "specc_broken.py").write_text("raise ImportError('needs a library that is missing')\n")
        entries += "broken = specc_broken\n"
    (info / "entry_points.txt").write_text(entries)


def _specc(site: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run(
        [sys.executable, "-m", "specc.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


SPEC = """\
specc: 1
name: plug
inputs: {x: {shape: [4]}}
layers:
  - linear: 3
  - times: 2.0
  - linear: {out_features: 2, name: out}
outputs: [out]
"""


@pytest.mark.slow
def test_a_plugin_package_registers_ops_through_entry_points(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install_plugin(site)
    (tmp_path / "plug.yaml").write_text(SPEC)
    r = _specc(site, "check", "plug.yaml", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["params"] == 4 * 3 + 3 + 3 * 2 + 2
    r = _specc(site, "ops", "times", cwd=tmp_path)
    assert r.returncode == 0 and "Multiply by a constant factor" in r.stdout
    # the builder runs too: the built model multiplies by the factor between the two linears
    code = textwrap.dedent("""
        import torch, specc
        m = specc.build("plug.yaml")
        x = torch.randn(5, 4)
        ref = m.get_submodule("out")(m.get_submodule("0")(x) * 2.0)
        print(float((m(x) - ref).abs().max()))
    """)
    env = {**os.environ, "PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0 and float(out.stdout) == 0.0, out.stderr
    # without the package the op is unknown, with a did-you-mean over the registered ones
    r = _specc(tmp_path / "nowhere", "check", "plug.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "unknown" in r.stderr and "times" in r.stderr


def test_a_broken_plugin_is_skipped_with_a_warning_naming_it(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install_plugin(site, broken=True)
    (tmp_path / "plug.yaml").write_text(SPEC)
    r = _specc(site, "check", "plug.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "skipping specc.ops entry point 'broken' (specc_broken): ImportError: needs a library" in r.stderr
