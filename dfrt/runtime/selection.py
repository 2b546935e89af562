"""Host-side DPE logic in numpy: event prototypes, key-frame selection and the token interleave order.

The PyTorch reference model calls these same functions, so the runtime selects exactly the frames the
reference selects whenever it is given the same scores. Everything is deterministic: evenly spaced k-means
seeds, a fixed iteration count, and ties always broken towards the lower index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dfrt.config import ROD_TOKENS, key_frame_count
from dfrt.errors import InputError


@dataclass(frozen=True)
class EventPrototypes:
    """Which frames form each event prototype.

    ``seeds[c]`` is the frame that represents prototype ``c`` (its structure tokens, its place in time);
    ``assignment[t]`` is the prototype frame ``t`` belongs to. With T <= max prototypes both are the identity.
    """

    seeds: np.ndarray  # int64 [T']
    assignment: np.ndarray  # int64 [T]

    @property
    def num_prototypes(self) -> int:
        return int(self.seeds.shape[0])


@dataclass(frozen=True)
class KeyFrameSelection:
    """The result of DPE: which prototypes are key, which original frames get cones and which get rods."""

    num_frames: int
    selected: np.ndarray  # int64 [k], indices into the prototypes, in the time order of their key frames
    key_frames: np.ndarray  # int64 [k], original frame indices (the selected prototypes' seeds), ascending
    rod_frames: np.ndarray  # int64 [R], original frame indices not in key_frames, ascending

    @property
    def all_key(self) -> bool:
        """The single-image case: every frame is key, and the frame gets a rod as well as a cone."""
        return self.rod_frames.size == 0

    @property
    def rod_sources(self) -> np.ndarray:
        """The frames whose rods are encoded: the rod frames, or in the all-key case the key frames."""
        return self.key_frames if self.all_key else self.rod_frames


def evenly_spaced(num_items: int, count: int) -> np.ndarray:
    """``count`` distinct indices spread evenly over ``range(num_items)``, starting at 0."""
    return (np.arange(count, dtype=np.int64) * num_items) // count


def kmeans_prototypes(frames: np.ndarray, max_prototypes: int, iterations: int) -> EventPrototypes:
    """Group ``frames`` [T, F] into at most ``max_prototypes`` events with deterministic k-means.

    Seeds are evenly spaced frames; Euclidean distance; exactly ``iterations`` assign/update rounds; an empty
    cluster falls back to its seed frame; distance ties go to the lower cluster index. The reference seeds
    at random and re-seeds empty clusters at random: our deliberate, documented deviation.
    """
    num_frames = int(frames.shape[0])
    if num_frames <= max_prototypes:
        identity = np.arange(num_frames, dtype=np.int64)
        return EventPrototypes(seeds=identity, assignment=identity)
    x = frames.reshape(num_frames, -1).astype(np.float64)
    seeds = evenly_spaced(num_frames, max_prototypes)
    centroids = x[seeds]
    sq_norms = np.einsum("tf,tf->t", x, x)
    assignment = np.zeros(num_frames, dtype=np.int64)
    for _ in range(iterations):
        dist = sq_norms[:, None] - 2.0 * x @ centroids.T + np.einsum("kf,kf->k", centroids, centroids)[None]
        assignment = np.argmin(dist, axis=1).astype(np.int64)  # argmin takes the first of equal minima
        centroids = prototype_means(x, EventPrototypes(seeds=seeds, assignment=assignment))
    return EventPrototypes(seeds=seeds, assignment=assignment)


def prototype_means(frames: np.ndarray, prototypes: EventPrototypes) -> np.ndarray:
    """Centroid of each prototype's frames [T', ...]; an empty prototype takes its seed frame."""
    num = prototypes.num_prototypes
    flat = frames.reshape(frames.shape[0], -1)
    sums = np.zeros((num, flat.shape[1]), dtype=np.float64)
    np.add.at(sums, prototypes.assignment, flat)
    counts = np.bincount(prototypes.assignment, minlength=num)
    means = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], flat[prototypes.seeds])
    return means.astype(frames.dtype).reshape((num, *frames.shape[1:]))


def top_k_ascending(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores in ascending index order; equal scores favour the lower index."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(scores)):
        raise InputError("frame scores contain NaN or infinity")
    order = np.argsort(-scores, kind="stable")
    return np.sort(order[:k]).astype(np.int64)


def select_key_frames(
    scores: np.ndarray,
    prototypes: EventPrototypes,
    num_frames: int,
    key_ratio: float,
    count: int | None = None,
) -> KeyFrameSelection:
    """Hard top-k over the prototype scores, mapped back to original frames: k = ``count`` (a visual-token
    budget's, :mod:`dfrt.runtime.budget`) or ceil(key_ratio * T'), within [1, T']."""
    k = key_frame_count(prototypes.num_prototypes, key_ratio)
    if count is not None:
        k = min(max(1, int(count)), prototypes.num_prototypes)
    selected = top_k_ascending(scores, k)
    selected = selected[np.argsort(prototypes.seeds[selected], kind="stable")]  # cones follow time order
    key_frames = prototypes.seeds[selected]
    rod_frames = np.setdiff1d(np.arange(num_frames, dtype=np.int64), key_frames, assume_unique=True)
    return KeyFrameSelection(num_frames, selected, key_frames, rod_frames)


def fixed_selection(key_frames: np.ndarray, prototypes: EventPrototypes) -> KeyFrameSelection:
    """A selection whose key frames are given (uniform or random baselines) instead of chosen by DPE."""
    num_frames = int(prototypes.assignment.shape[0])
    key_frames = np.unique(np.asarray(key_frames, dtype=np.int64))
    if key_frames.size == 0 or key_frames[0] < 0 or key_frames[-1] >= num_frames:
        raise InputError(f"key frames {key_frames.tolist()} are not frames of a {num_frames}-frame video")
    rod_frames = np.setdiff1d(np.arange(num_frames, dtype=np.int64), key_frames, assume_unique=True)
    return KeyFrameSelection(num_frames, prototypes.assignment[key_frames], key_frames, rod_frames)


def uniform_frames(num_frames: int, count: int) -> np.ndarray:
    """The centres of ``count`` equal segments of the video (uniform sampling), ascending."""
    count = max(1, min(count, num_frames))
    return ((2 * np.arange(count, dtype=np.int64) + 1) * num_frames) // (2 * count)


def random_frames(num_frames: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` distinct frames drawn uniformly at random, ascending."""
    count = max(1, min(count, num_frames))
    return np.sort(rng.choice(num_frames, size=count, replace=False)).astype(np.int64)


def frame_scores(scores: np.ndarray, prototypes: EventPrototypes) -> np.ndarray:
    """Each original frame's score: its own prototype's if it is a seed, else the one it was grouped into."""
    per_frame = np.asarray(scores, dtype=np.float64)[prototypes.assignment]
    per_frame[prototypes.seeds] = scores
    return per_frame


def tokens_per_frame(selection: KeyFrameSelection, cone_tokens: int) -> np.ndarray:
    """How many visual tokens each original frame contributes, in temporal order."""
    counts = np.full(selection.num_frames, ROD_TOKENS, dtype=np.int64)
    counts[selection.key_frames] = cone_tokens + (ROD_TOKENS if selection.all_key else 0)
    return counts


def interleave_order(selection: KeyFrameSelection, cone_tokens: int) -> np.ndarray:
    """Gather index that puts ``concat(cones.reshape(-1, D), rods.reshape(-1, D))`` into temporal order.

    Cones are stored key frame by key frame (``cone_tokens`` rows each), rods rod frame by rod frame
    (``ROD_TOKENS`` rows each). In the all-key case the rods belong to the key frames and come first.
    """
    k = selection.key_frames.size
    cone_rows = np.arange(k * cone_tokens, dtype=np.int64).reshape(k, cone_tokens)
    rod_start = k * cone_tokens
    if selection.all_key:
        rod_rows = rod_start + np.arange(k * ROD_TOKENS, dtype=np.int64).reshape(k, ROD_TOKENS)
        return np.concatenate([rod_rows, cone_rows], axis=1).reshape(-1)
    rod_rows = rod_start + np.arange(selection.rod_frames.size * ROD_TOKENS, dtype=np.int64)
    rod_rows = rod_rows.reshape(-1, ROD_TOKENS)
    pieces: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * selection.num_frames
    for i, frame in enumerate(selection.key_frames):
        pieces[frame] = cone_rows[i]
    for i, frame in enumerate(selection.rod_frames):
        pieces[frame] = rod_rows[i]
    return np.concatenate(pieces)
