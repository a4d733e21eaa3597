"""The bundled block libraries (``include: [std:NAME]``), read for the docs and the JSON schema."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from specc.lang.document import STDLIB, Block, load_spec_text
from specc.load import load_yaml_file


@dataclass(frozen=True)
class Library:
    """One ``std:`` library: its description and its blocks (in file order)."""

    name: str
    description: str
    blocks: list[Block]


def library_names() -> list[str]:
    return sorted(p.stem for p in STDLIB.glob("*.yaml"))


def library(name: str) -> Library:
    """Parse ``std:NAME`` the way a spec including it would (its own includes resolved)."""
    probe = (
        f"specc: 1\nname: probe\ninclude: ['std:{name}']\ninputs: {{x: {{shape: [1]}}}}\nlayers: [identity]\n"
    )
    doc = load_spec_text(probe, "<stdlib>", base=STDLIB)
    raw = load_yaml_file(STDLIB / f"{name}.yaml")
    description = str(raw.get("description") or "").strip()
    own = [b for b in doc.blocks.values() if b.source.startswith(f"std:{name}: ")]
    return Library(name, description, own)


def libraries() -> list[Library]:
    return [library(n) for n in library_names()]


def library_file(name: str) -> Path:
    return STDLIB / f"{name}.yaml"
