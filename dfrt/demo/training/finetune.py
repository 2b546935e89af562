"""Stage 3 of the demo recipe: the LM and the cone slot embedding, on a frozen visual model's embeddings.

    OMP_WAIT_POLICY=PASSIVE python -m dfrt.demo.training.finetune --run runs/st3 --out runs/slots \
        --cache /tmp/c.pt
    (the defaults are the recipe of the shipped weights)

A 4 x 4 grid of pooled tokens leads every key frame's cone, but to the LM one cell looks like another: it only
knows a token's distance to the others (rotary positions), so it cannot say where a shape is, nor which way it
went. Stage 3 gives each of the 38 cone slots a learned embedding (``cone_positions``, zero at first: the
model is unchanged at step 0) and teaches the LM to use it. Everything before the projector stays frozen, so
the visual embeddings are computed once per clip (rendered and degraded as in stage 2, on seeds of their own)
and the LM trains on them many times over: about 1.3 s a step (24 clips and 12 position questions) on two
cores, against stage 2's 3 s. A tenth of the clips
is held out to watch for overfitting; the run is still chosen with
``python -m dfrt.demo.training.validation``.

``--budgets`` (default ``default``: the config's 4 key frames of 16, as the shipped weights were trained)
encodes each clip at visual-token budgets drawn at random (:func:`parse_budgets`, :func:`draw_budgets`), as
``--visual-tokens`` plans them at run time (:mod:`dfrt.runtime.budget`: fewer key frames, then fewer frames),
so the LM also learns to answer from fewer cones. Each clip's budgets come from a generator of its own seed:
the recipe stays reproducible whatever the chunking and the clip count. ``--plans-per-clip N`` caches N plans
of each clip (different budget items while there are enough; the vision tower runs once per clip).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dfrt.demo.samples import CALIBRATION_SEED_BASE
from dfrt.demo.training.train import (
    PLANS,
    LmTarget,
    SampleMaker,
    _cosine_lr,
    _prefetched,
    _set_lr,
    _step,
    add_config_options,
    encode_batch,
    parse_kind_weights,
    save_run_weights,
)
from dfrt.demo.world import KINDS, SECONDS, Clip
from dfrt.runtime.budget import plan_for_config
from dfrt.runtime.question_tokenizer import QuestionTokenizer

# Stage 3 draws seed FINETUNE_SEED_BASE + SEEDS_PER_RUN x seed onwards: apart from stage 1's (5 x 10^8 +
# 10^7 x seed) and stage 2's (10^7 x seed) for their seeds below 20 and 70; below the calibration clips'
FINETUNE_SEED_BASE = 700_000_000
SEEDS_PER_RUN = 1_000_000
CACHE_VERSION = 1  # bump when rendering, plans or position questions change: older caches are then re-encoded
# a clip's budgets come from default_rng([BUDGET_STREAM, its seed]): apart from its other draws
BUDGET_STREAM = 0x6275
DEFAULT_BUDGET = "default"  # the config's own key-frame ratio: no budget (the shipped weights' training)

Budget = tuple[int, int] | None  # an item of --budgets: an inclusive range of visual tokens, or the default


@dataclass(frozen=True)
class FinetuneConfig:
    seed: int = 1
    clips: int = 9000  # visual embeddings computed once (a tenth held out)
    steps: int = 1600
    batch: int = 24
    lr: float = 3e-4  # the LM's peak rate
    position_lr: float = 3e-2  # the cone slot embedding's (it starts at zero)
    weight_decay: float = 0.05
    baseline_share: float = 0.3
    kind_weights: str = "moved=6"
    fact_batch: int = 12  # position questions (:func:`position_facts`) alongside each batch
    fact_weight: float = 1.0
    log_every: int = 40
    budgets: str = DEFAULT_BUDGET  # "default,140-175,104-139,40-103": visual-token budgets drawn per clip
    plans_per_clip: int = 1  # plans cached per clip, each at its own drawn budget


@dataclass
class CachedClip:
    """One clip's visual embeddings, without any cone slot embedding, and which slot each row is."""

    embeds: torch.Tensor  # (N_vis, D)
    slots: torch.Tensor  # (N_vis,) cone slot 0..37, or -1 for a rod row
    question: str
    answer: str
    kind: str
    plan: str
    facts: list[tuple[str, str]] = field(default_factory=list)  # position questions (:func:`position_facts`)
    budget: int | None = None  # the visual-token budget it was encoded at (None: the config's default)

    @property
    def label(self) -> str:
        """What its accuracy is reported under: its question kind (DynFocus plan) or its baseline plan."""
        return self.kind if self.plan == "dynfocus" else self.plan


FACT_QUESTIONS = {  # (which cone, axis) -> a training-only question; answers are the direction words
    ("first", 0): "Where was the {name} first, left or right?",
    ("first", 1): "Where was the {name} first, up or down?",
    ("last", 0): "Where was the {name} last, left or right?",
    ("last", 1): "Where was the {name} last, up or down?",
}
SIDES = (("left", "right"), ("up", "down"))  # x, y: below / above the middle
MIDDLE_MARGIN = 0.1  # no question about a shape this close to the middle of an axis


def position_facts(clip: Clip, cone_frames: Sequence[int]) -> list[tuple[str, str]]:
    """Where each shape is in the first and the last frame that got a cone, as question/answer pairs:
    "Where was the red circle first, left or right?" -> "right". Training-only targets that teach the LM to
    read the cone slot embedding (a shape's grid cell); `moved` then compares first and last. Only shapes
    whose colour and kind name them uniquely in that frame, and not near the middle of the axis."""
    if not len(cone_frames):
        return []
    facts = []
    for when, t in (("first", float(cone_frames[0])), ("last", float(cone_frames[-1]))):
        visible = [(f"{s.colour_at(t)} {s.shape}", c) for s in clip.shapes if (c := s.centre(t)) is not None]
        names = Counter(name for name, _ in visible)
        for name, centre in visible:
            if names[name] > 1:
                continue
            for axis, value in enumerate(centre):
                if abs(value - 0.5) >= MIDDLE_MARGIN:
                    answer = SIDES[axis][int(value > 0.5)]
                    facts.append((FACT_QUESTIONS[when, axis].format(name=name), answer))
    return facts


def parse_budgets(text: str) -> tuple[Budget, ...]:
    """``"default,140,40-103"`` -> (None, (140, 140), (40, 103)): the items ``--budgets`` draws from, with
    equal odds (list one twice to draw it twice as often); ``A-B`` is a budget drawn uniformly from A to B
    tokens inclusive, ``default`` the config's own key-frame ratio (no budget)."""
    items: list[Budget] = []
    for item in (part.strip() for part in text.split(",")):
        if item == DEFAULT_BUDGET:
            items.append(None)
            continue
        low, dash, high = item.partition("-")
        try:
            lo, hi = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"budgets: {item!r} is not a token count, a range A-B or 'default'") from None
        if not 1 <= lo <= hi:
            raise ValueError(f"budgets: {item!r} needs 1 <= A <= B")
        items.append((lo, hi))
    return tuple(items)


def draw_budgets(items: Sequence[Budget], seed: int, count: int = 1) -> list[int | None]:
    """``count`` budgets for the clip of ``seed``, from a generator of its own (``BUDGET_STREAM``, seed): a
    clip gets the same budgets whatever else is drawn, in whatever order or chunks clips are encoded. Distinct
    items when there are ``count`` of them (one clip's plans differ), else items drawn with replacement; of a
    range, a value drawn uniformly in it."""
    rng = np.random.default_rng([BUDGET_STREAM, seed])
    picks = rng.choice(len(items), size=count, replace=count > len(items))
    budgets = []
    for i in picks:
        item = items[int(i)]
        budgets.append(None if item is None else int(rng.integers(item[0], item[1] + 1)))
    return budgets


def budget_label(clip: CachedClip) -> str:
    """Where a DynFocus clip's held-out accuracy is reported by visual tokens: its token count, or "<68" for
    plans with fewer frames (budgets under 68 of the demo's 16 frames)."""
    rows = int(clip.embeds.shape[0])
    return f"{rows}" if rows >= 68 else "<68"


def cone_slots(tokens_per_frame: np.ndarray, cone_tokens: int) -> torch.Tensor:
    """Per visual row, in temporal order: its slot within a key frame's cone, or -1 (rods)."""
    parts = [np.arange(cone_tokens) if n == cone_tokens else np.full(n, -1) for n in tokens_per_frame]
    return torch.from_numpy(np.concatenate(parts).astype(np.int64))


def add_cone_positions(clip: CachedClip, positions: torch.Tensor) -> torch.Tensor:
    """The clip's embeddings as the model now computes them: each cone row plus its slot's embedding."""
    padded = torch.cat([positions, positions.new_zeros(1, positions.shape[1])])  # row -1: nothing added
    return clip.embeds + padded[clip.slots]


def cache_clips(
    model: torch.nn.Module,
    make: SampleMaker,
    seeds: range,
    log: Callable[[str], None],
    chunk: int = 24,
    budgets: Sequence[Budget] = (None,),
    plans_per_clip: int = 1,
) -> list[CachedClip]:
    """Render, degrade and encode ``seeds`` once with the frozen model (the run-time path: hard selection),
    ``chunk`` clips at a time, with the model's cone slot embedding left out (it is trained afterwards):
    ``plans_per_clip`` plans of each clip, one after another, at budgets :func:`draw_budgets` draws from
    ``budgets`` (default: the config's own, one plan a clip, as the shipped weights were trained)."""
    rng = np.random.default_rng(seeds.start)
    starts = list(range(seeds.start, seeds.stop, chunk))
    positions = model.cone_positions
    kept = None if positions is None else positions.detach().clone()
    cached: list[CachedClip] = []
    begin = time.time()

    def render(i: int) -> list:  # type: ignore[type-arg]
        return [make(s) for s in range(starts[i], min(starts[i] + chunk, seeds.stop))]

    with torch.no_grad():
        if positions is not None:
            positions.zero_()
        for i, samples in enumerate(_prefetched(render, len(starts))):
            listed = [(s, b) for s in samples for b in draw_budgets(budgets, s.clip.seed, plans_per_clip)]
            ss = [s for s, _ in listed]
            embeds, _, layouts = encode_batch(model, ss, None, rng, "hard", [b for _, b in listed])
            for (s, budget), e, layout in zip(listed, embeds, layouts, strict=True):
                slots = cone_slots(layout, model.config.cone_tokens)
                cones = np.flatnonzero(layout == model.config.cone_tokens)  # sampled frames (seconds)
                facts = position_facts(s.clip, cones)
                clip = s.clip
                cached.append(
                    CachedClip(e.clone(), slots, clip.question, clip.answer, clip.kind, s.plan, facts, budget)
                )
            if (i + 1) % 25 == 0:
                log(f"cached {len(cached) // plans_per_clip}/{len(seeds)} clips {time.time() - begin:.0f}s")
        if positions is not None:
            positions.copy_(kept)
    return cached


def finetune(
    run: Path,
    out: Path,
    cfg: FinetuneConfig,
    log: Callable[[str], None] = print,
    cache: Path | None = None,
) -> Path:
    """``run``'s weights + stage 3 into ``out`` (weights.safetensors, lm.safetensors, the tokenizers).
    ``cache``: a file that keeps the encoded clips for the next run with the same weights, seed and clips."""
    from safetensors.torch import load_file

    from dfrt.demo.training.lm import demo_lm_config, write_demo_gguf
    from dfrt.demo.training.prompt import DEMO_PROMPT
    from dfrt.demo.training.reference import demo_config_of, load_visual_state
    from dfrt.demo.world import ANSWERS
    from dfrt.export.gguf_llm import read_sentencepiece_vocab
    from dfrt.export.question_vocab import build_question_tokenizer
    from dfrt.fileio import atomic_path, sha256_file
    from dfrt.model.dynfocus import DynFocus
    from dfrt.model.llama import Llama

    first = FINETUNE_SEED_BASE + cfg.seed * SEEDS_PER_RUN
    if cfg.seed < 0 or cfg.clips > SEEDS_PER_RUN or first + cfg.clips > CALIBRATION_SEED_BASE:
        raise ValueError(f"seed {cfg.seed} with {cfg.clips} clips leaves stage 3's seed range")
    if out.resolve() == run.resolve():
        raise ValueError("--out must be a new run directory, not the run it continues")
    if not cfg.lr > 0:
        raise ValueError("--lr must be above 0")
    if cfg.plans_per_clip < 1:
        raise ValueError("--plans-per-clip must be at least 1")
    budgets = parse_budgets(cfg.budgets)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    state = load_file(str(run / "weights.safetensors"))
    config = demo_config_of(state, cone_positions=True)
    model = DynFocus(config).eval()
    load_visual_state(model, state)
    model.requires_grad_(False)
    for item in budgets:  # a budget below one frame's tokens raises here, not after encoding
        if item is not None:
            plan_for_config(config, SECONDS, item[0])
    positions = model.cone_positions
    assert positions is not None
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "tokenizer.model", out / "tokenizer.model")  # the LM's embeddings belong to it
    (out / "question_tokenizer.json").write_text(build_question_tokenizer(config.qformer.max_question_tokens))
    (out / "train_config.json").write_text(json.dumps({"finetune_from": str(run), **asdict(cfg)}, indent=2))
    lm = Llama(demo_lm_config(len(read_sentencepiece_vocab(out / "tokenizer.model").tokens)))
    lm.load_state_dict(load_file(str(run / "lm.safetensors")), strict=True)
    begin = time.time()

    make = SampleMaker(
        config,
        QuestionTokenizer(out / "question_tokenizer.json"),
        cfg.baseline_share,
        parse_kind_weights(cfg.kind_weights),
    )
    key = {
        "version": CACHE_VERSION,
        "weights": sha256_file(run / "weights.safetensors"),
        "seed": cfg.seed,
        "clips": cfg.clips,
        "kinds": cfg.kind_weights,
        "baseline_share": cfg.baseline_share,
        "budgets": cfg.budgets,
        "plans_per_clip": cfg.plans_per_clip,
    }
    if (
        cache is not None
        and cache.is_file()
        and (saved := torch.load(cache, weights_only=True))["key"] == key
    ):
        clips = [CachedClip(**fields) for fields in saved["clips"]]
        log(f"{len(clips)} encoded clips from {cache}")
    else:
        seeds = range(first, first + cfg.clips)
        clips = cache_clips(model, make, seeds, log, budgets=budgets, plans_per_clip=cfg.plans_per_clip)
        if cache is not None:
            with atomic_path(cache) as tmp:
                torch.save({"key": key, "clips": [dict(vars(c)) for c in clips]}, tmp)
    held = max(1, len(clips) // cfg.plans_per_clip // 10) * cfg.plans_per_clip  # whole clips: all their plans
    train_clips, held_out = clips[:-held], clips[-held:]
    log(f"{len(train_clips)} training plans, {held} held out, cached in {time.time() - begin:.0f}s")

    positions.requires_grad_(True)
    lm.train()
    gguf = write_demo_gguf(lm, out / "tokenizer.model", out / "tokenizer-probe.gguf")
    target = LmTarget(lm, gguf, DEMO_PROMPT, ANSWERS)
    params = [*lm.parameters(), positions]
    groups = [
        {"params": params[:-1], "lr_scale": 1.0},
        {"params": [positions], "lr_scale": cfg.position_lr / cfg.lr, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)

    by_budget = budgets != (None,)

    def accuracy(subset: list[CachedClip]) -> dict[str, float]:
        """Per kind (DynFocus plans), per baseline plan, of each clip's first position question, and (with
        ``--budgets``) of DynFocus plans per visual-token count ("tokens 140")."""

        def labels(c: CachedClip) -> tuple[str, ...]:
            by_tokens = by_budget and c.plan == PLANS[0]
            return (c.label, f"tokens {budget_label(c)}") if by_tokens else (c.label,)

        asks = [(c, c.question, c.answer, labels(c)) for c in subset]
        asks += [(c, *c.facts[0], ("facts_first",)) for c in subset if c.facts]  # a first-cone question
        right: dict[str, list[bool]] = {}
        with torch.no_grad():
            for i in range(0, len(asks), 64):
                chunk = asks[i : i + 64]
                _, hits = target.loss(
                    [add_cone_positions(c, positions) for c, *_ in chunk],
                    [question for _, question, _, _ in chunk],
                    [answer for _, _, answer, _ in chunk],
                )
                for (*_, names), hit in zip(chunk, hits, strict=True):
                    for name in names:
                        right.setdefault(name, []).append(bool(hit))
        return {k: float(np.mean(v)) for k, v in sorted(right.items())}

    running: dict[str, list[bool]] = {kind: [] for kind in (*KINDS, *PLANS[1:], "facts")}
    with_facts = [c for c in train_clips if c.facts]
    for step in range(cfg.steps):
        _set_lr(optimizer, _cosine_lr(step, cfg.steps, cfg.lr, warmup=100))
        batch = [train_clips[int(i)] for i in rng.integers(len(train_clips), size=cfg.batch)]
        answer_loss, hits = target.loss(
            [add_cone_positions(c, positions) for c in batch],
            [c.question for c in batch],
            [c.answer for c in batch],
        )
        fact_loss = torch.zeros(())
        if cfg.fact_batch and with_facts:
            asked = [with_facts[int(i)] for i in rng.integers(len(with_facts), size=cfg.fact_batch)]
            facts = [c.facts[int(rng.integers(len(c.facts)))] for c in asked]
            fact_loss, fact_hits = target.loss(
                [add_cone_positions(c, positions) for c in asked],
                [q for q, _ in facts],
                [a for _, a in facts],
            )
            running["facts"].extend(bool(h) for h in fact_hits)
        _step(optimizer, answer_loss + cfg.fact_weight * fact_loss, params)
        for c, hit in zip(batch, hits, strict=True):
            running[c.label].append(bool(hit))
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            shares = " ".join(f"{k} {np.mean(v[-100:]):.2f}" for k, v in running.items() if v)
            elapsed = time.time() - begin
            losses = f"answer loss {answer_loss.item():.3f} position loss {fact_loss.item():.3f}"
            log(f"step {step + 1}/{cfg.steps} {losses} {elapsed:.0f}s\n  train: {shares}")
            if (step + 1) % (cfg.log_every * 5) == 0 or step + 1 == cfg.steps:
                lm.eval()
                held_text = " ".join(f"{k} {v:.2f}" for k, v in accuracy(held_out).items())
                lm.train()
                log(f"  held out: {held_text}")
    target.close()
    gguf.unlink(missing_ok=True)
    save_run_weights(out, model, lm)
    seconds = round(time.time() - begin)
    (out / "train_report.json").write_text(json.dumps({"finetune_seconds": seconds}, indent=2))
    log(f"saved {out} ({seconds}s)")
    return out / "weights.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the stage-2 run to continue from")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help="keep the encoded clips in this file for the next run")
    add_config_options(parser, FinetuneConfig())
    args = vars(parser.parse_args())
    run, out, cache = args.pop("run"), args.pop("out"), args.pop("cache")
    config = dataclasses.replace(FinetuneConfig(), **args)
    finetune(run, out, config, log=lambda m: print(m, flush=True), cache=cache)


if __name__ == "__main__":
    main()
