"""Stage 1 — load: YAML text to a raw tree with a source map, under safety limits (no torch)."""

from specc.load.overrides import apply_overrides
from specc.load.tree import LList, LMap, loc_of
from specc.load.yaml_loader import LIMITS, Limits, load_text, load_yaml_file, parse_scalar

__all__ = [
    "LIMITS",
    "LList",
    "LMap",
    "Limits",
    "apply_overrides",
    "load_text",
    "load_yaml_file",
    "loc_of",
    "parse_scalar",
]
