"""Differentiable top-k by random perturbation, used to train the DPE scorer (Berthet et al., 2020).

Forward: add Gaussian noise (sigma) to the scores ``num_samples`` times, take a hard top-k of each sample
(indices sorted ascending, so row i is the i-th selected item in time order), and average the one-hot
indicators. Backward: the perturbed-optimiser estimate dE[y]/ds = E[y(s + sigma Z) Z^T] / sigma.
At inference DynFocus uses the hard top-k instead (:func:`dfrt.runtime.selection.top_k_ascending`).
"""

from __future__ import annotations

from typing import Any

import torch


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        scores: torch.Tensor,
        k: int,
        num_samples: int,
        sigma: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        b, n = scores.shape
        noise = torch.randn(b, num_samples, n, generator=generator, dtype=scores.dtype, device=scores.device)
        perturbed = scores[:, None, :] + sigma * noise
        picks = perturbed.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, S, k)
        onehot = torch.nn.functional.one_hot(picks, n).to(scores.dtype)  # (B, S, k, N)
        ctx.save_for_backward(onehot, noise)
        ctx.sigma = sigma
        return onehot.mean(dim=1)  # (B, k, N)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        onehot, noise = ctx.saved_tensors
        per_sample = torch.einsum("bskn,bkn->bs", onehot, grad)  # <grad, y(s + sigma Z_s)>
        grad_scores = torch.einsum("bs,bsn->bn", per_sample, noise) / (noise.shape[1] * ctx.sigma)
        return grad_scores, None, None, None, None


def perturbed_topk(
    scores: torch.Tensor,
    k: int,
    num_samples: int = 500,
    sigma: float = 0.1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Soft top-k indicators (B, k, N) for scores (B, N); each row sums to 1."""
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k={k} must be in [1, {scores.shape[-1]}]")
    return _PerturbedTopK.apply(scores, k, num_samples, sigma, generator)
