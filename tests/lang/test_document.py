"""Parsing a document: includes (confined, deduplicated, budgeted), blocks, train:, the schema."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from specc.api import check, check_text
from specc.errors import SpecError
from specc.lang.document import MAX_INCLUDE_FILES, include_roots

HEAD = "specc: 1\nname: t\ninputs: {x: {shape: [4, 8, 8]}}\n"
LIB = "specc: 1\nblocks:\n  twice:\n    layers: [relu, relu]\n"


def messages(text: str, base: Path, **kw: object) -> list[str]:
    with pytest.raises(SpecError) as err:
        check_text(text, "spec.yaml", base=base, **kw)  # type: ignore[arg-type]
    return [d.message for d in err.value.diagnostics]


def test_includes_stay_in_the_spec_folder(tmp_path: Path) -> None:
    spec_dir, outside = tmp_path / "specs", tmp_path / "outside"
    (spec_dir / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.yaml").write_text("db_password: hunter2\n")
    (spec_dir / "sub" / "lib.yaml").write_text(LIB)
    (spec_dir / "out.yaml").symlink_to(outside / "secret.yaml")
    (spec_dir / "loop.yaml").symlink_to(spec_dir / "loop.yaml")
    os.mkfifo(spec_dir / "fifo.yaml")
    (spec_dir / "zero.yaml").symlink_to("/dev/zero")
    includes = [
        "../outside/secret.yaml",
        "/etc/passwd",
        "out.yaml",
        "loop.yaml",
        "a\\0b.yaml",
        "fifo.yaml",
        "zero.yaml",
    ]
    listed = ", ".join(f'"{i}"' for i in includes)  # double quotes: "\0" is a NUL byte in YAML
    got = messages(HEAD + f"include: [{listed}]\nlayers: [relu]\n", spec_dir)
    assert len(got) == len(includes)
    assert "resolves outside the spec's folder" in got[0] and "must be relative" in got[1]
    assert "resolves outside" in got[2] and "cannot be resolved" in got[3] and "NUL byte" in got[4]
    assert "not a regular file" in got[5] and "resolves outside" in got[6]
    assert not any("hunter2" in m or "db_password" in m for m in got)  # nothing of the file is echoed
    ok = check_text(HEAD + "include: [sub/lib.yaml, sub/../sub/lib.yaml]\nlayers: [twice]\n", base=spec_dir)
    assert [n.path for n in ok.nodes] == ["0.0", "0.1"]  # the same file twice is loaded once
    with include_roots([outside]):
        got = messages(HEAD + "include: [../outside/secret.yaml]\nlayers: [relu]\n", spec_dir)
    assert got == ["unknown key 'db_password'"]  # allowed explicitly: now it is read (and refused)


def test_include_budgets_and_cycles(tmp_path: Path) -> None:
    for level in range(8):  # 16 files per level, each including the 16 of the next level
        for k in range(16):
            nxt = [f"l{level + 1}_{j}.yaml" for j in range(16)] if level < 7 else []
            (tmp_path / f"l{level}_{k}.yaml").write_text(f"specc: 1\ninclude: {nxt}\n")
    roots = [f"l0_{j}.yaml" for j in range(16)]
    got = messages(HEAD + f"include: {roots}\nlayers: [relu]\n", tmp_path)
    assert got == [f"more than {MAX_INCLUDE_FILES} included files in one spec"]
    main = tmp_path / "main.yaml"
    main.write_text(HEAD + "include: [lib.yaml]\nlayers: [relu]\n")
    (tmp_path / "lib.yaml").write_text("specc: 1\ninclude: [main.yaml]\n")
    with pytest.raises(SpecError, match=r"include cycle: main.yaml -> lib.yaml -> main.yaml"):
        check(main)


def test_train_section_checked_at_its_line(tmp_path: Path) -> None:
    text = HEAD + "layers: [relu]\ntrain: {lr: -1, optimiser: adam}\n"
    with pytest.raises(SpecError) as err:
        check_text(text, "t.yaml")
    assert [str(d) for d in err.value.diagnostics] == [
        "t.yaml:5:13: train.lr: input should be greater than 0, got -1",
        "t.yaml:5:17: train.optimiser: unknown key 'optimiser' (did you mean 'optimizer'?)",
    ]
    assert check_text(HEAD + "layers: [relu]\ntrain: {lr: 0.1, epochs: 2}\n").params == 0


def test_items_are_validated_everywhere_at_once() -> None:
    text = HEAD + (
        "blocks:\n  unused:\n    layers: [{reluu: {}}]\n"
        "layers:\n  - repeat: 2\n    bdy: [relu]\n  - parallel: [[relu], [relu]]\n    merge: sum\n"
        "  - residual: [relu]\n    shortcut: sometimes\n  - relu: {}\n    if: maybe\n"
    )
    with pytest.raises(SpecError) as err:
        check_text(text, "s.yaml")
    assert [f"{d.loc.line}:{d.path}: {d.message}" for d in err.value.diagnostics if d.loc] == [
        "6:blocks.unused.layers[0].reluu: unknown op or block 'reluu' (did you mean 'relu'?)",
        "8:layers[0].body: missing required field 'body' in a repeat item",
        "9:layers[0].bdy: unknown key 'bdy' in a repeat item (did you mean 'body'?)",
        "11:layers[1].merge: must be concat or add (or a $expression), got 'sum'",
        "13:layers[2].shortcut: must be auto, identity, none, a $expression or a list of layers, got 'sometimes'",
        "15:layers[3].if: if: must be true, false or a $expression, got 'maybe'",
    ]
