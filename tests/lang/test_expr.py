"""Safe expressions: arithmetic on variables, and everything else refused (never eval)."""

from __future__ import annotations

import pytest

from specc.expr import (
    MAX_LEN,
    MAX_SIZE,
    ExprError,
    InputView,
    UnknownValue,
    ValueProblem,
    evaluate,
    substitute,
    value_size,
)

SCOPE = {"width": 64, "i": 2, "ratio": 0.5, "name": "relu", "sizes": [1, 2]}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$width", 64),
        ("$width * 2", 128),
        ("$width // 3 + $i", 23),
        ("max($width // 4, 32)", 32),
        ("int($width * $ratio)", 32),
        ("2 ** $i", 4),
        ("$i == 0 and 1 or 2", 2),
        ("64 if $i > 1 else 32", 64),
        ("$name", "relu"),
        ("$sizes", [1, 2]),
        ("-$i", -2),
    ],
)
def test_evaluates(text: str, expected: object) -> None:
    assert evaluate(text, SCOPE) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$widht * 2", "unknown variable $widht (did you mean 'width'?)"),
        ("__import__('os').system('x') + $i", "only"),
        ("$width.__class__", "Attribute is not allowed"),
        ("[x for x in $sizes]", "ListComp is not allowed"),
        ("(lambda: 1)() + $i", "only"),
        ("10 ** 10 ** $i", "exponent too large"),
        ("$width / 0", "divides by zero"),
        ("$width +", "not valid arithmetic"),
        ("width * 2 + $i", "write variables as $width"),
        ("$name * 1000000", "cannot multiply"),
    ],
)
def test_refuses(text: str, message: str) -> None:
    with pytest.raises(ExprError, match=None) as err:
        evaluate(text, SCOPE)
    assert message in str(err.value)


def test_substitute_recurses() -> None:
    assert substitute({"a": ["$i", {"b": "$width - 1"}], "c": 3}, SCOPE) == {"a": [2, {"b": 63}], "c": 3}


IN_SCOPE = {**SCOPE, "in": InputView((32, "seq", 7), "float32"), "expand": 6}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$in.channels", 32),
        ("$in.channels * $expand", 192),
        ("$in.shape[0]", 32),
        ("$in.shape[-1]", 7),
        ("$in.shape[1:]", ["seq", 7]),
        ("$in.rank", 3),
        ("$in.dtype", "float32"),
        ("$in.shape", [32, "seq", 7]),
        ("$in.rank == 3 and $in.channels == 32", True),
    ],
)
def test_in_reads_the_input_type(text: str, expected: object) -> None:
    assert evaluate(text, IN_SCOPE) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$in", "use $in.shape"),
        ("$in.chanels", "did you mean 'channels'"),
        ("$in.shape[3]", "out of range"),
        ("$in.__class__", "not '__class__'"),
        ("$sizes[0] + 1", "only $in.shape can be indexed"),
        ("$in.shape.__len__", "Attribute is not allowed"),
        ("$in.shape[::2]", "step"),
    ],
)
def test_in_refuses_everything_else(text: str, message: str) -> None:
    with pytest.raises(ExprError) as err:
        evaluate(text, IN_SCOPE)
    assert message in str(err.value)


def test_in_outside_layers_and_unknown() -> None:
    with pytest.raises(ExprError, match="only inside layers"):
        evaluate("$in.channels", SCOPE)
    with pytest.raises(UnknownValue):
        evaluate("$in.channels", {"in": InputView(None)})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$i + round(1, -10**18)", "round's digits"),
        ("$i + int('%0999999999d' % 1)", "no string formatting"),
        ("$name % 3", "no string formatting"),
        ("$i + 2 ** 63", "too large"),
        ("$i + 99 ** 20", "too large"),
        ("$i + 10 ** 10 ** 10", "exponent too large"),
        ("$i + ceil(1e300)", "too large"),
        ("$i + " + "+".join(["1"] * 1000), "longer than 2000 characters"),
        ("[$i" + ",1" * 600 + "]", "more than 500 parts"),
        ("-" * 200 + "$i", "nested deeper than 100"),
        ("$i + int('9' * 1)", "cannot multiply"),
    ],
)
def test_budgets(text: str, message: str) -> None:
    with pytest.raises(ExprError) as err:
        evaluate(text, SCOPE)
    assert message in str(err.value)


def test_doubling_text_and_lists_stops_at_the_budget() -> None:
    scope: dict[str, object] = {"s": "ab", "l": [1, 2]}
    for _ in range(40):
        try:
            scope["s"] = evaluate("$s + $s", scope)
            scope["l"] = evaluate("[$l, $l]", scope)
        except ExprError as exc:
            assert "longer than" in str(exc) or "items in all" in str(exc)
            break
    else:
        pytest.fail("doubling never hit the budget")
    assert len(scope["s"]) <= MAX_LEN  # type: ignore[arg-type]
    assert value_size(scope["l"]) <= MAX_SIZE


def test_yaml_lists_of_variables_are_held_to_the_budget() -> None:
    scope: dict[str, object] = {"v": [1, 2]}
    with pytest.raises(ValueProblem, match="items in all"):
        for _ in range(40):
            scope["v"] = substitute(["$v", "$v"], scope)


def test_deep_chains_are_refused_not_recursion_errors() -> None:
    for op in ("-", "not ", "+"):
        with pytest.raises(ExprError):
            evaluate(op * 50_000 + "$i", SCOPE)
    with pytest.raises(ExprError):
        evaluate("$i " + "if $i else 1 " * 50_000, SCOPE)
