"""InternVL3.5's video prompt, as its processor writes it (transformers' ``InternVLProcessor``:
``replace_video_token``): each frame numbered and its rows between ``<img>`` and ``</img>``, frames joined by
newlines, in the user turn of its chat template (no system turn):

    <|im_start|>user\nFrame1: <img>[rows]</img>\nFrame2: <img>[rows]</img>\n{question}<|im_end|>\n
    <|im_start|>assistant\n

dfrt keeps that format for every frame it shows, numbered in the order shown, whether at the model's full
tokens or pooled; the rows of a pooled frame are fewer than the model was trained on (training-free, as
SlowFast-LLaVA).
"""

from __future__ import annotations

from dfrt.manifest import PromptTemplate

START_IMAGE = "<img>"
END_IMAGE = "</img>"
CONTEXT_IMAGE = "<IMG_CONTEXT>"  # the placeholder the processor repeats where rows go (dfrt feeds the rows)
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (START_IMAGE, END_IMAGE, IM_START, IM_END)

FRAME = "Frame{number}: " + START_IMAGE
# the chat template's video turn: "<video>\n" then the question, <video> expanded to the frames
PROMPT_FORMAT = IM_START + "user\n<image>\n{question}" + IM_END + "\n" + IM_START + "assistant\n"
PROMPT_NAME = "internvl"
# the chat template's later turns: the earlier answer closed, the next user turn, the assistant's prefix
TURN_FORMAT = (
    "{answer}" + IM_END + "\n" + IM_START + "user\n{question}" + IM_END + "\n" + IM_START + "assistant\n"
)
PROMPT = PromptTemplate(name=PROMPT_NAME, system="", format=PROMPT_FORMAT, stop=(IM_END,), turn=TURN_FORMAT)


def frame_layout(rows: list[int]) -> tuple[tuple[str, int], ...]:
    """``(template text, rows)`` pairs for frames carrying ``rows`` embedding rows each, in order: each
    frame's number and ``<img>`` before its rows, ``</img>`` (and the newline before the next) after."""
    parts: list[tuple[str, int]] = []
    text = ""
    for number, count in enumerate(rows, start=1):
        parts.append((text + FRAME.format(number=number), count))
        text = END_IMAGE + "\n"
    parts.append((END_IMAGE if rows else "", 0))
    return tuple(parts)
