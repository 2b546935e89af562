"""Options mean what they say: every numeric option is range-checked in one place (dfrt.runtime.options),
wrong types through the Python API are DfrtErrors, and no option can make a loop spin or allocate gigabytes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dfrt.errors import ConfigError, DfrtError, InputError
from dfrt.runtime import gguf_header
from dfrt.runtime import video as video_module
from dfrt.runtime.default_bundle import shipped_demo
from dfrt.runtime.generate import SamplingConfig
from dfrt.runtime.llm import LlamaModel
from dfrt.runtime.video import read_video
from tests.media import smollm2_gguf, write_clip

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "07-count.mp4"


@pytest.fixture(scope="module")
def pipe(bundle):
    from dfrt.runtime.pipeline import Pipeline

    with Pipeline(bundle, backend="onnxruntime") as pipeline:
        yield pipeline


def _one_line(error: pytest.ExceptionInfo[BaseException], *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message and all(w in message for w in words), message


BAD_VIDEO_OPTIONS = [
    ("fps", 0),
    ("fps", -1.0),
    ("fps", 1e-300),
    ("fps", 1e308),
    ("fps", float("nan")),
    ("fps", float("inf")),
    ("fps", "1"),
    ("fps", True),
    ("max_frames", 0),
    ("max_frames", -3),
    ("max_frames", 2.5),
    ("max_frames", "8"),
    ("max_frames", 10**9),
    ("shortest_edge", 0),
    ("shortest_edge", 224.0),
]


@pytest.mark.parametrize(("name", "value"), BAD_VIDEO_OPTIONS, ids=lambda v: repr(v))
def test_bad_video_options_are_one_error_before_any_work(name, value):
    with pytest.raises(ConfigError) as error:
        read_video("never-opened.mp4", **{name: value})
    _one_line(error, name.replace("_", "-") if name != "shortest_edge" else name)


BAD_SAMPLING = [
    ("seed", -1),
    ("seed", 2**32 - 1),  # llama.cpp's LLAMA_DEFAULT_SEED: "random"
    ("seed", 2**32),
    ("seed", 2**64 + 5),  # used to wrap silently to 5
    ("seed", 1.0),
    ("temperature", -0.5),  # used to mean greedy silently
    ("temperature", float("nan")),
    ("temperature", 1e9),
    ("temperature", "0.2"),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", float("nan")),
    ("max_tokens", 0),
    ("max_tokens", -1),
    ("max_tokens", 2.5),
    ("max_tokens", 10**12),
]


@pytest.mark.parametrize(("name", "value"), BAD_SAMPLING, ids=lambda v: repr(v))
def test_bad_sampling_options_are_one_error(name, value):
    with pytest.raises(ConfigError) as error:
        SamplingConfig(**{name: value})
    _one_line(error, f"--{name.replace('_', '-')}")


def test_good_sampling_options_pass():
    config = SamplingConfig(max_tokens=1, temperature=0, top_p=1, seed=2**32 - 2)
    assert (config.temperature, config.top_p) == (0.0, 1.0)


@pytest.mark.parametrize("n_ctx", [0, -1, 15, 2**32 + 512, 10**12, 512.0, "512"])
def test_bad_ctx_is_refused_before_llama_cpp_allocates(n_ctx):
    with pytest.raises(ConfigError) as error:
        LlamaModel(smollm2_gguf(), n_ctx=n_ctx)
    _one_line(error, "--ctx")


def test_ctx_beyond_the_trained_context_blames_the_option_not_the_gguf():
    with pytest.raises(ConfigError) as error:
        LlamaModel(smollm2_gguf(), n_ctx=16384)
    _one_line(error, "--ctx 16384", "8192 positions")


def test_ctx_that_memory_cannot_hold_is_refused_before_allocating(monkeypatch):
    monkeypatch.setattr(gguf_header, "available_memory", lambda: 64 << 20)  # 64 MiB left
    with pytest.raises(ConfigError) as error:
        LlamaModel(smollm2_gguf(), n_ctx=8192)  # 180 MiB of KV cache
    _one_line(error, "--ctx 8192", "KV cache", "use a smaller --ctx")


def test_the_default_ctx_is_the_trained_context_at_most_4096():
    with LlamaModel(shipped_demo() / "llm.gguf") as llm:
        assert llm.n_ctx == 512  # the demo LM was trained with 512 positions


class _FastCapture:
    """A capture whose timestamps jump by 1e9 s a frame: stepping the clock by a tiny interval would spin."""

    def __init__(self, frames: int) -> None:
        self.index, self.frames = -1, frames

    def get(self, prop: int) -> float:
        return self.index * 1e12 if prop == video_module.cv2.CAP_PROP_POS_MSEC else 25.0

    def grab(self) -> bool:
        self.index += 1
        return self.index < self.frames

    def retrieve(self):
        return True, np.zeros((8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("interval", [1e-308, 1e-3, 1.0, 1e300])
def test_no_interval_or_timestamp_makes_the_sampling_loop_spin(interval):
    start = time.perf_counter()
    kept, decoded, _ = video_module._sample(_FastCapture(50), interval, 8, None)
    assert decoded == 50 and 1 <= len(kept) <= 16
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("fps", [1e-4, 1000.0])
def test_extreme_but_allowed_fps_finish(fps, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", seconds=2, fps=10)
    video = read_video(clip, fps=fps, max_frames=4)
    assert 1 <= video.num_frames <= 4


WRONG_TYPES = {
    "load_video fps='1'": lambda pipe: pipe.load_video(SAMPLE, fps="1"),
    "load_video max_frames=2.5": lambda pipe: pipe.load_video(SAMPLE, max_frames=2.5),
    "load_video path=None": lambda pipe: pipe.load_video(None),
    "load_video path=3": lambda pipe: pipe.load_video(3),
    "ask question=None": lambda pipe: pipe.ask(SAMPLE, None),
    "ask question=b'q'": lambda pipe: pipe.ask(SAMPLE, b"q"),
    "ask sampling=dict": lambda pipe: pipe.ask(SAMPLE, "q", {"temperature": 0}),
    "ask on_text=str": lambda pipe: pipe.ask(SAMPLE, "q", on_text="print"),
    "embed video=path": lambda pipe: pipe.embed(SAMPLE, "q"),
    "answer question=1": lambda pipe: pipe.answer(1, None),
    "answer embeds=list": lambda pipe: pipe.answer("q", [[0.0] * 256]),
    "answer embeds=3-D": lambda pipe: pipe.answer("q", np.zeros((1, 2, 256), np.float32)),
    "answer embeds wrong width": lambda pipe: pipe.answer("q", np.zeros((2, 9), np.float32)),
}


@pytest.mark.parametrize("case", WRONG_TYPES)
def test_wrong_types_through_the_python_api_are_dfrt_errors(pipe, case):
    with pytest.raises(DfrtError) as error:
        WRONG_TYPES[case](pipe)
    assert not isinstance(error.value, TypeError)
    _one_line(error)


@pytest.mark.parametrize(
    "kwargs", [{"n_ctx": 0}, {"n_ctx": "4096"}, {"threads": 0}, {"threads": 2.0}, {"with_llm": "no"}]
)
def test_wrong_pipeline_arguments_are_one_error(bundle, kwargs):
    from dfrt.runtime.pipeline import Pipeline

    with pytest.raises(ConfigError) as error:
        Pipeline(bundle, **kwargs)
    _one_line(error)


def test_a_pipeline_bundle_that_is_not_a_path_is_one_error():
    from dfrt.runtime.pipeline import Pipeline

    with pytest.raises(InputError, match="--bundle must be a path"):
        Pipeline(None)  # type: ignore[arg-type]


def _infer(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfrt.cli", "infer", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )


CLI_CASES = [
    ("--seed", "-1"),
    ("--seed", "4294967296"),
    ("--temperature", "-1"),
    ("--temperature", "nan"),
    ("--top-p", "0"),
    ("--max-tokens", "0"),
    ("--ctx", "0"),
    ("--ctx", "4294967808"),
    ("--fps", "1e-300"),
    ("--fps", "1e308"),
    ("--max-frames", "0"),
]


@pytest.mark.parametrize(("flag", "value"), CLI_CASES)
def test_cli_options_out_of_range_are_one_line_before_any_work(bundle, flag, value):
    result = _infer(SAMPLE, "q", "--bundle", bundle, flag, value)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"dfrt: error: {flag} ") and len(result.stderr.splitlines()) == 1
    assert result.stdout == ""


def test_cli_ctx_beyond_the_trained_context(bundle):
    result = _infer(SAMPLE, "q", "--bundle", bundle, "--ctx", 100_000)
    errors = [line for line in result.stderr.splitlines() if line.startswith("dfrt: error:")]
    assert result.returncode == 1 and errors == [
        "dfrt: error: --ctx 100000 is beyond the 512 positions llm.gguf was trained for"
    ]


def test_a_question_cut_to_fit_is_reported(bundle):
    question = "padding words " * 300 + "How many shapes can you see?"
    args = (SAMPLE, question, "--bundle", bundle, "--max-frames", 8, "--temperature", 0, "--max-tokens", 2)
    result = _infer(*args, "--json")
    assert result.returncode == 0, result.stderr
    dropped = json.loads(result.stdout)["tokens"]["question_dropped"]
    assert dropped > 100
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == [
        f"dfrt: warning: the question was too long for the LLM context: its first {dropped} tokens were "
        "dropped (--ctx, --max-frames)"
    ]
