"""Language-model and seq2seq training through the library (hand-written modules until sequence ops
exist in specs): losses, teacher forcing, metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from specc.data import SYNTHETIC_VOCAB_SIZE
from specc.errors import DataError
from specc.lang.train_config import TrainConfig
from specc.train.batches import ModelIO, load_for_model
from specc.train.runner import train_module


class CharLM(nn.Module):
    """tokens (B, T) → logits (B, T, V)."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.rnn = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


class Seq2Seq(nn.Module):
    """(src (B, S), tgt_in (B, T)) → logits (B, T, V): a GRU encoder's last state starts the decoder."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.enc = nn.GRU(16, 32, batch_first=True)
        self.dec = nn.GRU(16, 32, batch_first=True)
        self.head = nn.Linear(32, vocab)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        _, h = self.enc(self.embed(src))
        return self.head(self.dec(self.embed(tgt_in), h)[0])


def test_char_lm_on_stdlib_text(tmp_path: Path) -> None:
    io = ModelIO(("tokens",), ((32,),), ("int64",), "logits", (32, 128))
    cfg = TrainConfig(epochs=1, batch_size=32, lr=3e-3, num_samples=300)
    ds = load_for_model("text:stdlib", io, seed=0, num_samples=cfg.num_samples)
    assert ds.task == "language_model"
    outcome = train_module(CharLM(128), io, ds, cfg, tmp_path / "lm")
    assert outcome.status == "completed"
    final = json.loads((tmp_path / "lm" / "metrics.json").read_text())["final"]
    assert 1 < final["val_perplexity"] < 128
    assert json.loads((tmp_path / "lm" / "data.json").read_text())["preprocess"]["kind"] == "text"


def test_seq2seq_teacher_forcing_on_reverse(tmp_path: Path) -> None:
    v = SYNTHETIC_VOCAB_SIZE
    io = ModelIO(("src", "tgt_in"), ((8,), (9,)), ("int64", "int64"), "logits", (9, v))
    cfg = TrainConfig(epochs=2, batch_size=64, lr=1e-2, num_samples=400, grad_clip=1.0)
    ds = load_for_model("reverse", io, seed=0, num_samples=cfg.num_samples)
    train_module(Seq2Seq(v), io, ds, cfg, tmp_path / "s2s")
    final = json.loads((tmp_path / "s2s" / "metrics.json").read_text())["final"]
    assert {"test_accuracy", "test_exact_match", "test_loss"} <= set(final)
    assert final["test_accuracy"] > 1 / v


def test_sequence_data_needs_matching_model() -> None:
    one_input = ModelIO(("src",), ((8,),), ("int64",), "logits", (9, SYNTHETIC_VOCAB_SIZE))
    with pytest.raises(DataError, match="seq2seq task: the spec needs 2 inputs"):
        load_for_model("copy", one_input, seed=0, num_samples=50)
    small_vocab = ModelIO(("src", "tgt_in"), ((8,), (9,)), ("int64", "int64"), "logits", (9, 5))
    with pytest.raises(DataError, match="has 13 tokens in the vocabulary but the spec output 'logits'"):
        load_for_model("sort", small_vocab, seed=0, num_samples=50)
