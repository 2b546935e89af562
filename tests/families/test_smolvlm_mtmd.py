"""dfrt's SmolVLM2 visual graph against an oracle independent of transformers: llama.cpp's own SmolVLM vision
(clip.cpp in libmtmd, through llama-cpp-python's ctypes bindings), on an mmproj that llama.cpp's converter
writes from the same tiny random checkpoint, encoding the same frames.

The frames are RGB at the model's exact size (64 x 64), so neither side resizes: dfrt's ``square_lanczos``
copies a frame that is already S x S, and mtmd's Idefics3 preprocessor, with the longest edge equal to the
tile size, copies it (no resampling at equal sizes) into an overview and a single 1 x 1 tile. Both scale to
[0, 1] and normalise with the checkpoint's mean and std (0.5), which the converter copies into the mmproj.

Needs llama.cpp's converter (``DFRT_LLAMA_CPP_CONVERTER``; ``scripts/test.sh`` provides it), torch and
transformers (the tiny checkpoint).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("llama_cpp.mtmd_cpp")

import cv2

from dfrt.metrics import cosine
from dfrt.runtime.backends.onnxruntime import OnnxRuntimeGraph
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.preprocess import preprocess_frames
from tests.mtmd_oracle import CONVERTER_ENV, MtmdVision, convert_mmproj, converter_dir
from tests.tiny_smolvlm import IMAGE_SIZE

SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "07-count.mp4"
TOKENS, WIDTH = 16, 64  # (64 / 8 / 2)^2 tokens a frame, the tiny LM's width


@pytest.fixture(scope="module")
def mmproj(tmp_path_factory, request) -> Path:
    converter = converter_dir()
    if converter is None:
        pytest.skip(
            f"llama.cpp's converter is not set up: {CONVERTER_ENV} must name a folder with "
            "convert_hf_to_gguf.py, conversion/ and gguf-py/ (scripts/test.sh extracts them from the "
            "llama-cpp-python sdist)"
        )
    checkpoint = request.getfixturevalue("smolvlm_checkpoint")  # built only once the converter is there
    return convert_mmproj(converter, checkpoint, tmp_path_factory.mktemp("mmproj") / "mmproj.gguf")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    """Two RGB frames at the model's size: one of the sample video (shrunk here, before either side sees it)
    and one of uniform noise (every pixel value, no smooth areas)."""
    capture = cv2.VideoCapture(str(SAMPLE))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 30)
    ok, bgr = capture.read()
    capture.release()
    assert ok, f"{SAMPLE}: no frame decoded"
    small = cv2.resize(bgr, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    video = cv2.cvtColor(small, cv2.COLOR_BGR2RGB)
    noise = np.random.default_rng(7).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    return np.stack([video, noise])


@pytest.fixture(scope="module")
def dfrt_embeds(smolvlm_f32_bundle, frames) -> np.ndarray:
    bundle = Bundle.open(smolvlm_f32_bundle)
    graph = OnnxRuntimeGraph(bundle.graph_path("vision"), bundle.manifest.graphs["vision"].spec)
    try:
        return graph.run({"pixels": preprocess_frames(frames, bundle.manifest.preprocess)})["frame_embeds"]
    finally:
        graph.close()


@pytest.fixture(scope="module")
def mtmd_embeds(mmproj, smolvlm_f32_bundle, frames) -> list[list[np.ndarray]]:
    bundle = Bundle.open(smolvlm_f32_bundle)
    assert bundle.llm_file is not None
    with MtmdVision(mmproj, bundle.path(bundle.llm_file)) as vision:
        return [vision.encode(frame) for frame in frames]


def test_both_sides_see_the_same_pixels(mmproj, smolvlm_f32_bundle, frames) -> None:
    """The mmproj tells mtmd the checkpoint's size and normalisation; dfrt's preprocessing of a frame at the
    model's size is the plain (x / 255 - 0.5) / 0.5 that mtmd computes, with no resampling."""
    from gguf import GGUFReader

    fields = GGUFReader(mmproj).fields

    def value(key: str):  # type: ignore[no-untyped-def]
        field = fields[key]
        parts = [field.parts[i].tolist() for i in field.data]
        return bytes(parts[0]).decode() if field.types[0].name == "STRING" else [p[0] for p in parts]

    assert value("clip.projector_type") == "idefics3"
    assert value("clip.vision.image_size") == [IMAGE_SIZE]
    assert value("clip.vision.preproc_image_size") == [IMAGE_SIZE]
    assert value("clip.vision.image_mean") == [0.5] * 3 and value("clip.vision.image_std") == [0.5] * 3
    assert value("clip.vision.projector.scale_factor") == [2]
    pixels = preprocess_frames(frames, Bundle.open(smolvlm_f32_bundle).manifest.preprocess)
    expected = (frames.astype(np.float64) / 255.0 - 0.5) / 0.5
    np.testing.assert_allclose(pixels.transpose(0, 2, 3, 1), expected, atol=1e-6)


def test_mtmd_shows_a_frame_at_the_model_size_as_an_overview_and_one_tile(mtmd_embeds) -> None:
    for chunks in mtmd_embeds:
        assert [c.shape for c in chunks] == [(TOKENS, WIDTH)] * 2
        np.testing.assert_array_equal(chunks[0], chunks[1])  # the same pixels through the same graph


def test_dfrt_visual_graph_equals_llama_cpp_mtmd(dfrt_embeds, mtmd_embeds) -> None:
    """Per token cosine >= 0.9999 and relative error <= 1e-3 (measured: >= 0.99999994 and 2.0e-4 / 2.8e-4):
    F32 weights on both sides; llama.cpp rounds a little to F16 (the next test shows where)."""
    assert dfrt_embeds.shape == (2, TOKENS, WIDTH)
    for ours, chunks in zip(dfrt_embeds, mtmd_embeds, strict=True):
        theirs = chunks[0]
        per_token = [cosine(ours[t], theirs[t]) for t in range(TOKENS)]
        assert min(per_token) >= 0.9999, per_token
        assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) <= 1e-3


def test_the_gap_is_llama_cpps_own_f16_roundings(smolvlm_checkpoint, frames, mtmd_embeds) -> None:
    """transformers with llama.cpp's two F16 roundings emulated equals mtmd to 1e-5 (measured 2.2e-6 and
    4.3e-6), where plain transformers (and dfrt) differ by 2e-4: ggml_conv_2d's im2col holds the pixels in
    F16, so the patch embedding multiplies F16 pixels by F16 weights, and ggml's CPU GELU reads an F16
    table."""
    import torch
    import torch.nn.functional as F

    from tests.tiny_smolvlm import load_tiny

    class TableGelu(torch.nn.Module):
        """ggml_vec_gelu_f32 with GGML_GELU_FP16: 0 below -10, x above 10, else F16(gelu(F16(x)))."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            table = F.gelu(x.half().float(), approximate="tanh").half().float()
            return torch.where(x <= -10, torch.zeros_like(x), torch.where(x >= 10, x, table))

    model = load_tiny(smolvlm_checkpoint)
    pixels = torch.from_numpy(((frames / 255.0 - 0.5) / 0.5).astype(np.float32).transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        plain = model.get_image_features(pixels[None]).pooler_output[0].numpy().reshape(2, TOKENS, WIDTH)
        patch = model.model.vision_model.embeddings.patch_embedding
        patch.weight.copy_(patch.weight.half().float())
        for layer in model.model.vision_model.encoder.layers:
            layer.mlp.activation_fn = TableGelu()
        emulated = model.get_image_features(pixels.half().float()[None]).pooler_output[0].numpy()
    for i, chunks in enumerate(mtmd_embeds):
        theirs = chunks[0]
        gap = np.linalg.norm(plain[i] - theirs) / np.linalg.norm(theirs)
        assert np.linalg.norm(emulated.reshape(2, TOKENS, WIDTH)[i] - theirs) / np.linalg.norm(theirs) <= 1e-5
        assert gap > 2e-5  # the emulation is what closes it


def test_the_oracle_tells_frames_apart(dfrt_embeds, mtmd_embeds) -> None:
    """The agreement above is about the frame: dfrt's embeddings of one frame are far from mtmd's of the
    other."""
    crossed = [cosine(dfrt_embeds[0][t], mtmd_embeds[1][0][t]) for t in range(TOKENS)]
    assert max(crossed) < 0.9, crossed


def test_the_mtmd_handles_are_freed_once_and_never_used_after(mmproj, smolvlm_f32_bundle, frames) -> None:
    bundle = Bundle.open(smolvlm_f32_bundle)
    assert bundle.llm_file is not None
    vision = MtmdVision(mmproj, bundle.path(bundle.llm_file))
    vision.close()
    vision.close()
    with pytest.raises(RuntimeError, match="closed"):
        vision.encode(frames[0])
