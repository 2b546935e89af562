"""InternVL3.5 through dfrt against transformers, on a tiny random InternVL (InternViT + Qwen3) of the real
architecture: the ONNX visual graph against ``get_image_features``, the prompt against the processor's
(its own ``replace_video_token`` and the checkpoint's chat template), and greedy answers against
``generate`` on the same frames and prompt."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from dfrt.metrics import cosine  # noqa: E402
from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph  # noqa: E402
from dfrt.runtime.bundle import Bundle  # noqa: E402
from dfrt.runtime.generate import SamplingConfig  # noqa: E402
from dfrt.runtime.pipeline import Pipeline  # noqa: E402
from dfrt.runtime.preprocess import preprocess_frames  # noqa: E402
from tests.tiny_internvl import IMAGE_SIZE, TOKENS_PER_FRAME, load_tiny  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"
GREEDY = SamplingConfig(max_tokens=24, temperature=0.0)
WIDTH = 64


def test_the_visual_graph_equals_transformers_image_features(
    internvl_checkpoint, internvl_f32_bundle
) -> None:
    model = load_tiny(internvl_checkpoint)
    bundle = Bundle.open(internvl_f32_bundle)
    graph = OnnxRuntimeGraph(bundle.graph_path("vision"), bundle.manifest.graphs["vision"].spec)
    rng = np.random.default_rng(3)
    pixels = rng.uniform(-2, 2, (5, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    with torch.no_grad():
        reference = model.get_image_features(torch.from_numpy(pixels)).pooler_output.numpy()
    got = graph.run({"pixels": pixels})["frame_embeds"]
    graph.close()
    assert got.shape == reference.shape == (5, TOKENS_PER_FRAME, WIDTH)
    for frame in range(5):
        assert cosine(reference[frame], got[frame]) >= 0.9999
    np.testing.assert_allclose(got, reference, atol=1e-4)


def _processor_prompt(tokenizer, question: str, frames: int) -> str:  # type: ignore[no-untyped-def]
    """The prompt transformers' InternVLProcessor writes for a video turn: the chat template's "<video>"
    expanded by the processor's own ``replace_video_token``."""
    from transformers.models.internvl.processing_internvl import InternVLProcessor

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    processor = SimpleNamespace(
        start_image_token="<img>",
        end_image_token="</img>",
        image_token="<IMG_CONTEXT>",
        image_seq_length=TOKENS_PER_FRAME,
    )
    video = InternVLProcessor.replace_video_token(
        processor, {"pixel_values_videos": [np.zeros((frames, 3, 1, 1))]}, 0
    )
    assert text.count("<video>") == 1
    return text.replace("<video>", video)


@pytest.fixture(scope="module")
def answered(internvl_f32_bundle):
    """dfrt's greedy answer about a real video with every frame at full tokens, and what it fed."""
    with Pipeline(internvl_f32_bundle, n_ctx=2048, threads=2) as pipe:
        video = pipe.load_video(SAMPLE, fps=1.0, max_frames=6, visual_tokens=6 * TOKENS_PER_FRAME)
        question = "What colour is the square?"
        result = pipe.ask(video, question, GREEDY)
        stretches = pipe.generator.visual_prompt_ids(question, result.visual.prompt)
        pixels = preprocess_frames(video.sampled.frames, pipe.manifest.preprocess)
    return question, video, result, stretches, pixels


def _with_placeholders(stretches: list[list[int]], image: int) -> list[int]:
    ids: list[int] = []
    for i, part in enumerate(stretches):
        ids += part + ([image] * TOKENS_PER_FRAME if i < len(stretches) - 1 else [])
    return ids


def test_every_frame_is_shown_at_full_tokens_within_the_budget(answered) -> None:
    _, video, result, _, _ = answered
    assert video.sampled.num_frames == 6
    assert result.visual.tokens_per_frame.tolist() == [TOKENS_PER_FRAME] * 6
    assert result.answer.visual_tokens == 6 * TOKENS_PER_FRAME
    assert result.selection.key_frames.tolist() == list(range(6))


def test_the_prompt_ids_equal_the_processors(answered, internvl_checkpoint) -> None:
    question, video, _, stretches, _ = answered
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(internvl_checkpoint))
    text = _processor_prompt(tokenizer, question, video.sampled.num_frames)
    assert text.startswith("<|im_start|>user\nFrame1: <img><IMG_CONTEXT>")
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert _with_placeholders(stretches, tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")) == expected


def test_a_question_cannot_type_the_models_markers(internvl_f32_bundle) -> None:
    with Pipeline(internvl_f32_bundle, n_ctx=1024, threads=2) as pipe:
        tokenizer = pipe.bundle.prompt_tokenizer
        video = pipe.load_video(SAMPLE, fps=1.0, max_frames=2, visual_tokens=2 * TOKENS_PER_FRAME)
        result = pipe.ask(video, "Is <img> </img> <|im_end|> here?", SamplingConfig(max_tokens=1))
        stretches = pipe.generator.visual_prompt_ids("Is <img> </img> <|im_end|> here?", result.visual.prompt)
    markers = {tokenizer.token_id(t) for t in ("<img>", "</img>", "<|im_end|>")}
    last = stretches[-1]  # "</img>\n" + the question + the end of the turn
    assert last.count(tokenizer.token_id("<|im_end|>")) == 1  # the template's own, not the question's
    assert sum(t in markers for t in last) == 2  # "</img>" closing the last frame and the turn's end


def test_greedy_answer_equals_transformers_generate(answered, internvl_checkpoint) -> None:
    _, _, result, stretches, pixels = answered
    model = load_tiny(internvl_checkpoint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(internvl_checkpoint))
    ids = _with_placeholders(stretches, tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"))
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pixel_values=torch.from_numpy(pixels),
            max_new_tokens=GREEDY.max_tokens,
            do_sample=False,
        )
    new = out[0, len(ids) :].tolist()
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    stopped = end in new
    if stopped:
        new = new[: new.index(end)]
    assert len(new) >= 8, "the tiny model stopped at once: nothing is compared"
    assert result.answer.generated_tokens == len(new) + int(stopped)
    assert result.answer.stop_reason == ("eos" if stopped else "max_tokens")
    assert result.answer.text == tokenizer.decode(new, skip_special_tokens=True)
