"""The one place where the runtime's options and arguments are checked: type, range, one error line.

Every numeric option of ``dfrt infer`` and of the Python API (:class:`~dfrt.runtime.pipeline.Pipeline`,
:class:`~dfrt.runtime.generate.SamplingConfig`, :func:`~dfrt.runtime.video.read_video`,
:class:`~dfrt.runtime.llm.LlamaModel`) goes through these validators, so a flag and its Python argument
mean the same and fail the same way: a :class:`~dfrt.errors.ConfigError` (options) or
:class:`~dfrt.errors.InputError` (paths, questions) naming the flag and the value. Stdlib only.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path

from dfrt.errors import ConfigError, InputError

# Bounds. Each is far beyond any sensible use and far below what breaks something.
FPS_RANGE = (1e-4, 1000.0)  # one frame every 2.8 hours .. every frame of any real video
MAX_FRAMES_RANGE = (1, 2048)  # 2048 frames: 1296 + 2 * 2048 = 5392 visual tokens
MAX_TOKENS_RANGE = (1, 1 << 17)
TEMPERATURE_RANGE = (0.0, 10.0)  # 0 = greedy
TOP_P_RANGE = (0.0, 1.0)  # open at 0: top-p 0 keeps nothing
SEED_RANGE = (0, 0xFFFFFFFE)  # 32 bits; 0xFFFFFFFF is llama.cpp's LLAMA_DEFAULT_SEED, i.e. random
CTX_RANGE = (16, 1 << 24)  # then also at most the model's trained context (LlamaModel)
THREADS_RANGE = (1, 1024)
VISUAL_TOKENS_RANGE = (1, 1 << 20)  # below one frame's tokens the budget plan itself refuses, naming them
BATCH_RANGE = (1, 1 << 16)
MAX_FRAME_SIDE = 16384  # pixels; frames are checked before any resize
MAX_FRAME_PIXELS = 1 << 26  # 67 Mpx (8K UHD is 33 Mpx): a BGR frame of at most 192 MiB
MAX_ASPECT = 64.0  # long side / short side: beyond it the shortest-edge resize explodes the long side


def integer(name: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``; bools and floats (even 2.0) are refused, not rounded."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{name} must be an integer, got {_show(value)}")
    number = int(value)
    if not low <= number <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {number}")
    return number


def real(name: str, value: object, low: float, high: float, low_open: bool = False) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` when ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a number, got {_show(value)}")
    number = float(value)
    above = number > low if low_open else number >= low
    if not (math.isfinite(number) and above and number <= high):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} must be a number in {bracket}{low:g}, {high:g}], got {number!r}")
    return number


def fps(value: object) -> float:
    return real("--fps", value, *FPS_RANGE)


def max_frames(value: object) -> int:
    return integer("--max-frames", value, *MAX_FRAMES_RANGE)


def max_tokens(value: object) -> int:
    return integer("--max-tokens", value, *MAX_TOKENS_RANGE)


def temperature(value: object) -> float:
    return real("--temperature", value, *TEMPERATURE_RANGE)


def top_p(value: object) -> float:
    return real("--top-p", value, *TOP_P_RANGE, low_open=True)


def seed(value: object) -> int:
    return integer("--seed", value, *SEED_RANGE)


TOP_K_RANGE = (0, 1 << 20)  # 0 = off
MIN_P_RANGE = (0.0, 1.0)  # 0 = off
REPEAT_PENALTY_RANGE = (0.0, 10.0)  # open at 0; 1 = off
OPENAI_PENALTY_RANGE = (-2.0, 2.0)  # frequency and presence penalties, as OpenAI bounds them
REPEAT_LAST_N_RANGE = (0, 1 << 16)
LOGIT_BIAS_RANGE = (-100.0, 100.0)  # as OpenAI
MAX_LOGIT_BIASES = 1024


def top_k(value: object) -> int:
    return integer("--top-k", value, *TOP_K_RANGE)


def min_p(value: object) -> float:
    return real("--min-p", value, *MIN_P_RANGE)


def repeat_penalty(value: object) -> float:
    return real("--repeat-penalty", value, *REPEAT_PENALTY_RANGE, low_open=True)


def openai_penalty(name: str, value: object) -> float:
    return real(name, value, *OPENAI_PENALTY_RANGE)


def repeat_last_n(value: object) -> int:
    return integer("--repeat-last-n", value, *REPEAT_LAST_N_RANGE)


def logit_bias(value: object) -> tuple[tuple[int, float], ...]:
    """Token id -> bias (a mapping, or pairs); ids checked against the vocabulary when sampling starts."""
    items = value.items() if isinstance(value, dict) else value
    if not isinstance(items, (tuple, list, type({}.items()))):
        raise ConfigError(f"logit_bias must map token ids to biases, got {_show(value)}")
    pairs = list(items)
    if len(pairs) > MAX_LOGIT_BIASES:
        raise ConfigError(f"logit_bias: at most {MAX_LOGIT_BIASES} tokens, got {len(pairs)}")
    out = []
    for pair in pairs:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ConfigError(f"logit_bias must map token ids to biases, got {_show(pair)}")
        token, bias = pair
        if isinstance(token, str) and token.strip().isdigit() and len(token) < 12:
            token = int(token)  # JSON object keys are strings
        out.append(
            (
                integer("logit_bias token", token, 0, (1 << 31) - 1),
                real("logit_bias", bias, *LOGIT_BIAS_RANGE),
            )
        )
    return tuple(out)


def ctx(value: object) -> int:
    return integer("--ctx", value, *CTX_RANGE)


def visual_tokens(value: object) -> int | None:
    """``--visual-tokens``: a budget of visual tokens, or None for the config's key-frame ratio."""
    return None if value is None else integer("--visual-tokens", value, *VISUAL_TOKENS_RANGE)


def threads(value: object) -> int | None:
    return None if value is None else integer("--threads", value, *THREADS_RANGE)


def frame_size(width: float, height: float, source: str) -> None:
    """Refuse frames too large or too elongated to resize safely (before any resize or allocation)."""
    if not (math.isfinite(width) and math.isfinite(height)) or width < 1 or height < 1:
        return  # unknown (metadata missing): the decoded frames are checked instead
    long, short = max(width, height), min(width, height)
    if long > MAX_FRAME_SIDE or width * height > MAX_FRAME_PIXELS or long / short > MAX_ASPECT:
        raise InputError(
            f"{source}: frames of {int(width)}x{int(height)} pixels are refused (at most {MAX_FRAME_SIDE} "
            f"a side, {MAX_FRAME_PIXELS >> 20} Mpx, aspect {MAX_ASPECT:g}:1)"
        )


def shortest_edge(value: object) -> int | None:
    return None if value is None else integer("shortest_edge", value, 1, MAX_FRAME_SIDE)


def flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {_show(value)}")
    return value


def question(value: object) -> str:
    """A question must be text; what it may contain is the tokenizers' business."""
    if not isinstance(value, str):
        raise InputError(f"the question must be text (str), got {_show(value)}")
    return value


def callback(name: str, value: object) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"{name} must be callable or None, got {_show(value)}")


def path(name: str, value: object) -> Path:
    """A file system path that native libraries (FFmpeg, llama.cpp, onnxruntime) can be given safely.

    Refused: non-path types, NUL bytes, and names that are not valid UTF-8 (``b"\\xff.mp4"`` arrives as a
    surrogate-escaped str; OpenCV's FFmpeg backend crashes on it, llama.cpp cannot encode it).
    """
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, (str, os.PathLike)):
        raise InputError(f"{name} must be a path, got {_show(value)}")
    result = Path(value)
    text = str(result)
    if "\0" in text:
        raise InputError(f"{name} {display(result)}: a path cannot contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{name} {display(result)}: the file name is not valid UTF-8; rename the file"
        ) from None
    return result


def display(value: Path | str) -> str:
    """A path as printable one-line text, whatever bytes its name holds."""
    shown = os.fsencode(str(value)).decode("utf-8", "backslashreplace")
    return shown.encode("unicode_escape").decode("ascii") if not shown.isprintable() else shown


def _show(value: object) -> str:
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} ({type(value).__name__})"
