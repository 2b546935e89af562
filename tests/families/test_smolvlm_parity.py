"""SmolVLM2 through dfrt against transformers, on a tiny random SmolVLM of the real architecture:
the ONNX visual graph against ``get_image_features``, the prompt against the processor's, and greedy
answers against ``generate`` on the same frames and prompt."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

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
from tests.tiny_smolvlm import IMAGE_SIZE, load_tiny  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"
GREEDY = SamplingConfig(max_tokens=24, temperature=0.0)


def test_the_visual_graph_equals_transformers_image_features(smolvlm_checkpoint, smolvlm_f32_bundle) -> None:
    model = load_tiny(smolvlm_checkpoint)
    bundle = Bundle.open(smolvlm_f32_bundle)
    graph = OnnxRuntimeGraph(bundle.graph_path("vision"), bundle.manifest.graphs["vision"].spec)
    rng = np.random.default_rng(3)
    pixels = rng.uniform(-1, 1, (5, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    with torch.no_grad():
        reference = model.get_image_features(torch.from_numpy(pixels)[None]).pooler_output[0].numpy()
    got = graph.run({"pixels": pixels})["frame_embeds"]
    graph.close()
    assert got.shape == (5, 16, 64)
    for frame in range(5):
        assert cosine(reference.reshape(5, 16, 64)[frame], got[frame]) >= 0.9999
    np.testing.assert_allclose(got.reshape(-1, 64), reference, atol=1e-4)


def _processor_prompt(question: str, timestamps: list[float], duration: float) -> str:
    """The prompt transformers' SmolVLMProcessor writes for a video turn (its own functions and constants)."""
    from num2words import num2words
    from transformers.models.smolvlm import processing_smolvlm as processing

    video = processing.DEFAULT_VIDEO_INTRO.format(
        frame_count=num2words(len(timestamps)), video_duration=str(timedelta(seconds=int(duration)))
    )
    for second in timestamps:
        stamp = f"{int(second // 60):02d}:{int(second % 60):02d}"
        video += processing.FRAME_TIMESTAMP_MESSAGE.format(timestamp=stamp) + processing._prompt_single_image(
            16, "<fake_token_around_image>", "<image>", "<global-img>"
        )
    video += processing.DEFAULT_MEDIA_OUTTRO
    return f"<|im_start|>User: {video}{question}<end_of_utterance>\nAssistant:"


@pytest.fixture(scope="module")
def answered(smolvlm_f32_bundle):
    """dfrt's greedy answer about a real video with every frame at full tokens, and what it fed."""
    with Pipeline(smolvlm_f32_bundle, n_ctx=2048, threads=2) as pipe:
        video = pipe.load_video(SAMPLE, fps=1.0, max_frames=6, visual_tokens=6 * 16)
        question = "What colour is the square?"
        result = pipe.ask(video, question, GREEDY)
        stretches = pipe.generator.visual_prompt_ids(question, result.visual.prompt)
        pixels = preprocess_frames(video.sampled.frames, pipe.manifest.preprocess)
    return question, video, result, stretches, pixels


def test_every_frame_is_shown_at_full_tokens_within_the_budget(answered) -> None:
    _, video, result, _, _ = answered
    assert video.sampled.num_frames == 6
    assert result.visual.tokens_per_frame.tolist() == [16] * 6
    assert result.answer.visual_tokens == 96
    assert result.selection.key_frames.tolist() == list(range(6))


def test_the_prompt_ids_equal_the_processors(answered, smolvlm_checkpoint) -> None:
    question, video, _, stretches, _ = answered
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smolvlm_checkpoint))
    text = _processor_prompt(question, [float(t) for t in video.sampled.timestamps], video.features.duration)
    expected = tokenizer(text, add_special_tokens=False)["input_ids"]
    image = tokenizer.convert_tokens_to_ids("<image>")
    ours = []
    for i, ids in enumerate(stretches):
        ours += ids
        if i < len(stretches) - 1:
            ours += [image] * 16
    assert ours == expected


def test_greedy_answer_equals_transformers_generate(answered, smolvlm_checkpoint) -> None:
    _, _, result, stretches, pixels = answered
    model = load_tiny(smolvlm_checkpoint)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smolvlm_checkpoint))
    image = tokenizer.convert_tokens_to_ids("<image>")
    ids: list[int] = []
    for i, part in enumerate(stretches):
        ids += part + ([image] * 16 if i < len(stretches) - 1 else [])
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            pixel_values=torch.from_numpy(pixels)[None],
            max_new_tokens=GREEDY.max_tokens,
            do_sample=False,
        )
    new = out[0, len(ids) :].tolist()
    eou = tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    stopped = eou in new
    if stopped:
        new = new[: new.index(eou)]
    assert len(new) >= 8, "the tiny model stopped at once: nothing is compared"
    # the same number of tokens, ending the same way, spelling the same text (control tokens such as
    # <row_1_col_2> print as nothing in llama.cpp, as with skip_special_tokens)
    assert result.answer.generated_tokens == len(new) + int(stopped)
    assert result.answer.stop_reason == ("eos" if stopped else "max_tokens")
    assert result.answer.text == tokenizer.decode(new, skip_special_tokens=True).lstrip()
