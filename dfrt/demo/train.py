"""Train the demo DynFocus on the synthetic world, into a frozen SmolLM2-135M-Instruct.

    OMP_WAIT_POLICY=PASSIVE python -m dfrt.demo.train --out runs/demo   # the recipe of the shipped weights

(PASSIVE: on a 2-core machine shared with anything else, spinning OpenMP threads make steps 3x slower.)

Two stages, one fixed seed:

1. Visual pre-training, no LLM: vision tower (from scratch), Q-Former, DPE scorer (perturbed top-k, as the
   paper), CCE and projectors, through a small auxiliary answer head (a 2-layer transformer over the visual
   tokens and the question) trained with cross-entropy over the answer words. Cheap: thousands of clips.
2. Through the LLM: SmolLM2-135M-Instruct, loaded from the GGUF the runtime uses (dequantised, frozen, bf16),
   gets the prompt of the demo bundle with the visual embeddings at ``<image>``; the loss is the answer
   tokens' cross-entropy (plus the auxiliary loss), and every visual module keeps training.

A share of the clips is encoded as the baselines do (uniform or random frames, cones only, same token budget),
so the one model can be evaluated under every frame-selection strategy. The auxiliary head is training-only.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfrt.config import DynFocusConfig, demo
from dfrt.demo.evaluate import baseline_frames
from dfrt.demo.gguf_torch import read_llama_gguf
from dfrt.demo.world import ANSWERS, COLOURS, SECONDS, SHAPES, Clip, make_clip
from dfrt.manifest import Preprocess, PromptTemplate
from dfrt.model.dynfocus import DynFocus
from dfrt.runtime.preprocess import preprocess_frames
from dfrt.runtime.question import QuestionTokenizer
from dfrt.runtime.selection import (
    EventPrototypes,
    KeyFrameSelection,
    fixed_selection,
)

VALIDATION_SEED_BASE = 1_500_000_000  # monitoring only; the test set lives elsewhere (world.TEST_SEED_BASE)
PLANS = ("dynfocus", "uniform", "random")


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    stage1_steps: int = 500
    stage1_batch: int = 16
    stage1_lr: float = 5e-4
    stage2_steps: int = 300
    stage2_batch: int = 8
    stage2_lr: float = 2e-4
    aux_weight: float = 0.3
    frame_weight: float = 1.0  # dense per-frame labels (colour/shape pairs, count) for the vision tower
    baseline_share: float = 0.3  # clips encoded as uniform/random cones-only
    weight_decay: float = 0.05
    log_every: int = 25
    save_every: int = 100


@dataclass
class Sample:
    clip: Clip
    pixels: np.ndarray  # (T, 3, S, S)
    question_ids: np.ndarray  # (1, L) BERT ids for the Q-Former
    answer: int  # index into ANSWERS
    plan: str
    pairs: np.ndarray  # (T, colours * shapes) which pairs each sampled frame shows
    counts: np.ndarray  # (T,) how many shapes each sampled frame shows


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


class SampleMaker:
    def __init__(
        self, config: DynFocusConfig, question_tokenizer: QuestionTokenizer, baseline_share: float
    ) -> None:
        self.config = config
        self.spec = Preprocess(
            image_size=config.vision.image_size, mean=config.image_mean, std=config.image_std
        )
        self.tokenize = question_tokenizer
        self.baseline_share = baseline_share

    def __call__(self, seed: int, plan: str | None = None) -> Sample:
        rng = np.random.default_rng(seed + 7)
        clip = make_clip(seed)
        pixels = preprocess_frames(degrade(clip.sampled_frames(), rng), self.spec)
        ids, _ = self.tokenize(clip.question)
        if plan is None:
            draw = rng.random()
            plan = (
                "dynfocus"
                if draw >= self.baseline_share
                else ("uniform" if draw < self.baseline_share / 2 else "random")
            )
        attributes = [clip.frame_attributes(float(t)) for t in range(SECONDS)]
        pairs = np.stack([a[0] for a in attributes])
        counts = np.asarray([a[1] for a in attributes], dtype=np.int64)
        return Sample(clip, pixels, ids, ANSWERS.index(clip.answer), plan, pairs, counts)


def plan_selection(
    config: DynFocusConfig, plan: str, num_frames: int, rng: np.random.Generator
) -> tuple[KeyFrameSelection | None, bool]:
    """(frames override, rods) for a plan: DPE's own choice, or the baselines' cone-only frames."""
    if plan == "dynfocus":
        return None, True
    identity = np.arange(num_frames, dtype=np.int64)
    chosen = baseline_frames(plan, num_frames, config, rng)
    return fixed_selection(chosen, EventPrototypes(seeds=identity, assignment=identity)), False


def _batches(make: SampleMaker, first_seed: int, steps: int, batch: int) -> Iterator[list[Sample]]:
    """Batches of fresh clips, rendered in this process: a loader worker next to torch's two threads on a
    2-core machine makes every step several times slower (OpenMP threads spin against the worker)."""
    for step in range(steps):
        yield [make(first_seed + step * batch + i) for i in range(batch)]


class AnswerHead(nn.Module):
    """Training-only: [CLS] + question words + visual tokens -> 2-layer transformer -> answer word logits."""

    def __init__(self, llm_width: int, vocab_size: int, width: int = 128, max_len: int = 1024) -> None:
        super().__init__()
        self.visual = nn.Linear(llm_width, width)
        self.words = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(max_len, width)
        self.cls = nn.Parameter(torch.zeros(1, width))
        layer = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.out = nn.Linear(width, len(ANSWERS))

    def forward(self, visual: list[torch.Tensor], question_ids: list[torch.Tensor]) -> torch.Tensor:
        rows = [
            torch.cat([self.cls, self.words(q.reshape(-1)), self.visual(v)])
            for v, q in zip(visual, question_ids, strict=True)
        ]
        length = max(r.shape[0] for r in rows)
        x = torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])
        pad = torch.stack([torch.arange(length) >= r.shape[0] for r in rows])
        x = x + self.position(torch.arange(length))[None]
        return self.out(self.encoder(x, src_key_padding_mask=pad)[:, 0])


class FrameHead(nn.Module):
    """Training-only: each frame's [CLS | mean patch] token -> which colour/shape pairs it shows, how many."""

    MAX_COUNT = 8

    def __init__(self, width: int) -> None:
        super().__init__()
        self.pairs = len(COLOURS) * len(SHAPES)
        self.out = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, self.pairs + self.MAX_COUNT))

    def loss(self, tokens: torch.Tensor, samples: list[Sample]) -> torch.Tensor:
        x = self.out(torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1))
        pairs = torch.from_numpy(np.concatenate([s.pairs for s in samples]))
        counts = torch.from_numpy(np.concatenate([s.counts for s in samples])).clamp_max(self.MAX_COUNT - 1)
        return F.binary_cross_entropy_with_logits(x[:, : self.pairs], pairs) + F.cross_entropy(
            x[:, self.pairs :], counts
        )


class LlmTarget:
    """The frozen LLM and the demo prompt: visual embeddings in, answer-token cross-entropy out."""

    def __init__(self, gguf: Path, template: PromptTemplate) -> None:
        from dfrt.runtime.generate import Generator
        from dfrt.runtime.llm import LlamaModel

        self.model = read_llama_gguf(gguf, torch.bfloat16)
        self._tokenizer = LlamaModel(gguf, n_ctx=512)
        self._generator = Generator(self._tokenizer, template)
        self._cache: dict[str, tuple[list[int], list[int]]] = {}
        self.end = self._tokenizer.tokenize("<|im_end|>", add_bos=False, special=True)
        self.answer_ids = {
            a: self._tokenizer.tokenize(a, add_bos=False, special=False) + self.end for a in ANSWERS
        }

    def prompt(self, question: str) -> tuple[list[int], list[int]]:
        if question not in self._cache:
            self._cache[question] = self._generator.prompt_ids(question)
        return self._cache[question]

    def loss(
        self, visual: list[torch.Tensor], questions: list[str], answers: list[str]
    ) -> tuple[torch.Tensor, float]:
        """Mean answer-token cross-entropy and first-answer-token accuracy (teacher forced)."""
        embed = self.model.model.embed_tokens
        rows, targets, positions = [], [], []
        for v, q, a in zip(visual, questions, answers, strict=True):
            before, after = self.prompt(q)
            answer = self.answer_ids[a]
            text_after = torch.tensor(after + answer)
            row = torch.cat([embed(torch.tensor(before)), v.to(torch.bfloat16), embed(text_after)])
            first = len(before) + v.shape[0] + len(after)  # position of the first answer token
            rows.append(row)
            positions.append(torch.arange(first - 1, first - 1 + len(answer)))
            targets.append(torch.tensor(answer))
        length = max(r.shape[0] for r in rows)
        x = torch.stack([F.pad(r, (0, 0, 0, length - r.shape[0])) for r in rows])
        hidden = self.model.hidden_states(inputs_embeds=x)
        picked = torch.cat([hidden[i, p] for i, p in enumerate(positions)])
        logits = self.model.lm_head(picked).float()
        target = torch.cat(targets)
        loss = F.cross_entropy(logits, target)
        starts = np.cumsum([0] + [len(t) for t in targets[:-1]])
        accuracy = float((logits[starts].argmax(-1) == target[starts]).float().mean())
        return loss, accuracy


def encode_batch(
    model: DynFocus, samples: list[Sample], generator: torch.Generator, rng: np.random.Generator
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Visual embeddings per sample, and the frame tokens of the whole batch (B*T, 1+P*P, W): the vision
    tower runs once over every frame of the batch."""
    pixels = torch.from_numpy(np.concatenate([s.pixels for s in samples]))
    tokens, pooled = model.encode_frames(pixels)
    out, start = [], 0
    for s in samples:
        t = s.pixels.shape[0]
        frames, rods = plan_selection(model.config, s.plan, t, rng)
        ids = torch.from_numpy(s.question_ids)
        result = model.forward_tokens(
            tokens[start : start + t],
            pooled[start : start + t],
            ids,
            None,
            "perturbed",
            generator,
            frames,
            rods,
        )
        out.append(result.embeds)
        start += t
    return out, tokens


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


def train(out: Path, gguf: Path, cfg: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """Run both stages; ``out/weights.safetensors`` is written (atomically) every ``save_every`` steps."""
    from safetensors.torch import save_file

    from dfrt.demo.bundle import DEMO_PROMPT
    from dfrt.export.tokenizer import build_question_tokenizer
    from dfrt.fileio import atomic_path

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    config = demo()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = out / "question_tokenizer.json"
    tokenizer_path.write_text(build_question_tokenizer(config.qformer.max_question_tokens))
    make = SampleMaker(config, QuestionTokenizer(tokenizer_path), cfg.baseline_share)
    model = DynFocus(config).train()
    head = AnswerHead(config.llm_width, config.qformer.vocab_size)
    frame_head = FrameHead(config.vision.width)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))

    def save(tag: str) -> None:
        with atomic_path(out / "weights.safetensors") as tmp:
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
        log(f"saved weights ({tag})")

    first_seed = cfg.seed * 10_000_000  # stage 2 continues where stage 1 stopped: every clip is new
    params = list(model.parameters()) + list(head.parameters()) + list(frame_head.parameters())
    begin = time.time()

    # -- stage 1: visual pre-training through the auxiliary head --------------------------------------------
    optimizer = torch.optim.AdamW(params, lr=cfg.stage1_lr, weight_decay=cfg.weight_decay)
    running: list[float] = []
    batches = _batches(make, first_seed, cfg.stage1_steps, cfg.stage1_batch)
    for step in range(cfg.stage1_steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg.stage1_steps, cfg.stage1_lr)
        samples = next(batches)
        visual, tokens = encode_batch(model, samples, generator, rng)
        logits = head(visual, [torch.from_numpy(s.question_ids) for s in samples])
        target = torch.tensor([s.answer for s in samples])
        frame_loss = frame_head.loss(tokens, samples)
        loss = F.cross_entropy(logits, target) + cfg.frame_weight * frame_loss
        _step(optimizer, loss, params)
        running.append(float((logits.argmax(-1) == target).float().mean()))
        if (step + 1) % cfg.log_every == 0:
            log(
                f"stage1 {step + 1}/{cfg.stage1_steps} loss {loss.item():.3f} frames {frame_loss.item():.3f} "
                f"acc {np.mean(running[-cfg.log_every :]):.3f} {time.time() - begin:.0f}s"
            )
        if (step + 1) % cfg.save_every == 0:
            save(f"stage1 step {step + 1}")
    save("stage 1 done")

    # -- stage 2: through the frozen LLM --------------------------------------------------------------------
    llm = LlmTarget(gguf, DEMO_PROMPT)
    optimizer = torch.optim.AdamW(params, lr=cfg.stage2_lr, weight_decay=cfg.weight_decay)
    running = []
    batches = _batches(
        make, first_seed + cfg.stage1_steps * cfg.stage1_batch, cfg.stage2_steps, cfg.stage2_batch
    )
    for step in range(cfg.stage2_steps):
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, cfg.stage2_steps, cfg.stage2_lr, warmup=25)
        samples = next(batches)
        visual, tokens = encode_batch(model, samples, generator, rng)
        lm_loss, accuracy = llm.loss(
            visual, [s.clip.question for s in samples], [s.clip.answer for s in samples]
        )
        aux = F.cross_entropy(
            head(visual, [torch.from_numpy(s.question_ids) for s in samples]),
            torch.tensor([s.answer for s in samples]),
        )
        loss = lm_loss + cfg.aux_weight * (aux + cfg.frame_weight * frame_head.loss(tokens, samples))
        _step(optimizer, loss, params)
        running.append(accuracy)
        if (step + 1) % cfg.log_every == 0:
            log(
                f"stage2 {step + 1}/{cfg.stage2_steps} lm {lm_loss.item():.3f} aux {aux.item():.3f} "
                f"first-token acc {np.mean(running[-cfg.log_every :]):.3f} {time.time() - begin:.0f}s"
            )
        if (step + 1) % cfg.save_every == 0:
            save(f"stage2 step {step + 1}")
    save("done")
    (out / "train_report.json").write_text(
        json.dumps({"seconds": round(time.time() - begin), "frames_per_clip": SECONDS}, indent=2)
    )
    return out / "weights.safetensors"


def main() -> None:
    from dfrt.demo.bundle import smollm2_gguf

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    for name, value in asdict(TrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args())
    out = args.pop("out")
    train(out, smollm2_gguf(), TrainConfig(**args), log=lambda m: print(m, flush=True))


if __name__ == "__main__":
    main()
