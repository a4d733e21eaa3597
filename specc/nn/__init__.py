"""Stage 5 — build (torch): a typed graph → ``nn.Module`` with a static forward plan.

``specc.nn.compiled`` holds the compiled model, ``specc.nn.modules`` and
``specc.nn.sequence_modules`` the torch modules that op builders return.
"""

from specc.graph.budget import DEFAULT_MAX_PARAMS, check_param_limit, set_max_params
from specc.nn.compiled import (
    CompiledModel,
    Step,
    apply_init,
    build,
    save_weights,
)

__all__ = [
    "DEFAULT_MAX_PARAMS",
    "CompiledModel",
    "Step",
    "apply_init",
    "build",
    "check_param_limit",
    "set_max_params",
    "save_weights",
]
