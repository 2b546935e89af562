"""Long runs: many questions on one loaded pipeline without memory or descriptor growth; a 2-hour video
with bounded memory. The 1,000-question run is `slow`; CI runs a 40-question variant."""

import os
import tracemalloc

import pytest

from dfrt.runtime.generate import SamplingConfig
from dfrt.runtime.pipeline import Pipeline
from dfrt.runtime.video import read_video
from dfrt.runtime.visual import VisualPipeline
from tests.media import write_clip

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("long") / "clip.mp4", seconds=4, fps=5)


def _ask_many(bundle, clip, count):
    with Pipeline(bundle, n_ctx=512) as pipe:
        video = pipe.load_video(clip, max_frames=4)
        sampling = SamplingConfig(max_tokens=1, temperature=0)
        for i in range(5):  # warm-up: allocator pools and caches settle
            pipe.ask(video, f"Warm-up question {i}?", sampling)
        rss, fds = _rss(), _fds()
        for i in range(count):
            pipe.ask(video, f"What happens at second {i % 4}, question {i}?", sampling)
        return _rss() - rss, _fds() - fds


def test_40_questions_on_one_pipeline(llm_bundle, clip):
    growth, fds = _ask_many(llm_bundle, clip, 40)
    assert fds == 0
    assert growth < 20 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


@pytest.mark.slow
def test_1000_questions_on_one_pipeline(llm_bundle, clip):
    growth, fds = _ask_many(llm_bundle, clip, 1000)
    assert fds == 0
    assert growth < 50 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_opening_and_closing_pipelines_leaks_no_descriptors(llm_bundle):
    Pipeline(llm_bundle, n_ctx=256).close()
    before = _fds()
    for _ in range(5):
        with Pipeline(llm_bundle, n_ctx=256):
            pass
    assert _fds() == before


def test_a_two_hour_video_with_bounded_memory(tiny_bundle, tmp_path):
    path = write_clip(tmp_path / "two-hours.mp4", seconds=7200, fps=1, size=(32, 32))
    tracemalloc.start()
    sampled = read_video(path, shortest_edge=112)  # the default cap: 128 frames
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert sampled.decoded_frames == 7200 and sampled.num_frames == 128
    assert sampled.timestamps[-1] > 7000
    assert peak < 16 * 2**20
    result = VisualPipeline.open(tiny_bundle)(sampled.frames, "What happens over the two hours?")
    assert result.num_tokens == 1296 + 2 * 128
