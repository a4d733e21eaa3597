"""Safe expressions: arithmetic on variables, and everything else refused (never eval)."""

from __future__ import annotations

import pytest

from specc.lang.expr import ExprError, evaluate, substitute

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
