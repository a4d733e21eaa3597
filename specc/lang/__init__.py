"""Stage 2 — parse: validated spec documents (pydantic), expressions and block libraries."""

from specc.lang.document import SpecDocument, load_spec, load_spec_text
from specc.lang.syntax import Defaults, InputSpec, Spec

__all__ = ["Defaults", "InputSpec", "Spec", "SpecDocument", "load_spec", "load_spec_text"]
