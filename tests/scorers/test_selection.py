"""Frame selection from relevance: what each method really picks, and its edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from dfrt.errors import InputError
from dfrt.scorers.selection import METHODS, choose_frames, dpe_frames, uniform_frames

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def distinct_embeddings(total: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Nearly orthogonal unit vectors: no frame is redundant with another."""
    vectors = np.random.default_rng(seed).standard_normal((total, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def planted(total: int = 64, run: slice = slice(28, 34), seed: int = 1) -> np.ndarray:
    """Background relevance in [0.10, 0.11), one run of clearly relevant frames at 0.3."""
    relevance = 0.10 + 0.01 * np.random.default_rng(seed).random(total)
    relevance[run] = 0.3
    return relevance


@pytest.mark.parametrize("method", ["dpe", "bolt", "aks"])
def test_a_planted_relevant_run_is_picked(method: str) -> None:
    relevance, embeds = planted(), distinct_embeddings(64)
    picks = choose_frames(relevance, embeds, 4, method)
    assert picks.tolist() == sorted(set(picks.tolist())) and len(picks) == 4
    in_run = [p for p in picks if 28 <= p < 34]
    # bolt and aks spend the whole budget there; dpe keeps half of it for coverage
    assert len(in_run) >= (2 if method == "dpe" else 4), picks
    uniform = choose_frames(relevance, embeds, 4, "uniform")
    assert not any(28 <= p < 34 for p in uniform)  # the run falls between uniform frames


def test_uniform_is_evenly_spaced() -> None:
    assert uniform_frames(100, 4).tolist() == [12, 37, 62, 87]
    assert uniform_frames(10, 10).tolist() == list(range(10))
    gaps = np.diff(uniform_frames(1000, 7))
    assert gaps.max() - gaps.min() <= 1
    assert choose_frames(np.zeros(100), None, 4, "uniform").tolist() == [12, 37, 62, 87]


def test_dpe_avoids_near_duplicates() -> None:
    """Two equally relevant scenes, each filmed as 8 near-identical frames: dpe takes both scenes rather
    than four copies of the best one; pure top-k would not."""
    total = 32
    base = distinct_embeddings(3, seed=2)
    embeds = np.stack([base[0]] * 16 + [base[1]] * 8 + [base[2]] * 8)
    embeds += 0.01 * distinct_embeddings(total, seed=3)
    embeds /= np.linalg.norm(embeds, axis=1, keepdims=True)
    relevance = np.full(total, 0.1)
    relevance[16:24] = np.linspace(0.95, 0.9, 8)  # scene A, slightly better
    relevance[24:32] = np.linspace(0.85, 0.8, 8)  # scene B
    picks = dpe_frames(relevance, embeds, 2, coverage=0.0)  # redundancy alone, no coverage picks
    assert picks.tolist() == [16, 24]
    top_k = np.argsort(-relevance, kind="stable")[:2]
    assert top_k.tolist() == [16, 17]  # two copies of one scene
    four = dpe_frames(relevance, embeds, 4, coverage=0.0)  # then copies, the more relevant scene first
    assert 16 in four and 24 in four


def test_dpe_covers_the_timeline() -> None:
    """All relevance at the end of the video: dpe still puts a pick in each of count // 2 equal segments."""
    total, count = 120, 8
    relevance = np.linspace(0.0, 1.0, total) ** 4
    picks = choose_frames(relevance, distinct_embeddings(total), count, "dpe")
    segments = set((picks * (count // 2)) // total)
    assert segments == set(range(count // 2)), picks
    assert sum(p >= 90 for p in picks) >= count // 2  # the rest follows relevance


@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(method: str) -> None:
    one = choose_frames(np.array([0.3]), np.ones((1, 4), np.float32), 5, method)
    assert one.tolist() == [0] and one.dtype == np.int64
    relevance, embeds = planted(20, slice(3, 5)), distinct_embeddings(20)
    assert choose_frames(relevance, embeds, 50, method).tolist() == list(range(20))  # count > T
    assert len(choose_frames(relevance, embeds, 0, method)) == 1  # count < 1
    first = choose_frames(relevance, embeds, 7, method)
    assert np.array_equal(first, choose_frames(relevance, embeds, 7, method))  # deterministic
    assert np.all(np.diff(first) > 0) and len(first) == 7


@pytest.mark.parametrize("method", METHODS)
def test_ties_are_broken_by_index(method: str) -> None:
    """Constant relevance and identical embeddings: every method returns one fixed answer."""
    flat = np.full(12, 0.5)
    picks = choose_frames(flat, np.ones((12, 4), np.float32) / 2, 3, method)
    assert (
        picks.tolist()
        == {
            "dpe": [0, 5, 11],  # the first frame, then each time the frame farthest from the picks
            "bolt": [2, 6, 10],  # constant scores: uniform frames
            "aks": [0, 6, 9],  # bins split down to a budget of one, each taking its first frame
            "uniform": [2, 6, 10],
        }[method]
    )


@pytest.mark.parametrize(
    ("relevance", "embeddings", "count", "method", "match"),
    [
        (np.zeros(4), None, 2, "nope", "unknown frame selection"),
        (np.zeros((2, 2)), None, 2, "uniform", "expected relevance"),
        (np.array([]), None, 2, "uniform", "expected relevance"),
        (np.array([0.0, np.nan]), None, 2, "bolt", "finite"),
        (np.zeros(4), None, 2, "dpe", "needs the frames' embeddings"),
        (np.zeros(4), np.zeros((3, 2)), 2, "dpe", "expected finite embeddings"),
        (np.zeros(4), None, 2.5, "uniform", "integer"),
        (np.zeros(4), None, True, "uniform", "integer"),
    ],
)
def test_bad_inputs(relevance, embeddings, count, method, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=match):
        choose_frames(relevance, embeddings, count, method)
