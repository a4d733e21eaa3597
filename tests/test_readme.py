"""README.md and the docs show commands that must do what they say when typed as shown.

Every ``specc`` command line in their code blocks and inline code must name a real subcommand and
real options (read from ``--help``, so a renamed or removed flag fails here), every bundled spec
they name must exist, and the cheap ones run: the README's "Your first spec" block as a newcomer
types it (with the error it promises), its Python block, and every ``specc check`` line of the
docs, whose printed ``error:`` lines must be exactly what the docs show.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGS = {"", "bash", "sh", "console", "shell"}
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def code_blocks(path: Path) -> Iterator[tuple[str, list[str]]]:
    """Fenced code blocks of a markdown file: (language, lines)."""
    lang: str | None = None
    lines: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                yield lang, lines
                lang = None
        elif lang is not None:
            lines.append(line)


def logical_lines(lines: list[str]) -> list[str]:
    """Join backslash continuations and the indented continuation lines of usage synopses."""
    out: list[str] = []
    for line in lines:
        if out and (out[-1].endswith("\\") or (line[:1] == " " and line.strip().startswith("["))):
            out[-1] = out[-1].rstrip("\\").rstrip() + " " + line.strip()
        else:
            out.append(line)
    return out


def invocations(text: str) -> Iterator[list[str]]:
    """The ``specc`` invocations of one command line: the words after ``specc``, comments and
    redirections dropped, each command of a ``&&``/``;``/`` | `` chain on its own."""
    text = text.strip().removeprefix("$ ")
    for part in re.split(r"&&|;| \| ", text):
        try:
            words = shlex.split(part, comments=True)
        except ValueError:  # an unbalanced quote in prose: read it word by word
            words = part.split()
        for i, word in enumerate(words):
            if word in ("specc", ".venv/bin/specc") or (
                word == "specc.cli" and i > 0 and words[i - 1] == "-m"
            ):
                rest = words[i + 1 :]
                for j, w in enumerate(rest):
                    if w in (">", ">>", "2>", "&"):
                        rest = rest[:j]
                        break
                yield rest
                break


def shown_commands() -> list[tuple[str, list[str]]]:
    """Every specc invocation the README and docs show: (where, words)."""
    found: list[tuple[str, list[str]]] = []
    for path in DOCS:
        if path.name == "spec-reference.md":  # generated from the op docstrings
            continue
        name = path.relative_to(ROOT).as_posix()
        for lang, lines in code_blocks(path):
            if lang in SHELL_LANGS:
                for line in logical_lines(lines):
                    found += [(f"{name}: {line.strip()}", w) for w in invocations(line)]
        prose = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
        for span in re.findall(r"`((?:\.venv/bin/)?specc [^`]+)`", prose):
            found += [(f"{name}: `{span}`", w) for w in invocations(span.replace("\\|", "|"))]
    return found


@cache
def options_of(*command: str) -> frozenset[str]:
    """The options ``specc COMMAND --help`` lists."""
    result = run_cli(*command, "--help")
    assert result.code == 0, (command, result.err)
    return frozenset(OPTION.findall(result.out.split("Options:", 1)[1].split("Commands:", 1)[0]))


@cache
def subcommands(*group: str) -> frozenset[str]:
    """The subcommands ``specc GROUP --help`` lists (empty for a plain command)."""
    text = run_cli(*group, "--help").out
    if "Commands:" not in text:
        return frozenset()
    return frozenset(re.findall(r"^  ([a-z][\w-]*)\s", text.split("Commands:", 1)[1], re.M))


def test_docs_show_commands() -> None:
    # the parser below reads what the README shows; a change of layout must not make this vacuous
    words = [" ".join(w) for _, w in shown_commands()]
    assert sum(w.startswith("train ") for w in words) >= 15
    assert any(w.startswith("check my_cnn.yaml -v") for w in words)
    assert any(w.startswith("weights export") for w in words)


def test_every_shown_command_and_option_exists() -> None:
    wrong: list[str] = []
    for where, words in shown_commands():
        command: list[str] = []
        while words and not words[0].startswith("-") and words[0] in subcommands(*command):
            command.append(words.pop(0))
        if not command and words and not words[0].startswith("-") and words[0] != "...":
            if words[0].isupper() or words[0] in {"COMMAND"}:  # a placeholder such as `specc SPEC`
                continue
            wrong.append(f"{where}: unknown command {words[0]!r}")
            continue
        known = options_of(*command)
        for word in words:
            for option in OPTION.findall(word.split("=", 1)[0]) if word.startswith(("-", "[-")) else []:
                if option not in known:
                    wrong.append(f"{where}: `specc {' '.join(command)}` has no option {option}")
    assert not wrong, "\n".join(wrong)


def test_every_shown_spec_file_exists() -> None:
    missing = {
        f"{where}: {word}"
        for where, words in shown_commands()
        for word in words
        if re.fullmatch(r"(specs|tests)/[\w/.-]+\.yaml", word) and not (ROOT / word).is_file()
    }
    assert not missing, "\n".join(sorted(missing))


def test_first_spec_block_as_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """'Your first spec': save the YAML block as my_cnn.yaml, type the commands, get the promises."""
    readme = (ROOT / "README.md").read_text()
    blocks = list(code_blocks(ROOT / "README.md"))
    (yaml,) = [lines for lang, lines in blocks if lang == "yaml" and lines[0] == "# my_cnn.yaml"]
    (first, *_) = [lines for lang, lines in blocks if lang == "bash" and any("my_cnn" in x for x in lines)]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("NO_COLOR", "1")
    (tmp_path / "my_cnn.yaml").write_text("\n".join(yaml) + "\n")
    ran = 0
    for line in first:
        for words in invocations(line):
            result = run_cli(*words)
            assert result.code == 0, (line, result.err)
            ran += 1
            if words[:2] == ["check", "my_cnn.yaml"] and "-v" in words:
                assert "logits      linear          (B, 10)" in result.out
    assert ran == 4
    assert (tmp_path / "init.safetensors").stat().st_size > 0  # `build --save` wrote the weights

    # "Change `kernel_size: 3` of the first conv to `kernel_size: 31` and `specc check` exits with 2"
    text = (tmp_path / "my_cnn.yaml").read_text()
    first_conv = next(line for line in text.splitlines() if "conv2d" in line)
    (tmp_path / "my_cnn.yaml").write_text(
        text.replace(first_conv, first_conv.replace("kernel_size: 3,", "kernel_size: 31,"), 1)
    )
    shown = re.search(r"exits with 2:\n\n```\n(error: .*?)\n```", readme, re.S)
    assert shown is not None
    result = run_cli("check", "my_cnn.yaml")
    assert result.code == 2
    assert shown.group(1) in result.err.splitlines()


def test_python_block_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    (block,) = [lines for lang, lines in code_blocks(ROOT / "README.md") if lang == "python"]
    monkeypatch.chdir(ROOT)
    exec(compile("\n".join(block), "README.md", "exec"), {})  # noqa: S102 - the README's own code
    params, _macs, outputs = capsys.readouterr().out.splitlines()[0].split(" ", 2)
    assert params == "11689512" and "'fc'" in outputs  # ResNet-18's count, as the table says


def shown_checks() -> Iterator[tuple[str, list[str], list[str]]]:
    """`specc check` lines of the docs' shell blocks on files of the repository, each with the
    `error:` lines the block shows after it."""
    for path in DOCS:
        if path.name == "spec-reference.md":  # generated; repeats spec-language.md's examples
            continue
        for lang, lines in code_blocks(path):
            if lang not in SHELL_LANGS:
                continue
            lines = logical_lines(lines)
            for i, line in enumerate(lines):
                for words in invocations(line):
                    files = [w for w in words if w.endswith(".yaml")]
                    ours = all(re.match(r"(specs|tests)/", f) and (ROOT / f).is_file() for f in files)
                    if words[:1] == ["check"] and files and ours:
                        errors = []
                        for after in lines[i + 1 :]:
                            if not after.startswith("error: "):
                                break
                            errors.append(after)
                        yield f"{path.name}: {line.strip()}", words, errors


def test_shown_checks_print_what_is_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("NO_COLOR", "1")
    checks = list(shown_checks())
    assert len(checks) >= 5
    for where, words, errors in checks:
        result = run_cli(*words)
        assert result.code == (2 if errors else 0), (where, result.err)
        printed = [line for line in result.err.splitlines() if line.startswith("error: ")]
        assert printed == errors, where
