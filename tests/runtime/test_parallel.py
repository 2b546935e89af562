"""``Pipeline(parallel=N)``: N answers generate at once, each in its own llama.cpp context over weights loaded
once, with the answers each gets alone; close waits for them all. Overlap is proven by one answer's callback
waiting for another answer's text (impossible unless both run at once), never by timing ratios."""

import json
import threading
from pathlib import Path

import pytest

from dfrt.errors import BackendError, ConfigError
from dfrt.manifest import PromptTemplate
from dfrt.runtime.generate import Generator, SamplingConfig
from dfrt.runtime.llm import LlamaModel
from dfrt.runtime.pipeline import Pipeline
from tests.media import smollm2_gguf

pytestmark = pytest.mark.runtime

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
GREEDY = SamplingConfig(max_tokens=48, temperature=0)
CHATML = PromptTemplate(name="gguf", stop=())
EOS = 2  # the demo LM's end of sequence
WAIT = 60.0  # seconds a test waits for what must happen (a hang fails, never a slow machine)


@pytest.fixture(scope="module")
def asked() -> list[tuple[Path, str]]:
    rows = json.loads((SAMPLES / "questions.json").read_text())[:2]
    return [(SAMPLES / row["video"], row["question"]) for row in rows]


@pytest.fixture(scope="module")
def pipe(bundle):
    with Pipeline(bundle, parallel=2) as pipe:
        yield pipe


def _overlapped(pipe: Pipeline, jobs: list[tuple[object, str]], wait: float) -> tuple[list, bool]:
    """Ask both at once; the first answer's first text waits (up to ``wait`` s) for the second's text.
    Returns both answers and whether the second produced text while the first was mid-answer."""
    second_spoke, results = threading.Event(), [None, None]
    seen: list[bool] = []

    def first_text(piece: str) -> None:
        if not seen:
            seen.append(second_spoke.wait(wait))

    def run(i: int) -> None:
        on_text = first_text if i == 0 else (lambda piece: second_spoke.set())
        video, question = jobs[i]
        results[i] = pipe.ask(video, question, GREEDY, on_text).answer.text

    first = threading.Thread(target=run, args=(0,))
    first.start()
    while pipe.slots_busy == 0 and first.is_alive():  # the first answer holds its slot
        threading.Event().wait(0.005)
    second = threading.Thread(target=run, args=(1,))
    second.start()
    first.join(WAIT)
    second.join(WAIT)
    assert not first.is_alive() and not second.is_alive()
    return results, seen[0]


def test_two_answers_generate_at_once_and_equal_their_answers_alone(pipe, asked) -> None:
    videos = [(pipe.load_video(path), question) for path, question in asked]
    alone = [pipe.ask(video, question, GREEDY).answer.text for video, question in videos]
    together, overlapped = _overlapped(pipe, videos, WAIT)
    assert overlapped  # the second answer spoke while the first was inside its own answer
    assert together == alone
    assert pipe.slots_busy == 0


def test_with_parallel_1_the_second_answer_waits(bundle, asked) -> None:
    with Pipeline(bundle) as one:
        assert one.parallel == 1
        videos = [(one.load_video(path), question) for path, question in asked]
        alone = [one.ask(video, question, GREEDY).answer.text for video, question in videos]
        together, overlapped = _overlapped(one, videos, 1.0)
    assert not overlapped  # blocked behind the first answer for the whole second
    assert together == alone


def test_decoding_overlaps_an_answer(pipe, asked) -> None:
    """A video decodes and encodes while another answer is mid-generation (its callback blocked)."""
    video = pipe.load_video(asked[0][0])
    decoded, loaded = threading.Event(), []

    def wait_for_decoding(piece: str) -> None:
        if not loaded:
            loaded.append(decoded.wait(WAIT))

    answering = threading.Thread(target=pipe.ask, args=(video, asked[0][1], GREEDY, wait_for_decoding))
    answering.start()
    pipe.load_video(asked[1][0])
    decoded.set()
    answering.join(WAIT)
    assert loaded == [True]


def test_close_waits_for_running_answers_and_refuses_new_calls(bundle, asked) -> None:
    pipe = Pipeline(bundle, parallel=2)
    video = pipe.load_video(asked[0][0])
    release, inside, results = threading.Event(), threading.Event(), []

    def blocked(piece: str) -> None:
        inside.set()
        release.wait(WAIT)

    answering = threading.Thread(
        target=lambda: results.append(pipe.ask(video, asked[0][1], GREEDY, blocked).answer.text)
    )
    answering.start()
    assert inside.wait(WAIT)
    closing = threading.Thread(target=pipe.close)
    closing.start()
    closing.join(0.5)
    assert closing.is_alive()  # waits for the running answer
    with pytest.raises(BackendError, match="closed"):
        pipe.load_video(asked[1][0])  # refused at once, not queued behind the close
    release.set()
    answering.join(WAIT)
    closing.join(WAIT)
    assert not closing.is_alive() and len(results) == 1 and results[0]
    assert pipe.closed and pipe.llm is not None and pipe.llm.closed
    assert all(model.closed for model in pipe.slots.models)  # type: ignore[union-attr]
    with pytest.raises(BackendError, match="closed"):
        pipe.ask(video, asked[0][1], GREEDY)
    pipe.close()  # idempotent


def test_close_from_inside_a_callback_ends_that_answer(bundle, asked) -> None:
    pipe = Pipeline(bundle, parallel=2)
    video = pipe.load_video(asked[0][0])
    long = SamplingConfig(max_tokens=64, temperature=0, logit_bias=((EOS, -100.0),))  # runs on past one piece
    with pytest.raises(BackendError, match="closed"):
        pipe.ask(video, asked[0][1], long, lambda piece: pipe.close())
    assert pipe.closed


@pytest.mark.parametrize("value", [0, 65, -1, True, 2.0, "2", None])
def test_parallel_out_of_range_is_one_error(bundle, value) -> None:
    with pytest.raises(ConfigError, match="--parallel"):
        Pipeline(bundle, parallel=value)


def test_contexts_share_one_model_and_close_with_it() -> None:
    """A second context over SmolLM2's weights answers as the first, at the same time, in its own KV cache;
    closing the model closes its contexts, and their calls then raise instead of touching freed memory."""
    questions = ["How many legs does a dog have?", "What colour is the sky on a clear day?"]
    model = LlamaModel(smollm2_gguf(), n_ctx=1024, threads=1)
    other = model.open_context()
    assert other.n_ctx == model.n_ctx and other._model == model._model  # one llama_model
    alone = [Generator(model, CHATML).answer(q, None, GREEDY).text for q in questions]
    results: list[str | None] = [None, None]
    second_spoke = threading.Event()
    waited: list[bool] = []

    def first_text(piece: str) -> None:
        if not waited:
            waited.append(second_spoke.wait(WAIT))

    def run(i: int, llm: LlamaModel) -> None:
        on_text = first_text if i == 0 else (lambda piece: second_spoke.set())
        results[i] = Generator(llm, CHATML).answer(questions[i], None, GREEDY, on_text).text

    threads = [threading.Thread(target=run, args=(i, m)) for i, m in enumerate((model, other))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert waited == [True] and results == alone
    model.close()
    assert other.closed
    with pytest.raises(BackendError, match="closed"):
        other.decode_tokens([1], 0)
    with pytest.raises(BackendError):
        other.open_context()
