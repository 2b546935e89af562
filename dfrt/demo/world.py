"""A seeded synthetic video world for the demo model: coloured shapes that stay, move, appear briefly,
change colour or leave, with one question about each clip whose answer is a single word.

Everything is drawn with OpenCV from a seed, so a clip is fully described by ``(seed, kind)``: training draws
new seeds on the fly, the held-out test set is a fixed seed range that training never uses. Brief events are
visible in only one or two of the frames sampled at 1 fps: the questions about them are the ones where frame
selection matters. numpy + OpenCV only (no torch): ``dfrt eval`` runs it on the torch-free runtime.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dfrt.fileio import atomic_path

COLOURS: dict[str, tuple[int, int, int]] = {  # RGB
    "red": (225, 35, 35),
    "green": (40, 185, 60),
    "blue": (45, 85, 235),
    "yellow": (240, 215, 30),
    "purple": (160, 55, 210),
}
SHAPES = ("circle", "square", "triangle")
DIRECTIONS = ("left", "right", "up", "down")
COUNTS = ("one", "two", "three", "four")
ANSWERS = (*COLOURS, *SHAPES, *DIRECTIONS, *COUNTS)

SECONDS = 16  # sampled at 1 fps by the runtime: 16 frames at t = 0, 1, ..., 15 s
FPS = 4
SIZE = 224
OBJECT_SIZE = 44

QUESTIONS: dict[str, tuple[str, ...]] = {
    "brief_colour": (
        "What color was the shape that appeared briefly?",
        "What color was the shape that appeared for a moment?",
        "Which color did the briefly visible shape have?",
    ),
    "brief_shape": (
        "What shape appeared briefly?",
        "Which shape appeared for a moment?",
        "What kind of shape was only visible briefly?",
    ),
    "brief_when": (
        "What color was the shape that appeared briefly near the {when}?",
        "Near the {when}, a shape appeared for a moment. What color was it?",
    ),
    "moved": (
        "Which direction did the {colour} {shape} move?",
        "In which direction was the {colour} {shape} moving?",
    ),
    "changed": (
        "What color did the {shape} turn into?",
        "The {shape} changed color. What color did it become?",
    ),
    "left": (
        "What color was the shape that left the scene?",
        "A shape disappeared and did not come back. What color was it?",
    ),
    "count": (
        "How many shapes are there?",
        "How many shapes can you see?",
    ),
}
KINDS = tuple(QUESTIONS)
ANSWER_TYPES: dict[str, tuple[str, ...]] = {
    "brief_colour": tuple(COLOURS),
    "brief_shape": SHAPES,
    "brief_when": tuple(COLOURS),
    "moved": DIRECTIONS,
    "changed": tuple(COLOURS),
    "left": tuple(COLOURS),
    "count": COUNTS,
}
BRIEF_KINDS = ("brief_colour", "brief_shape", "brief_when")

TRAIN_SEEDS = range(0, 10**9)  # training seeds are drawn from here ...
TEST_SEED_BASE = 2 * 10**9  # ... and never reach the held-out set's
FRESH_TEST_SEED_BASE = 6 * 10**9  # a second test set, drawn 2026-12-01, that no choice was made on
VALIDATION_SEED_BASE = 4 * 10**9  # choosing between runs and checkpoints: neither training's nor the test's


@dataclass
class Shape:
    """One object: where it is at time t (None: not visible) and what colour it has."""

    shape: str
    colour: str
    start: tuple[float, float]  # centre in [0, 1] image coordinates
    velocity: tuple[float, float] = (0.0, 0.0)  # image fractions per second
    visible: tuple[float, float] = (0.0, math.inf)  # [from, until) seconds
    colour_after: tuple[float, str] | None = None  # (time, new colour)

    def centre(self, t: float) -> tuple[float, float] | None:
        if not self.visible[0] <= t < self.visible[1]:
            return None
        return self.start[0] + self.velocity[0] * t, self.start[1] + self.velocity[1] * t

    @property
    def brief(self) -> bool:
        """Visible for under 3 s: in one or two of the frames sampled at 1 fps (a brief event)."""
        return self.visible[1] - self.visible[0] < 3

    def colour_at(self, t: float) -> str:
        if self.colour_after is not None and t >= self.colour_after[0]:
            return self.colour_after[1]
        return self.colour


@dataclass
class Clip:
    seed: int
    kind: str
    question: str
    answer: str
    shapes: list[Shape]
    background: tuple[int, int, int]
    evidence: list[int] = field(default_factory=list)  # sampled seconds where the answer is visible

    def frame(self, t: float, size: int = SIZE) -> np.ndarray:
        """The RGB frame at time ``t`` seconds, (size, size, 3) uint8."""
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = self.background
        radius = OBJECT_SIZE * size / SIZE / 2
        for shape in self.shapes:
            centre = shape.centre(t)
            if centre is not None:
                _draw(image, shape.shape, COLOURS[shape.colour_at(t)], centre, radius)
        return image

    def patch_labels(self, t: float, grid: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-patch labels of frame ``t`` on a ``grid`` x ``grid`` patch grid: colour class and shape class
        (int64, 0 = background, else 1 + index into COLOURS / SHAPES) of the shape covering most of each
        patch, background where none covers a quarter of it. Dense targets for the vision tower."""
        visible = [s for s in self.shapes if s.centre(t) is not None]
        index = np.zeros((SIZE, SIZE), dtype=np.uint8)
        for k, shape in enumerate(visible, start=1):  # drawn in the frame's order: later shapes on top
            centre = shape.centre(t)
            assert centre is not None
            _draw(index, shape.shape, (k, k, k), centre, OBJECT_SIZE / 2, cv2.LINE_8)
        cell = SIZE // grid
        cover = np.stack(
            [
                (index[: grid * cell, : grid * cell] == k).reshape(grid, cell, grid, cell).mean(axis=(1, 3))
                for k in range(len(visible) + 1)
            ]
        )  # (1 + shapes, grid, grid)
        cover[0] = 0.25  # background wins unless a shape covers a quarter of the patch
        owner = cover.argmax(axis=0)
        colour_of = np.asarray([0] + [1 + list(COLOURS).index(s.colour_at(t)) for s in visible])
        shape_of = np.asarray([0] + [1 + SHAPES.index(s.shape) for s in visible])
        return colour_of[owner].reshape(-1).astype(np.int64), shape_of[owner].reshape(-1).astype(np.int64)

    def sampled_frames(self, size: int = SIZE) -> np.ndarray:
        """The frames the runtime samples (1 fps): (SECONDS, size, size, 3) uint8 RGB."""
        return np.stack([self.frame(float(t), size) for t in range(SECONDS)])

    def write(self, path: Path, fps: int = FPS) -> Path:
        """The clip as an mp4 (mp4v), written atomically."""
        with atomic_path(path) as tmp:
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, (SIZE, SIZE))
            if not writer.isOpened():
                raise OSError(f"OpenCV cannot write {path}")
            # tiny offset: the frame shown at second s is the one the runtime samples at s
            for i in range(SECONDS * fps):
                writer.write(cv2.cvtColor(self.frame(i / fps + 1e-3), cv2.COLOR_RGB2BGR))
            writer.release()
        return path

    def to_dict(self) -> dict[str, object]:
        return {
            "seed": self.seed,
            "kind": self.kind,
            "question": self.question,
            "answer": self.answer,
            "evidence_seconds": self.evidence,
        }


def _draw(
    image: np.ndarray,
    shape: str,
    colour: tuple[int, int, int],
    centre: tuple[float, float],
    r: float,
    line: int = cv2.LINE_AA,
) -> None:
    size = image.shape[0]
    cx, cy = centre[0] * size, centre[1] * size
    shift = 4  # sub-pixel precision for anti-aliased edges
    scale = 1 << shift
    if shape == "circle":
        cv2.circle(image, (round(cx * scale), round(cy * scale)), round(r * scale), colour, -1, line, shift)
        return
    if shape == "square":
        s = r * 0.85
        points = [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    else:  # triangle
        points = [(cx, cy - r), (cx + r * 0.95, cy + r * 0.75), (cx - r * 0.95, cy + r * 0.75)]
    poly = np.round(np.asarray(points) * scale).astype(np.int32)
    cv2.fillPoly(image, [poly], colour, line, shift)


# -- clip generation ------------------------------------------------------------------------------------
def _slots(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """n well-separated positions: cells of a jittered 3x3 grid."""
    cells = rng.choice(9, size=n, replace=False)
    return [
        ((c % 3 + 0.5) / 3 + rng.uniform(-0.05, 0.05), (c // 3 + 0.5) / 3 + rng.uniform(-0.05, 0.05))
        for c in cells
    ]


def _brief_window(rng: np.random.Generator, lo: int, hi: int) -> tuple[tuple[float, float], list[int]]:
    """Visible in one or two sampled seconds within [lo, hi]."""
    first = int(rng.integers(lo, hi + 1))
    span = 1 if rng.random() < 0.6 or first == hi else 2
    seconds = list(range(first, first + span))
    return (first - 0.3, first + span - 1 + 0.3), seconds


def _distinct(rng: np.random.Generator, options: tuple[str, ...] | list[str], n: int) -> list[str]:
    return [str(x) for x in rng.choice(list(options), size=n, replace=False)]


def make_clip(seed: int, kind: str | None = None) -> Clip:
    """The clip of ``seed`` (its kind drawn from the seed unless given)."""
    rng = np.random.default_rng(seed)
    kind = kind or KINDS[int(rng.integers(len(KINDS)))]
    if kind not in QUESTIONS:
        raise ValueError(f"unknown clip kind {kind!r}; choose one of {', '.join(KINDS)}")
    grey = int(rng.integers(20, 90))
    background = (grey, grey, grey) if rng.random() < 0.5 else (255 - grey, 255 - grey, 255 - grey)
    template = QUESTIONS[kind][int(rng.integers(len(QUESTIONS[kind])))]
    shapes: list[Shape] = []
    evidence: list[int] = []
    fill: dict[str, str] = {}

    if kind in ("brief_colour", "brief_shape"):
        n_static = int(rng.integers(1, 3))
        colours = _distinct(rng, tuple(COLOURS), n_static + 1)
        kinds = [str(s) for s in rng.choice(SHAPES, size=n_static + 1)]
        if kind == "brief_shape":  # the brief shape's kind differs from every static one
            kinds = _distinct(rng, SHAPES, min(n_static + 1, len(SHAPES)))
        positions = _slots(rng, n_static + 1)
        for i in range(n_static):
            shapes.append(Shape(kinds[i], colours[i], positions[i]))
        window, evidence = _brief_window(rng, 1, SECONDS - 2)
        shapes.append(Shape(kinds[-1], colours[-1], positions[-1], visible=window))
        answer = colours[-1] if kind == "brief_colour" else kinds[-1]
    elif kind == "brief_when":
        colours = _distinct(rng, tuple(COLOURS), 3)
        positions = _slots(rng, 3)
        shapes.append(Shape(str(rng.choice(SHAPES)), colours[0], positions[0]))
        early, early_s = _brief_window(rng, 1, 4)
        late, late_s = _brief_window(rng, SECONDS - 5, SECONDS - 2)
        shapes.append(Shape(str(rng.choice(SHAPES)), colours[1], positions[1], visible=early))
        shapes.append(Shape(str(rng.choice(SHAPES)), colours[2], positions[2], visible=late))
        when = "end" if rng.random() < 0.5 else "start"
        fill["when"] = when
        answer, evidence = (colours[2], late_s) if when == "end" else (colours[1], early_s)
    elif kind == "moved":
        n_static = int(rng.integers(1, 3))
        colours = _distinct(rng, tuple(COLOURS), n_static + 1)
        direction = str(rng.choice(DIRECTIONS))
        dx, dy = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[direction]
        speed = rng.uniform(0.035, 0.045)  # image fractions per second: about 60% of the frame in 15 s
        lane = rng.uniform(0.2, 0.8)
        start = (0.5 - dx * 0.3, lane) if dx else (lane, 0.5 - dy * 0.3)
        mover = Shape(str(rng.choice(SHAPES)), colours[-1], start, velocity=(dx * speed, dy * speed))
        others = [p for p in _slots(rng, 6) if _far_from_path(p, mover)][:n_static]
        for i, p in enumerate(others):
            shapes.append(Shape(str(rng.choice(SHAPES)), colours[i], p))
        shapes.append(mover)
        fill.update(colour=mover.colour, shape=mover.shape)
        answer, evidence = direction, list(range(SECONDS))
    elif kind == "changed":
        n_other = int(rng.integers(0, 3))
        kinds = _distinct(rng, SHAPES, n_other + 1)
        colours = _distinct(rng, tuple(COLOURS), n_other + 2)
        positions = _slots(rng, n_other + 1)
        at = float(rng.integers(4, 11)) + 0.5
        for i in range(n_other):
            shapes.append(Shape(kinds[i], colours[i], positions[i]))
        shapes.append(Shape(kinds[-1], colours[-2], positions[-1], colour_after=(at, colours[-1])))
        fill["shape"] = kinds[-1]
        answer, evidence = colours[-1], list(range(math.ceil(at), SECONDS))
    elif kind == "left":
        n_stay = int(rng.integers(1, 3))
        colours = _distinct(rng, tuple(COLOURS), n_stay + 1)
        positions = _slots(rng, n_stay + 1)
        gone = float(rng.integers(4, 11)) + 0.5
        for i in range(n_stay):
            shapes.append(Shape(str(rng.choice(SHAPES)), colours[i], positions[i]))
        shapes.append(Shape(str(rng.choice(SHAPES)), colours[-1], positions[-1], visible=(0.0, gone)))
        answer, evidence = colours[-1], list(range(math.ceil(gone) - 1, SECONDS))
    else:  # count
        n = int(rng.integers(1, len(COUNTS) + 1))
        colours = [str(c) for c in rng.choice(list(COLOURS), size=n)]
        for i, p in enumerate(_slots(rng, n)):
            shapes.append(Shape(str(rng.choice(SHAPES)), colours[i], p))
        answer, evidence = COUNTS[n - 1], list(range(SECONDS))
    question = template.format(**fill)
    return Clip(seed, kind, question, answer, shapes, background, evidence)


def _far_from_path(point: tuple[float, float], mover: Shape) -> bool:
    """True when ``point`` keeps clear of the mover's whole track."""
    margin = 1.3 * OBJECT_SIZE / SIZE
    for t in np.linspace(0, SECONDS, 33):
        centre = mover.centre(float(t))
        if centre and abs(centre[0] - point[0]) < margin and abs(centre[1] - point[1]) < margin:
            return False
    return True


def held_out_clip(index: int) -> Clip:
    """Clip ``index`` of the fixed held-out test set: kinds in rotation, seeds training never draws."""
    return make_clip(TEST_SEED_BASE + index, KINDS[index % len(KINDS)])


def validation_clip(index: int) -> Clip:
    """Clip ``index`` of the validation set (for choosing checkpoints; the test set stays untouched)."""
    return make_clip(VALIDATION_SEED_BASE + index, KINDS[index % len(KINDS)])


def fresh_test_clip(index: int) -> Clip:
    """Clip ``index`` of the fresh test set: the old test set informed many rounds of choices, this one none
    (its first measurement is the token-budget frontier of 2026-12-01)."""
    return make_clip(FRESH_TEST_SEED_BASE + index, KINDS[index % len(KINDS)])
