"""Bad and extreme inputs: each is a typed DfrtError with one line, or a correct result."""

import json
import os
import shutil
import tracemalloc

import cv2
import numpy as np
import pytest

from dfrt.errors import ConfigError
from dfrt.manifest import MANIFEST_NAME
from dfrt.runtime import video as video_module
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VisualPipeline
from tests.media import write_clip

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def test_a_one_frame_video_is_a_single_image(tiny_bundle, tmp_path):
    path = write_clip(tmp_path / "one.mp4", seconds=0.1, fps=10)
    sampled = read_video(path)
    assert sampled.num_frames == 1
    pipeline = VisualPipeline.open(tiny_bundle)
    result = pipeline(sampled.frames, "What is this?")
    assert result.num_tokens == 40 and result.tokens_per_frame.tolist() == [40]


class _LyingCapture:
    """A capture whose metadata is absurd: 1e9 fps, no usable timestamps."""

    def __init__(self, frames: int) -> None:
        self.left = frames

    def get(self, prop: int) -> float:
        return 1e9 if prop == cv2.CAP_PROP_FPS else float("nan")

    def grab(self) -> bool:
        self.left -= 1
        return self.left >= 0

    def retrieve(self):
        return True, np.zeros((20, 30, 3), dtype=np.uint8)


def test_absurd_fps_metadata_falls_back_to_a_frame_clock():
    kept, decoded, source_fps = video_module._sample(_LyingCapture(100), 1.0, 128, None)
    assert source_fps == 0.0 and decoded == 100  # 1e9 fps is not believed
    stamps = [t for t, _, _ in kept]
    assert stamps == sorted(stamps) and len(kept) == 4  # 100 frames at the 25 fps fallback clock: 0..3 s


def test_a_4k_video_is_shrunk_while_decoding(tmp_path):
    path = tmp_path / "4k.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 2, (3840, 2160))
    for i in range(8):
        writer.write(np.full((2160, 3840, 3), i * 30, dtype=np.uint8))
    writer.release()
    tracemalloc.start()
    sampled = read_video(path, fps=2, shortest_edge=112)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sampled.frames.shape == (8, 112, 199, 3)
    frame_bytes = 3840 * 2160 * 3  # 25 MB: the peak is a frame or two in flight, not the 8 decoded
    assert peak < 3 * frame_bytes


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def test_a_symlinked_bundle_file_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "elsewhere.json"
    shutil.move(bundle_copy / "tokenizer.json", outside)
    os.symlink(outside, bundle_copy / "tokenizer.json")
    with pytest.raises(ConfigError, match="symbolic link"):
        Bundle.open(bundle_copy)


@pytest.mark.parametrize("name", ["/etc/passwd", "../../etc/passwd", "sub/dir.onnx", ""])
def test_manifest_names_cannot_leave_the_bundle(bundle_copy, name):
    path = bundle_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    data["tokenizer"] = name
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="unsafe file"):
        Bundle.open(bundle_copy)


def test_an_absurdly_large_manifest_is_refused_unread(bundle_copy):
    (bundle_copy / MANIFEST_NAME).write_bytes(b" " * (5 << 20))
    with pytest.raises(ConfigError, match="not a dfrt manifest"):
        Bundle.open(bundle_copy)
