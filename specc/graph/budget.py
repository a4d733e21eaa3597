"""The parameter budget: checked on the inferred graph, before anything is allocated (no torch).

``specc build``, ``train``, ``export`` and ``bench`` take ``--max-params``; it sets the budget of the
running command (a context variable, like ``--include-root``), which :func:`specc.nn.build` checks.
"""

from __future__ import annotations

from contextvars import ContextVar

from specc.errors import BuildError
from specc.graph.ir import Graph

DEFAULT_MAX_PARAMS = 2_000_000_000
_MAX_PARAMS: ContextVar[int] = ContextVar("specc_max_params", default=DEFAULT_MAX_PARAMS)


def set_max_params(limit: int | None) -> None:
    """The parameter budget of every model built in this context; ``None`` restores the default."""
    _MAX_PARAMS.set(DEFAULT_MAX_PARAMS if limit is None else limit)


def check_param_limit(graph: Graph, max_params: int | None = None) -> None:
    """Refuse, before allocating anything, a network whose static parameter count is over the limit
    (``None``: the context's budget, :func:`set_max_params`)."""
    max_params = _MAX_PARAMS.get() if max_params is None else max_params
    params = graph.params
    if params > max_params:
        gib = params * 4 / 2**30
        raise BuildError(
            f"{graph.name}: the spec has {params:,} parameters (~{gib:,.1f} GiB in fp32), over the limit of "
            f"{max_params:,}; raise it with --max-params if you mean it"
        )
