"""Bounded fuzzing of ``specc check``: generated expressions, generated YAML structures and mutated
bundled specs go through the real command line in-process, each under a CPU deadline, the whole
run under an address-space cap (set by the caller, :mod:`test_fuzz`).

The property: exit 0 with an ``ok`` line, or exit 2 with a non-empty error message; never exit 1
(``internal error``), a traceback, a hang or a ``MemoryError``. Run directly to fuzz longer::

    python tests/security/fuzz_check.py --examples 20000

It prints one JSON line: examples run per family, seconds, and the failures found (none expected).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import signal
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from specc.cli import main  # noqa: E402

DEADLINE_S = 2.0  # CPU seconds per example; the slowest refusal measured is ~1.6 s (nested repeats)
SMALL_SPECS = [  # bundled specs that check in a few milliseconds (the large ones only add time)
    "alexnet", "bilstm_classifier", "gru_lm", "lenet", "lenet_bn", "lstm_lm", "mlp", "nin", "rnn_lm",
    "seq2seq", "seq2seq_attention", "small_densenet", "small_inception", "small_resnet", "unet", "vgg11",
]  # fmt: skip
HEAD = "specc: 1\nname: fz\ninputs: {x: {shape: [4, 8, 8]}, t: {shape: [seq], dtype: int64}}\n"


class Hang(Exception):
    """An example used more than its CPU deadline."""


def _on_deadline(signum: int, frame: Any) -> None:
    raise Hang(f"more than {DEADLINE_S} s of CPU")


class Runner:
    """Writes each case to one file and runs ``specc check`` on it, recording what breaks the property."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "case.yaml"
        self.failures: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        signal.signal(signal.SIGPROF, _on_deadline)

    def check(self, family: str, text: str | bytes) -> None:
        self.counts[family] = self.counts.get(family, 0) + 1
        data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        self.path.write_bytes(data)
        out, err = io.StringIO(), io.StringIO()
        code: object = None
        signal.setitimer(signal.ITIMER_PROF, DEADLINE_S)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main(["check", str(self.path)])
        except SystemExit as exc:
            code = exc.code
        except (Hang, MemoryError, RecursionError) as exc:
            code = f"{type(exc).__name__}: {exc}"
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
        message, stdout = err.getvalue(), out.getvalue()
        good = (code == 0 and ": ok " in stdout) or (code == 2 and "error: " in message and len(message) > 12)
        if not good or "Traceback" in message or "internal error" in message:
            self.failures.append(
                {
                    "family": family,
                    "code": str(code),
                    "stderr": message[-600:],
                    "input": data[:3000].decode("utf-8", "replace"),
                }
            )
            raise AssertionError(f"{family}: exit {code}: {message[-300:]}")


# ---- expressions ----------------------------------------------------------------------------------

VARS = (
    "vars:\n  a: 3\n  big: 4611686018427387903\n  f: 1.0e+308\n  inf: .inf\n  nan: .nan\n"
    "  s: " + "x" * 2000 + "\n  l: [1, 2, 3, 4]\n  neg: -9223372036854775807\n  e: ''\n"
)
ATOMS = [
    "$a", "$big", "$f", "$inf", "$nan", "$s", "$l", "$neg", "$e", "$in.channels", "$in.shape", "$in.shape[-1]",
    "$in.rank", "$nope", "$in.nope", "0", "1", "-1", "2", "63", "64", "1e308", "1e400", "0.5", "'t'", "''",
    "[1, 2]", "[$l, $l]", "True", "None", "round(1, -65)", "round($f, 64)", "ceil($f)", "2 ** 62",
    "max($l)", "min()", "len($s)", "int($f)", "int($inf)", "abs($neg)", "$l[99]", "$s[::-1]", "'%d' % 1",
    "'%0999999999d' % 1", "__import__('os')", "().__class__", "lambda: 1", "[x for x in $l]", "{1: 2}",
    "$in.shape[$big]", "9" * 30, "1/0", "1 // 0", "$a % 0",
]  # fmt: skip
OPS = [
    " + ", " - ", " * ", " / ", " // ", " % ", " ** ", " == ", " < ", " <= ", " and ", " or ", " if $a else ",
    " << ", " >> ", " & ", " | ", " ^ ", " in ", " not in ", ", ", " is ",
]  # fmt: skip
SLOTS = [
    "  - linear: \"{e}\"\n",
    "  - reshape: {{shape: \"{e}\"}}\n",
    "  - conv2d: {{out_channels: \"{e}\", kernel_size: 3, padding: \"{e}\"}}\n",
    "  - repeat: \"{e}\"\n    body: [relu]\n",
    "  - dropout: \"{e}\"\n",
    "  - {{relu: {{}}, if: \"{e}\"}}\n",
    "  - act: \"{e}\"\n",
]  # fmt: skip


@st.composite
def expression_specs(draw: st.DrawFn) -> str:
    """Expressions of up to 40 steps over hostile atoms. The steps come from one ``Random`` that
    hypothesis seeds (reproducible under ``derandomize``): drawing each step through hypothesis
    costs ~5 ms an example, more than ``specc check`` itself."""
    rng = draw(st.randoms(use_true_random=True))
    text = rng.choice(ATOMS)
    for _ in range(rng.randint(0, 40)):
        kind = rng.randint(0, 12)
        if kind == 0:
            text = f"({text})"
        elif kind == 1:
            text = rng.choice(["-", "+", "not ", "~"]) + text
        elif kind == 2:
            fn = rng.choice(["max", "min", "round", "int", "float", "abs", "len", "ceil", "floor"])
            text = f"{fn}({text})"
        elif kind == 3:
            text = f"[{text}]"
        else:
            text = text + rng.choice(OPS) + rng.choice(ATOMS)
    text = text.replace("\\", "").replace('"', "'")
    flatten = "  - flatten\n" if rng.random() < 0.5 else ""
    return HEAD + VARS + "layers:\n" + flatten + rng.choice(SLOTS).format(e=text)


# ---- YAML structures ------------------------------------------------------------------------------

KEYS = [
    "specc", "name", "inputs", "layers", "blocks", "vars", "defaults", "include", "outputs", "scales", "dims",
    "train", "shape", "dtype", "linear", "conv2d", "relu", "repeat", "body", "residual", "shortcut",
    "parallel", "dense", "num_layers", "from", "out_features", "kernel_size", "if", "use", "args", "x",
    "t", "\x1b[2J", "é", "\u202e", "", "0", "true", "<<", "$a", "layers.0",
]  # fmt: skip
HOSTILE_TEXT = st.sampled_from(
    [
        "$a",
        "$in.shape",
        "std:resnet",
        "../../etc/passwd",
        "/dev/zero",
        "\x1b]8;;x\x1b\\",
        "\u202e",
        "x" * 5000,
    ]
) | st.text(alphabet=string.printable + "\x00\x1b\x7f\u0085\u2028é✓\U0001f600", max_size=20)
SCALARS = (
    st.integers(-(2**63) + 1, 2**63 - 1)
    | st.sampled_from([0, 1, -1, 2**31, 10**18])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
    | HOSTILE_TEXT
)
TREES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=24,
)


@st.composite
def structure_specs(draw: st.DrawFn) -> str:
    tree = draw(TREES)
    where = draw(st.integers(0, 4))
    if where == 0:
        doc: Any = tree
    else:
        doc = {"specc": 1, "name": "fz", "inputs": {"x": {"shape": [4, 8, 8]}}, "layers": ["relu"]}
        key = ["layers", "vars", "inputs", "blocks"][where - 1]
        doc[key] = tree if key != "layers" or isinstance(tree, list) else [tree]
    style = draw(st.sampled_from([None, True, False]))
    return yaml.safe_dump(doc, default_flow_style=style, allow_unicode=draw(st.booleans()), sort_keys=False)


# ---- mutated bundled specs ------------------------------------------------------------------------

NUMBERS = [
    "0",
    "-1",
    "1",
    "3",
    "99999",
    "100000",
    "1e400",
    "4611686018427387904",
    "9" * 40,
    ".nan",
    "-.inf",
    "0.5",
]
TOKENS = [
    "repeat: 1000", "residual:", "parallel:", "$in.shape", "${x}", "&a", "*a", "!!python/object:os.system",
    "{", "}", "[", "]", ":", "- ", "\t", "\x00", "\x1b[2J", "'", '"', "#", "<<: *a", "---", "include: [..]",
]  # fmt: skip


@functools.cache
def _spec_lines(name: str) -> tuple[str, ...]:
    return tuple((ROOT / "specs" / f"{name}.yaml").read_text().splitlines(keepends=True))


@st.composite
def mutated_specs(draw: st.DrawFn) -> bytes:
    lines = list(_spec_lines(draw(st.sampled_from(SMALL_SPECS))))
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        kind = draw(st.integers(0, 6))
        if kind == 0:
            del lines[i]
        elif kind == 1:
            lines.insert(i, lines[draw(st.integers(0, len(lines) - 1))])
        elif kind == 2:  # a number becomes a hostile one
            words = lines[i].split(" ")
            j = draw(st.integers(0, len(words) - 1))
            words[j] = (
                "".join(draw(st.sampled_from(NUMBERS)) if c.isdigit() else c for c in words[j][:1])
                + words[j][1:]
            )
            lines[i] = " ".join(words)
        elif kind == 3:
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(TOKENS)) + lines[i][at:]
        elif kind == 4:
            lines[i] = " " * draw(st.integers(0, 6)) + lines[i].lstrip(" ")
        elif kind == 5:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        else:
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + lines[i][at + draw(st.integers(1, 8)) :]
    data = "".join(lines).encode()
    if draw(st.integers(0, 9)) == 0:  # byte-level: truncation or a flipped byte
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        data = data[:at] if draw(st.booleans()) else data[:at] + bytes([data[at] ^ 0x80]) + data[at + 1 :]
    return data


# ---- driver -------------------------------------------------------------------------------------------


def run(examples: int) -> dict[str, Any]:
    """Run ``examples`` generated cases in all (expressions 40 %, structures 30 %, mutations 30 %)."""
    shares = {"expression": 0.4, "structure": 0.3, "mutation": 0.3}
    families = {"expression": expression_specs(), "structure": structure_specs(), "mutation": mutated_specs()}
    start = time.perf_counter()
    shm = Path("/dev/shm")  # a memory file system where there is one: one file written per example
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() and os.access(shm, os.W_OK) else None) as folder:
        os.chdir(folder)  # includes in generated specs resolve inside this empty folder
        runner = Runner(Path(folder))
        for family, strategy in families.items():
            _fuzz(runner, family, strategy, max(1, round(examples * shares[family])))
    return {
        "examples": runner.counts,
        "total": sum(runner.counts.values()),
        "seconds": round(time.perf_counter() - start, 1),
        "failures": runner.failures[-5:],
    }


def _fuzz(runner: Runner, family: str, strategy: st.SearchStrategy[Any], n: int) -> None:

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    @given(strategy)
    def case(text: str | bytes) -> None:
        runner.check(family, text)

    try:
        case()
    except AssertionError:
        pass  # recorded in runner.failures (the shrunk example is the last one)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    args = parser.parse_args()
    result = run(args.examples)
    print(json.dumps(result))
    sys.exit(1 if result["failures"] else 0)
