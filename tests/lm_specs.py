"""Small language-model specs and helpers shared by the generation tests (tests/generate)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

# Every kind of position-mixing layer a causal LM can have, each in a tiny decoder.
DECODERS: dict[str, str] = {
    # fused q/k/v (GPT-2 layout), sinusoidal positions, two pre-norm layers
    "fused_sinusoidal": """
specc: 1
name: fused_sinusoidal
inputs: {tokens: {shape: [seq], dtype: int64}}
dims: {seq: 16}
layers:
  - embedding: {num_embeddings: 20, embedding_dim: 16}
  - positional_encoding: {kind: sinusoidal, max_len: 40}
  - repeat: 2
    body:
      residual:
        - norm: {kind: layer}
        - multihead_attention: {num_heads: 2, causal: true}
  - norm: {kind: layer}
  - linear: {out_features: 20, name: logits}
outputs: [logits]
""",
    # BERT's separate layout, grouped-query heads, a sliding window, a key mask, learned positions
    "separate_gqa_window_mask": """
specc: 1
name: separate_gqa_window_mask
inputs:
  tokens: {shape: [seq], dtype: int64}
  mask: {shape: [seq], dtype: bool}
dims: {seq: 16}
layers:
  - embedding: {num_embeddings: 20, embedding_dim: 16}
  - positional_encoding: {kind: learned, max_len: 24}
  - multihead_attention: {num_heads: 4, num_kv_heads: 2, qkv: separate, causal: true, sliding_window: 3,
                          from: [-1, mask]}
  - gelu
  - multihead_attention: {num_heads: 4, qkv: separate, causal: true, from: [-1, mask]}
  - linear: {out_features: 20, name: logits}
outputs: [logits]
""",
    # LLaMA layout, multi-query heads with head_dim, partial rotary embeddings on a positions input
    "llama_mqa_rope_positions": """
specc: 1
name: llama_mqa_rope_positions
inputs:
  tokens: {shape: [seq], dtype: int64}
  positions: {shape: [seq], dtype: int64}
layers:
  - embedding: {num_embeddings: 20, embedding_dim: 16}
  - multihead_attention: {num_heads: 4, num_kv_heads: 1, head_dim: 8, qkv: llama, bias: false, causal: true,
                          rope: {theta: 10000, rotary_dim: 4}, from: [-1, positions]}
  - norm: {kind: rms}
  - multihead_attention: {num_heads: 2, qkv: llama, bias: false, causal: true, rope: {theta: 500}}
  - linear: {out_features: 20, name: logits}
outputs: [logits]
""",
    # recurrent layers and parameter-free causal attention
    "recurrent_dot_product": """
specc: 1
name: recurrent_dot_product
inputs: {tokens: {shape: [seq], dtype: int64}}
layers:
  - embedding: {num_embeddings: 20, embedding_dim: 12}
  - gru: {hidden_size: 16, num_layers: 2}
  - dot_product_attention: {causal: true}
  - rnn: {hidden_size: 12}
  - lstm: {hidden_size: 8, output: both, name: lstm}
  - linear: {out_features: 20, from: "lstm:0", name: logits}
outputs: [logits]
""",
}

# Layers that cannot be decoded one token at a time, with the words the error must contain.
NOT_DECODABLE: dict[str, tuple[str, str]] = {
    "bidirectional": (
        """
specc: 1
name: bidirectional
inputs: {tokens: {shape: [seq], dtype: int64}}
layers:
  - embedding: {num_embeddings: 20, embedding_dim: 8}
  - lstm: {hidden_size: 8, bidirectional: true, name: bilstm}
  - linear: {out_features: 20, name: out}
outputs: [out]
""",
        "bilstm: lstm cannot be decoded one token at a time: a bidirectional recurrent layer",
    ),
    "non_causal": (
        """
specc: 1
name: non_causal
inputs: {tokens: {shape: [seq], dtype: int64}}
layers:
  - embedding: {num_embeddings: 20, embedding_dim: 8}
  - multihead_attention: {num_heads: 2, name: attn}
  - linear: {out_features: 20, name: out}
outputs: [out]
""",
        "attn: multihead_attention cannot be decoded one token at a time: non-causal self-attention",
    ),
    # the last token's features added to every position: no layer carries them, so only the
    # numeric check can see it, and it names the first node whose values change
    "last_token_everywhere": (
        """
specc: 1
name: last_token_everywhere
inputs: {tokens: {shape: [seq], dtype: int64}}
layers:
  - embedding: {num_embeddings: 20, embedding_dim: 8, name: emb}
  - select: {index: -1, name: last}
  - broadcast: {from: [last, emb], dim: 0, name: spread}
  - add: {from: [emb, spread]}
  - linear: {out_features: 20, name: out}
outputs: [out]
""",
        "spread: broadcast gives other values on the new tokens alone than on the whole sequence",
    ),
}


def spec_file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    return path


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models train and export fastest on one thread (two workers share two cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def random_inputs(graph: object, batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids below the vocabulary, masks with holes (the first token always real), positions 0..T-1."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, t in graph.inputs.items():  # type: ignore[attr-defined]
        if t.dtype == "bool":
            mask = torch.rand(batch, length, generator=g) < 0.8
            mask[:, 0] = True
            out[name] = mask
        elif graph.index_bound(name) is None:  # type: ignore[attr-defined]
            out[name] = torch.arange(length).repeat(batch, 1)
        else:
            out[name] = torch.randint(0, graph.index_bound(name), (batch, length), generator=g)  # type: ignore[attr-defined]
    return out


def torch_greedy(
    model: torch.nn.Module, prompt: list[int], steps: int, blocked: int | None = None
) -> list[int]:
    """Greedy decoding with the uncached PyTorch model: re-run the whole sequence, take the argmax of
    the last position (ids >= ``blocked`` never chosen); extra inputs get all-true masks / 0..T-1."""
    graph = model.graph  # type: ignore[attr-defined]
    ids = list(prompt)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(steps):
            feeds = []
            for name, t in graph.inputs.items():
                if t.dtype == "bool":
                    feeds.append(torch.ones(1, len(ids), dtype=torch.bool))
                elif graph.index_bound(name) is None:
                    feeds.append(torch.arange(len(ids))[None])
                else:
                    feeds.append(torch.tensor([ids]))
            logits = model(*feeds)
            row = (logits[0] if isinstance(logits, tuple) else logits)[0, -1].double()
            if blocked is not None:
                row[blocked:] = -float("inf")
            token = int(torch.argmax(row))
            ids.append(token)
            out.append(token)
    return out
