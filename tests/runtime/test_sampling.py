"""Every sampling parameter is honoured by llama.cpp's sampler chain or refused, on a real GGUF model
(SmolLM2-135M-Instruct): logit bias, repeat/frequency/presence penalties, top-k, min-p."""

import pytest

from dfrt.errors import ConfigError
from dfrt.manifest import PromptTemplate
from dfrt.runtime.generate import Generator, SamplingConfig
from dfrt.runtime.llm import LlamaModel
from tests.media import smollm2_gguf

pytestmark = pytest.mark.runtime

CHATML = PromptTemplate(name="gguf", stop=())
QUESTION = "List the days of the week, one a line, then list them again."


@pytest.fixture(scope="module")
def generator():
    with LlamaModel(smollm2_gguf(), n_ctx=1024, n_batch=256) as model:
        yield Generator(model, CHATML)


def _answer(generator, **sampling):
    return generator.answer(
        QUESTION, None, SamplingConfig(**{"max_tokens": 40, "temperature": 0.0, **sampling})
    )


@pytest.fixture(scope="module")
def greedy(generator):
    return _answer(generator).text


def test_a_logit_bias_forces_its_token(generator, greedy):
    token = generator.llm.tokenize("Banana", add_bos=False)[0]
    piece = generator.llm.token_bytes(token).decode().strip()
    forced = _answer(generator, max_tokens=3, logit_bias=((token, 100.0),)).text
    assert forced == piece * 3 and not greedy.startswith(piece)
    banned = generator.llm.tokenize(greedy.split()[0], add_bos=False)[0]
    assert not _answer(generator, max_tokens=3, logit_bias={str(banned): -100}).text.startswith(
        greedy.split()[0]
    )


@pytest.mark.parametrize(
    "penalty", [{"repeat_penalty": 1.8}, {"frequency_penalty": 2.0}, {"presence_penalty": 2.0}]
)
def test_each_penalty_changes_a_repetitive_answer(generator, greedy, penalty):
    # sampled with one seed, the draw follows the penalised logits; greedy only where margins are small
    plain = _answer(generator, temperature=0.8, seed=3).text
    assert _answer(generator, temperature=0.8, seed=3, **penalty).text != plain


def test_top_k_one_and_min_p_one_are_greedy_at_any_temperature(generator, greedy):
    assert _answer(generator, temperature=1.5, top_k=1, seed=7).text == greedy
    assert _answer(generator, temperature=1.5, min_p=1.0, seed=7).text == greedy


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", -1),
        ("min_p", 1.5),
        ("repeat_penalty", 0.0),
        ("frequency_penalty", 2.5),
        ("presence_penalty", float("nan")),
        ("logit_bias", {"5": 101}),
        ("logit_bias", {"x": 1}),
        ("logit_bias", [(1, 2, 3)]),
        ("logit_bias", {str(i): 1 for i in range(1025)}),
    ],
)
def test_out_of_range_values_are_one_config_error(field, value):
    with pytest.raises(ConfigError, match=r"logit_bias|top-k|min-p|repeat-penalty|penalty"):
        SamplingConfig(**{field: value})


def test_a_biased_token_outside_the_vocabulary_is_refused(generator):
    with pytest.raises(ConfigError, match="not in the vocabulary"):
        _answer(generator, logit_bias=((10_000_000, 5.0),))
