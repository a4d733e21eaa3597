"""How to generate with an export: the :class:`~specc.contracts.generation.GenerationInfo` that
:func:`specc.export.metadata.build_metadata` stores as ``specc.generation``.

Every export of a causal language model or a seq2seq model gets it (with ``--kv-cache`` it lists the
carried tensors too); :mod:`specc.contracts.generation` documents the format, :mod:`specc.runtime.generate`
reads it.
"""

from __future__ import annotations

from specc.contracts.generation import CacheEntry, CharVocab, GenerationInfo, HuggingFaceTokenizer, TokenIds
from specc.contracts.preprocess import Preprocess, TextPreprocess
from specc.errors import BuildError, UsageError
from specc.nn import CompiledModel
from specc.nn.decode import DecodeModel, Roles, Signature, find_roles
from specc.runtime.tokenize import BOS_NAMES, EOS_NAMES, PAD_NAMES, HuggingFace, check_vocab


def generation_metadata(
    model: CompiledModel,
    *,
    preprocess: Preprocess | None,
    task: str | None,
    cached: Signature | None = None,
    tokenizer: HuggingFace | None = None,
) -> GenerationInfo | None:
    """How to generate with ``model``, or ``None`` for a model that generates nothing.

    A causal LM qualifies when its structure decodes token by token (a :class:`DecodeModel` can be
    made) or its run trained it as a language model; a seq2seq model by its inputs. ``cached`` is the
    signature of an exported :class:`DecodeModel` (its carried tensors are listed). ``tokenizer``
    (``--tokenizer``) is refused for models that generate nothing."""
    found = _roles(model, task) if cached is None else (cached.roles, cached)
    if found is None:
        if tokenizer is not None:
            raise UsageError(
                f"--tokenizer is for language models; '{model.graph.name}' is not one (its inputs: "
                f"{', '.join(model.graph.inputs)})"
            )
        return None
    roles, signature = found
    return _info(model, roles, preprocess, signature, cached is not None, tokenizer)


def _roles(model: CompiledModel, task: str | None) -> tuple[Roles, Signature | None] | None:
    """The roles, and the decode signature when the model decodes token by token (for its limits)."""
    try:
        roles = find_roles(model.graph)
    except BuildError:
        return None
    if roles.kind == "seq2seq":
        return roles, None
    try:
        return roles, DecodeModel(model).signature
    except BuildError:
        # e.g. a masked LM (bidirectional attention): nothing to generate, unless its run trained
        # it on next tokens (then it generates without a cache)
        return (roles, None) if task == "language_model" else None


def _info(
    model: CompiledModel,
    roles: Roles,
    pre: Preprocess | None,
    signature: Signature | None,
    cached: bool,
    tokenizer: HuggingFace | None,
) -> GenerationInfo:
    graph = model.graph
    vocab = pre.vocab if isinstance(pre, TextPreprocess) else None
    special = {k: getattr(pre, k, None) for k in ("bos", "eos", "pad")}
    seq_len = _positive(getattr(pre, "seq_len", None))
    tok: CharVocab | HuggingFaceTokenizer | TokenIds = TokenIds(kind="ids")
    if tokenizer is not None:
        if vocab is not None:
            raise UsageError("--tokenizer: the run's data is character-level text; its vocabulary is used")
        check_vocab(tokenizer.size, roles.vocab_size, "--tokenizer")
        tok = HuggingFaceTokenizer(kind="huggingface", sha256=tokenizer.sha256)
        for key, names in (("bos", BOS_NAMES), ("eos", EOS_NAMES), ("pad", PAD_NAMES)):
            if special[key] is None:
                special[key] = tokenizer.special_id(names)
    elif vocab is not None:
        check_vocab(len(vocab), roles.vocab_size, "the run's character vocabulary")
        tok = CharVocab(kind="chars", vocab=list(vocab))
    cache = signature.cache if signature is not None and cached else ()
    return GenerationInfo(
        kind=roles.kind,  # type: ignore[arg-type]
        tokens=roles.tokens,
        logits=roles.logits,
        vocab_size=roles.vocab_size,
        attention_mask=roles.attention_mask,
        positions=roles.positions,
        source=roles.source,
        source_mask=roles.source_mask,
        cache=[
            CacheEntry(
                input=c.input,
                output=c.output,
                node=c.node,
                kind=c.tensor.kind,  # type: ignore[arg-type]
                shape=list(c.past_shape),
                dtype="float32",
            )
            for c in cache
        ],
        max_positions=signature.max_positions if signature is not None else None,
        max_new_tokens=_target_length(graph.dims.get(roles.seq), seq_len)
        if roles.kind == "seq2seq"
        else None,
        source_length=seq_len if roles.kind == "seq2seq" else None,
        tokenizer=tok,
        bos_id=_token_id(special["bos"], roles.vocab_size),
        eos_id=_token_id(special["eos"], roles.vocab_size),
        pad_id=_token_id(special["pad"], roles.vocab_size),
    )


def _target_length(nominal: int | None, seq_len: int | None) -> int | None:
    """The longest target a seq2seq model was trained on: the data's ``seq_len`` + 1 (eos), else the
    nominal size of the target axis (``dims:``)."""
    return seq_len + 1 if seq_len is not None else nominal


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _token_id(value: object, vocab_size: int) -> int | None:
    """A special id the logits cover (a recorded id outside them is left out)."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size
    return value if ok else None  # type: ignore[return-value]
