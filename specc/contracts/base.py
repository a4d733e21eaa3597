"""The base of every contract model and the one way a contract file's errors are reported."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from specc.errors import UsageError

C = TypeVar("C", bound=BaseModel)

#: Largest contract file read (data.json with a 1M-character vocabulary stays far below it).
MAX_CONTRACT_BYTES = 64 * 1024 * 1024


class Contract(BaseModel):
    """Strict, frozen, closed: unknown keys, NaN/inf and loose types (``"1"`` for 1, ``true`` for 1)
    are refused, so a file that reads back is exactly what its writer meant."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


def explain(exc: ValidationError, limit: int = 6) -> str:
    """``field.path: message; ...`` for the first ``limit`` errors of a validation error."""
    parts = []
    for err in exc.errors(include_url=False)[:limit]:
        where = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        parts.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def parse(model: type[C], data: Any, where: str) -> C:
    """Validate plain data (parsed JSON) against ``model``; errors become one UsageError naming ``where``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"{where} is invalid: {explain(exc)}") from None


def loads(text: str, where: str) -> Any:
    """``json.loads`` whose errors (bad syntax, nesting too deep for the parser) name ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise UsageError(f"{where} is nested too deeply to be a specc file") from None
