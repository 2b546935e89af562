import math

import pytest
import torch

from dfrt.model.topk import perturbed_topk
from dfrt.runtime.selection import top_k_ascending


def test_rows_are_distributions_over_items():
    ind = perturbed_topk(torch.rand(2, 10), 4, num_samples=200, generator=torch.Generator().manual_seed(0))
    assert ind.shape == (2, 4, 10)
    torch.testing.assert_close(ind.sum(dim=-1), torch.ones(2, 4))


def test_separated_scores_give_the_hard_top_k_in_time_order():
    scores = torch.tensor([[0.0, 5.0, 1.0, 9.0, 3.0, 8.0]])
    ind = perturbed_topk(scores, 3, num_samples=100, sigma=0.1)
    hard = top_k_ascending(scores[0].numpy(), 3)
    assert hard.tolist() == [1, 3, 5]
    assert ind[0].argmax(dim=-1).tolist() == hard.tolist()
    assert torch.all(ind[0].max(dim=-1).values == 1.0)


def test_gradient_matches_the_analytic_two_item_case():
    """Top-1 of two: P(item 0) = Phi(z), z = d / (sigma sqrt 2), so dP/ds0 = phi(z) / (sigma sqrt 2)."""
    sigma, d = 0.1, 0.05
    scores = torch.tensor([[d, 0.0]], requires_grad=True)
    ind = perturbed_topk(
        scores, 1, num_samples=200_000, sigma=sigma, generator=torch.Generator().manual_seed(0)
    )
    ind[0, 0, 0].backward()
    z = d / (sigma * math.sqrt(2))
    expected_p = 0.5 * (1 + math.erf(z / math.sqrt(2)))
    expected_grad = math.exp(-z * z / 2) / math.sqrt(2 * math.pi) / (sigma * math.sqrt(2))
    assert ind[0, 0, 0].item() == pytest.approx(expected_p, abs=0.01)
    assert scores.grad[0, 0].item() == pytest.approx(expected_grad, rel=0.05)
    assert scores.grad[0, 1].item() == pytest.approx(-expected_grad, rel=0.05)


def test_same_generator_same_result():
    s = torch.rand(1, 20)
    a = perturbed_topk(s, 5, generator=torch.Generator().manual_seed(7))
    b = perturbed_topk(s, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_k_out_of_range_is_refused():
    with pytest.raises(ValueError, match="k=0"):
        perturbed_topk(torch.rand(1, 3), 0)
