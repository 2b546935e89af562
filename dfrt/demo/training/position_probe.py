"""Where a shape is: how much of it the demo's visual tokens carry (a diagnostic of the `moved` questions).

    python -m dfrt.demo.training.position_probe runs/demo-frames runs/demo-frames-pos

For each run's vision tower, renders frames with one shape at a random place and fits a ridge regression
(a linear probe) from a per-frame feature to the shape's centre, and from each patch token to its own grid
cell; prints R^2 on held-out frames (1: position fully linearly readable, 0: not at all). Features: the CLS
token, the mean structure token (what a rod's first token projects), and the pooled grid flattened (position
there is the token order, which is how cones carry it). Also the share of patches whose colour and shape a
linear probe gets right, so a position target's cost to what the tower already knew shows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from dfrt.demo.training.reference import demo_model_of
from dfrt.demo.training.train import _spec
from dfrt.demo.world import COLOURS, SHAPES, Clip, Shape
from dfrt.runtime.preprocess import preprocess_frames


def _frames(count: int, seed: int) -> tuple[list[Clip], np.ndarray]:
    rng = np.random.default_rng(seed)
    clips, centres = [], []
    for _ in range(count):
        x, y = rng.uniform(0.15, 0.85, 2)
        shape = Shape(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))), (float(x), float(y)))
        grey = int(rng.integers(20, 90))
        clips.append(Clip(0, "count", "", "", [shape], (grey, grey, grey)))
        centres.append((x, y))
    return clips, np.asarray(centres)


def _ridge_predict(features: np.ndarray, targets: np.ndarray, train: int) -> np.ndarray:
    """A ridge regression (with bias) fitted on the first ``train`` rows, predicting the rest."""
    x = np.c_[features, np.ones(len(features))]
    w = np.linalg.solve(x[:train].T @ x[:train] + 0.1 * np.eye(x.shape[1]), x[:train].T @ targets[:train])
    return x[train:] @ w


def _ridge_r2(features: np.ndarray, targets: np.ndarray, train: int) -> np.ndarray:
    error = ((_ridge_predict(features, targets, train) - targets[train:]) ** 2).sum(0)
    return 1 - error / ((targets[train:] - targets[train:].mean(0)) ** 2).sum(0)


def _probe_accuracy(features: np.ndarray, labels: np.ndarray, classes: int, train: int) -> float:
    scores = _ridge_predict(features, np.eye(classes)[labels], train)
    return float((scores.argmax(1) == labels[train:]).mean())


def probe(run: Path, count: int = 600) -> dict[str, float]:
    model = demo_model_of(load_file(str(run / "weights.safetensors")))  # the merge scorer's weights too
    config = model.config
    clips, centres = _frames(count, seed=0)
    pixels = preprocess_frames(np.stack([c.frame(0.0) for c in clips]), _spec(config))
    with torch.no_grad():
        tokens, pooled = model.encode_frames(torch.from_numpy(pixels))
        structure = model.structure_tokens(tokens)
    train, grid = count * 3 // 4, config.vision.grid
    result = {}
    features = {"cls": tokens[:, 0], "mean structure": structure.mean(1), "pooled grid": pooled}
    for name, feature in features.items():
        r2 = _ridge_r2(feature.flatten(1).numpy(), centres, train)
        result[f"{name} x"], result[f"{name} y"] = float(r2[0]), float(r2[1])
    patches = tokens[:, 1:].flatten(0, 1).numpy()
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    cells = np.tile(np.stack([rows, cols], -1).reshape(-1, 2), (count, 1)).astype(np.float64)
    r2 = _ridge_r2(patches, cells, train * grid * grid)
    result["patch row"], result["patch col"] = float(r2[0]), float(r2[1])
    labels = [c.patch_labels(0.0, grid) for c in clips]
    colours = np.concatenate([c for c, _ in labels])
    shapes = np.concatenate([s for _, s in labels])
    covered = colours > 0
    split = int(covered[: train * grid * grid].sum())
    result["patch colour"] = _probe_accuracy(patches[covered], colours[covered], 1 + len(COLOURS), split)
    result["patch shape"] = _probe_accuracy(patches[covered], shapes[covered], 1 + len(SHAPES), split)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="dfrt.demo.training.train run directories")
    parser.add_argument("--frames", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {run: probe(run, args.frames) for run in args.runs}
    names = list(next(iter(results.values())))
    print(f"{'probe (R^2, or accuracy)':26s}" + "".join(f"{run!s:>22s}" for run in results))
    for name in names:
        print(f"{name:26s}" + "".join(f"{r[name]:22.2f}" for r in results.values()))


if __name__ == "__main__":
    main()
