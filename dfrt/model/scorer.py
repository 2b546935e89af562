"""DPE frame scorer (the reference's ``PatchNet.score_network``, a DynamicViT ``PredictorLG``)."""

from __future__ import annotations

import torch
from torch import nn

MINMAX_EPS = 1e-5


class FrameScorer(nn.Module):
    """Prototypes (T', G*G, W) -> scores (T',), min-max normalised to [0, 1].

    Each prototype is summarised as [mean | max] over its pooled tokens (2W); after a LayerNorm-Linear-GELU,
    the first half of the channels stays per prototype and the second half is averaged over all prototypes
    (global context); an MLP turns the concatenation into one score.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        dim = 2 * width
        self.in_conv = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.out_conv = nn.Sequential(
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, dim // 4),
            nn.GELU(),
            nn.Linear(dim // 4, 1),
        )

    def forward(self, prototypes: torch.Tensor) -> torch.Tensor:
        x = torch.cat([prototypes.mean(dim=1), prototypes.amax(dim=1)], dim=-1)  # (T', 2W)
        x = self.in_conv(x)
        local, context = x.chunk(2, dim=-1)
        context = context.mean(dim=0, keepdim=True).expand_as(context)
        scores = self.out_conv(torch.cat([local, context], dim=-1)).squeeze(-1)
        return (scores - scores.min()) / (scores.max() - scores.min() + MINMAX_EPS)
