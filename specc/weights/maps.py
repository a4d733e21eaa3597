"""Name maps: how the tensors of a published checkpoint become a bundled spec's state dict.

A map is a table of rules, each a pair of name templates with ``{n}`` (any ``{word}``) standing for a
layer number:
``source`` (the checkpoint's name, after an optional prefix) and ``target`` (the spec's). A rule can
``transpose`` a matrix (GPT-2's Conv1D stores ``(in, out)``, a linear ``(out, in)``) or ``fuse``
several source tensors into one target along dim 0 (Hugging Face ViT's separate query/key/value
into torchvision's fused ``in_proj``). ``ignore`` lists source names that are known and not part of
the spec (GPT-2's causal-mask buffers, BERT's pre-training heads). The same table, read backwards,
writes a spec's state dict under the checkpoint's names (``specc weights export``).

The tables are data, not code, so adding a source is adding a table (and a test with a random model
of that source saved to disk).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from specc.errors import UsageError

__all__ = ["MAPS", "NameMap", "Rule", "map_for_model_type"]


@dataclass(frozen=True)
class Rule:
    """``source`` → ``target`` name templates (``{n}``: a layer number); ``fuse`` lists several source
    templates whose tensors are concatenated along dim 0 into ``target``."""

    source: str = ""
    target: str = ""
    transpose: bool = False
    fuse: tuple[str, ...] = ()

    def sources(self) -> tuple[str, ...]:
        return self.fuse or (self.source,)


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>\\d+)", re.escape(template)) + "$")


@dataclass(frozen=True)
class NameMap:
    """One checkpoint layout: its rules, the prefixes its names may carry, names to leave out
    (``ignore``: regular expressions), whether unmatched names pass as they are (``passthrough``),
    and which ``config.json`` entries are which spec variables (``config_vars``: checked on import,
    written on export: head counts and epsilons change no tensor shape)."""

    name: str
    description: str
    rules: tuple[Rule, ...]
    prefixes: tuple[str, ...] = ("",)
    ignore: tuple[str, ...] = ()
    passthrough: bool = False
    config_vars: tuple[tuple[str, str], ...] = ()
    _compiled: list[tuple[Rule, int, re.Pattern[str]]] = field(
        default_factory=list, compare=False, repr=False
    )

    def _patterns(self) -> list[tuple[Rule, int, re.Pattern[str]]]:
        if not self._compiled:
            self._compiled.extend(
                (rule, i, _pattern(src)) for rule in self.rules for i, src in enumerate(rule.sources())
            )
        return self._compiled

    def _strip(self, name: str) -> str:
        for prefix in sorted(self.prefixes, key=len, reverse=True):
            if name.startswith(prefix):
                return name[len(prefix) :]
        return name

    def to_spec(
        self, tensors: Mapping[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
        """``(spec tensors, source names no rule matched, source names ignored on purpose)``.

        Raises:
            UsageError: A fused target lacks one of its parts.
        """
        ignore = [re.compile(p) for p in self.ignore]
        out: dict[str, torch.Tensor] = {}
        parts: dict[str, dict[int, torch.Tensor]] = {}
        fused: dict[str, Rule] = {}
        unmatched: list[str] = []
        ignored: list[str] = []
        for full_name, tensor in tensors.items():
            name = self._strip(full_name)
            hit = next(((r, i, m) for r, i, p in self._patterns() if (m := p.match(name))), None)
            if hit is None:
                if any(p.fullmatch(name) for p in ignore):
                    ignored.append(full_name)
                elif self.passthrough:
                    out[name] = tensor
                else:
                    unmatched.append(full_name)
                continue
            rule, index, match = hit
            target = rule.target.format(**match.groupdict())
            value = tensor.t() if rule.transpose else tensor
            if rule.fuse:
                parts.setdefault(target, {})[index] = value
                fused[target] = rule
            else:
                out[target] = value
        for target, got in parts.items():
            count = len(fused[target].fuse)
            if len(got) != count:
                lacking = [fused[target].fuse[i] for i in range(count) if i not in got]
                raise UsageError(f"{self.name}: {target} needs {', '.join(lacking)} as well")
            out[target] = torch.cat([got[i] for i in range(count)], dim=0)
        return out, unmatched, ignored

    def from_spec(self, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
        """The reverse: spec tensors under this layout's names (``prefix`` put in front of each).

        Raises:
            UsageError: A spec tensor no rule produces.
        """
        targets = [(rule, _pattern(rule.target)) for rule in self.rules]
        out: dict[str, torch.Tensor] = {}
        for name, tensor in tensors.items():
            hit = next(((r, m) for r, p in targets if (m := p.match(name))), None)
            if hit is None and self.passthrough:
                out[prefix + name] = tensor.contiguous()
                continue
            if hit is None:
                raise UsageError(f"{self.name}: no rule writes spec tensor {name}")
            rule, match = hit
            pieces = tensor.chunk(len(rule.fuse), dim=0) if rule.fuse else (tensor,)
            for src, piece in zip(rule.sources(), pieces, strict=True):
                value = piece.t() if rule.transpose else piece
                out[prefix + src.format(**match.groupdict())] = value.contiguous()
        return out


def _each(pairs: list[tuple[str, str]], *, transpose: tuple[str, ...] = ()) -> tuple[Rule, ...]:
    """Rules for ``.weight`` and ``.bias`` of module pairs (``transpose``: those whose weight is (in, out))."""
    rules = []
    for src, dst in pairs:
        for kind in ("weight", "bias"):
            rules.append(Rule(f"{src}.{kind}", f"{dst}.{kind}", kind == "weight" and src in transpose))
    return tuple(rules)


GPT2 = NameMap(
    "hf-gpt2",
    "Hugging Face GPT2Model / GPT2LMHeadModel -> specs/gpt2_small.yaml",
    (
        Rule("wte.weight", "wte.weight"),
        Rule("wpe.weight", "wpe.weight"),
        *_each(
            [
                ("h.{n}.ln_1", "h.{n}.sa.ln_1"),
                ("h.{n}.attn.c_proj", "h.{n}.sa.attn.out_proj"),
                ("h.{n}.ln_2", "h.{n}.mlp.ln_2"),
                ("h.{n}.mlp.c_fc", "h.{n}.mlp.c_fc"),
                ("h.{n}.mlp.c_proj", "h.{n}.mlp.c_proj"),
                ("ln_f", "ln_f"),
            ],
            transpose=("h.{n}.attn.c_proj", "h.{n}.mlp.c_fc", "h.{n}.mlp.c_proj"),
        ),
        # torch's MultiheadAttention names its fused projection in_proj_weight / in_proj_bias
        Rule("h.{n}.attn.c_attn.weight", "h.{n}.sa.attn.in_proj_weight", transpose=True),
        Rule("h.{n}.attn.c_attn.bias", "h.{n}.sa.attn.in_proj_bias"),
    ),
    prefixes=("transformer.", ""),
    ignore=(r"h\.\d+\.attn\.(masked_)?bias", r"lm_head\.weight"),  # mask buffers; the head is tied to wte
    config_vars=(
        ("vocab_size", "vocab"),
        ("n_positions", "n_positions"),
        ("n_embd", "hidden"),
        ("n_head", "num_heads"),
        ("n_layer", "num_layers"),
        ("layer_norm_epsilon", "eps"),
    ),
)
BERT = NameMap(
    "hf-bert",
    "Hugging Face BertModel (and the encoder of BertFor*) -> specs/bert_base.yaml",
    (
        Rule("embeddings.word_embeddings.weight", "word_embeddings.weight"),
        Rule("embeddings.position_embeddings.weight", "position_embeddings.weight"),
        Rule("embeddings.token_type_embeddings.weight", "token_type_embeddings.weight"),
        *_each(
            [
                ("embeddings.LayerNorm", "embeddings_norm"),
                ("encoder.layer.{n}.attention.self.query", "encoder.{n}.sa.attention.query"),
                ("encoder.layer.{n}.attention.self.key", "encoder.{n}.sa.attention.key"),
                ("encoder.layer.{n}.attention.self.value", "encoder.{n}.sa.attention.value"),
                ("encoder.layer.{n}.attention.output.dense", "encoder.{n}.sa.attention.out_proj"),
                ("encoder.layer.{n}.attention.output.LayerNorm", "encoder.{n}.sa.then.norm1"),
                ("encoder.layer.{n}.intermediate.dense", "encoder.{n}.ff.0.linear1"),
                ("encoder.layer.{n}.output.dense", "encoder.{n}.ff.0.linear2"),
                ("encoder.layer.{n}.output.LayerNorm", "encoder.{n}.ff.then.norm2"),
                ("pooler.dense", "pooler"),
            ]
        ),
    ),
    prefixes=("bert.", ""),
    # pre-training / task heads of BertFor*, and the position_ids buffer of older checkpoints
    ignore=(r"cls\..*", r"classifier\..*", r"qa_outputs\..*", r"embeddings\.position_ids"),
    config_vars=(
        ("vocab_size", "vocab"),
        ("max_position_embeddings", "max_positions"),
        ("type_vocab_size", "type_vocab"),
        ("hidden_size", "hidden"),
        ("num_attention_heads", "num_heads"),
        ("num_hidden_layers", "num_layers"),
        ("intermediate_size", "intermediate"),
        ("layer_norm_eps", "eps"),
    ),
)

LLAMA = NameMap(
    "hf-llama",
    "Hugging Face LlamaForCausalLM -> specs/llama.yaml",
    (
        Rule("model.embed_tokens.weight", "embed_tokens.weight"),
        *(
            Rule(f"model.layers.{{n}}.{part}.weight", f"layers.{{n}}.{part}.weight")
            for part in (
                "input_layernorm",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "post_attention_layernorm",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            )
        ),
        Rule("model.norm.weight", "norm.weight"),
        Rule("lm_head.weight", "lm_head.weight"),
    ),
    ignore=(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),  # recomputed from theta
    config_vars=(
        ("vocab_size", "vocab"),
        ("hidden_size", "hidden"),
        ("num_hidden_layers", "num_layers"),
        ("num_attention_heads", "num_heads"),
        ("num_key_value_heads", "num_kv_heads"),
        ("intermediate_size", "intermediate"),
        ("rms_norm_eps", "eps"),
        ("rope_theta", "theta"),
    ),
)

VIT = NameMap(
    "hf-vit",
    "Hugging Face ViTModel / ViTForImageClassification -> specs/vit_b_16.yaml",
    (
        Rule("embeddings.cls_token", "class_token.weight"),
        Rule("embeddings.position_embeddings", "pos_embedding.weight"),
        *_each(
            [
                ("embeddings.patch_embeddings.projection", "patches.conv_proj"),
                ("encoder.layer.{n}.layernorm_before", "layers.{n}.attn.ln_1"),
                ("encoder.layer.{n}.attention.output.dense", "layers.{n}.attn.self_attention.out_proj"),
                ("encoder.layer.{n}.layernorm_after", "layers.{n}.mlp.ln_2"),
                ("encoder.layer.{n}.intermediate.dense", "layers.{n}.mlp.linear_1"),
                ("encoder.layer.{n}.output.dense", "layers.{n}.mlp.linear_2"),
                ("layernorm", "ln"),
            ]
        ),
        *(
            Rule(
                target=f"layers.{{n}}.attn.self_attention.in_proj_{kind}",
                fuse=tuple(
                    f"encoder.layer.{{n}}.attention.attention.{p}.{kind}" for p in ("query", "key", "value")
                ),
            )
            for kind in ("weight", "bias")
        ),
        Rule("classifier.weight", "head.weight"),
        Rule("classifier.bias", "head.bias"),
    ),
    prefixes=("vit.", ""),
    ignore=(r"pooler\..*",),  # ViTModel's pooler: the spec classifies the class token directly
    config_vars=(
        ("image_size", "res"),
        ("patch_size", "patch_size"),
        ("hidden_size", "hidden"),
        ("num_hidden_layers", "num_layers"),
        ("num_attention_heads", "num_heads"),
        ("intermediate_size", "mlp_dim"),
        ("layer_norm_eps", "eps"),
    ),
)

RESNET = NameMap(
    "torchvision-resnet",
    "torchvision ResNet state_dict (resnet18/34/50 layout) -> specs/resnet*.yaml",
    (
        Rule("layer{s}.{b}.downsample.0.weight", "layer{s}.{b}.shortcut.0.weight"),
        *(
            Rule(f"layer{{s}}.{{b}}.downsample.1.{k}", f"layer{{s}}.{{b}}.shortcut.1.{k}")
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
        ),
    ),
    passthrough=True,  # every other torchvision name is the spec's (conv1, bn1, layerS.B.conv1, fc, ...)
)

IDENTITY = NameMap("specc", "specc's own names (a specc run or weights file)", (), passthrough=True)

MAPS: dict[str, NameMap] = {m.name: m for m in (IDENTITY, GPT2, BERT, LLAMA, VIT, RESNET)}

_MODEL_TYPES = {"gpt2": GPT2, "bert": BERT, "llama": LLAMA, "vit": VIT}


def map_for_model_type(model_type: str) -> NameMap | None:
    """The map of a Hugging Face ``config.json``'s ``model_type`` (None: not one specc knows)."""
    return _MODEL_TYPES.get(model_type)
