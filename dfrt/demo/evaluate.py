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
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfrt.config import DynFocusConfig
from dfrt.demo.world import ANSWER_TYPES, BRIEF_KINDS, KINDS, Clip, held_out_clip
from dfrt.runtime.generate import Generator, SamplingConfig
from dfrt.runtime.llm import LlamaModel
from dfrt.runtime.selection import fixed_selection, random_frames, uniform_frames
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VisualPipeline

STRATEGIES = ("dynfocus", "uniform", "random")
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

    def add(self, kind: str, answer: str, expected: str) -> None:
        self.correct[kind] += int(answer == expected)
        self.total[kind] += 1
        self.well_typed += int(answer in ANSWER_TYPES[kind])

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
            "questions": sum(self.total.values()),
        }


def held_out_set(count: int, directory: Path) -> list[Item]:
    """The first ``count`` clips of the fixed held-out set as mp4 files in ``directory`` (written once)."""
    directory.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(count):
        clip = held_out_clip(i)
        path = directory / f"test-{i:04d}-{clip.kind}.mp4"
        if not path.is_file():
            clip.write(path)
        items.append(Item(i, clip, path))
    return items


def normalise(text: str) -> str:
    """The first word of an answer, lower case, without punctuation ("Red." -> "red")."""
    words = re.findall(r"[a-z]+", text.lower())
    return words[0] if words else ""


def budget_frames(visual_tokens: int, cone_tokens: int) -> int:
    return max(1, visual_tokens // cone_tokens)


Embedder = Callable[[np.ndarray, str, str, int], np.ndarray]


def onnx_embedder(visual: VisualPipeline) -> Embedder:
    """(frames, question, strategy, clip index) -> visual embeddings from the bundle's graphs."""

    def embed(frames: np.ndarray, question: str, strategy: str, index: int) -> np.ndarray:
        features = visual.encode_frames(frames)
        if strategy == "dynfocus":
            return visual.embed(features, question).embeds
        chosen = _baseline_frames(strategy, features.num_frames, visual.config, index)
        return visual.embed(
            features, question, fixed_selection(chosen, features.prototypes), rods=False
        ).embeds

    return embed


def reference_embedder(model: object, visual: VisualPipeline) -> Embedder:
    """The same from the PyTorch model (``dfrt.model.DynFocus`` with the bundle's weights)."""
    import torch

    from dfrt.runtime.preprocess import preprocess_frames

    def embed(frames: np.ndarray, question: str, strategy: str, index: int) -> np.ndarray:
        pixels = torch.from_numpy(preprocess_frames(frames, visual.bundle.manifest.preprocess))
        ids, mask = (torch.from_numpy(a) for a in visual.tokenizer(question))
        with torch.no_grad():
            if strategy == "dynfocus":
                return model(pixels, ids, mask).embeds.numpy()  # type: ignore[operator]
            tokens, pooled = model.encode_frames(pixels)  # type: ignore[attr-defined]
            prototypes, _ = model.frame_prototypes(pooled)  # type: ignore[attr-defined]
            chosen = _baseline_frames(strategy, pixels.shape[0], visual.config, index)
            out = model.forward_tokens(  # type: ignore[attr-defined]
                tokens, pooled, ids, mask, frames=fixed_selection(chosen, prototypes), rods=False
            )
            return out.embeds.numpy()

    return embed


def _baseline_frames(strategy: str, num_frames: int, config: DynFocusConfig, index: int) -> np.ndarray:
    count = budget_frames(config.visual_token_count(num_frames), config.cone_tokens)
    if strategy == "uniform":
        return uniform_frames(num_frames, count)
    if strategy == "random":
        return random_frames(num_frames, count, np.random.default_rng(10_000 + index))
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")


def evaluate(
    items: Sequence[Item],
    visual: VisualPipeline,
    llm: LlamaModel,
    embedder: Embedder,
    strategies: Sequence[str] = STRATEGIES,
    on_item: Callable[[int, int], None] = lambda done, total: None,
) -> dict[str, Scores]:
    """Accuracy per strategy; the LLM answers greedily with the bundle's prompt."""
    generator = Generator(llm, visual.bundle.manifest.prompt)
    scores = {s: Scores() for s in strategies}
    size = visual.config.vision.image_size
    for done, item in enumerate(items, start=1):
        frames = read_video(item.video, fps=1.0, max_frames=128, shortest_edge=size).frames
        for strategy in strategies:
            embeds = embedder(frames, item.clip.question, strategy, item.index)
            answer = generator.answer(item.clip.question, embeds, GREEDY)
            scores[strategy].add(item.clip.kind, normalise(answer.text), item.clip.answer)
        on_item(done, len(items))
    return scores
