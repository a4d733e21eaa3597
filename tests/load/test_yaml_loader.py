"""The loader: safety limits on the event stream, strict scalars, locations."""

from __future__ import annotations

import time

import pytest

from specc.errors import LoadError
from specc.load import LList, LMap, apply_overrides, load_text


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
