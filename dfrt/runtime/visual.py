"""The visual path from a bundle: frames -> DynFocus visual embeddings in the LLM width.

Graphs run on a backend (onnxruntime here); prototypes, selection, cone assembly and the interleave run on
the host with the same functions the PyTorch reference uses. Question-independent work (vision, structure
tokens, scores, selection) is kept in :class:`VideoFeatures`, so many questions about one video only pay
for the Q-Former, the rods and the projection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dfrt.errors import InputError
from dfrt.runtime.backends import GraphRunner
from dfrt.runtime.budget import TokenPlan, kept_frames, plan_for_config
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.generate import VisualPrompt
from dfrt.runtime.loader import GraphSet, open_graphs
from dfrt.runtime.preprocess import preprocess_frames
from dfrt.runtime.selection import (
    EventPrototypes,
    KeyFrameSelection,
    interleave_order,
    kmeans_prototypes,
    prototype_means,
    select_key_frames,
    tokens_per_frame,
)
from dfrt.runtime.text_tokenizer import PromptTokenizer
from dfrt.runtime.video import SampledVideo, read_video


@dataclass(frozen=True)
class Video:
    """A decoded video and its question-independent features (of the bundle's family: DynFocus's are a
    :class:`VideoFeatures`); reuse it for every question about it."""

    sampled: SampledVideo
    features: Any
    timings: dict[str, float] = field(default_factory=dict)
    plan: TokenPlan | None = None  # the visual-token budget's plan (frames kept, key frames), if one was set


@dataclass(frozen=True)
class VideoFeatures:
    """Everything about one video that does not depend on the question; never changed by a question.

    With question-aware scoring (``scoring: question`` bundles) the scores and the selection depend on the
    question: here they are ``None``, and each :class:`VisualResult` carries its question's.
    """

    tokens: np.ndarray  # (T, 1+P*P, W)
    structure: np.ndarray  # (T, 22, W)
    prototypes: EventPrototypes
    prototype_features: np.ndarray  # (T', G*G, W)
    scores: np.ndarray | None  # (T',); None when the scores depend on the question
    selection: KeyFrameSelection | None  # None when the scores depend on the question
    timings: dict[str, float] = field(default_factory=dict)
    key_count: int | None = None  # key frames to select (a token budget's); None: the config's ratio

    @property
    def num_frames(self) -> int:
        return int(self.tokens.shape[0])


@dataclass(frozen=True)
class FrameState:
    """One frame's own features, as a live window keeps them (:meth:`VisualPipeline.live_frames`)."""

    tokens: np.ndarray  # (1+P*P, W)
    pooled: np.ndarray  # (G*G, W)
    structure: np.ndarray  # (22, W)

    @property
    def nbytes(self) -> int:
        return int(self.tokens.nbytes + self.pooled.nbytes + self.structure.nbytes)


@dataclass
class VisualResult:
    """One question's visual embeddings and the frame selection (and scores) they come from.

    ``layout`` says how the rows stand in the prompt (:class:`~dfrt.runtime.generate.VisualPrompt`): None is
    one block at ``<image>`` (DynFocus); SmolVLM interleaves each frame's timestamp and markers."""

    embeds: np.ndarray  # (N_vis, D_llm) float32, temporal order
    selection: KeyFrameSelection
    scores: np.ndarray | None
    prototypes: EventPrototypes
    tokens_per_frame: np.ndarray
    timings: dict[str, float]
    layout: tuple[tuple[str, int], ...] | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.embeds.shape[0])

    @property
    def prompt(self) -> VisualPrompt:
        """What the LLM receives at ``<image>``."""
        if self.layout is None:
            return VisualPrompt.block(self.embeds)
        return VisualPrompt(self.embeds, self.layout)


class VisualPipeline:
    """Load a bundle's graphs once; encode videos and questions many times.

    No lock of its own: onnxruntime graphs may run from several threads, TensorRT engines from one at a
    time. Use it through :class:`~dfrt.runtime.pipeline.Pipeline` (which serialises its calls), or hold
    ``Pipeline.graph_lock`` while calling ``pipe.visual`` from another thread."""

    def __init__(self, bundle: Bundle, graphs: GraphSet | dict[str, GraphRunner]) -> None:
        if not isinstance(graphs, GraphSet):
            graphs = GraphSet(graphs, "onnxruntime", "fp32", dict.fromkeys(graphs, "custom"))
        self.bundle = bundle
        self.config = bundle.manifest.config
        self.graphs = graphs
        self.runners = graphs.runners
        self.tokenizer = bundle.question_tokenizer
        self.question_aware = bundle.manifest.scoring == "question"
        self.prompt_tokenizer: PromptTokenizer | None = None  # DynFocus prompts go through llama.cpp's

    @property
    def frame_size(self) -> int:
        """The shortest edge frames are decoded at (nothing larger is ever needed)."""
        return int(self.config.vision.image_size)

    def check_budget(self, budget: int | None) -> None:
        """Refuse a visual-token budget below one frame's tokens before anything is decoded."""
        if budget is not None:
            plan_for_config(self.config, 1, budget)

    # -- live windows: per-frame state as frames arrive, features over a window per question --------------
    def live_frames(self, frames: np.ndarray) -> list[FrameState]:
        """Decoded frames (n, H, W, 3) uint8 -> each frame's own features (no other frame, no question)."""
        pixels = preprocess_frames(frames, self.bundle.manifest.preprocess)
        tokens, pooled, structure = self.frame_features(pixels)
        return [
            FrameState(tokens[i].copy(), pooled[i].copy(), structure[i].copy()) for i in range(len(frames))
        ]

    def live_features(
        self, states: list[FrameState], times: np.ndarray, budget: int | None, key_count: int | None
    ) -> tuple[VideoFeatures, np.ndarray]:
        """The features over a window's frames (prototypes and key frames computed now), and the indices of
        the frames kept: all, or under ``budget`` as many as :mod:`dfrt.runtime.budget` allows, evenly."""
        if not states:
            raise InputError("the window holds no frames yet: wait for the stream")
        kept = np.arange(len(states), dtype=np.int64)
        if budget is not None:
            plan = plan_for_config(self.config, len(states), budget)
            kept = kept_frames(len(states), plan)
            key_count = plan.key_frames if key_count is None else min(key_count, plan.key_frames)
        chosen = [states[i] for i in kept]
        features = self.features_from_frames(
            np.stack([s.tokens for s in chosen]),
            np.stack([s.pooled for s in chosen]),
            np.stack([s.structure for s in chosen]),
            key_count,
        )
        return features, kept

    def encode_video(self, sampled: SampledVideo) -> VideoFeatures:
        """The question-independent features of decoded frames (what ``dfrt build`` calibrates on)."""
        return self.encode_frames(sampled.frames)

    def load_video(self, path: str | Path, fps: float, max_frames: int, budget: int | None = None) -> Video:
        """Decode and sample a video, then encode what does not depend on the question; ``budget`` caps
        every answer's visual tokens (:mod:`dfrt.runtime.budget`)."""
        self.check_budget(budget)
        start = time.perf_counter()
        sampled = read_video(path, fps=fps, max_frames=max_frames, shortest_edge=self.frame_size)
        decode = time.perf_counter() - start
        if budget is None:
            return Video(sampled, self.encode_frames(sampled.frames), {"decode": decode})
        plan = plan_for_config(self.config, sampled.num_frames, budget)
        sampled = sampled.subset(kept_frames(sampled.num_frames, plan))
        features = self.encode_frames(sampled.frames, plan.key_frames)
        return Video(sampled, features, {"decode": decode}, plan)

    @classmethod
    def open(
        cls,
        path: str | Path | Bundle,
        backend: str = "onnxruntime",
        providers: list[str] | None = None,
        verify: bool = True,
        precision: str | None = None,
        progress: Callable[[str], None] = lambda message: None,
    ) -> VisualPipeline:
        """The bundle's graphs on ``backend`` at ``precision`` (:func:`dfrt.runtime.loader.open_graphs`)."""
        bundle = path if isinstance(path, Bundle) else Bundle.open(path, verify=verify)
        return cls(bundle, open_graphs(bundle, backend, precision, providers, progress))

    def close(self) -> None:
        """Free every graph's resources (TensorRT: device buffers, engines, streams)."""
        self.graphs.close()

    def __enter__(self) -> VisualPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- question-independent ----------------------------------------------------------------------------
    def encode_frames(self, frames: np.ndarray, key_count: int | None = None) -> VideoFeatures:
        """Decoded RGB frames (T, H, W, 3) uint8 -> :class:`VideoFeatures`; ``key_count`` key frames will be
        selected (default: the config's ratio)."""
        timings: dict[str, float] = {}
        pixels = _timed(
            timings, "preprocess", lambda: preprocess_frames(frames, self.bundle.manifest.preprocess)
        )
        features = self.encode_pixels(pixels, key_count)
        return replace(features, timings={**timings, **features.timings})

    def encode_pixels(self, pixels: np.ndarray, key_count: int | None = None) -> VideoFeatures:
        """CLIP-normalised pixels (T, 3, S, S) float32 -> :class:`VideoFeatures`."""
        timings: dict[str, float] = {}
        tokens, pooled, structure = self.frame_features(pixels, timings)
        return self.features_from_frames(tokens, pooled, structure, key_count, timings)

    def frame_features(
        self, pixels: np.ndarray, timings: dict[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each frame's own features, independent of the other frames and of any question: CLIP-normalised
        pixels (T, 3, S, S) -> vision tokens (T, 1+P*P, W), pooled grid (T, G*G, W), structure (T, 22, W).
        Live video computes these frame by frame as frames arrive (:mod:`dfrt.live`)."""
        if pixels.ndim != 4 or pixels.shape[0] < 1:
            raise InputError(f"expected at least one frame of pixels (T, 3, S, S), got shape {pixels.shape}")
        timings = {} if timings is None else timings
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        vision = _timed(timings, "vision", lambda: self._chunked("vision", {"pixels": pixels}))
        tokens = vision["tokens"]
        structure = _timed(timings, "encoding", lambda: self._chunked("encoding", {"tokens": tokens}))[
            "structure"
        ]
        return tokens, vision["pooled"], structure

    def features_from_frames(
        self,
        tokens: np.ndarray,
        pooled: np.ndarray,
        structure: np.ndarray,
        key_count: int | None = None,
        timings: dict[str, float] | None = None,
    ) -> VideoFeatures:
        """:class:`VideoFeatures` from per-frame features (:meth:`frame_features`, possibly computed in
        pieces): event prototypes, the scoring graph's scores and the key frames over all ``T`` frames."""
        if not (tokens.shape[0] == pooled.shape[0] == structure.shape[0] >= 1):
            raise InputError(
                f"per-frame features disagree on the frame count: tokens {tokens.shape}, pooled "
                f"{pooled.shape}, structure {structure.shape}"
            )
        timings = {} if timings is None else timings
        dpe = self.config.dpe

        def select() -> tuple[EventPrototypes, np.ndarray]:
            prototypes = kmeans_prototypes(pooled, dpe.max_prototypes, dpe.kmeans_iters)
            if prototypes.num_prototypes == pooled.shape[0]:
                return prototypes, pooled
            return prototypes, prototype_means(pooled, prototypes)

        prototypes, features = _timed(timings, "prototypes", select)
        scores, selection = None, None
        if not self.question_aware:  # question-aware bundles score per question, in embed_ids
            scores = _timed(
                timings, "scoring", lambda: self.runners["scoring"].run({"prototypes": features})
            )["scores"]
            selection = select_key_frames(scores, prototypes, tokens.shape[0], dpe.key_ratio, key_count)
        return VideoFeatures(tokens, structure, prototypes, features, scores, selection, timings, key_count)

    # -- question-dependent ------------------------------------------------------------------------------
    def embed(
        self,
        video: VideoFeatures,
        question: str,
        frames: KeyFrameSelection | None = None,
        rods: bool = True,
    ) -> VisualResult:
        """Visual embeddings for one question about an encoded video.

        ``frames`` replaces DPE's key frames (uniform or random baselines, :func:`fixed_selection`);
        ``rods=False`` leaves the other frames out: only the key frames' cones reach the LLM.
        """
        input_ids, attention_mask = self.tokenizer(question)
        return self.embed_ids(video, input_ids, attention_mask, frames, rods)

    def embed_ids(
        self,
        video: VideoFeatures,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        frames: KeyFrameSelection | None = None,
        rods: bool = True,
    ) -> VisualResult:
        timings = dict(video.timings)
        q_all, scores, chosen = None, video.scores, frames or video.selection
        if chosen is None:  # question-aware scoring: this question's scores choose the key frames
            q_all, scores, chosen = self._score_question(video, input_ids, attention_mask, timings)
        prototypes = video.prototypes
        cones = np.concatenate(
            [video.prototype_features[chosen.selected], video.structure[chosen.key_frames]], axis=1
        )
        # without rods, one frame's rod is still computed (graphs want at least one) and then dropped
        rod_frames = chosen.rod_sources if rods else chosen.key_frames[:1]
        if q_all is not None:
            q_emb = q_all[rod_frames]
        else:
            q_emb = self._queries(video, rod_frames, input_ids, attention_mask, timings)
        fused = _timed(
            timings,
            "fusion",
            lambda: self.runners["fusion"].run(
                {"cones": cones, "rod_structure": video.structure[rod_frames], "q_emb": q_emb}
            ),
        )
        width = self.config.llm_width
        cone_rows = fused["cone_embeds"].reshape(-1, width)
        per_frame = tokens_per_frame(chosen, self.config.cone_tokens)
        if not rods:
            per_frame = np.zeros_like(per_frame)
            per_frame[chosen.key_frames] = self.config.cone_tokens
            return VisualResult(cone_rows, chosen, scores, prototypes, per_frame, timings)
        rows = np.concatenate([cone_rows, fused["rod_embeds"].reshape(-1, width)])
        embeds = rows[interleave_order(chosen, self.config.cone_tokens)]
        return VisualResult(embeds, chosen, scores, prototypes, per_frame, timings)

    def __call__(self, frames: np.ndarray, question: str) -> VisualResult:
        return self.embed(self.encode_frames(frames), question)

    # -- helpers -------------------------------------------------------------------------------------------
    def _queries(
        self,
        video: VideoFeatures,
        frames: np.ndarray,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        timings: dict[str, float],
    ) -> np.ndarray:
        """The question graph's q_emb for ``frames`` of the video."""
        return _timed(
            timings,
            "question",
            lambda: self._chunked(
                "question",
                {"tokens": video.tokens[frames]},
                {"input_ids": input_ids, "attention_mask": attention_mask},
            ),
        )["q_emb"]

    def _score_question(
        self,
        video: VideoFeatures,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        timings: dict[str, float],
    ) -> tuple[np.ndarray, np.ndarray, KeyFrameSelection]:
        """Question-aware DPE: every frame's q_emb (the rods reuse it), the prototypes' scores from their
        seed frames' q_emb, and the key frames those scores choose. ``video`` is left as it is."""
        prototypes = video.prototypes
        q_all = self._queries(video, np.arange(video.num_frames), input_ids, attention_mask, timings)
        feed = {"prototypes": video.prototype_features, "q_emb": q_all[prototypes.seeds]}
        scores = _timed(timings, "scoring", lambda: self.runners["scoring"].run(feed))["scores"]
        ratio = self.config.dpe.key_ratio
        selection = select_key_frames(scores, prototypes, video.num_frames, ratio, video.key_count)
        return q_all, scores, selection

    def _chunked(
        self, graph: str, batched: dict[str, np.ndarray], shared: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Run a per-frame graph over its first axis in chunks no larger than the contract's maximum."""
        runner = self.runners[graph]
        axis = next(d for d in runner.spec.inputs[0].shape if isinstance(d, str))
        chunk = runner.spec.axis_ranges[axis][2]
        total = next(iter(batched.values())).shape[0]
        parts: dict[str, list[np.ndarray]] = {name: [] for name in runner.spec.output_names}
        for start in range(0, total, chunk):
            feed = {name: np.ascontiguousarray(a[start : start + chunk]) for name, a in batched.items()}
            for name, out in runner.run({**feed, **(shared or {})}).items():
                parts[name].append(out)
        return {name: np.concatenate(p) for name, p in parts.items()}


def _timed(timings: dict[str, float], key: str, work: Callable[[], object]):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = work()
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start
    return result
