"""The loader: safety limits on the event stream, strict scalars, locations."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from specc.errors import LoadError
from specc.load import LList, LMap, apply_overrides, load_text, load_yaml_file
from specc.load.yaml_loader import read_capped


def test_values_and_locations() -> None:
    tree = load_text("a: 1\nb:\n  - x\n  - {c: 2.5}\n", "f.yaml")
    assert isinstance(tree, LMap) and isinstance(tree["b"], LList)
    assert tree == {"a": 1, "b": ["x", {"c": 2.5}]}
    assert (tree.val_locs["a"].line, tree.val_locs["a"].col) == (1, 4)
    assert tree["b"].item_locs[1].line == 4
    assert str(tree["b"][1].val_locs["c"]) == "f.yaml:4:9"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v: true", True),
        ("v: yes", "yes"),  # YAML 1.1 booleans stay strings
        ("v: on", "on"),
        ("v: 1e-3", 1e-3),  # a float without a dot
        ("v: 010", "010"),  # no octal
        ("v: 3", 3),
        ("v: -2.5", -2.5),
        ("v: null", None),
        ("v: none", "none"),
    ],
)
def test_strict_scalars(text: str, expected: object) -> None:
    value = load_text(text)["v"]
    assert value == expected and type(value) is type(expected)


def test_duplicate_keys_rejected() -> None:
    with pytest.raises(LoadError) as err:
        load_text("a: 1\nb: 2\na: 3\n", "d.yaml")
    assert str(err.value) == "d.yaml:3:1: duplicate key 'a' (first defined at line 1)"


def test_tags_and_merge_keys_rejected() -> None:
    with pytest.raises(LoadError, match="tag"):
        load_text("a: !!python/object:os.system x\n")
    with pytest.raises(LoadError, match="merge keys"):
        load_text("base: {x: 1}\nb:\n  <<: {y: 2}\n")


def test_billion_laughs_rejected_fast() -> None:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    start = time.perf_counter()
    with pytest.raises(LoadError, match="aliases|nodes"):
        load_text("\n".join(lines))
    assert time.perf_counter() - start < 1.0


def test_alias_expansion_counts_toward_node_limit() -> None:
    big = "[" + ",".join(["1"] * 20_000) + "]"
    text = f"a: &a {big}\nb: [*a, *a, *a, *a, *a, *a]\n"
    with pytest.raises(LoadError, match="100000 YAML nodes"):
        load_text(text)


def test_deep_nesting_rejected_without_crash() -> None:
    text = "[" * 1_000_000 + "]" * 1_000_000
    with pytest.raises(LoadError):
        load_text(text[: (1 << 20)])  # over the depth limit long before the end
    with pytest.raises(LoadError, match="nesting deeper than 64"):
        load_text("[" * 65 + "]" * 65)
    assert load_text("[" * 60 + "]" * 60) is not None


def test_file_size_limit() -> None:
    with pytest.raises(LoadError, match="larger than"):
        load_text("a: " + "x" * (1 << 20))


def test_syntax_error_located() -> None:
    with pytest.raises(LoadError) as err:
        load_text("a: [1, 2\nb: 3\n", "s.yaml")
    assert str(err.value).startswith("s.yaml:")
    assert "invalid YAML" in str(err.value)


def test_overrides() -> None:
    tree = load_text("vars: {width: 8}\nlayers: [{linear: 4}]\ndefaults: {norm: batch}\n")
    apply_overrides(tree, ["width=16", "defaults.norm=group(4)", "layers.0.linear=7", "train.lr=0.1"])
    assert tree["vars"]["width"] == 16
    assert tree["defaults"]["norm"] == "group(4)"
    assert tree["layers"][0]["linear"] == 7
    assert tree["train"]["lr"] == 0.1
    with pytest.raises(LoadError, match="key=value"):
        apply_overrides(tree, ["nonsense"])
    with pytest.raises(LoadError, match="index out of range"):
        apply_overrides(tree, ["layers.5.linear=1"])


def test_integers_must_fit_64_bits() -> None:
    assert load_text(f"v: {2**63 - 1}")["v"] == 2**63 - 1
    for text in (f"v: {2**63}", "v: -" + "9" * 5000):
        with pytest.raises(LoadError, match="does not fit in 64 bits") as err:
            load_text(text, "i.yaml")
        assert str(err.value).startswith("i.yaml:1:4:")


def test_aliases_expand_to_copies_with_locations() -> None:
    tree = load_text("a: &x {k: [1, 2]}\nb: *x\n", "a.yaml")
    assert tree["a"] == tree["b"] and tree["a"] is not tree["b"]
    assert tree["b"]["k"].item_locs[1].line == 1  # where the anchored value was written
    with pytest.raises(LoadError, match="defined twice"):
        load_text("a: &x 1\nb: &x 2\n")
    with pytest.raises(LoadError, match="undefined alias"):
        load_text("a: *nope\n")
    with pytest.raises(LoadError, match="recursive alias"):
        load_text("a: &x [1, *x]\n")


def test_single_document_and_plain_keys() -> None:
    with pytest.raises(LoadError, match="single document"):
        load_text("a: 1\n---\nb: 2\n")
    with pytest.raises(LoadError, match="plain names"):
        load_text("? [1, 2]\n: x\n")
    assert load_text("") is None and load_text("# only a comment\n") is None


def test_event_loader_agrees_with_pyyaml_on_specs() -> None:
    import yaml
    from conftest import SPECS

    from specc.load.tree import to_plain

    for spec in sorted(SPECS.glob("*.yaml")):
        text = spec.read_text()
        assert to_plain(load_text(text)) == yaml.safe_load(text), spec.name


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo", "folder"])
def test_special_files_refused_without_reading(special: str, tmp_path: Path) -> None:
    import os

    if special == "fifo":
        path = tmp_path / "spec.yaml"
        os.mkfifo(path)  # nobody writes: a blocking open would hang forever
    elif special == "folder":
        path = tmp_path
    else:
        path = Path(special)
    with pytest.raises(LoadError, match="not a regular file|is a directory"):
        load_yaml_file(path)


def test_size_cap_enforced_while_reading(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("a: " + "x" * 2000 + "\n")
    with pytest.raises(LoadError, match="larger than 1000 bytes"):
        read_capped(path, 1000)
    assert len(read_capped(path, 4000)) == 2004
