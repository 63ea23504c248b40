"""The language model of the Fabric language-model example, written for these tests.

The example imports ``Transformer`` from ``lightning.pytorch.demos``; the switchyard side has no
Lightning installed, so both sides of the comparison import this one instead. It has the demo's
interface and sizes: ``Transformer(vocab_size, ninp=200, nhead=2, nhid=200, nlayers=2,
dropout=0.2)``, called as ``model(inputs, target)`` on ``[batch, time]`` token ids, returning
log-probabilities of shape ``[batch * time, vocab_size]`` for ``F.nll_loss``. Like the demo it
feeds ``target`` to the decoder under a causal mask (a teaching model, not a real one).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionalEncoding(nn.Module):
    """Adds the sinusoidal position signal of "Attention is all you need", then dropout."""

    def __init__(self, dim: int, dropout: float, max_len: int = 5000) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
        frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
        table = torch.zeros(max_len, dim)
        table[:, 0::2] = torch.sin(position * frequency)
        table[:, 1::2] = torch.cos(position * frequency)
        # not persistent: derived from the sizes, so checkpoints need not carry it
        self.register_buffer("table", table.unsqueeze(0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x + self.table[:, : x.size(1)])


class Transformer(nn.Module):
    def __init__(
        self,
        vocab_size: int = 33278,
        ninp: int = 200,
        nhead: int = 2,
        nhid: int = 200,
        nlayers: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.ninp = ninp
        self.vocab_size = vocab_size
        self.pos_encoder = PositionalEncoding(ninp, dropout)
        self.embedding = nn.Embedding(vocab_size, ninp)
        self.transformer = nn.Transformer(
            d_model=ninp,
            nhead=nhead,
            num_encoder_layers=nlayers,
            num_decoder_layers=nlayers,
            dim_feedforward=nhid,
            dropout=dropout,
            batch_first=True,
        )
        self.decoder = nn.Linear(ninp, vocab_size)

    def forward(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        length = inputs.size(1)
        mask = nn.Transformer.generate_square_subsequent_mask(length, device=inputs.device)
        scale = math.sqrt(self.ninp)
        source = self.pos_encoder(self.embedding(inputs) * scale)
        shifted = self.pos_encoder(self.embedding(target) * scale)
        output = self.decoder(self.transformer(source, shifted, tgt_mask=mask))
        return torch.log_softmax(output, dim=-1).view(-1, self.vocab_size)
