"""Which frames to keep, from each frame's relevance to the question (and its embedding). numpy only.

Every method returns ``count`` unique frame indices in ascending order (``count`` clamped to [1, T]) and is
deterministic: no randomness, ties go to the lower index.

- ``"dpe"`` (default): DynFocus-style greedy selection ([DynFocus, CVPR 2025, arXiv 2411.12355]: DPE keeps
  frames that are relevant and not redundant), with a temporal-coverage constraint. See :func:`dpe_frames`.
- ``"bolt"``: BOLT's inverse transform sampling ([BOLT, CVPR 2025, arXiv 2503.21483]); see
  :func:`bolt_frames`.
- ``"aks"``: AKS's adaptive keyframe sampling, judge and split ([AKS, CVPR 2025, arXiv 2502.21271]). See
  :func:`aks_frames`.
- ``"uniform"``: evenly spaced frames, the question ignored (:func:`uniform_frames`).
"""

from __future__ import annotations

import numpy as np

from dfrt.errors import InputError

METHODS = ("dpe", "bolt", "aks", "uniform")

DPE_REDUNDANCY = (
    0.5  # lambda: weight of the max cosine with picked frames against min-max relevance in [0, 1]
)
DPE_COVERAGE = 0.5  # share of the picks that guarantee coverage: one per equal segment, count * 0.5 segments
BOLT_ALPHA = 2.5  # BOLT's sharpening power on min-max normalised scores (1: proportional, large: top-k)
AKS_THRESHOLD = 0.8  # AKS's t1: split a bin unless mean(top-m) - mean(bin) exceeds it (min-max scores)
AKS_DEPTH = 5  # AKS's maximum recursion depth ("all_depth")


def choose_frames(
    relevance: np.ndarray, embeddings: np.ndarray | None, count: int, method: str = "dpe"
) -> np.ndarray:
    """``count`` ascending unique frame indices by ``method`` (one of :data:`METHODS`).

    ``relevance``: (T,) finite scores, higher = more relevant (a cosine or any monotone map of it).
    ``embeddings``: (T, D) L2-normalised frame embeddings; only ``"dpe"`` needs them (redundancy).
    """
    if method not in METHODS:
        raise InputError(f"unknown frame selection {str(method)[:40]!r}: choose {', '.join(METHODS)}")
    scores = _relevance(relevance)
    total = scores.shape[0]
    count = _clamp(count, total)
    if method == "uniform":
        return uniform_frames(total, count)
    if method == "bolt":
        return bolt_frames(scores, count)
    if method == "aks":
        return aks_frames(scores, count)
    if embeddings is None:
        raise InputError("dpe frame selection needs the frames' embeddings")
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != total or not np.isfinite(vectors).all():
        raise InputError(f"expected finite embeddings ({total}, D), got {vectors.shape}")
    return dpe_frames(scores, vectors, count)


def uniform_frames(total: int, count: int) -> np.ndarray:
    """The centre frame of each of ``count`` equal segments of ``range(total)`` (``count`` clamped)."""
    if not isinstance(total, int | np.integer) or total < 1:
        raise InputError(f"expected at least one frame, got {total!r}")
    count = _clamp(count, int(total))
    return ((np.arange(count) + 0.5) * total / count).astype(np.int64)


def dpe_frames(
    relevance: np.ndarray,
    embeddings: np.ndarray,
    count: int,
    redundancy: float = DPE_REDUNDANCY,
    coverage: float = DPE_COVERAGE,
) -> np.ndarray:
    """Greedy relevance-minus-redundancy picks under a coverage constraint (dfrt's DPE-like default).

    Each step picks the frame maximising ``r_i - redundancy * max(0, max_j cos(e_i, e_j))`` over the frames
    ``j`` already picked, ``r`` being the min-max normalised relevance (so both terms live in [0, 1]). The
    timeline is cut into ``max(1, floor(coverage * count))`` equal segments and every segment must receive a
    pick: whenever the picks left equal the segments still empty, candidates are limited to those segments.
    So half of the budget (by default) guarantees that no stretch of the video goes unseen, while the other
    half follows the question, and near-duplicates of a picked frame lose ``redundancy`` against fresh ones.
    Near-exact ties (within ``1e-6``) go to the frame farthest in time from the picks, then the lower index.
    """
    total = relevance.shape[0]
    count = _clamp(count, total)
    r = _minmax(relevance)
    segments = max(1, int(coverage * count))
    segment_of = (np.arange(total) * segments) // total
    empty = np.ones(segments, dtype=bool)
    penalty = np.zeros(total, dtype=np.float64)
    free = np.ones(total, dtype=bool)
    distance = np.zeros(total, dtype=np.float64)  # to the nearest pick, in frames
    positions = np.arange(total)
    picks: list[int] = []
    for step in range(count):
        allowed = free.copy()
        if count - step <= int(empty.sum()):
            allowed &= empty[segment_of]
        gain = np.where(allowed, r - redundancy * penalty + 1e-6 * distance / total, -np.inf)
        best = int(np.argmax(gain))  # the first maximum: ties go to the lower index
        picks.append(best)
        free[best] = False
        empty[segment_of[best]] = False
        similarity = embeddings @ embeddings[best]
        penalty = np.maximum(penalty, np.clip(similarity, 0.0, 1.0))
        gap = np.abs(positions - best).astype(np.float64)
        distance = gap if step == 0 else np.minimum(distance, gap)
    return np.sort(np.asarray(picks, dtype=np.int64))


def bolt_frames(relevance: np.ndarray, count: int, alpha: float = BOLT_ALPHA) -> np.ndarray:
    """BOLT (Liu et al., CVPR 2025) inverse transform sampling.

    Scores are min-max normalised and sharpened, ``w_i = ((s_i - min s) / (max s - min s)) ** alpha``, taken
    as a distribution over frames; its CDF is inverted at the ``count`` evenly spaced quantiles
    ``(k + 0.5) / count``, so relevant stretches get dense picks and the rest sparse ones. Two quantiles
    landing on one frame: the later pick moves to the nearest unused frame (the earlier one on a tie).
    Constant scores give uniform frames.
    """
    total = relevance.shape[0]
    count = _clamp(count, total)
    weights = _minmax(relevance) ** alpha
    if not weights.sum() > 0:
        return uniform_frames(total, count)
    cdf = np.cumsum(weights) / weights.sum()
    quantiles = (np.arange(count) + 0.5) / count
    wanted = np.minimum(np.searchsorted(cdf, quantiles, side="left"), total - 1)
    return _resolve_duplicates(wanted, total)


def aks_frames(
    relevance: np.ndarray, count: int, threshold: float = AKS_THRESHOLD, depth: int = AKS_DEPTH
) -> np.ndarray:
    """AKS (Tang et al., CVPR 2025) adaptive keyframe sampling: judge and split.

    A bin (first the whole video, with the whole budget ``m``) is *judged* on min-max normalised scores: when
    the mean of its top-``m`` scores exceeds the bin's mean by more than ``threshold``, relevance dominates
    and the bin takes its top ``m`` frames; otherwise it is *split* into two halves of the timeline, each
    with half the budget (coverage), recursively up to ``depth`` levels, where a leaf takes its top frames.
    Deviations from the published code: budgets are split as integers (floor for the first half, the rest
    for the second, neither above its frame count) so exactly ``count`` frames come out, and ties in top-m go
    to the lower index.
    """
    total = relevance.shape[0]
    count = _clamp(count, total)
    r = _minmax(relevance)
    picks: list[int] = []
    stack = [(0, total, count, 0)]
    while stack:
        start, stop, budget, level = stack.pop()
        if budget <= 0:
            continue
        scores = r[start:stop]
        top = _top(scores, budget)
        size = stop - start
        relevant = scores[top].mean() - scores.mean() > threshold
        if relevant or level >= depth or budget == 1 or size < 2:
            picks.extend(int(start + i) for i in top)
            continue
        middle = start + size // 2
        first = budget // 2  # <= size // 2 and budget - first <= ceil(size / 2), as budget <= size
        stack.append((middle, stop, budget - first, level + 1))
        stack.append((start, middle, first, level + 1))
    chosen = np.unique(np.asarray(picks, dtype=np.int64))
    assert chosen.size == count, (chosen.size, count)
    return chosen


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores; ties to the lower index (a stable sort of the negated scores)."""
    return np.argsort(-scores, kind="stable")[:k]


def _resolve_duplicates(wanted: np.ndarray, total: int) -> np.ndarray:
    used = np.zeros(total, dtype=bool)
    for index in wanted:
        for offset in range(total):
            below, above = int(index) - offset, int(index) + offset
            if below >= 0 and not used[below]:
                used[below] = True
                break
            if above < total and not used[above]:
                used[above] = True
                break
    return np.flatnonzero(used).astype(np.int64)


def _relevance(relevance: np.ndarray) -> np.ndarray:
    scores = np.asarray(relevance, dtype=np.float64)
    if scores.ndim != 1 or scores.shape[0] < 1:
        raise InputError(f"expected relevance scores (T,) for at least one frame, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise InputError("relevance scores must be finite")
    return scores


def _minmax(scores: np.ndarray) -> np.ndarray:
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 1e-12 * max(1.0, abs(high)):
        return np.zeros_like(scores, dtype=np.float64)
    return (scores - low) / (high - low)


def _clamp(count: int, total: int) -> int:
    if isinstance(count, bool) or not isinstance(count, int | np.integer):
        raise InputError(f"frame count must be an integer, got {count!r}")
    return int(min(max(int(count), 1), total))
