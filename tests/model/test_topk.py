import dataclasses
import json
import math

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model needs torch (dfrt[export])")
import torch

from dfrt.config import DynFocusConfig, tiny
from dfrt.errors import ConfigError
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


def _reference_gradients(scores, k, num_samples, sigma, seed, upstream):
    """Both estimators written out from the definition, from the same noise the function draws."""
    n = scores.shape[-1]
    noise = torch.randn(1, num_samples, n, generator=torch.Generator().manual_seed(seed), dtype=scores.dtype)
    noise = noise[0].numpy()  # (S, N)
    perturbed = scores.detach().numpy()[None] + sigma * noise
    onehot = np.zeros((num_samples, k, n))
    for s in range(num_samples):
        picks = np.sort(np.argsort(-perturbed[s], kind="stable")[:k])
        onehot[s, np.arange(k), picks] = 1.0
    jacobian = np.einsum("sim,sn->imn", onehot, noise) / (num_samples * sigma)  # dy[i, m] / ds[n]
    g = upstream.numpy()
    full = np.einsum("im,imn->n", g, jacobian)
    diagonal = np.einsum("in,inn->n", g, jacobian)
    return onehot.mean(axis=0), full, diagonal


def _autograd(scores, k, num_samples, sigma, seed, upstream, gradient):
    leaf = scores.clone().requires_grad_(True)
    generator = torch.Generator().manual_seed(seed)
    ind = perturbed_topk(leaf[None], k, num_samples, sigma, generator, gradient=gradient)[0]
    (ind * upstream).sum().backward()
    return ind.detach(), leaf.grad


@pytest.mark.parametrize("gradient", ["full", "diagonal"])
def test_both_gradients_match_the_finite_sample_definition(gradient):
    torch.manual_seed(1)
    scores, upstream = torch.rand(12, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)
    ind, grad = _autograd(scores, 5, 300, 0.1, 3, upstream, gradient)
    ref_ind, ref_full, ref_diagonal = _reference_gradients(scores, 5, 300, 0.1, 3, upstream)
    np.testing.assert_allclose(ind.numpy(), ref_ind, rtol=0, atol=1e-12)
    expected = ref_full if gradient == "full" else ref_diagonal
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_diagonal_gradient_drops_the_cross_terms_of_the_two_item_case():
    """The authors' form keeps dP(item 0)/ds0 (same estimate as the full one) but not dP(item 0)/ds1."""
    scores = torch.tensor([0.05, 0.0], dtype=torch.float64)
    upstream = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    _, full = _autograd(scores, 1, 20_000, 0.1, 0, upstream, "full")
    _, diagonal = _autograd(scores, 1, 20_000, 0.1, 0, upstream, "diagonal")
    assert diagonal[0].item() == pytest.approx(full[0].item(), rel=1e-12)
    assert diagonal[1].item() == 0.0
    assert full[1].item() < -1.0  # raising item 1 pushes item 0 out


def test_the_two_gradients_differ_on_32_frames():
    """Paper setting: 32 frames, k = 15, 500 samples, sigma 0.1, min-max normalised scores."""
    cosines = []
    for seed in range(5):
        torch.manual_seed(seed)
        scores = torch.rand(32, dtype=torch.float64)
        scores = (scores - scores.min()) / (scores.max() - scores.min())
        upstream = torch.randn(15, 32, dtype=torch.float64)
        _, full = _autograd(scores, 15, 500, 0.1, seed, upstream, "full")
        _, diagonal = _autograd(scores, 15, 500, 0.1, seed, upstream, "diagonal")
        cosines.append(torch.nn.functional.cosine_similarity(full, diagonal, dim=0).item())
    print(f"cosine(full, diagonal) on 32 frames: {', '.join(f'{c:.3f}' for c in cosines)}")
    assert all(0.0 < c < 0.95 for c in cosines)


def test_unknown_gradient_and_non_positive_sigma_are_refused():
    with pytest.raises(ValueError, match="gradient='authors'"):
        perturbed_topk(torch.rand(1, 3), 1, gradient="authors")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma=0"):
        perturbed_topk(torch.rand(1, 3), 1, sigma=0)


def test_config_field_defaults_to_full_and_round_trips():
    assert tiny().dpe.topk_gradient == "full"
    assert "topk_gradient" not in tiny().to_dict()["dpe"]  # bundles written before the field read the same
    on = dataclasses.replace(tiny(), dpe=dataclasses.replace(tiny().dpe, topk_gradient="diagonal"))
    assert on.to_dict()["dpe"]["topk_gradient"] == "diagonal"
    assert DynFocusConfig.from_dict(json.loads(json.dumps(on.to_dict()))) == on
    with pytest.raises(ConfigError, match=r"dpe\.topk_gradient must be one of full, diagonal"):
        dataclasses.replace(tiny(), dpe=dataclasses.replace(tiny().dpe, topk_gradient="authors"))
