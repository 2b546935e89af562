"""SmolVLM2's video prompt, as its processor writes it (transformers' ``SmolVLMProcessor``): an intro naming
the frame count in words and the duration, then each frame's timestamp and image markers around its rows.

    You are provided the following series of sixteen frames from a 0:00:16 [H:MM:SS] video.
    <newline>Frame from 00:00:<fake_token_around_image><global-img>[rows]<fake_token_around_image>
    ...<newline><newline>{question}

dfrt keeps that format for every frame it shows, whether at the model's full tokens or pooled; the rows of
a pooled frame are fewer than the model was trained on (training-free, as SlowFast-LLaVA).
"""

from __future__ import annotations

from datetime import timedelta

from dfrt.manifest import PromptTemplate

FAKE_IMAGE = "<fake_token_around_image>"
GLOBAL_IMAGE = "<global-img>"
IMAGE = "<image>"
END_OF_UTTERANCE = "<end_of_utterance>"
SPECIAL_TOKENS = (FAKE_IMAGE, GLOBAL_IMAGE, IMAGE, END_OF_UTTERANCE)

INTRO = "You are provided the following series of {count} frames from a {duration} [H:MM:SS] video.\n"
FRAME = "\nFrame from {minutes:02d}:{seconds:02d}:"
OUTRO = "\n\n"
# the chat template's video turn: "<|im_start|>User: " + video + question + "<end_of_utterance>\nAssistant:"
PROMPT_FORMAT = "<|im_start|>User: <image>{question}<end_of_utterance>\nAssistant:"
PROMPT_NAME = "smolvlm"
# the chat template's later turns: the earlier answer closed, the next user turn, the assistant's prefix
TURN_FORMAT = " {answer}<end_of_utterance>\nUser: {question}<end_of_utterance>\nAssistant:"
PROMPT = PromptTemplate(
    name=PROMPT_NAME, system="", format=PROMPT_FORMAT, stop=(END_OF_UTTERANCE,), turn=TURN_FORMAT
)  # the bundle's prompt template

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """An English cardinal as ``num2words`` writes it (the processor's own): 21 -> "twenty-one",
    128 -> "one hundred and twenty-eight". 0 <= n < 1,000,000."""
    if not 0 <= n < 1_000_000:
        raise ValueError(f"{n} is outside the numbers a video's frame count can be")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" and {number_words(rest)}" if rest else "")
    thousands, rest = divmod(n, 1000)
    words = f"{number_words(thousands)} thousand"
    if rest:
        words += f" and {number_words(rest)}" if rest < 100 else f", {number_words(rest)}"
    return words


def frame_layout(timestamps: list[float], rows: list[int], duration: float) -> tuple[tuple[str, int], ...]:
    """``(template text, rows)`` pairs for frames at ``timestamps`` (seconds, ascending) carrying ``rows``
    embedding rows each: the intro, each frame's timestamp and markers, the outro (with no rows)."""
    parts: list[tuple[str, int]] = []
    text = INTRO.format(count=number_words(len(timestamps)), duration=str(timedelta(seconds=int(duration))))
    for stamp, count in zip(timestamps, rows, strict=True):
        minutes, seconds = int(stamp // 60), int(stamp % 60)
        text += FRAME.format(minutes=minutes, seconds=seconds) + FAKE_IMAGE + GLOBAL_IMAGE
        parts.append((text, count))
        text = FAKE_IMAGE
    parts.append((text + OUTRO, 0))
    return tuple(parts)
