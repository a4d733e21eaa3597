"""Generate docs/spec-reference.md: the language guide plus the op reference from op docstrings.

Run ``python -m specc.docgen > docs/spec-reference.md`` (``make docs``); a test keeps it current.
"""

from __future__ import annotations

from pathlib import Path

from specc.ops import OPS
from specc.schema import op_reference

LANGUAGE = Path(__file__).resolve().parent.parent / "docs" / "spec-language.md"


def reference() -> str:
    parts = [
        LANGUAGE.read_text().rstrip(),
        "",
        "## Op reference",
        "",
        "Generated from the op docstrings by `python -m specc.docgen`; `specc ops NAME` shows the same.",
        "",
    ]
    groups: dict[str, list[str]] = {}
    for name, cls in OPS.items():
        groups.setdefault(cls.category, []).append(name)
    for category in sorted(groups):
        parts += [f"## {category.title()}", ""]
        parts += [op_reference(OPS[name]) for name in sorted(groups[category])]
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
