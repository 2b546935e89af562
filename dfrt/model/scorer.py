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


REDUNDANCY_WEIGHT = 0.5  # question-aware scoring: how much similarity to the previous prototype costs


def _minmax(x: torch.Tensor) -> torch.Tensor:
    return (x - x.min()) / (x.max() - x.min() + MINMAX_EPS)


def question_scores(prototypes: torch.Tensor, q_emb: torch.Tensor, key_proj: nn.Module) -> torch.Tensor:
    """Question-aware DPE scores without a trained scorer (dfrt's extension, not in the paper).

    prototypes (T', G*G, W), q_emb (T', Nq, W) of each prototype's seed frame -> scores (T',) in [0, 1].
    Relevance: the question-conditioned Q-Former queries against the prototype's tokens through the rod
    attention's key projector (the trained question-to-frame affinity of LLaMA-VID's context token),
    log-sum-exp over the tokens, mean over the queries. Redundancy: cosine of the prototype's mean token with
    the previous prototype's (the first compares with the second), so a near-repeat of its neighbour gives
    way to a frame that shows something new. score = minmax(minmax(relevance) - 0.5 * redundancy).
    """
    keys = key_proj(prototypes)  # (T', G*G, W)
    logits = q_emb @ keys.transpose(1, 2) / prototypes.shape[-1] ** 0.5  # (T', Nq, G*G)
    relevance = _minmax(torch.logsumexp(logits, dim=-1).mean(dim=-1))  # (T',)
    summary = torch.nn.functional.normalize(prototypes.mean(dim=1), dim=-1)  # (T', W)
    # tensor ops only, so that the exported graph keeps the prototype axis dynamic
    position = torch.cumsum(torch.ones_like(relevance), dim=0) - 1
    previous = torch.where(position < 1, torch.clamp(position[-1:], max=1), position - 1).long()
    redundancy = (summary * summary[previous]).sum(dim=-1).clamp(min=0)
    return _minmax(relevance - REDUNDANCY_WEIGHT * redundancy)
