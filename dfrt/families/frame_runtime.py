"""The run side shared by frame VLMs (SmolVLM2, InternVL3.5: a video is frames of image tokens in the
prompt), torch-free: which frames the VLM sees, at how many tokens.

``load_video`` decodes and samples the video and, when the bundle has a dual-encoder scorer, embeds every
sampled frame at the scorer's low resolution (question-independent). Each question then:

1. plans the budget (:func:`plan_frames`): ``k`` key frames at the model's full tokens, ``p`` pooled frames;
2. picks the key frames: the scorer's relevance to the question through a selection method
   (:mod:`dfrt.scorers.selection`: ``dpe`` by default, ``bolt``, ``aks``, ``uniform``), or evenly spaced
   without a scorer; the pooled frames spread evenly over the frames left, for temporal coverage;
3. runs the expensive visual graph (vision tower + connector) on those ``k + p`` frames only, each frame once
   per video (later questions reuse its rows), and average-pools the pooled frames' rows to
   ``pooled_grid`` x ``pooled_grid``;
4. lays them out in time order with the family's own per-frame markers (:meth:`FrameVLMVisual.layout`).

A family's config provides ``name``, ``vision.image_size``, ``token_grid``, ``tokens_per_frame``,
``pooled_grid``, ``pooled_tokens``, ``llm_width``, ``default_visual_tokens`` and ``key_share``
(:class:`FrameConfig`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from dfrt.errors import ConfigError, InputError
from dfrt.runtime.budget import TokenPlan
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.loader import GraphSet
from dfrt.runtime.preprocess import preprocess_frames
from dfrt.runtime.selection import EventPrototypes, KeyFrameSelection, uniform_frames
from dfrt.runtime.video import SampledVideo, read_video
from dfrt.runtime.visual import Video, VisualResult

SELECTIONS = ("dpe", "bolt", "aks", "uniform")


class FrameConfig(Protocol):
    """What the shared run side reads of a frame VLM family's config."""

    name: str
    pooled_grid: int
    llm_width: int
    default_visual_tokens: int
    key_share: float

    @property
    def vision(self) -> Any: ...

    @property
    def token_grid(self) -> int: ...

    @property
    def tokens_per_frame(self) -> int: ...

    @property
    def pooled_tokens(self) -> int: ...


@dataclass
class FrameFeatures:
    """One video's question-independent state: its frames, the scorer's frame embeddings, and the visual
    graph's rows of each frame encoded so far (filled as questions need them; the pipeline's lock
    serialises the filling)."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    timestamps: np.ndarray  # (T,) seconds
    duration: float
    plan: TokenPlan
    scorer_embeds: np.ndarray | None  # (T, D) normalised, or None without a scorer
    # frame -> its (tokens_per_frame, width) rows; a live window's frames keep theirs (:class:`LiveFrame`)
    encoded: MutableMapping[int, np.ndarray] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class LiveFrame:
    """One frame of a live window: the frame (S x S), its scorer embedding, and its rows once a question
    showed it (so later questions over the window reuse them)."""

    frame: np.ndarray  # (S, S, 3) uint8
    scorer_embed: np.ndarray | None  # (D,)
    rows: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        arrays = (self.frame, self.scorer_embed, self.rows)
        return sum(int(a.nbytes) for a in arrays if a is not None)


class WindowRows(MutableMapping[int, np.ndarray]):
    """``FrameFeatures.encoded`` over a window's :class:`LiveFrame` s (index -> that frame's rows)."""

    def __init__(self, frames: list[LiveFrame]) -> None:
        self._frames = frames

    def __getitem__(self, index: int) -> np.ndarray:
        rows = self._frames[index].rows
        if rows is None:
            raise KeyError(index)
        return rows

    def __setitem__(self, index: int, rows: np.ndarray) -> None:
        self._frames[index].rows = rows

    def __delitem__(self, index: int) -> None:
        self._frames[index].rows = None

    def __iter__(self) -> Iterator[int]:
        return (i for i, f in enumerate(self._frames) if f.rows is not None)

    def __len__(self) -> int:
        return sum(f.rows is not None for f in self._frames)


def plan_frames(frames: int, budget: int, config: FrameConfig) -> TokenPlan:
    """Key and pooled frames of ``frames`` sampled ones within ``budget`` visual tokens.

    Every frame at full tokens when they all fit; else ``key_share`` of the budget buys key frames (at least
    one), and what is left buys pooled frames, never more than the frames there are; when every frame is
    shown and tokens are left, pooled frames become key frames while they fit. A budget below one key frame
    is one :class:`ConfigError`.
    """
    full, pooled = config.tokens_per_frame, config.pooled_tokens
    if frames < 1:
        raise ConfigError(f"a video needs at least one frame, got {frames}")
    if budget < full:
        raise ConfigError(
            f"a visual-token budget of {budget} is below the {full} tokens of one {config.name} frame"
        )
    if frames * full <= budget:
        why = (
            "" if frames * full == budget else f"all {frames} frames at full tokens need only {frames * full}"
        )
        return TokenPlan(frames, frames, frames * full, budget, why)
    keys = max(1, min(frames, int(budget * config.key_share) // full))
    rest = min(frames - keys, (budget - keys * full) // pooled)
    # every frame shown and tokens left over: pooled frames become key frames while they fit
    upgrades = rest if keys + rest == frames else 0
    upgrades = min(
        upgrades, (budget - keys * full - rest * pooled) // (full - pooled) if full > pooled else 0
    )
    keys, rest = keys + upgrades, rest - upgrades
    used = keys * full + rest * pooled
    left = budget - used
    why = ""
    if left and keys + rest < frames:
        why = f"one more pooled frame would cost {pooled} tokens, {left} are left"
    elif left:
        why = (
            f"every frame is shown and a key frame costs {full - pooled} more than a pooled one, "
            f"{left} are left"
        )
    return TokenPlan(keys + rest, keys, used, budget, why)


def adaptive_pool(rows: np.ndarray, grid: int, out: int) -> np.ndarray:
    """Average-pool a frame's (grid*grid, D) rows over the token grid to (out*out, D), with the bins of
    PyTorch's ``adaptive_avg_pool2d`` (start floor(i*n/out), end ceil((i+1)*n/out))."""
    cells = rows.reshape(grid, grid, -1)
    edges = [((i * grid) // out, -((-(i + 1) * grid) // out)) for i in range(out)]
    pooled = [cells[r0:r1, c0:c1].mean(axis=(0, 1)) for r0, r1 in edges for c0, c1 in edges]
    return np.stack(pooled).astype(np.float32)


class FrameVLMVisual:
    """A frame VLM bundle's visual side; used through :class:`~dfrt.runtime.pipeline.Pipeline` (one lock).

    A family subclasses it with its prompt's special tokens (:attr:`MARKERS`, checked in the bundle's
    tokenizer when opened) and its per-frame :meth:`layout`.
    """

    MARKERS: tuple[str, ...] = ()

    def __init__(
        self, bundle: Bundle, graphs: GraphSet | dict[str, Any], selection: str | None = None
    ) -> None:
        if not isinstance(graphs, GraphSet):
            graphs = GraphSet(graphs, "onnxruntime", "fp32", dict.fromkeys(graphs, "custom"))
        manifest = bundle.manifest
        self.bundle = bundle
        self.config: FrameConfig = manifest.config
        self.graphs = graphs
        self.runners = graphs.runners
        self.prompt_tokenizer = bundle.prompt_tokenizer
        self.scorer = open_scorer(bundle, graphs) if manifest.scorer is not None else None
        default = "dpe" if self.scorer is not None else "uniform"
        self.selection = default if selection is None else selection
        if self.selection not in SELECTIONS:
            raise ConfigError(f"--selection {self.selection!r}: choose one of {', '.join(SELECTIONS)}")
        if self.scorer is None and self.selection != "uniform":
            raise ConfigError(
                f"--selection {self.selection}: {bundle.root} has no frame scorer "
                "(export it with --scorer HF_DIR); without one, key frames are uniform"
            )
        for text in self.MARKERS:
            self.prompt_tokenizer.token_id(text)  # a tokenizer without the model's markers is refused now

    def close(self) -> None:
        self.graphs.close()

    # -- question-independent ----------------------------------------------------------------------------
    @property
    def frame_size(self) -> int:
        return self.config.vision.image_size

    def check_budget(self, budget: int | None) -> None:
        if budget is not None:
            plan_frames(1, budget, self.config)

    def load_video(self, path: str | Path, fps: float, max_frames: int, budget: int | None = None) -> Video:
        self.check_budget(budget)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        sampled = read_video(path, fps=fps, max_frames=max_frames, shortest_edge=self.frame_size)
        timings["decode"] = time.perf_counter() - start
        return Video(sampled, self.features(sampled, budget), timings, self._plan(sampled.num_frames, budget))

    def encode_video(self, sampled: SampledVideo) -> FrameFeatures:
        """The question-independent state of decoded frames at the default budget (``dfrt build``)."""
        return self.features(sampled)

    def features(self, sampled: SampledVideo, budget: int | None = None) -> FrameFeatures:
        """The question-independent state of decoded frames (the scorer's embeddings of every frame)."""
        timings: dict[str, float] = {}
        embeds = None
        if self.scorer is not None:
            start = time.perf_counter()
            embeds = self.scorer.image_embeddings(sampled.frames)
            timings["scorer_image"] = time.perf_counter() - start
        return FrameFeatures(
            sampled.frames,
            sampled.timestamps,
            duration(sampled),
            self._plan(sampled.num_frames, budget),
            embeds,
            timings=timings,
        )

    # -- live windows ---------------------------------------------------------------------------------------
    def live_frames(self, frames: np.ndarray) -> list[LiveFrame]:
        """Decoded frames (n, H, W, 3) uint8 -> what a live window keeps of each: the frame squashed to
        S x S (as the visual graph will see it) and the scorer's embedding; the rows come when shown."""
        size = self.frame_size
        squares = [
            cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) if f.shape[:2] != (size, size) else f
            for f in frames
        ]
        # the scorer sees the decoded frames, as on the file path (its own preprocessing resizes them)
        embeds = self.scorer.image_embeddings(frames) if self.scorer is not None else None
        return [
            LiveFrame(np.ascontiguousarray(square), None if embeds is None else embeds[i].copy())
            for i, square in enumerate(squares)
        ]

    def live_features(
        self, states: list[LiveFrame], times: np.ndarray, budget: int | None, key_count: int | None
    ) -> tuple[FrameFeatures, np.ndarray]:
        """The features over a window's frames (each question then picks its key and pooled frames among
        all of them); every frame is kept."""
        if not states:
            raise InputError("the window holds no frames yet: wait for the stream")
        plan = self._plan(len(states), budget)
        if key_count is not None and key_count < plan.key_frames:
            keys = key_count
            pooled = plan.frames - plan.key_frames
            tokens = keys * self.config.tokens_per_frame + pooled * self.config.pooled_tokens
            plan = replace(plan, frames=keys + pooled, key_frames=keys, tokens=tokens)
        embeds = [s.scorer_embed for s in states]
        features = FrameFeatures(
            np.stack([s.frame for s in states]),
            np.asarray(times, dtype=np.float64),
            float(times[-1] - times[0]) if len(times) else 0.0,
            plan,
            None if any(e is None for e in embeds) else np.stack(embeds),  # type: ignore[arg-type]
            WindowRows(list(states)),
        )
        return features, np.arange(len(states), dtype=np.int64)

    def layout(
        self, timestamps: list[float], rows: list[int], duration: float
    ) -> tuple[tuple[str, int], ...]:
        """``(template text, rows)`` pairs for the frames shown (at ``timestamps``, with ``rows`` each), as
        the family's processor writes a video: its subclass's."""
        raise NotImplementedError

    def _plan(self, frames: int, budget: int | None) -> TokenPlan:
        return plan_frames(
            frames, self.config.default_visual_tokens if budget is None else budget, self.config
        )

    # -- per question ------------------------------------------------------------------------------------
    def embed(
        self,
        video: FrameFeatures,
        question: str,
        frames: KeyFrameSelection | None = None,
        rods: bool = True,
    ) -> VisualResult:
        """The visual prompt for ``question``: ``frames`` replaces the chosen key frames (its rod frames are
        then the pooled ones); ``rods=False`` shows the key frames alone."""
        if not isinstance(video, FrameFeatures):
            raise InputError(f"expected a frame VLM video's features, got {type(video).__name__}")
        timings = dict(video.timings)
        total = video.num_frames
        scores = None
        if frames is not None:
            keys, pooled = np.asarray(frames.key_frames), np.asarray(frames.rod_frames)
        else:
            keys, scores = self._key_frames(video, question, timings)
            pooled = spread(total, keys, video.plan.frames - video.plan.key_frames)
        if not rods:
            pooled = np.zeros(0, dtype=np.int64)
        shown = np.union1d(keys, pooled).astype(np.int64)
        rows = self._encode(video, shown, timings)
        grid, out = self.config.token_grid, self.config.pooled_grid
        key_set = set(keys.tolist())
        start = time.perf_counter()
        blocks = [rows[i] if i in key_set else adaptive_pool(rows[i], grid, out) for i in shown.tolist()]
        timings["pooling"] = time.perf_counter() - start
        per_frame = np.zeros(total, dtype=np.int64)
        for i, block in zip(shown.tolist(), blocks, strict=True):
            per_frame[i] = block.shape[0]
        layout = self.layout(
            [float(video.timestamps[i]) for i in shown], [b.shape[0] for b in blocks], video.duration
        )
        embeds = np.concatenate(blocks) if blocks else np.zeros((0, self.config.llm_width), np.float32)
        # rod_frames: the frames shown pooled (the others are not shown: 0 tokens in tokens_per_frame)
        ordinal = np.arange(keys.size, dtype=np.int64)
        selection = KeyFrameSelection(total, ordinal, keys.astype(np.int64), pooled.astype(np.int64))
        identity = np.arange(total, dtype=np.int64)
        return VisualResult(
            embeds, selection, scores, EventPrototypes(identity, identity), per_frame, timings, layout
        )

    def _key_frames(
        self, video: FrameFeatures, question: str, timings: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        count = video.plan.key_frames
        if self.scorer is None or video.scorer_embeds is None or self.selection == "uniform":
            return uniform_frames(video.num_frames, count), None
        from dfrt.scorers.selection import choose_frames

        start = time.perf_counter()
        text = self.scorer.text_embedding(question)
        relevance = self.scorer.relevance(video.scorer_embeds, text)
        timings["scorer_text"] = time.perf_counter() - start
        start = time.perf_counter()
        keys = choose_frames(relevance, video.scorer_embeds, count, self.selection)
        timings["selection"] = time.perf_counter() - start
        return np.asarray(keys, dtype=np.int64), np.asarray(relevance, dtype=np.float32)

    def _encode(
        self, video: FrameFeatures, shown: np.ndarray, timings: dict[str, float]
    ) -> dict[int, np.ndarray]:
        """Each shown frame's full rows, running the visual graph only on frames not encoded before."""
        missing = [i for i in shown.tolist() if i not in video.encoded]
        if missing:
            start = time.perf_counter()
            pixels = preprocess_frames(video.frames[missing], self.bundle.manifest.preprocess)
            timings["preprocess"] = timings.get("preprocess", 0.0) + time.perf_counter() - start
            start = time.perf_counter()
            runner = self.runners["vision"]
            chunk = runner.spec.axis_ranges["frames"][2]
            for at in range(0, len(missing), chunk):
                out = runner.run({"pixels": np.ascontiguousarray(pixels[at : at + chunk])})["frame_embeds"]
                for i, block in zip(missing[at : at + chunk], out, strict=True):
                    video.encoded[i] = np.ascontiguousarray(block, dtype=np.float32)
            timings["vision"] = timings.get("vision", 0.0) + time.perf_counter() - start
        return {i: video.encoded[i] for i in shown.tolist()}


def spread(total: int, keys: np.ndarray, count: int) -> np.ndarray:
    """``count`` frames spread evenly over the frames that are not ``keys``."""
    rest = np.setdiff1d(np.arange(total), keys)
    if count <= 0 or rest.size == 0:
        return np.zeros(0, dtype=np.int64)
    return rest[uniform_frames(int(rest.size), min(count, int(rest.size)))].astype(np.int64)


def duration(sampled: SampledVideo) -> float:
    """The video's length in seconds: decoded frames over the container's rate, else the last timestamp."""
    if sampled.source_fps > 0 and sampled.decoded_frames > 0:
        return sampled.decoded_frames / sampled.source_fps
    return float(sampled.timestamps[-1]) if sampled.num_frames else 0.0


def open_scorer(bundle: Bundle, graphs: GraphSet) -> Any:
    from dfrt.scorers.runtime import FrameScorer

    spec = bundle.manifest.scorer
    runners = graphs.runners
    return FrameScorer(spec, runners["scorer_image"], runners["scorer_text"], bundle.path(spec.tokenizer))
