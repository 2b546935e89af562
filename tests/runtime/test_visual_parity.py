"""The bundle on onnxruntime against the PyTorch reference: same key frames, same embeddings."""

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model and export need torch (dfrt[export])")
import torch

from dfrt.metrics import cosine
from dfrt.runtime.visual import VisualPipeline
from tests.conftest import frames


@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    return VisualPipeline.open(tiny_bundle)


def _question(length: int, seed: int) -> torch.Tensor:
    ids = torch.randint(1000, 30000, (1, length), generator=torch.Generator().manual_seed(seed))
    ids[0, 0], ids[0, -1] = 101, 102
    return ids


@pytest.mark.parametrize("num_frames", [1, 3, 8, 80, 81, 150])
@pytest.mark.parametrize("question_length", [1, 2, 40, 256])
def test_runtime_matches_reference(pipeline, tiny_model, num_frames, question_length):
    pixels = frames(num_frames, tiny_model.config.vision.image_size, seed=num_frames)
    ids = _question(question_length, seed=question_length)
    with torch.no_grad():
        expected = tiny_model(pixels, ids)
    video = pipeline.encode_pixels(pixels.numpy())
    got = pipeline.embed_ids(video, ids.numpy(), np.ones_like(ids.numpy()))
    assert np.array_equal(got.selection.key_frames, expected.selection.key_frames)
    assert np.array_equal(got.prototypes.assignment, expected.prototypes.assignment)
    assert np.array_equal(got.tokens_per_frame, expected.tokens_per_frame)
    assert got.embeds.shape == tuple(expected.embeds.shape)
    assert cosine(got.embeds, expected.embeds.numpy()) >= 0.9999
    np.testing.assert_allclose(got.scores, expected.scores.numpy(), atol=1e-4)


def test_one_video_many_questions(pipeline):
    """Question-independent work is done once; each question changes only the rods."""
    video = pipeline.encode_pixels(frames(12, 112, seed=5).numpy())
    a = pipeline.embed(video, "what colour is the car?")
    b = pipeline.embed(video, "how many people walk past the door?")
    assert np.array_equal(a.selection.key_frames, b.selection.key_frames)
    cones = np.repeat(a.tokens_per_frame == 38, a.tokens_per_frame)
    np.testing.assert_array_equal(a.embeds[cones], b.embeds[cones])
    assert not np.allclose(a.embeds[~cones], b.embeds[~cones])


def test_uint8_frames_in(pipeline):
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, size=(5, 90, 160, 3), dtype=np.uint8)
    result = pipeline(video, "what happens?")
    assert result.embeds.shape == (pipeline.config.visual_token_count(5), 576)
    assert {"preprocess", "vision", "scoring", "encoding", "question", "fusion"} <= set(result.timings)
