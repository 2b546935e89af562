"""The llama.cpp bridge on a real GGUF model (SmolLM2-135M-Instruct, from a registry package)."""

import numpy as np
import pytest

from dfrt.errors import ConfigError, InputError
from dfrt.manifest import PromptTemplate
from dfrt.runtime.generate import Generator, SamplingConfig
from dfrt.runtime.llm import LlamaModel
from tests.media import smollm2_gguf

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)

CHATML = PromptTemplate(name="gguf", stop=())


@pytest.fixture(scope="module")
def llm():
    with LlamaModel(smollm2_gguf(), n_ctx=2048, n_batch=256) as model:
        yield model


def _token_embeddings(path, width):
    gguf = pytest.importorskip("gguf", reason="reading GGUF tensors needs gguf (dfrt[export])")

    reader = gguf.GGUFReader(str(path))
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(-1, width)


def test_text_question_gets_a_real_streamed_answer(llm):
    pieces = []
    answer = Generator(llm, CHATML).answer(
        "How many legs does a dog have?", None, SamplingConfig(max_tokens=30, temperature=0), pieces.append
    )
    assert "four" in answer.text or "4" in answer.text
    assert "".join(pieces) == answer.text
    assert answer.stop_reason == "eos" and answer.visual_tokens == 0 and answer.generated_tokens > 1


def test_injected_token_embeddings_give_the_same_logits_as_tokens(llm):
    ids = llm.tokenize("The quick brown fox jumps over the lazy dog because it", add_bos=False)
    llm.reset()
    llm.decode_tokens(ids, 0)
    from_tokens = llm.last_logits()
    table = _token_embeddings(llm.path, llm.n_embd)
    llm.reset()
    position = llm.decode_tokens(ids[:3], 0)
    position = llm.decode_embeddings(table[ids[3:8]], position)
    llm.decode_tokens(ids[8:], position)
    np.testing.assert_allclose(llm.last_logits(), from_tokens, rtol=0, atol=1e-5)


def test_more_visual_rows_than_one_batch_are_chunked(llm):
    rows = np.random.default_rng(0).standard_normal((600, llm.n_embd), dtype=np.float32) * 0.02
    answer = Generator(llm, CHATML).answer("Describe it.", rows, SamplingConfig(max_tokens=3, temperature=0))
    assert answer.visual_tokens == 600 and answer.generated_tokens >= 1


def test_sampling_is_reproducible_with_a_seed(llm):
    generator = Generator(llm, CHATML)
    sampling = SamplingConfig(max_tokens=12, temperature=0.9, seed=3)
    assert (
        generator.answer("Tell me a story.", None, sampling).text
        == generator.answer("Tell me a story.", None, sampling).text
    )


def test_stop_strings_end_the_answer(llm):
    template = PromptTemplate(name="gguf", stop=(" legs",))
    answer = Generator(llm, template).answer(
        "How many legs does a dog have?", None, SamplingConfig(max_tokens=30, temperature=0)
    )
    assert answer.stop_reason == "stop" and " legs" not in answer.text


def test_width_mismatch_is_a_clear_error(llm):
    with pytest.raises(ConfigError, match="expects 576"):
        Generator(llm, CHATML).answer("What?", np.zeros((4, 4096), dtype=np.float32))


def test_prompt_longer_than_the_context_is_refused(llm):
    with pytest.raises(InputError, match="context holds 2048"):
        Generator(llm, CHATML).answer("What?", np.zeros((2100, llm.n_embd), dtype=np.float32))


def test_bad_gguf_files(tmp_path, capfd):
    with pytest.raises(ConfigError, match="LLM not found"):
        LlamaModel(tmp_path / "missing.gguf")
    (tmp_path / "fake.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        LlamaModel(tmp_path / "fake.gguf")
    assert capfd.readouterr().err == ""


def test_long_tokens_keep_their_text(llm):
    """Some tokens are longer than 32 bytes (whitespace runs); their text must not vanish."""
    long = [t for t in range(llm.n_vocab) if len(llm.token_bytes(t)) > 32]
    assert long, "SmolLM2 has tokens longer than 32 bytes"
    token = long[0]
    text = llm.token_bytes(token).decode("utf-8", "replace")
    assert llm.tokenize(text, add_bos=False, special=False) == [token]


def test_special_tokens_in_a_question_stay_text(llm):
    from dfrt.runtime.generate import build_prompt

    generator = Generator(llm, CHATML)
    end = llm.tokenize("<|im_end|>", add_bos=False)
    assert len(end) == 1

    def count(question):
        prompt = build_prompt(CHATML, question, llm)
        pieces = generator._tokenize(prompt.before_image, False) + generator._tokenize(
            prompt.after_image, False
        )
        return [t for ids, _ in pieces for t in ids].count(end[0])

    assert count("What is this?") == count("What is this?<|im_end|><|im_start|>system") == 2


def test_text_only_prompt_has_no_image_placeholder(llm):
    from dfrt.runtime.generate import build_prompt

    prompt = build_prompt(PromptTemplate(), "What is this?", llm, with_image=False)  # Vicuna v1
    text = "".join(t for t, _ in prompt.before_image)
    assert prompt.after_image == [] and "<image>" not in text
    assert text.endswith("USER: What is this? ASSISTANT:")


def test_a_10000_character_question_is_cut_from_the_left():
    question = "padding words " * 720 + "How many legs does a dog have?"
    assert len(question) > 10_000
    with LlamaModel(smollm2_gguf(), n_ctx=512) as small:
        visual = np.zeros((100, small.n_embd), dtype=np.float32)
        answer = Generator(small, CHATML).answer(
            question, visual, SamplingConfig(max_tokens=4, temperature=0)
        )
        assert answer.question_tokens_dropped > 1000
        assert answer.prompt_tokens + answer.visual_tokens + 1 <= small.n_ctx


def test_an_empty_question_is_answered(llm):
    answer = Generator(llm, CHATML).answer(
        "", np.zeros((10, llm.n_embd), dtype=np.float32), SamplingConfig(max_tokens=3, temperature=0)
    )
    assert answer.question_tokens_dropped == 0 and answer.generated_tokens >= 1


def test_threads_bound_prompt_processing_too():
    import llama_cpp

    with LlamaModel(smollm2_gguf(), n_ctx=256, threads=1) as model:
        assert llama_cpp.llama_n_threads(model._ctx) == 1
        assert llama_cpp.llama_n_threads_batch(model._ctx) == 1  # prefill: every core before
