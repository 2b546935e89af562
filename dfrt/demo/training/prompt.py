"""The demo bundle's prompt (the one its LM was trained with) and the name of its LM file. stdlib only."""

from __future__ import annotations

from dfrt.manifest import PromptTemplate

DEMO_PROMPT = PromptTemplate(
    name="demo_qa",
    system="",
    format="Question: {question} <image> Answer:",  # the LM reads the video knowing the question
    stop=("</s>",),
    turn=" {answer}</s>Question: {question} Answer:",  # later turns (the LM was trained on single turns)
)
DEMO_LM_FILE = "demo-lm.gguf"
