"""How fast the demo's stage 2 learns one question kind alone: a diagnostic of what limits the demo.

    OMP_WAIT_POLICY=PASSIVE python -m dfrt.demo.training.single_kind --vision-from runs/demo-frames \
        --kind count --plan uniform --steps 60

Starts from a trained vision tower (stage 1 of ``dfrt.demo.training.train``), fresh Q-Former, scorer,
projectors and
demo LM, and trains them on clips of one kind only (16 a step), printing the share of fresh training clips
answered right (teacher forced, all answer tokens) every 10 steps. ``--selection hard`` uses the runtime's
top-k instead of the perturbed one. No event target for the scorer: this measures the LM's side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from dfrt.config import demo
from dfrt.demo.training import train as recipe
from dfrt.demo.training.lm import new_demo_lm, train_tokenizer, write_demo_gguf
from dfrt.demo.training.prompt import DEMO_PROMPT
from dfrt.demo.world import ANSWERS, KINDS, make_clip
from dfrt.export.question_vocab import build_question_tokenizer
from dfrt.runtime.question_tokenizer import QuestionTokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--vision-from", type=Path, required=True, help="a dfrt.demo.training.train run directory"
    )
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--plan", choices=recipe.PLANS, default="dynfocus")
    parser.add_argument("--selection", choices=("perturbed", "hard"), default="perturbed")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--work", type=Path, default=Path("runs/single-kind"))
    args = parser.parse_args()

    torch.manual_seed(0)
    config = demo()
    model = recipe.new_visual_model(recipe.TrainConfig.output_init_scale)
    recipe.load_vision_tower(model, args.vision_from)
    model.vision_tower.requires_grad_(False)
    model.vision_tower.eval()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(args.work / "tokenizer.model")
    lm = new_demo_lm(tokenizer)
    target = recipe.LmTarget(
        lm, write_demo_gguf(lm, tokenizer, args.work / "probe.gguf"), DEMO_PROMPT, ANSWERS
    )
    questions = args.work / "question_tokenizer.json"
    questions.write_text(build_question_tokenizer(config.qformer.max_question_tokens))
    make = recipe.SampleMaker(config, QuestionTokenizer(questions), baseline_share=0.0)
    params = [p for p in model.parameters() if p.requires_grad] + list(lm.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.05)
    rng, seed, right, start = np.random.default_rng(0), 0, [], time.time()
    for step in range(args.steps):
        samples = []
        while len(samples) < 16:
            seed += 1
            if make_clip(seed).kind == args.kind:
                samples.append(make(seed, args.plan))
        generator = torch.Generator().manual_seed(step)
        visual, _, _ = recipe.encode_batch(model, samples, generator, rng, args.selection)
        loss, hits = target.loss(visual, [s.clip.question for s in samples], [s.clip.answer for s in samples])
        recipe._step(optimizer, loss, params)
        right += hits.tolist()
        if (step + 1) % 10 == 0:
            print(
                f"{step + 1} loss {loss.item():.3f} right (last 160 clips) {np.mean(right[-160:]):.3f} "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
    target.close()


if __name__ == "__main__":
    main()
