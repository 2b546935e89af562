"""Calibration sets: the feeds every graph really sees when the FP32 bundle runs on real videos."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dfrt.contracts import GraphSpec
from dfrt.errors import InputError
from dfrt.paths import QUESTIONS_FILE
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VisualPipeline

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v"}
DEFAULT_QUESTIONS = (
    "What happens in this video?",
    "How many people or objects move, and in which direction?",
    "What colour is the object that appears near the end?",
)


class _Recorder:
    """Wraps a graph runner and keeps a copy of every feed it runs."""

    def __init__(self, runner: object, sink: list[dict[str, np.ndarray]]) -> None:
        self._runner = runner
        self.spec: GraphSpec = runner.spec  # type: ignore[attr-defined]
        self._sink = sink

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._sink.append({k: v.copy() for k, v in inputs.items()})
        return self._runner.run(inputs)  # type: ignore[attr-defined]


@dataclass
class CalibrationSet:
    videos: list[Path]
    feeds: dict[str, list[dict[str, np.ndarray]]] = field(default_factory=dict)  # graph -> recorded feeds

    @property
    def frames(self) -> int:
        return sum(f["pixels"].shape[0] for f in self.feeds.get("vision", []))


def find_videos(directory: Path) -> list[Path]:
    """The video files in ``directory`` (sorted; not recursive)."""
    if not directory.is_dir():
        raise InputError(f"calibration videos: {directory} is not a directory")
    videos = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if not videos:
        raise InputError(
            f"calibration videos: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in {directory}"
        )
    return videos


def read_questions(path: Path) -> tuple[str, ...]:
    """The questions in ``path``: one a line; blank lines and lines starting with ``#`` are skipped."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"calibration questions: cannot read {path}: {e}") from e
    questions = tuple(q for q in (line.strip() for line in lines) if q and not q.startswith("#"))
    if not questions:
        raise InputError(f"calibration questions: {path} has no questions (one a line)")
    return questions


def calibration_questions(videos: Path | None, questions_file: Path | None = None) -> tuple[str, ...]:
    """``questions_file``'s questions, else those of ``questions.txt`` in the ``videos`` folder, else a few
    generic ones. The question graph's INT8 ranges come from them: the questions a deployment will be
    asked calibrate it best."""
    if questions_file is not None:
        return read_questions(questions_file)
    if videos is not None and (videos / QUESTIONS_FILE).is_file():
        return read_questions(videos / QUESTIONS_FILE)
    return DEFAULT_QUESTIONS


def collect(
    pipeline: VisualPipeline,
    videos: Sequence[Path],
    questions: Sequence[str] = DEFAULT_QUESTIONS,
    fps: float = 1.0,
    max_frames: int = 32,
) -> CalibrationSet:
    """Run the FP32 pipeline over ``videos`` and ``questions``, recording each graph's inputs."""
    calibration = CalibrationSet(list(videos))
    original = pipeline.runners
    pipeline.runners = {
        name: _Recorder(runner, calibration.feeds.setdefault(name, [])) for name, runner in original.items()
    }
    try:
        for path in videos:
            sampled = read_video(path, fps=fps, max_frames=max_frames, shortest_edge=pipeline.frame_size)
            features = pipeline.encode_video(sampled)
            for question in questions:
                pipeline.embed(features, question)
    finally:
        pipeline.runners = original
    return calibration
