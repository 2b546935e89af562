"""Projections into the LLM width."""

from __future__ import annotations

import torch
from torch import nn


def mlp2x_gelu(in_width: int, out_width: int) -> nn.Sequential:
    """LLaVA's ``mlp2x_gelu`` projector: Linear, GELU, Linear (checkpoint keys ``0.*`` and ``2.*``)."""
    return nn.Sequential(nn.Linear(in_width, out_width), nn.GELU(), nn.Linear(out_width, out_width))


class RodAttention(nn.Module):
    """The question-guided half of a rod: q_emb attends over the frame's structure tokens.

    keys = key_proj(structure); attention = softmax(q_emb keys^T / sqrt(W)) over the structure tokens;
    context = mean over the queries of attention @ structure (values are the unprojected tokens).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.key_proj = nn.Linear(width, width)

    def forward(self, structure: torch.Tensor, q_emb: torch.Tensor) -> torch.Tensor:
        keys = self.key_proj(structure)  # (R, S, W)
        logits = q_emb @ keys.transpose(1, 2) / structure.shape[-1] ** 0.5  # (R, Nq, S)
        return (logits.softmax(dim=-1) @ structure).mean(dim=1)  # (R, W)
