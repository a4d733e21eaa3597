"""Error types of the pipeline: one per stage, each mapped to one exit code in the CLI.

Every user-facing spec error carries a :class:`Diagnostic` that renders as
``file:line:col: path: message``. Stages collect all diagnostics of a file and raise them together.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# What must never reach a terminal raw: C0 controls but tab and newline (ESC starts CSI/OSC
# sequences that clear the screen, retitle the window or hide links; CR overwrites a line), DEL, C1
# controls (8-bit CSI/OSC), the bidirectional overrides/isolates and marks that reorder what is shown
# (Trojan Source), line/paragraph separators, and lone surrogates (undecodable file-name bytes, which
# a strict UTF-8 stream cannot even encode).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_LINE = re.compile(_UNSAFE.pattern[:-1] + "\t\n]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, newlines: bool = True) -> str:
    """``text`` safe to write to a terminal: control, bidi and surrogate characters as ``\\xNN`` or
    ``\\uNNNN`` escapes (visible, never interpreted). Every user-derived string that specc prints
    (spec keys and values, file names, data labels, model metadata) passes through here where the
    message is rendered. ``newlines=False`` escapes tab and newline too (one-line fields)."""
    pattern = _UNSAFE if newlines else _UNSAFE_LINE
    return pattern.sub(_escape, text) if pattern.search(text) else text


@dataclass(frozen=True)
class Location:
    """A place in a source file (1-based line and column)."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    """One error: where it is (file position and spec path) and what is wrong."""

    message: str
    loc: Location | None = None
    path: str = ""

    def __str__(self) -> str:
        parts = [printable(str(self.loc), newlines=False)] if self.loc else []
        if self.path:
            parts.append(printable(self.path, newlines=False))
        parts.append(printable(self.message))
        return ": ".join(parts)

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.loc.file if self.loc else None,
            "line": self.loc.line if self.loc else None,
            "col": self.loc.col if self.loc else None,
            "path": self.path,
            "message": self.message,
        }


class SpeccError(Exception):
    """Base of every error specc reports to a user (never shown with a traceback)."""

    exit_code = 1


@dataclass
class SpecError(SpeccError):
    """A spec cannot be loaded, parsed, lowered or inferred. Holds every diagnostic found."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    exit_code = 2

    def __post_init__(self) -> None:
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(d) for d in self.diagnostics)

    @classmethod
    def one(cls, message: str, loc: Location | None = None, path: str = "") -> SpecError:
        return cls([Diagnostic(message, loc, path)])


class LoadError(SpecError):
    """YAML text is unsafe, malformed or over a limit."""


class ParseError(SpecError):
    """The YAML tree does not match the spec schema."""


class LowerError(SpecError):
    """Blocks, repeats, expressions or references cannot be expanded."""


class ShapeError(SpecError):
    """Static inference found an edge whose shape a node cannot accept."""


class UsageError(SpeccError):
    """A command-line option or a user file is wrong (bad path, bad --set, bad data)."""

    exit_code = 2


class OutputError(UsageError):
    """A file cannot be written (disk full, read-only, permission, name too long); names the path."""


class DataError(UsageError):
    """A data set cannot be read or does not fit the spec."""


class BuildError(SpeccError):
    """A spec cannot be compiled to torch (e.g. over the parameter limit)."""

    exit_code = 2


class ExportVerificationError(SpeccError):
    """An ONNX export does not compute what the PyTorch model computes (a parity mismatch)."""

    exit_code = 3


class ModelError(SpeccError):
    """A model, the runtime or the exporter failed on input that passed every check: an ONNX file
    onnxruntime cannot read or load, a session that fails to run."""

    exit_code = 4


class ExportError(ModelError):
    """The exporter cannot turn the model into ONNX (``torch.onnx.export`` raised, or
    ``onnx.checker`` rejected what it wrote): nothing was verified, so this is not a parity miss."""


class NonFiniteError(SpeccError):
    """Training stopped because the loss or a gradient became NaN/inf (before applying that step)."""

    exit_code = 5


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def join_choices(choices: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(sorted(choices)[:limit])
    return shown + (", ..." if len(choices) > limit else "")
