"""Which way the shape moved: is it in what the demo LM is given? (a diagnostic of the `moved` questions)

    python -m dfrt.demo.training.direction_probe runs/st3 [--clips 1200]

Encodes `moved` clips (training seeds) with a run's visual model exactly as at run time and fits a linear
classifier (softmax regression, 3/4 of the clips; accuracy on the other quarter) from the pooled 4 x 4 grid of
the first and the last key frame, as the LM receives it (after the projector), to the direction. Three
readings of the same tokens: flattened in slot order (a reader that knows which cell each token is), the
last minus the first flattened, and the mean over the 16 cells (a reader that cannot tell the cells apart:
what rotary positions alone leave the demo LM). Chance is 0.25.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from dfrt.config import demo
from dfrt.demo.training.reference import demo_model_of
from dfrt.demo.training.train import _spec
from dfrt.demo.world import DIRECTIONS, make_clip
from dfrt.runtime.preprocess import preprocess_frames
from dfrt.runtime.question_tokenizer import QuestionTokenizer

SEED_BASE = 300_000_000  # training distribution, apart from the recipe's (stage 2 seeds below 30, stage 3)


def first_and_last_grids(run: Path, clips: int) -> tuple[np.ndarray, np.ndarray]:
    """(clips, 2, 16, D) projected pooled grids of the first and last key frame, and the directions."""
    model = demo_model_of(load_file(str(run / "weights.safetensors")))
    tokenize = QuestionTokenizer(run / "question_tokenizer.json")
    spec, pooled = _spec(demo()), model.config.pooled_tokens
    grids, directions = [], []
    for i in range(clips):
        clip = make_clip(SEED_BASE + i, "moved")
        pixels = torch.from_numpy(preprocess_frames(clip.sampled_frames(), spec))
        ids, mask = tokenize(clip.question)
        with torch.no_grad():
            out = model(pixels, torch.from_numpy(ids), torch.from_numpy(mask))
        starts = np.cumsum(out.tokens_per_frame) - out.tokens_per_frame
        first, last = (int(starts[out.selection.key_frames[j]]) for j in (0, -1))
        grids.append(np.stack([out.embeds[s : s + pooled].numpy() for s in (first, last)]))
        directions.append(DIRECTIONS.index(clip.answer))
    return np.stack(grids), np.asarray(directions)


def probe_accuracy(features: np.ndarray, labels: np.ndarray, steps: int = 300) -> float:
    """Held-out accuracy of softmax regression (Adam, weight decay) on standardised features."""
    torch.manual_seed(0)
    x, y = torch.from_numpy(features.reshape(len(features), -1)).float(), torch.from_numpy(labels)
    cut = len(x) * 3 // 4
    x = (x - x[:cut].mean(0)) / (x[:cut].std(0) + 1e-5)
    linear = torch.nn.Linear(x.shape[1], len(DIRECTIONS))
    optimizer = torch.optim.Adam(linear.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(linear(x[:cut]), y[:cut]).backward()
        optimizer.step()
    with torch.no_grad():
        return float((linear(x[cut:]).argmax(1) == y[cut:]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--clips", type=int, default=1200)
    args = parser.parse_args()
    grids, directions = first_and_last_grids(args.run, args.clips)
    readings = {
        "first and last grids, slot order": grids,
        "last - first, slot order": grids[:, 1] - grids[:, 0],
        "last - first, mean over cells": (grids[:, 1] - grids[:, 0]).mean(axis=1),
    }
    print(f"{args.run}: direction of `moved` clips from the key frames' pooled grids ({args.clips} clips)")
    for name, features in readings.items():
        print(f"  {name:34s} {probe_accuracy(features, directions):.3f}")


if __name__ == "__main__":
    main()
