"""``specc weights import``: a published checkpoint checked against a spec and written in its names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from specc.errors import UsageError
from specc.nn import build
from specc.weights.sources import TOKENIZER_FILE, import_into, open_source
from specc.weights.store import write_state

__all__ = ["import_weights"]


def import_weights(
    source: str | os.PathLike[str],
    spec: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    sets: tuple[str, ...] = (),
    scale: str | None = None,
    map_name: str | None = None,
    allow_partial: bool = False,
) -> list[str]:
    """Build ``spec``, load ``source`` into it (every tensor checked) and write ``out`` (safetensors,
    atomically); a tokenizer.json of the source is copied to ``OUT_STEM.tokenizer.json``.

    Returns:
        Report lines (what was loaded, and what was left alone when ``allow_partial``).

    Raises:
        UsageError: A bad source, map or output path, or tensors that do not fit the spec.
    """
    target = Path(out)
    if target.suffix != ".safetensors":
        raise UsageError(f"--out {target}: the weights file must end in .safetensors")
    src = open_source(source)
    model = build(Path(spec), sets=sets, scale=scale, seed=0)
    hint = "--allow-partial keeps the spec's init for these and lists them"
    report, used = import_into(
        model, src, map_name=map_name, allow_partial=allow_partial, skip_mismatched=allow_partial, hint=hint
    )
    write_state(target, model, {"specc.source": str(src.path), "specc.map": used.name})
    lines = [f"map {used.name}", *report.lines(), f"wrote {target}"]
    if src.tokenizer is not None:
        companion = target.with_name(f"{target.stem}.{TOKENIZER_FILE}")
        shutil.copyfile(src.tokenizer, companion)
        lines.append(f"wrote {companion} (the source's tokenizer)")
    return lines
