"""The accuracy gate for non-FP32 graphs: visual-embedding cosine and key-frame agreement against FP32.

Thresholds per precision: INT8 cosine >= 0.99 and 90% of the key frames kept; FP16 cosine >= 0.999 and the
key frames identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dfrt.calibration.thresholds import MIN_COSINE, MIN_KEY_AGREEMENT, THRESHOLDS  # noqa: F401 (re-exported)
from dfrt.errors import BuildError
from dfrt.metrics import cosine
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VisualPipeline


@dataclass(frozen=True)
class GateReport:
    precision: str
    samples: int  # (video, question) pairs compared
    cosine_min: float
    cosine_mean: float
    key_agreement: float  # mean |key frames in both| / |key frames|

    def line(self) -> str:
        return (
            f"{self.precision} vs fp32 on {self.samples} video/question pairs: embedding cosine min "
            f"{self.cosine_min:.5f} (mean {self.cosine_mean:.5f}), key frames agree {self.key_agreement:.1%}"
        )

    def passes(self, min_cosine: float, min_key_agreement: float) -> bool:
        return self.cosine_min >= min_cosine and self.key_agreement >= min_key_agreement

    def require(self, min_cosine: float, min_key_agreement: float) -> None:
        if not self.passes(min_cosine, min_key_agreement):
            raise BuildError(
                f"accuracy gate failed: {self.line()}; needed cosine >= {min_cosine} and key-frame "
                f"agreement >= {min_key_agreement:.0%}"
            )


def compare(
    reference: VisualPipeline,
    candidate: VisualPipeline,
    precision: str,
    videos: Sequence[Path],
    questions: Sequence[str],
    fps: float = 1.0,
    max_frames: int = 32,
) -> GateReport:
    """Run both pipelines on the same decoded frames and questions; compare embeddings and key frames."""
    cosines, agreements = [], []
    for path in videos:
        frames = read_video(path, fps=fps, max_frames=max_frames, shortest_edge=reference.frame_size)
        ref_video = reference.encode_video(frames)
        cand_video = candidate.encode_video(frames)
        for question in questions:
            ref, cand = reference.embed(ref_video, question), candidate.embed(cand_video, question)
            # each result's own selection: with question-aware scoring it depends on the question
            shared = np.intersect1d(ref.selection.key_frames, cand.selection.key_frames).size
            agreements.append(shared / ref.selection.key_frames.size)
            # embeddings are comparable row by row only when the same frames were selected
            if np.array_equal(ref.tokens_per_frame, cand.tokens_per_frame):
                cosines.append(cosine(ref.embeds, cand.embeds))
            else:
                shown = (ref.tokens_per_frame > 0) & (cand.tokens_per_frame > 0)
                cosines.append(cosine(_per_frame_means(ref)[shown], _per_frame_means(cand)[shown]))
    return GateReport(
        precision, len(agreements), min(cosines), float(np.mean(cosines)), float(np.mean(agreements))
    )


def _per_frame_means(result: object) -> np.ndarray:
    """One mean embedding per frame (zeros for frames not shown), so results with different key frames can
    still be compared frame by frame."""
    counts = np.asarray(result.tokens_per_frame)  # type: ignore[attr-defined]
    embeds = result.embeds  # type: ignore[attr-defined]
    means = np.zeros((counts.size, embeds.shape[1]), dtype=np.float64)
    ends = np.cumsum(counts)
    for i, (count, end) in enumerate(zip(counts, ends, strict=True)):
        if count:
            means[i] = embeds[end - count : end].mean(axis=0)
    return means
