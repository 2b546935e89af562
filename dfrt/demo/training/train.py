"""Train the demo DynFocus and its language model on the synthetic world (CPU, fixed seed).

    OMP_WAIT_POLICY=PASSIVE python -m dfrt.demo.training.train --out runs/demo  # the shipped weights' recipe

(PASSIVE: on a 2-core machine, spinning OpenMP threads next to the frame-rendering thread make steps slower.)

Two stages:

1. Frames: the vision tower (from scratch) on single rendered frames, with dense labels the world knows:
   the colour and the shape under every patch, and how many shapes the frame shows (training-only heads);
   with ``--position-weight``, also where each patch is; with ``--distill-weight`` (from a trained tower),
   near the starting tower's tokens, so the model downstream of it stays valid.
2. Clips: the vision tower frozen; the Q-Former, the DPE scorer (perturbed top-k, as the paper; or
   ``--selection straight-through``: run-time cones forward, the perturbed top-k's gradients back), CCE, the
   projectors and the demo LM (:mod:`dfrt.demo.training.lm`, a small LLaMA trained from scratch) learn
   together from
   the answer tokens' cross-entropy, with the runtime's exact prompt tokens. The scorer also gets an
   auxiliary target the world provides (dfrt's addition, not the paper's): high on frames where a briefly
   visible shape shows; with ``--track-weight``, on `moved` clips, each rod's question-attended token must
   say where the named shape is in its frame (a training-only linear probe reads it).

Stage 3 (:mod:`dfrt.demo.training.finetune`) continues a run: the cone slot embedding and the LM on cached
embeddings.

A share of the clips is encoded as the baselines do (uniform or random frames, cones only, same token budget),
so the one model can be evaluated under every frame-selection strategy.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfrt.config import DynFocusConfig, demo
from dfrt.demo.evaluate import baseline_frames
from dfrt.demo.world import COLOURS, KINDS, SECONDS, SHAPES, SIZE, Clip, make_clip
from dfrt.manifest import Preprocess, PromptTemplate
from dfrt.model.dynfocus import DynFocus, Selection
from dfrt.model.llama import Llama
from dfrt.runtime.budget import kept_frames, plan_for_config
from dfrt.runtime.preprocess import preprocess_frames
from dfrt.runtime.question_tokenizer import QuestionTokenizer
from dfrt.runtime.selection import EventPrototypes, KeyFrameSelection, fixed_selection

PLANS = ("dynfocus", "uniform", "random")
FRAME_SEED_BASE = 500_000_000  # stage 1 draws its clips here, stage 2 from 0: both below world.TEST_SEED_BASE
MAX_COUNT = 5


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    frame_steps: int = 1200
    frame_batch: int = 96
    frame_lr: float = 1e-3
    clip_steps: int = 1200
    clip_batch: int = 24
    clip_lr: float = 1e-3
    event_weight: float = 1.0  # the scorer's auxiliary brief-event target
    caption_weight: float = 1.0  # whole-clip descriptions through the LM (dense alignment targets)
    baseline_share: float = 0.3  # clips encoded as uniform/random cones-only
    weight_decay: float = 0.05
    log_every: int = 25
    save_every: int = 100
    output_init_scale: float = 0.05  # visual embeddings start near the LM's residual scale (not 100x it)
    vision_from: str = ""  # a run whose trained vision tower to start from (with frame_steps 0: clips only)
    resume_from: str = ""  # a run whose every weight to continue from (with frame_steps 0 and a new seed);
    # with vision_from too, everything but the vision tower (a new tower under a trained downstream)
    selection: str = "perturbed"  # DPE in stage 2: "perturbed" (the paper) or "straight-through"
    kind_weights: str = ""  # "moved=2,count=0.5": how often each question kind is drawn (default: evenly)
    position_weight: float = 0.0  # stage 1: patch tokens also say where they are (motion needs positions)
    distill_weight: float = 0.0  # stage 1 from a trained tower: stay near its tokens (downstream stays valid)
    track_weight: float = 0.0  # stage 2, moved clips: rods' question-attended tokens say where the mover is
    output_positions: bool = False  # stage 2: a learned position map on the tower's tokens (zero at first)
    cone_positions: bool = False  # stage 2: a learned embedding per cone slot (zero at first; as stage 3's)
    position_lr: float = 0.003  # the peak rate of both (resumed weights that have one keep it on)


@dataclass
class Sample:
    clip: Clip
    pixels: np.ndarray  # (T, 3, S, S)
    question_ids: np.ndarray  # (1, L) BERT ids for the Q-Former
    plan: str
    events: np.ndarray  # (T,) 1.0 where a briefly visible shape shows
    track: np.ndarray | None = None  # (T, 2) centre of the shape a `moved` question names, at each frame


def degrade(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Codec-like damage (JPEG round trip at a random quality, light noise) so training sees what mp4
    decoding gives the runtime."""
    quality = int(rng.integers(35, 96))
    noise = rng.uniform(0.0, 3.0)
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else frame
        noisy = decoded.astype(np.float32) + rng.normal(0.0, noise, decoded.shape)
        out[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return out


def _spec(config: DynFocusConfig) -> Preprocess:
    return Preprocess(image_size=config.vision.image_size, mean=config.image_mean, std=config.image_std)


class SampleMaker:
    """Seed -> a rendered, degraded, preprocessed clip with its question ids, plan and event targets."""

    def __init__(
        self,
        config: DynFocusConfig,
        question_tokenizer: QuestionTokenizer,
        baseline_share: float,
        kind_weights: dict[str, float] | None = None,
    ) -> None:
        self.config = config
        self.spec = _spec(config)
        self.tokenize = question_tokenizer
        self.baseline_share = baseline_share
        self.kind_odds: np.ndarray | None = None
        if kind_weights:
            odds = np.asarray([kind_weights.get(kind, 1.0) for kind in KINDS], dtype=np.float64)
            if not odds.sum() > 0:
                raise ValueError("kind weights: at least one question kind needs a weight above 0")
            self.kind_odds = odds / odds.sum()

    def __call__(self, seed: int, plan: str | None = None) -> Sample:
        rng = np.random.default_rng(seed + 7)
        kind = None if self.kind_odds is None else KINDS[int(rng.choice(len(KINDS), p=self.kind_odds))]
        clip = make_clip(seed, kind)
        pixels = preprocess_frames(degrade(clip.sampled_frames(), rng), self.spec)
        ids, _ = self.tokenize(clip.question)
        if plan is None:
            draw = rng.random()
            plan = (
                "dynfocus"
                if draw >= self.baseline_share
                else ("uniform" if draw < self.baseline_share / 2 else "random")
            )
        brief = [s for s in clip.shapes if s.brief]
        events = np.asarray(
            [float(any(s.centre(float(t)) is not None for s in brief)) for t in range(SECONDS)],
            dtype=np.float32,
        )
        track = None
        if clip.kind == "moved":  # the one shape with a velocity is the one the question names
            mover = next(s for s in clip.shapes if s.velocity != (0.0, 0.0))
            centres = [mover.centre(float(t)) for t in range(SECONDS)]
            track = np.asarray([c if c is not None else (np.nan, np.nan) for c in centres], dtype=np.float32)
        return Sample(clip, pixels, ids, plan, events, track)


@dataclass
class FrameBatch:
    pixels: np.ndarray  # (B, 3, S, S)
    colours: np.ndarray  # (B, P*P) colour class per patch (0 = background)
    shapes: np.ndarray  # (B, P*P) shape class per patch
    counts: np.ndarray  # (B,)


def frame_batch(config: DynFocusConfig, seeds: range, rng: np.random.Generator) -> FrameBatch:
    """One random moment of each seed's clip, with its dense labels."""
    frames, colours, shapes, counts = [], [], [], []
    grid = config.vision.grid
    for seed in seeds:
        clip = make_clip(seed)
        t = float(rng.uniform(0, SECONDS))
        if rng.random() < 0.5:  # half the moments where a brief shape shows, when the clip has one
            windows = [s.visible for s in clip.shapes if s.brief]
            if windows:
                lo, hi = windows[int(rng.integers(len(windows)))]
                t = float(rng.uniform(lo, hi))
        frames.append(clip.frame(t, SIZE))
        c, s = clip.patch_labels(t, grid)
        colours.append(c)
        shapes.append(s)
        counts.append(sum(shape.centre(t) is not None for shape in clip.shapes))
    pixels = preprocess_frames(degrade(np.stack(frames), rng), _spec(config))
    return FrameBatch(pixels, np.stack(colours), np.stack(shapes), np.asarray(counts, dtype=np.int64))


class FrameHeads(nn.Module):
    """Training-only: colour and shape class of every patch token, shape count from the CLS token, and
    (``position_weight`` > 0) where on the grid every patch token is, so the features, and the structure
    tokens and rods pooled from them, keep the positions that motion questions need."""

    def __init__(self, width: int, grid: int, position_weight: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.patches = nn.Linear(width, 1 + len(COLOURS) + 1 + len(SHAPES))
        self.count = nn.Linear(width, MAX_COUNT)
        self.position = nn.Linear(width, 2)
        self.position_weight = position_weight
        rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        self.register_buffer("where", torch.stack([rows, cols], -1).flatten(0, 1).float() / max(1, grid - 1))

    def loss(self, tokens: torch.Tensor, batch: FrameBatch) -> tuple[torch.Tensor, float]:
        """Summed losses, and the share of shape-covered patches whose colour and shape are right."""
        x = self.norm(tokens)
        patches = self.patches(x[:, 1:])
        colour_logits, shape_logits = patches.split([1 + len(COLOURS), 1 + len(SHAPES)], dim=-1)
        colours, shapes = torch.from_numpy(batch.colours), torch.from_numpy(batch.shapes)
        counts = torch.from_numpy(batch.counts).clamp_max(MAX_COUNT - 1)
        loss = (
            F.cross_entropy(colour_logits.flatten(0, 1), colours.flatten())
            + F.cross_entropy(shape_logits.flatten(0, 1), shapes.flatten())
            + F.cross_entropy(self.count(x[:, 0]), counts)
        )
        if self.position_weight:
            where = self.where.expand(x.shape[0], -1, -1)
            loss = loss + self.position_weight * 10 * F.mse_loss(self.position(x[:, 1:]), where)
        right = (colour_logits.argmax(-1) == colours) & (shape_logits.argmax(-1) == shapes)
        return loss, float(right[colours > 0].float().mean())


def distill_loss(tokens: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean squared drift of the tower's tokens from ``anchor`` (the starting tower's, no gradient),
    relative to the anchor's mean square: 0 unchanged, 1 as far as zeroing the tokens."""
    anchor = anchor.detach()
    return F.mse_loss(tokens, anchor) / anchor.pow(2).mean().clamp_min(1e-8)


def plan_selection(
    config: DynFocusConfig,
    plan: str,
    num_frames: int,
    rng: np.random.Generator,
    tokens: int | None = None,
) -> tuple[KeyFrameSelection | None, bool]:
    """(frames override, rods) for a plan: DPE's own choice, or the baselines' cone-only frames (as many as
    ``tokens`` hold; default: DynFocus's tokens for ``num_frames``)."""
    if plan == "dynfocus":
        return None, True
    identity = np.arange(num_frames, dtype=np.int64)
    chosen = baseline_frames(plan, num_frames, config, rng, tokens)
    return fixed_selection(chosen, EventPrototypes(seeds=identity, assignment=identity)), False


def _prefetched(make: Callable[[int], object], steps: int) -> Iterator[object]:
    """``make(step)`` for every step, the next one rendered in a thread while the current one trains
    (OpenCV and numpy release the GIL)."""
    if steps <= 0:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        future = pool.submit(make, 0)
        for step in range(steps):
            current = future.result()
            if step + 1 < steps:
                future = pool.submit(make, step + 1)
            yield current


class LmTarget:
    """The demo LM and the demo prompt: visual embeddings in, answer-token cross-entropy out."""

    def __init__(self, model: Llama, gguf: Path, template: PromptTemplate, answers: tuple[str, ...]) -> None:
        from dfrt.runtime.generate import Generator
        from dfrt.runtime.llm import LlamaModel

        self.model = model
        self._tokenizer = LlamaModel(gguf, n_ctx=512)  # the runtime's tokenizer: prompts token for token
        self._generator = Generator(self._tokenizer, template)
        self._cache: dict[str, tuple[list[int], list[int]]] = {}
        self.eos = int(self._tokenizer.metadata.get("tokenizer.ggml.eos_token_id", 2))
        self.answer_ids = {a: [*self._tokenizer.tokenize(a, add_bos=False), self.eos] for a in answers}

    def close(self) -> None:
        self._tokenizer.close()

    def prompt(self, question: str) -> tuple[list[int], list[int]]:
        if question not in self._cache:
            self._cache[question] = self._generator.prompt_ids(question)
        return self._cache[question]

    def loss(
        self, visual: list[torch.Tensor], questions: list[str], answers: list[str]
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Mean answer-token cross-entropy, and whether each answer's every token is the argmax."""
        return self._loss(visual, questions, [self.answer_ids[a] for a in answers])

    def caption_loss(self, visual: list[torch.Tensor], captions: list[str]) -> torch.Tensor:
        """Mean cross-entropy of whole-clip descriptions (:func:`describe`) asked for with the demo prompt."""
        targets = [[*self._tokenizer.tokenize(c, add_bos=False), self.eos] for c in captions]
        return self._loss(visual, [CAPTION_QUESTION] * len(captions), targets)[0]

    def _loss(
        self, visual: list[torch.Tensor], questions: list[str], answers: list[list[int]]
    ) -> tuple[torch.Tensor, np.ndarray]:
        embed = self.model.model.embed_tokens
        rows, targets, positions = [], [], []
        for v, q, answer in zip(visual, questions, answers, strict=True):
            before, after = self.prompt(q)
            row = torch.cat([embed(torch.tensor(before)), v, embed(torch.tensor(after + answer))])
            first = len(before) + v.shape[0] + len(after)  # position of the first answer token
            rows.append(row)
            positions.append(torch.arange(first - 1, first - 1 + len(answer)))
            targets.append(torch.tensor(answer))
        length = max(r.shape[0] for r in rows)
        x = torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])  # causal: tail pad is inert
        hidden = self.model.hidden_states(inputs_embeds=x)
        logits = self.model.lm_head(torch.cat([hidden[i, p] for i, p in enumerate(positions)]))
        target = torch.cat(targets)
        hits = (logits.argmax(-1) == target).numpy()
        ends = np.cumsum([len(t) for t in targets])
        right = np.asarray([hits[e - len(t) : e].all() for e, t in zip(ends, targets, strict=True)])
        return F.cross_entropy(logits, target), right


CAPTION_QUESTION = "Describe the video."


def describe(clip: Clip) -> str:
    """A whole-clip description from the world's ground truth, the dense target of LLaVA-style alignment:
    every shape in reading order of its first appearance, with what it does.
    "red circle, blue square moving left, green triangle brief." """
    directions = {(-1, 0): "left", (1, 0): "right", (0, -1): "up", (0, 1): "down"}
    parts = []
    for shape in sorted(clip.shapes, key=lambda s: (s.visible[0], round(s.start[1], 1), s.start[0])):
        words = [shape.colour, shape.shape]
        if shape.velocity != (0.0, 0.0):
            vx, vy = shape.velocity
            words += ["moving", directions[(int(np.sign(vx)), int(np.sign(vy)))]]
        if shape.colour_after is not None:
            words += ["turning", shape.colour_after[1]]
        if shape.brief:
            words += ["brief", "start" if shape.visible[0] < SECONDS / 2 else "end"]
        elif shape.visible[1] < SECONDS:
            words.append("leaving")
        parts.append(" ".join(words))
    return ", ".join(parts) + "."


def encode_batch(
    model: DynFocus,
    samples: list[Sample],
    generator: torch.Generator | None,
    rng: np.random.Generator,
    selection: Selection = "perturbed",
    budgets: Sequence[int | None] | None = None,
) -> tuple[list[torch.Tensor], list[torch.Tensor | None], list[np.ndarray]]:
    """Visual embeddings per sample, DPE's scores (None for baseline plans) and how many embeddings each
    frame got (38 cone, 2 rod, 0 left out); the (frozen) vision tower runs once over every frame of the
    batch, without gradients (once per sample object: a sample listed twice, at two budgets, shares it).

    ``budgets``: per sample, a visual-token budget (:mod:`dfrt.runtime.budget`, as ``--visual-tokens`` at run
    time: fewer key frames, then fewer frames, kept uniformly; baselines get as many cone-only frames as the
    budget's tokens hold) or None (the config's default, as without ``budgets``). The layout still has one
    entry per sampled frame (0 for a frame the budget drops); the scores are over the frames kept."""
    budgets = [None] * len(samples) if budgets is None else list(budgets)
    if len(budgets) != len(samples):
        raise ValueError(f"{len(budgets)} budgets for {len(samples)} samples")
    unique = list({id(s): s for s in samples}.values())
    offsets = dict(
        zip((id(s) for s in unique), np.cumsum([0, *(s.pixels.shape[0] for s in unique)]), strict=False)
    )
    pixels = torch.from_numpy(np.concatenate([s.pixels for s in unique]))
    with torch.no_grad():
        raw = model.vision_tower(pixels)
    tokens = model.place(raw)  # the output position embedding still learns
    pooled = model.pool(tokens)
    embeds, scores, layouts = [], [], []
    for s, budget in zip(samples, budgets, strict=True):
        t, start = s.pixels.shape[0], int(offsets[id(s)])
        plan = plan_for_config(model.config, t, budget)
        kept = torch.as_tensor(kept_frames(t, plan)) + start
        frames, rods = plan_selection(model.config, s.plan, plan.frames, rng, plan.tokens)
        ids = torch.from_numpy(s.question_ids)
        result = model.forward_tokens(
            tokens[kept],
            pooled[kept],
            ids,
            None,
            selection,
            generator,
            frames,
            rods,
            None if budget is None else plan.key_frames,
        )
        embeds.append(result.embeds)
        scores.append(result.scores if frames is None else None)
        layout = np.zeros(t, dtype=result.tokens_per_frame.dtype)
        layout[kept.numpy() - start] = result.tokens_per_frame
        layouts.append(layout)
    return embeds, scores, layouts


def event_loss(scores: list[torch.Tensor | None], samples: list[Sample]) -> torch.Tensor:
    """Mean squared distance of DPE's scores to the brief-event frames, over clips that have such events."""
    terms = [
        F.mse_loss(sc, torch.from_numpy(s.events))
        for sc, s in zip(scores, samples, strict=True)
        if sc is not None and s.events.any()
    ]
    return torch.stack(terms).mean() if terms else torch.zeros(())


def track_loss(
    probe: nn.Module, visual: list[torch.Tensor], layouts: list[np.ndarray], samples: list[Sample]
) -> torch.Tensor:
    """Mean squared error of ``probe`` reading, from each rod's question-attended embedding (its second
    token), where the shape a `moved` question names is in that frame; over the `moved` clips with rods."""
    rows, targets = [], []
    for v, layout, s in zip(visual, layouts, samples, strict=True):
        if s.track is None:
            continue
        offsets = np.concatenate([[0], np.cumsum(layout)[:-1]])
        for t in np.flatnonzero(layout == 2):
            if not np.isnan(s.track[t]).any():
                rows.append(v[int(offsets[t]) + 1])
                targets.append(s.track[t])
    if not rows:
        return torch.zeros(())
    return F.mse_loss(probe(torch.stack(rows)), torch.from_numpy(np.stack(targets)))


def new_visual_model(output_init_scale: float, config: DynFocusConfig | None = None) -> DynFocus:
    """A fresh demo DynFocus (``config``, default :func:`~dfrt.config.demo`) in training mode whose last
    layers that write visual embeddings start at ``output_init_scale`` of their default initialisation (near
    the LM's residual scale, not 100x it)."""
    model = DynFocus(config or demo()).train()
    with torch.no_grad():
        for layer in (model.projector[2], model.rod_value_proj):
            layer.weight.mul_(output_init_scale)
            layer.bias.mul_(output_init_scale)
    return model


def load_vision_tower(model: DynFocus, run: Path) -> None:
    """The vision tower of ``run``'s weights into ``model`` (the rest stays as it is)."""
    from safetensors.torch import load_file

    state = load_file(str(run / "weights.safetensors"))
    prefix = "vision_tower."
    tower = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    model.vision_tower.load_state_dict(tower, strict=True)


def save_run_weights(out: Path, model: nn.Module, lm: nn.Module) -> None:
    """A run's ``weights.safetensors`` (DynFocus) and ``lm.safetensors``, each written atomically."""
    from safetensors.torch import save_file

    from dfrt.fileio import atomic_path

    for name, module in (("weights", model), ("lm", lm)):
        with atomic_path(out / f"{name}.safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))


def add_config_options(parser: argparse.ArgumentParser, defaults: object) -> None:
    """One option per field of the dataclass ``defaults`` (``--clip-lr``), booleans as ``--x/--no-x``."""
    for name, value in asdict(defaults).items():  # type: ignore[call-overload]
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)


def parse_kind_weights(text: str) -> dict[str, float]:
    """``"moved=2,count=0.5"`` -> {"moved": 2.0, "count": 0.5}; unknown kinds or bad numbers raise."""
    weights: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, value = item.partition("=")
        if kind not in KINDS:
            raise ValueError(f"unknown clip kind {kind!r} in kind weights; choose from {', '.join(KINDS)}")
        weights[kind] = float(value)
        if weights[kind] < 0:
            raise ValueError(f"kind weight of {kind} must be >= 0, got {value}")
    return weights


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[nn.Parameter]) -> None:
    """One update: gradients of ``loss``, clipped to norm 1."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()


def _cosine_lr(step: int, steps: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def train(out: Path, cfg: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """Both stages into ``out``: ``weights.safetensors`` (DynFocus), ``lm.safetensors`` and
    ``tokenizer.model`` (the demo LM), written atomically every ``save_every`` steps."""
    from safetensors.torch import load_file

    from dfrt.demo.training.lm import new_demo_lm, train_tokenizer, write_demo_gguf
    from dfrt.demo.training.prompt import DEMO_PROMPT
    from dfrt.demo.training.reference import demo_config_of, load_visual_state
    from dfrt.demo.world import ANSWERS
    from dfrt.export.question_vocab import build_question_tokenizer

    if cfg.selection not in ("perturbed", "straight-through"):
        raise ValueError(f"selection must be 'perturbed' or 'straight-through', got {cfg.selection!r}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    previous_state = load_file(str(Path(cfg.resume_from) / "weights.safetensors")) if cfg.resume_from else {}
    config = demo_config_of(previous_state, cfg.output_positions, cfg.cone_positions)
    if config.vision.output_positions and not cfg.output_positions:
        log(f"{cfg.resume_from}'s weights have an output position map: it stays on")
    if config.cone_positions and not cfg.cone_positions:
        log(f"{cfg.resume_from}'s weights have a cone slot embedding: it stays on")
    cfg = dataclasses.replace(  # recorded as used
        cfg, output_positions=config.vision.output_positions, cone_positions=config.cone_positions
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    question_tokenizer = out / "question_tokenizer.json"
    question_tokenizer.write_text(build_question_tokenizer(config.qformer.max_question_tokens))
    kinds = parse_kind_weights(cfg.kind_weights)
    make = SampleMaker(config, QuestionTokenizer(question_tokenizer), cfg.baseline_share, kinds)
    model = new_visual_model(cfg.output_init_scale, config)
    if cfg.resume_from:  # the LM's embeddings belong to the previous run's tokenizer
        previous = Path(cfg.resume_from)
        lm_tokenizer = Path(shutil.copyfile(previous / "tokenizer.model", out / "tokenizer.model"))
    else:
        lm_tokenizer = train_tokenizer(out / "tokenizer.model")
    lm = new_demo_lm(lm_tokenizer)
    if cfg.resume_from:  # weights from before the output position embedding start it at zero
        load_visual_state(model, previous_state)
        lm.load_state_dict(load_file(str(previous / "lm.safetensors")), strict=True)
        log(f"continuing from {previous}")
    if cfg.vision_from:  # after resume_from: the named tower replaces the resumed run's
        load_vision_tower(model, Path(cfg.vision_from))
        log(f"vision tower from {cfg.vision_from}")

    def save(tag: str) -> None:
        save_run_weights(out, model, lm)
        log(f"saved weights ({tag})")

    begin = time.time()
    first_seed = cfg.seed * 10_000_000

    # -- stage 1: the vision tower on single frames with dense labels -------------------------------------
    heads = FrameHeads(config.vision.width, config.vision.grid, cfg.position_weight)
    params = list(model.vision_tower.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.frame_lr, weight_decay=cfg.weight_decay)
    frame_rng = np.random.default_rng(cfg.seed + 1)

    def render_frames(step: int) -> FrameBatch:
        start = FRAME_SEED_BASE + first_seed + step * cfg.frame_batch
        return frame_batch(config, range(start, start + cfg.frame_batch), frame_rng)

    teacher = None
    if cfg.distill_weight and cfg.frame_steps:  # the tower as it starts: its tokens are the anchor
        teacher = copy.deepcopy(model.vision_tower).eval().requires_grad_(False)
    running: list[float] = []
    for step, batch in enumerate(_prefetched(render_frames, cfg.frame_steps)):
        _set_lr(optimizer, _cosine_lr(step, cfg.frame_steps, cfg.frame_lr))
        pixels = torch.from_numpy(batch.pixels)
        tokens = model.vision_tower(pixels)
        loss, right = heads.loss(tokens, batch)
        drift = torch.zeros(())
        if teacher is not None:
            drift = distill_loss(tokens, teacher(pixels))
            loss = loss + cfg.distill_weight * drift
        _step(optimizer, loss, params)
        running.append(right)
        if (step + 1) % cfg.log_every == 0:
            log(
                f"frames {step + 1}/{cfg.frame_steps} loss {loss.item():.3f} drift {drift.item():.4f} "
                f"patches right {np.mean(running[-cfg.log_every :]):.3f} {time.time() - begin:.0f}s"
            )
    model.vision_tower.requires_grad_(False)
    model.vision_tower.eval()

    # -- stage 2: clips, through the demo LM -------------------------------------------------------------
    gguf = write_demo_gguf(lm, lm_tokenizer, out / "tokenizer-probe.gguf")  # the runtime's tokenization
    target = LmTarget(lm, gguf, DEMO_PROMPT, ANSWERS)
    track_probe = nn.Linear(config.llm_width, 2)  # training-only: where the asked-about mover is
    with torch.no_grad():  # starts at the frame's centre, reading nothing: no early shock to the model
        track_probe.weight.zero_()
        track_probe.bias.fill_(0.5)
    positions = [p for p in (model.output_positions, model.cone_positions) if p is not None]
    rest = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in positions)]
    rest += list(lm.parameters()) + list(track_probe.parameters())
    params = rest + positions
    groups: list[dict[str, object]] = [{"params": rest, "lr_scale": 1.0}]
    if positions:  # their own peak rate (they start at zero), no weight decay
        scale = cfg.position_lr / cfg.clip_lr if cfg.clip_lr else 0.0
        groups.append({"params": positions, "lr_scale": scale, "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, lr=cfg.clip_lr, weight_decay=cfg.weight_decay)

    def render_clips(step: int) -> list[Sample]:
        start = first_seed + step * cfg.clip_batch
        return [make(seed) for seed in range(start, start + cfg.clip_batch)]

    running_right: dict[str, list[bool]] = {plan: [] for plan in PLANS}
    kind_right: dict[str, list[bool]] = {kind: [] for kind in KINDS}  # DynFocus plans only
    for step, samples in enumerate(_prefetched(render_clips, cfg.clip_steps)):
        _set_lr(optimizer, _cosine_lr(step, cfg.clip_steps, cfg.clip_lr, warmup=100))
        visual, scores, layouts = encode_batch(model, samples, generator, rng, cfg.selection)  # type: ignore[arg-type]
        lm_loss, right = target.loss(
            visual, [s.clip.question for s in samples], [s.clip.answer for s in samples]
        )
        events = event_loss(scores, samples)
        described = [i for i, s in enumerate(samples) if s.plan == "dynfocus"]  # every frame represented
        captions = [describe(samples[i].clip) for i in described]
        caption = (
            target.caption_loss([visual[i] for i in described], captions)
            if described and cfg.caption_weight
            else torch.zeros(())
        )
        track = track_loss(track_probe, visual, layouts, samples) if cfg.track_weight else torch.zeros(())
        loss = (
            lm_loss + cfg.caption_weight * caption + cfg.event_weight * events + cfg.track_weight * 10 * track
        )
        _step(optimizer, loss, params)
        for s, r in zip(samples, right, strict=True):
            running_right[s.plan].append(bool(r))
            if s.plan == "dynfocus":
                kind_right[s.clip.kind].append(bool(r))
        if (step + 1) % cfg.log_every == 0:
            shares = " ".join(f"{plan} {np.mean(v[-200:]):.3f}" for plan, v in running_right.items() if v)
            kinds = " ".join(f"{kind} {np.mean(v[-50:]):.2f}" for kind, v in kind_right.items() if v)
            log(
                f"clips {step + 1}/{cfg.clip_steps} lm {lm_loss.item():.3f} caption {caption.item():.3f} "
                f"events {events.item():.3f} track {track.item():.4f} "
                f"right: {shares} {time.time() - begin:.0f}s\n  dynfocus by kind (last 50): {kinds}"
            )
        if (step + 1) % cfg.save_every == 0:
            save(f"clips step {step + 1}")
    target.close()
    gguf.unlink(missing_ok=True)
    model.vision_tower.requires_grad_(True)
    save("done")
    (out / "train_report.json").write_text(
        json.dumps({"seconds": round(time.time() - begin), "frames_per_clip": SECONDS}, indent=2)
    )
    return out / "weights.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    add_config_options(parser, TrainConfig())  # --output-positions / --no-output-positions, ...
    args = vars(parser.parse_args())
    out = args.pop("out")
    train(out, TrainConfig(**args), log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
