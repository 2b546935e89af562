"""A client's system message goes where the model's prompt puts one: the GGUF chat template's system turn, a
format's ``{system}`` (replacing its own), or the start of the user's turn for formats without one (SmolVLM,
InternVL); it is client text (no special tokens) and it changes a real model's answer (SmolLM2)."""

import pytest

from dfrt.families.smolvlm.prompt import PROMPT
from dfrt.manifest import PromptTemplate
from dfrt.runtime.generate import Generator, SamplingConfig, build_prompt
from dfrt.runtime.llm import LlamaModel
from tests.media import smollm2_gguf

pytestmark = pytest.mark.runtime

CHATML = PromptTemplate(name="gguf", stop=())


def smolvlm_prompt() -> PromptTemplate:
    """SmolVLM2's prompt template as its export writes it (torch-free: the runtime-only job runs this)."""
    return PROMPT


@pytest.fixture(scope="module")
def llm():
    with LlamaModel(smollm2_gguf(), n_ctx=1024, n_batch=256) as model:
        yield model


def _text(prompt) -> str:  # type: ignore[no-untyped-def]
    return "".join(t for t, _ in prompt.before_image) + "<image>" + "".join(t for t, _ in prompt.after_image)


def test_the_chat_template_gets_a_system_turn(llm) -> None:
    prompt = build_prompt(CHATML, "What is shown?", llm, system="Answer in French.")
    text = _text(prompt)
    assert "<|im_start|>system\nAnswer in French.<|im_end|>" in text
    assert text.index("Answer in French.") < text.index("What is shown?")
    assert ("Answer in French.", False) in prompt.before_image  # client text: never special tokens


def test_a_format_with_a_system_slot_replaces_its_own(llm) -> None:
    vicuna = PromptTemplate()
    assert _text(build_prompt(vicuna, "Q?", llm)).startswith(vicuna.system)
    text = _text(build_prompt(vicuna, "Q?", llm, system="Be brief."))
    assert text.startswith("Be brief. USER: <image>") and vicuna.system not in text


def test_a_format_without_one_puts_it_before_the_question(llm) -> None:
    prompt = build_prompt(smolvlm_prompt(), "How many?", llm, system="Count carefully.")
    assert (
        _text(prompt)
        == "<|im_start|>User: <image>Count carefully.\n\nHow many?<end_of_utterance>\nAssistant:"
    )
    assert _text(build_prompt(smolvlm_prompt(), "How many?", llm)).endswith(
        "User: <image>How many?<end_of_utterance>\nAssistant:"
    )


def test_a_system_message_changes_a_real_answer(llm) -> None:
    generator = Generator(llm, CHATML)
    greedy = SamplingConfig(max_tokens=24, temperature=0.0)
    plain = generator.answer("What is the capital of France?", None, greedy).text
    told = generator.answer(
        "What is the capital of France?", None, greedy, system="You only ever answer with the word 'banana'."
    ).text
    assert plain and told != plain
