"""The accuracy/cost frontier on the demo world: accuracy and seconds per question against visual tokens.

DynFocus runs at several visual-token budgets (:mod:`dfrt.runtime.budget`); uniform and random frame
sampling run with 1 to T frames as cones only (38 tokens a frame), the way an ordinary video LLM samples.
Every point is timed end to end per question: decode + the visual path + LLM prefill + generation. Each
baseline encodes only the frames it keeps (what a real system would run), DynFocus encodes all sampled
frames (its selection needs them). From the curves: the **equal-accuracy token ratio** (the tokens uniform
sampling needs to reach DynFocus's accuracy at its default budget, over DynFocus's tokens) and the
**equal-accuracy speed-up** (uniform's seconds there over DynFocus's), each linearly interpolated between
the two measured uniform points around the crossing; when uniform never gets there the figures are lower
bounds at its last (most tokens) point: it would need more than that.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from dfrt.demo.evaluate import GREEDY, Item, baseline_rng, normalise
from dfrt.demo.world import BRIEF_KINDS
from dfrt.runtime.budget import kept_frames, plan_for_config
from dfrt.runtime.pipeline import Pipeline
from dfrt.runtime.selection import fixed_selection, random_frames, uniform_frames
from dfrt.runtime.video import read_video


@dataclass
class FrontierPoint:
    method: str  # dynfocus, uniform or random
    setting: int | None  # DynFocus: the token budget (None: the config's default); baselines: frames
    accuracy: float
    brief_accuracy: float  # on the brief-event kinds
    tokens: float  # mean visual tokens per question
    seconds: float  # mean end-to-end seconds per question
    questions: int


@dataclass
class EqualAccuracy:
    """Where uniform sampling reaches DynFocus's accuracy at its default budget."""

    dynfocus_accuracy: float
    dynfocus_tokens: float
    dynfocus_seconds: float
    uniform_tokens: float
    uniform_seconds: float
    reached: bool  # False: uniform never got there; the ratios are lower bounds at its last point
    token_ratio: float
    speedup: float


@dataclass
class _Tally:
    right: int = 0
    brief_right: int = 0
    brief: int = 0
    tokens: int = 0
    seconds: float = 0.0
    questions: int = 0

    def add(self, correct: bool, brief: bool, tokens: int, seconds: float) -> None:
        self.right += correct
        self.brief_right += correct and brief
        self.brief += brief
        self.tokens += tokens
        self.seconds += seconds
        self.questions += 1

    def point(self, method: str, setting: int | None) -> FrontierPoint:
        n = max(1, self.questions)
        brief = self.brief_right / self.brief if self.brief else float("nan")
        return FrontierPoint(
            method, setting, self.right / n, brief, self.tokens / n, self.seconds / n, self.questions
        )


def measure_frontier(
    pipe: Pipeline,
    items: Sequence[Item],
    budgets: Sequence[int | None],
    frame_counts: Sequence[int],
    baselines: Sequence[str] = ("uniform", "random"),
    on_item: Callable[[int, int], None] = lambda done, total: None,
) -> list[FrontierPoint]:
    """Every (method, setting) point over ``items``: DynFocus at each budget, baselines at each frame
    count."""
    config, visual = pipe.config, pipe.visual
    tallies: dict[tuple[str, int | None], _Tally] = {}
    for done, item in enumerate(items, start=1):
        question = item.clip.question
        start = time.perf_counter()
        frames = read_video(
            item.video, fps=1.0, max_frames=128, shortest_edge=config.vision.image_size
        ).frames
        decode = time.perf_counter() - start
        total = frames.shape[0]
        for budget in budgets:
            began = time.perf_counter()
            plan = plan_for_config(config, total, budget)
            key_count = None if budget is None else plan.key_frames
            features = visual.encode_frames(frames[kept_frames(total, plan)], key_count)
            embeds = visual.embed(features, question).embeds
            _answer(pipe, item, embeds, decode, began, tallies.setdefault(("dynfocus", budget), _Tally()))
        for method in baselines:
            for count in frame_counts:
                began = time.perf_counter()
                n = min(count, total)
                if method == "uniform":
                    chosen = uniform_frames(total, n)
                else:
                    chosen = random_frames(total, n, baseline_rng(item.index))
                features = visual.encode_frames(frames[chosen])  # only the frames this baseline keeps
                every = fixed_selection(np.arange(chosen.size), features.prototypes)
                embeds = visual.embed(features, question, every, rods=False).embeds
                _answer(pipe, item, embeds, decode, began, tallies.setdefault((method, count), _Tally()))
        on_item(done, len(items))
    return [tally.point(method, setting) for (method, setting), tally in tallies.items()]


def _answer(
    pipe: Pipeline, item: Item, embeds: np.ndarray, decode: float, began: float, tally: _Tally
) -> None:
    """Generate the answer, then count it with its tokens and its end-to-end seconds."""
    text = pipe.answer(item.clip.question, embeds, GREEDY).text
    seconds = decode + time.perf_counter() - began
    correct = normalise(text) == item.clip.answer
    tally.add(correct, item.clip.kind in BRIEF_KINDS, int(embeds.shape[0]), seconds)


def equal_accuracy(points: Sequence[FrontierPoint]) -> EqualAccuracy:
    """DynFocus at its default budget against the uniform curve (module docstring)."""
    default = next(p for p in points if p.method == "dynfocus" and p.setting is None)
    uniform = sorted((p for p in points if p.method == "uniform"), key=lambda p: p.tokens)
    target = default.accuracy
    for lower, upper in zip([None, *uniform], uniform, strict=False):
        if upper.accuracy < target:
            continue
        if lower is None or upper.accuracy == lower.accuracy:
            tokens, seconds = upper.tokens, upper.seconds
        else:
            share = (target - lower.accuracy) / (upper.accuracy - lower.accuracy)
            tokens = lower.tokens + share * (upper.tokens - lower.tokens)
            seconds = lower.seconds + share * (upper.seconds - lower.seconds)
        return _ratios(default, tokens, seconds, reached=True)
    last = uniform[-1]  # uniform needs more than its most tokens, if it gets there at all
    return _ratios(default, last.tokens, last.seconds, reached=False)


def _ratios(default: FrontierPoint, tokens: float, seconds: float, reached: bool) -> EqualAccuracy:
    return EqualAccuracy(
        default.accuracy,
        default.tokens,
        default.seconds,
        tokens,
        seconds,
        reached,
        tokens / default.tokens,
        seconds / default.seconds,
    )


def frontier_record(points: Sequence[FrontierPoint], clips: str, count: int) -> dict[str, object]:
    """The JSON record ``dfrt bench --frontier`` prints and the plot reads."""
    return {
        "clips": clips,
        "questions": count,
        "points": [asdict(p) for p in points],
        "equal_accuracy": asdict(equal_accuracy(points)),
    }
