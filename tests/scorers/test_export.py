"""Export of tiny random SigLIP and CLIP models: both ONNX towers against transformers (cosine >= 0.9999),
then FrameScorer end to end on the exported files, and the checkpoints export refuses."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export needs torch (dfrt[export])")
transformers = pytest.importorskip("transformers", reason="export needs transformers (dfrt[export])")

from dfrt.errors import CheckpointError, ParityError  # noqa: E402
from dfrt.scorers.export import export_scorer  # noqa: E402
from dfrt.scorers.runtime import FrameScorer  # noqa: E402
from tests.tiny_scorer import build  # noqa: E402


@pytest.fixture(scope="module", params=["siglip", "clip"])
def exported(request, tmp_path_factory):  # type: ignore[no-untyped-def]
    kind = request.param
    source = build(tmp_path_factory.mktemp(f"{kind}-hf"), kind)
    out = tmp_path_factory.mktemp(f"{kind}-bundle")
    spec, files = export_scorer(source, out, progress=lambda _: None)  # the parity gate runs inside
    cls = transformers.SiglipModel if kind == "siglip" else transformers.CLIPModel
    model = cls.from_pretrained(str(source), dtype=torch.float32).eval()
    return kind, source, out, spec, files, model


def features(output) -> np.ndarray:  # type: ignore[no-untyped-def]
    tensor = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(tensor, dim=-1).detach().numpy()


def test_export_writes_the_spec_and_files(exported) -> None:  # type: ignore[no-untyped-def]
    kind, _, out, spec, files, model = exported
    assert files == ["scorer_image.onnx", "scorer_text.onnx", "scorer_tokenizer.json"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files)  # no staging left behind
    assert spec.kind == kind and spec.image_size == 32 and spec.text_length == 12
    assert spec.embed_dim == (32 if kind == "siglip" else 24) and spec.pad_id == 0
    assert spec.text_cleanup == ("siglip" if kind == "siglip" else "none")
    assert spec.resize == ("squash" if kind == "siglip" else "crop")
    assert spec.resize_size == (32 if kind == "siglip" else 40)
    assert spec.logit_scale == pytest.approx(float(model.logit_scale.detach().exp()))
    import onnx

    for name in files[:2]:
        proto = onnx.load(str(out / name))
        assert {o.domain or "ai.onnx": o.version for o in proto.opset_import} == {"ai.onnx": 17}
        assert not {n.op_type for n in proto.graph.node} & {"Attention", "SequenceConstruct", "Loop"}


def test_frame_scorer_matches_transformers(exported) -> None:  # type: ignore[no-untyped-def]
    kind, source, out, spec, _, model = exported
    with FrameScorer.open(out, spec) as scorer:
        frames = np.random.default_rng(0).integers(0, 256, (19, 36, 48, 3), dtype=np.uint8)  # two chunks
        embeds = scorer.image_embeddings(frames)
        with torch.no_grad():
            reference = features(
                model.get_image_features(pixel_values=torch.from_numpy(scorer.preprocess(frames)))
            )
        assert np.min(np.sum(embeds * reference, axis=1)) >= 0.9999

        question = "What is the dog doing in the video? " * 3  # truncated to the text length
        reference_tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(str(source))
        text = " ".join(question.lower().replace("?", " ").split()) if kind == "siglip" else question
        options = {"padding": "max_length"} if kind == "siglip" else {}
        expected = reference_tokenizer(text, truncation=True, max_length=12, return_tensors="pt", **options)
        ids = scorer.tokenize(question)
        assert ids.tolist() == expected["input_ids"].tolist()
        with torch.no_grad():
            text_reference = features(model.get_text_features(input_ids=torch.from_numpy(ids)))[0]
        assert float(scorer.text_embedding(question) @ text_reference) >= 0.9999

        relevance = scorer.relevance(embeds, scorer.text_embedding(question))
        assert np.allclose(relevance, reference @ text_reference, atol=1e-4)


def test_preprocessing_is_close_to_the_pil_processor(exported) -> None:  # type: ignore[no-untyped-def]
    """Against transformers' own (PIL) image processor: OpenCV's filters differ slightly from PIL's."""
    pytest.importorskip("PIL")
    kind, source, out, spec, _, _ = exported
    name = "SiglipImageProcessorPil" if kind == "siglip" else "CLIPImageProcessorPil"
    processor_cls = getattr(transformers, name, None)
    if processor_cls is None:
        pytest.skip(f"transformers has no {name}")
    processor = processor_cls.from_pretrained(str(source))
    frames = np.random.default_rng(1).integers(0, 256, (3, 72, 96, 3), dtype=np.uint8)
    frames = np.ascontiguousarray(np.repeat(np.repeat(frames[:, ::8, ::8], 8, 1), 8, 2))  # smooth-ish
    reference = processor(images=list(frames), return_tensors="np")["pixel_values"]
    with FrameScorer.open(out, spec) as scorer:
        ours = scorer.preprocess(frames)
    assert ours.shape == reference.shape
    assert np.mean(np.abs(ours - reference)) < 0.15


def test_siglip2_naflex_and_other_models_are_refused(tmp_path: Path) -> None:
    for model_type in ("siglip2", "llama"):
        directory = tmp_path / model_type
        directory.mkdir()
        (directory / "config.json").write_text(json.dumps({"model_type": model_type}))
        with pytest.raises(CheckpointError, match=model_type):
            export_scorer(directory, tmp_path)


def test_a_checkpoint_without_tokenizer_json_is_refused(tmp_path: Path) -> None:
    source = build(tmp_path / "hf", "siglip")
    (source / "tokenizer.json").unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError, match=r"no tokenizer\.json"):
        export_scorer(source, out)
    assert not list(out.iterdir())


def test_a_parity_failure_is_one_error_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from dfrt.scorers import export

    monkeypatch.setattr(export, "MIN_COSINE", 1.5)  # no cosine reaches it
    source = build(tmp_path / "hf", "clip")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ParityError, match="graph scorer_image: row 0 has cosine"):
        export_scorer(source, out)
    assert not list(out.iterdir())


def test_a_sentencepiece_only_siglip_is_converted(tmp_path: Path) -> None:
    """google/siglip-* ship spiece.model and no tokenizer.json: export converts it, and the runtime then
    tokenises exactly as transformers' SiglipTokenizer (canonicalised, </s>, padded to the text length)."""
    import io

    spm = pytest.importorskip("sentencepiece")
    source = build(tmp_path / "hf", "siglip")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (source / name).unlink()
    corpus = ["what is the dog doing in the video", "a cat sits on the mat", "the man runs to the car"] * 20
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus), model_writer=model, vocab_size=24, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>", eos_piece="</s>", unk_piece="<unk>",
        add_dummy_prefix=False, minloglevel=2,
    )  # fmt: skip
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    transformers.SiglipTokenizer(str(tmp_path / "spiece.model"), model_max_length=12).save_pretrained(
        str(source)
    )
    out = tmp_path / "out"
    out.mkdir()
    spec, _ = export_scorer(source, out, progress=lambda _: None)
    assert spec.text_cleanup == "siglip" and spec.pad_id == 1  # SigLIP pads with </s>
    slow = transformers.SiglipTokenizer.from_pretrained(str(source))
    with FrameScorer.open(out, spec) as scorer:
        for question in (
            "What is the DOG doing, in the video?!",
            "a cat",
            "zebra  crossing... ",
            "the " * 30,
        ):
            expected = slow(question, padding="max_length", max_length=12, truncation=True)["input_ids"]
            assert scorer.tokenize(question).tolist() == [expected], question
