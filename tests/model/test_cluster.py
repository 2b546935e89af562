import pytest

pytest.importorskip("torch", reason="the reference model and export need torch (dfrt[export])")
import torch

from dfrt.config import CCEConfig
from dfrt.model.cluster import StructureTokens, dpc_knn, pairwise_sq_distances
from tests.model.cluster_direct import structure_tokens_direct


def _inputs(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    if kind == "random":
        return torch.randn(3, 64, 32, generator=g)
    if kind == "duplicates":  # 4 distinct tokens, each repeated 16 times: ties everywhere
        return torch.randn(2, 4, 32, generator=g).repeat_interleave(16, dim=1)
    if kind == "flat":  # a blank frame
        return torch.ones(2, 64, 32)
    if kind == "few_values":
        return torch.randint(0, 3, (2, 64, 8), generator=g).float()
    return torch.randn(2, 256, 48, generator=g) * 5 + 100  # paper-like token count, large offset


@pytest.mark.parametrize("kind", ["random", "duplicates", "flat", "few_values", "large"])
def test_static_formulation_equals_direct(kind):
    torch.manual_seed(0)
    module = StructureTokens(CCEConfig())
    x = _inputs(kind)
    cfg = module.cfg
    expected = structure_tokens_direct(x, module.score, cfg.clusters1, cfg.knn1, cfg.clusters2, cfg.knn2)
    with torch.no_grad():
        got = module(x)
    assert got.shape == (x.shape[0], 22, x.shape[2])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_assignment_is_one_hot_and_centres_own_their_cluster():
    x = torch.randn(4, 64, 16)
    a = dpc_knn(x, 16, 8)
    assert torch.equal(a.sum(dim=1), torch.ones(4, 64))
    assert torch.all(a.sum(dim=2) >= 1)  # no empty cluster: each centre is its own member


def test_identical_tokens_are_exactly_zero_apart():
    x = torch.randn(1, 8, 40).repeat(1, 8, 1)
    d = pairwise_sq_distances(x)
    same = torch.arange(64)[:, None] % 8 == torch.arange(64)[None, :] % 8
    assert torch.all(d[0][same] == 0)


def test_structure_tokens_are_gated_cluster_means():
    """Undo the gate: every output row is a mean of input tokens, so it lies within their range."""
    torch.manual_seed(1)
    module = StructureTokens(CCEConfig())
    x = torch.rand(2, 64, 8)
    with torch.no_grad():
        out = module(x)
    assert torch.all(out >= 0) and torch.all(out <= 1.0)
