"""Differentiable top-k by random perturbation, used to train the DPE scorer (Berthet et al., 2020).

Forward: add Gaussian noise (sigma) to the scores ``num_samples`` times, take a hard top-k of each sample
(indices sorted ascending, so row i is the i-th selected item in time order), and average the one-hot
indicators y (k, N). Backward, two estimators from the same samples:

* ``"full"`` (default): the perturbed-optimiser Jacobian dy[i, m]/ds[n] = E[y[i, m] Z[n]] / sigma, all of it.
  Rows of the true Jacobian sum to zero over n (adding a constant to every score changes nothing); the
  estimate does so in expectation.
* ``"diagonal"``: only the entries with m = n, dy[i, n]/ds[n] = E[y[i, n] Z[n]] / sigma, as the authors'
  ``PerturbedTopKFunction`` does (the form of Cordonnier et al. 2021, "Differentiable Patch Selection").
  Each kept entry is the same estimate as in ``"full"``; the cross terms (how raising one score pushes the
  other items out of the top-k) are dropped, so it is not the gradient of the expected indicators.

At inference DynFocus uses the hard top-k instead (:func:`dfrt.runtime.selection.top_k_ascending`).
"""

from __future__ import annotations

from typing import Any

import torch

from dfrt.config import TOPK_GRADIENTS, TopKGradient


class _PerturbedTopK(torch.autograd.Function):
    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        scores: torch.Tensor,
        k: int,
        num_samples: int,
        sigma: float,
        generator: torch.Generator | None,
        gradient: TopKGradient,
    ) -> torch.Tensor:
        b, n = scores.shape
        noise = torch.randn(b, num_samples, n, generator=generator, dtype=scores.dtype, device=scores.device)
        perturbed = scores[:, None, :] + sigma * noise
        picks = perturbed.topk(k, dim=-1).indices.sort(dim=-1).values  # (B, S, k)
        onehot = torch.nn.functional.one_hot(picks, n).to(scores.dtype)  # (B, S, k, N)
        ctx.save_for_backward(onehot, noise)
        ctx.sigma = sigma
        ctx.gradient = gradient
        return onehot.mean(dim=1)  # (B, k, N)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        onehot, noise = ctx.saved_tensors
        scale = noise.shape[1] * ctx.sigma
        if ctx.gradient == "diagonal":  # sum_i grad[i, n] E[y[i, n] Z[n]] / sigma
            expected = torch.einsum("bskn,bsn->bkn", onehot, noise) / scale  # (B, k, N)
            grad_scores = torch.einsum("bkn,bkn->bn", grad, expected)
        else:  # sum_{i, m} grad[i, m] E[y[i, m] Z[n]] / sigma
            per_sample = torch.einsum("bskn,bkn->bs", onehot, grad)  # <grad, y(s + sigma Z_s)>
            grad_scores = torch.einsum("bs,bsn->bn", per_sample, noise) / scale
        return grad_scores, None, None, None, None, None


def perturbed_topk(
    scores: torch.Tensor,
    k: int,
    num_samples: int = 500,
    sigma: float = 0.1,
    generator: torch.Generator | None = None,
    gradient: TopKGradient = "full",
) -> torch.Tensor:
    """Soft top-k indicators (B, k, N) for scores (B, N); each row sums to 1.

    ``gradient`` picks the backward estimator: ``"full"`` (the perturbed-optimiser Jacobian) or
    ``"diagonal"`` (the authors' form, its diagonal only); the forward pass is the same.
    """
    if not 1 <= k <= scores.shape[-1]:
        raise ValueError(f"k={k} must be in [1, {scores.shape[-1]}]")
    if gradient not in TOPK_GRADIENTS:
        raise ValueError(f"gradient={gradient!r} must be one of {', '.join(TOPK_GRADIENTS)}")
    if not sigma > 0:
        raise ValueError(f"sigma={sigma} must be positive")
    return _PerturbedTopK.apply(scores, k, num_samples, sigma, generator, gradient)
