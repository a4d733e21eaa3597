"""Stage 2 — parse: validated spec documents (pydantic), expressions and block libraries."""

from specc.spec.document import SpecDocument, load_spec, load_spec_text
from specc.spec.model import Defaults, InputSpec, Spec

__all__ = ["Defaults", "InputSpec", "Spec", "SpecDocument", "load_spec", "load_spec_text"]
