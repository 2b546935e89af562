"""Accuracy of a bundle on the held-out synthetic clips, per frame-selection strategy and question kind.

Every clip is written as an mp4 and decoded by the runtime exactly as ``dfrt infer`` decodes a user's video;
answers are generated greedily by the bundle's LLM and compared word for word with the expected answer.

Strategies, all at the same visual-token budget:
  dynfocus  DPE picks the key frames (cones); every other frame gets its 2 rod tokens.
  uniform   the frames at the centres of equal segments, cones only, as many as the budget allows.
  random    as many frames drawn at random (fixed seed per clip), cones only.
The visual path runs on the bundle's ONNX graphs (fp32 or int8) or, with ``reference``, on the PyTorch model.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dfrt.config import DynFocusConfig
from dfrt.demo import STRATEGIES
from dfrt.demo.world import ANSWER_TYPES, BRIEF_KINDS, KINDS, Clip, held_out_clip, validation_clip
from dfrt.errors import ConfigError
from dfrt.paths import cache_dir
from dfrt.runtime.budget import kept_frames, plan_for_config
from dfrt.runtime.generate import SamplingConfig
from dfrt.runtime.pipeline import Pipeline
from dfrt.runtime.selection import fixed_selection, random_frames, uniform_frames
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VideoFeatures

GREEDY = SamplingConfig(max_tokens=6, temperature=0.0)


@dataclass(frozen=True)
class Item:
    index: int
    clip: Clip
    video: Path


@dataclass
class Scores:
    """Correct/total per question kind for one strategy."""

    correct: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    total: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    well_typed: int = 0  # answers of the question's answer type (a colour for a colour question)
    evidence_seen: int = 0  # brief-event questions whose key frames include a frame showing the answer
    evidence_total: int = 0
    answers: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    expected: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    visual_tokens: int = 0  # summed over the questions

    def add(self, kind: str, answer: str, expected: str, visual_tokens: int = 0) -> None:
        self.visual_tokens += visual_tokens
        self.correct[kind] += int(answer == expected)
        self.total[kind] += 1
        self.well_typed += int(answer in ANSWER_TYPES[kind])
        self.answers[kind][answer] += 1
        self.expected[kind][expected] += 1

    def top_answer(self, kind: str) -> tuple[str, float]:
        """The answer given most often to ``kind``'s questions and its share: a share near 1 means the model
        answers that kind with one word whatever the video (its accuracy is then the word's share)."""
        if not self.total[kind]:
            return "", float("nan")
        word, count = self.answers[kind].most_common(1)[0]
        return word, count / self.total[kind]

    def _top_dict(self, kind: str) -> dict[str, object]:
        word, share = self.top_answer(kind)
        return {"answer": word, "share": share}

    def constant_kinds(
        self, share: float = 0.75, excess: float = 0.25, at_least: int = 8
    ) -> dict[str, tuple[str, float]]:
        """The kinds (with ``at_least`` questions) given one answer to ``share`` or more of them, ``excess``
        more often than it is the right answer: a model guessing, not a clip set where that word is common."""
        flagged = {}
        for kind in KINDS:
            if self.total[kind] < at_least:
                continue
            word, top = self.top_answer(kind)
            if top >= share and top - self.expected[kind][word] / self.total[kind] >= excess:
                flagged[kind] = (word, top)
        return flagged

    def one_answer_line(self) -> str:
        """The kinds of :meth:`constant_kinds` as text ("moved ('right' 95%)"), empty when there are none."""
        return ", ".join(f"{k} ({w!r} {share:.0%})" for k, (w, share) in self.constant_kinds().items())

    def add_evidence(self, seen: bool) -> None:
        self.evidence_seen += int(seen)
        self.evidence_total += 1

    def evidence_share(self) -> float:
        """Of the brief-event questions, the share whose key frames (cones) show the answer."""
        return self.evidence_seen / self.evidence_total if self.evidence_total else float("nan")

    def well_typed_share(self) -> float:
        total = sum(self.total.values())
        return self.well_typed / total if total else float("nan")

    def accuracy(self, kinds: Sequence[str] | None = None) -> float:
        kinds = list(kinds) if kinds is not None else list(self.total)
        total = sum(self.total[k] for k in kinds)
        return sum(self.correct[k] for k in kinds) / total if total else float("nan")

    def to_dict(self) -> dict[str, object]:
        return {
            "overall": self.accuracy(),
            "brief_events": self.accuracy(BRIEF_KINDS),
            "per_kind": {k: self.accuracy([k]) for k in KINDS if self.total[k]},
            "well_typed": self.well_typed_share(),
            "brief_evidence_in_key_frames": self.evidence_share(),
            "top_answer": {k: self._top_dict(k) for k in KINDS if self.total[k]},
            "one_answer_kinds": sorted(self.constant_kinds()),  # answered with one word, a guess
            "questions": sum(self.total.values()),
            "mean_visual_tokens": self.visual_tokens / max(1, sum(self.total.values())),
        }


def held_out_set(count: int, directory: Path, clip_of: Callable[[int], Clip] = held_out_clip) -> list[Item]:
    """The first ``count`` clips of the fixed held-out set (or of ``clip_of``'s set) as mp4 files in
    ``directory`` (written once)."""
    directory.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        clip = clip_of(i)
        path = directory / f"test-{i:04d}-{clip.kind}.mp4"
        if not path.is_file():
            clip.write(path)
        items.append(Item(i, clip, path))
    return items


def validation_set(count: int) -> list[Item]:
    """The first ``count`` validation clips (for choosing runs and builds; the test set stays for the end),
    written once to the cache dir."""
    return held_out_set(count, cache_dir() / "demo-validation", clip_of=validation_clip)


def normalise(text: str) -> str:
    """The first word of an answer, lower case, without punctuation ("Red." -> "red")."""
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


def baseline_frame_count(config: DynFocusConfig, num_frames: int, tokens: int | None = None) -> int:
    """How many cone-only frames fit ``tokens`` visual tokens (default: DynFocus's for ``num_frames``)."""
    tokens = config.visual_token_count(num_frames) if tokens is None else tokens
    return max(1, min(num_frames, tokens // config.cone_tokens))


def baseline_frames(
    strategy: str,
    num_frames: int,
    config: DynFocusConfig,
    rng: np.random.Generator,
    tokens: int | None = None,
) -> np.ndarray:
    """The frames a baseline keeps within ``tokens`` (default: DynFocus's budget): segment centres or a
    random draw."""
    count = baseline_frame_count(config, num_frames, tokens)
    if strategy == "uniform":
        return uniform_frames(num_frames, count)
    if strategy == "random":
        return random_frames(num_frames, count, rng)
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def baseline_rng(index: int) -> np.random.Generator:
    """The random baseline's frames for held-out clip ``index``: fixed, whichever visual path runs."""
    return np.random.default_rng(10_000 + index)


class Embedder(Protocol):
    """A visual path: encode a clip's frames once, then embed each (question, strategy) about it."""

    def encode(self, frames: np.ndarray, key_count: int | None = None) -> Any: ...

    def embed(
        self, encoded: Any, question: str, strategy: str, index: int, tokens: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(visual embeddings, the key frames whose cones they carry); baselines fit ``tokens``."""
        ...


class OnnxEmbedder:
    """The bundle's graphs (fp32, fp16 or int8) through the pipeline's visual path."""

    def __init__(self, pipe: Pipeline) -> None:
        self.visual = pipe.visual

    def encode(self, frames: np.ndarray, key_count: int | None = None) -> VideoFeatures:
        return self.visual.encode_frames(frames, key_count)

    def embed(
        self, encoded: VideoFeatures, question: str, strategy: str, index: int, tokens: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if strategy == "dynfocus":
            result = self.visual.embed(encoded, question)
            return result.embeds, result.selection.key_frames
        config = self.visual.config
        chosen = baseline_frames(strategy, encoded.num_frames, config, baseline_rng(index), tokens)
        selection = fixed_selection(chosen, encoded.prototypes)
        return self.visual.embed(encoded, question, selection, rods=False).embeds, selection.key_frames


class ReferenceEmbedder:
    """The PyTorch model (``dfrt.model.DynFocus`` with the bundle's weights), the bundle's preprocessing."""

    def __init__(self, model: Any, pipe: Pipeline) -> None:
        self.model, self.visual = model, pipe.visual

    def encode(self, frames: np.ndarray, key_count: int | None = None) -> tuple[Any, Any, int | None]:
        import torch

        from dfrt.runtime.preprocess import preprocess_frames

        pixels = preprocess_frames(frames, self.visual.bundle.manifest.preprocess)
        with torch.no_grad():
            return (*self.model.encode_frames(torch.from_numpy(pixels)), key_count)

    def embed(
        self,
        encoded: tuple[Any, Any, int | None],
        question: str,
        strategy: str,
        index: int,
        tokens: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        import torch

        patches, pooled, key_count = encoded
        ids, mask = (torch.from_numpy(a) for a in self.visual.tokenizer(question))
        frames, rods = None, True
        if strategy != "dynfocus":
            num_frames = int(patches.shape[0])
            chosen = baseline_frames(strategy, num_frames, self.visual.config, baseline_rng(index), tokens)
            prototypes, _ = self.model.frame_prototypes(pooled)
            frames, rods = fixed_selection(chosen, prototypes), False
        with torch.no_grad():
            out = self.model.forward_tokens(
                patches, pooled, ids, mask, frames=frames, rods=rods, key_count=key_count
            )
        return out.embeds.numpy(), out.selection.key_frames


def evaluate(
    items: Sequence[Item],
    pipe: Pipeline,
    embedder: Embedder,
    strategies: Sequence[str] = STRATEGIES,
    on_item: Callable[[int, int], None] = lambda done, total: None,
    visual_tokens: int | None = None,
) -> dict[str, Scores]:
    """Accuracy per strategy; the pipeline's LLM answers greedily with the bundle's prompt.

    ``visual_tokens``: DynFocus's budget (:mod:`dfrt.runtime.budget`: fewer key frames, then fewer frames);
    the baselines get as many cone-only frames as DynFocus's tokens hold, as without a budget.
    """
    scores = {s: Scores() for s in strategies}
    config = pipe.config
    for done, item in enumerate(items, start=1):
        frames = read_video(
            item.video, fps=1.0, max_frames=128, shortest_edge=config.vision.image_size
        ).frames
        plan = plan_for_config(config, frames.shape[0], visual_tokens)
        kept = kept_frames(frames.shape[0], plan)
        key_count = None if visual_tokens is None else plan.key_frames
        encoded = embedder.encode(frames[kept], key_count)  # once per clip: every strategy reuses it
        for strategy in strategies:
            embeds, keys = embedder.embed(encoded, item.clip.question, strategy, item.index, plan.tokens)
            answer = pipe.answer(item.clip.question, embeds, GREEDY)
            scores[strategy].add(item.clip.kind, normalise(answer.text), item.clip.answer, embeds.shape[0])
            if item.clip.kind in BRIEF_KINDS:
                shown = set(kept[keys].tolist()) & set(item.clip.evidence)
                scores[strategy].add_evidence(bool(shown))
        on_item(done, len(items))
    return scores


@dataclass
class EvalReport:
    bundle: Path
    visual_path: str  # "onnxruntime fp32", "pytorch fp32", ...
    clips: int
    scores: dict[str, Scores]
    visual_tokens: int | None = None  # the budget asked for (None: the config's key-frame ratio)

    def to_dict(self) -> dict[str, object]:
        return {
            "bundle": str(self.bundle),
            "visual_path": self.visual_path,
            "clips": self.clips,
            "visual_token_budget": self.visual_tokens,
            "strategies": {name: s.to_dict() for name, s in self.scores.items()},
        }

    def text(self) -> str:
        """A table: overall, brief events, evidence seen, well typed, per kind; one-word kinds flagged."""
        header = f"{'strategy':<10} {'overall':>8} {'brief':>7} {'seen':>5} {'typed':>6} {'tokens':>6}"
        budget = f", budget {self.visual_tokens} visual tokens" if self.visual_tokens is not None else ""
        lines = [f"{header}  per kind  ({self.visual_path}, {self.clips} clips{budget})"]
        for name, s in self.scores.items():
            d = s.to_dict()
            kinds = " ".join(f"{k}={v:.2f}" for k, v in d["per_kind"].items())  # type: ignore[attr-defined]
            seen, typed = d["brief_evidence_in_key_frames"], d["well_typed"]
            row = f"{name:<10} {d['overall']:>8.3f} {d['brief_events']:>7.3f} {seen:>5.2f} {typed:>6.2f}"
            row += f" {d['mean_visual_tokens']:>6.1f}"
            lines.append(f"{row}  {kinds}")
            if constant := s.one_answer_line():
                lines.append(f"{'':<10} one answer to most questions of: {constant}")
        lines.append("brief: accuracy on brief events; seen: share of them whose key frames show the answer")
        return "\n".join(lines)


def evaluate_bundle(
    bundle: Path,
    count: int,
    strategies: Sequence[str] = STRATEGIES,
    precision: str = "fp32",
    reference: bool = False,
    clips: Path | None = None,
    threads: int | None = None,
    progress: Callable[[str], None] = lambda message: None,
    visual_tokens: int | None = None,
) -> EvalReport:
    """``dfrt eval``: the bundle's accuracy on the first ``count`` held-out clips per strategy.

    ``reference`` runs the visual path on the PyTorch model with the bundle's weights (needs dfrt[export]).
    """
    unknown = sorted(set(strategies) - set(STRATEGIES))
    if unknown or not strategies:
        raise ConfigError(f"--strategies: unknown {', '.join(unknown) or '(none given)'}; use {STRATEGIES}")
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    with Pipeline(bundle, backend="onnxruntime", precision=precision, threads=threads) as pipe:
        if pipe.family != "dynfocus":
            raise ConfigError(
                f"{bundle}: dfrt eval compares DynFocus key frames with uniform and random ones on the "
                f"demo's synthetic clips; this is a {pipe.family} bundle (measure it on labelled videos with "
                "dfrt eval --dataset FILE.jsonl, docs/eval.md)"
            )
        embedder: Embedder = OnnxEmbedder(pipe)
        engine = f"onnxruntime {precision}"
        if reference:
            from dfrt.demo.training.reference import load_reference

            embedder = ReferenceEmbedder(load_reference(pipe.bundle), pipe)
            engine = "pytorch fp32"
        progress(f"writing/reading {count} held-out clips")
        items = held_out_set(count, clips or cache_dir() / "demo-test")

        def on_item(done: int, total: int) -> None:
            if done % 10 == 0:
                progress(f"{done}/{total} clips")

        scores = evaluate(items, pipe, embedder, strategies, on_item, visual_tokens)
    return EvalReport(bundle, engine, len(items), scores, visual_tokens)
