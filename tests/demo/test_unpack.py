"""The shipped demo back into a training run: the LM read back from its GGUF computes llama.cpp's logits, the
visual weights are the shipped ones, and the retrained tokenizer is the GGUF's."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")

from dfrt.demo.training.lm import demo_lm_config, new_demo_lm, train_tokenizer, write_demo_gguf  # noqa: E402
from dfrt.demo.training.reference import shipped_weights  # noqa: E402
from dfrt.demo.training.unpack import unpack_shipped  # noqa: E402
from dfrt.errors import CheckpointError  # noqa: E402
from dfrt.export.gguf_llm import read_llama_gguf, read_sentencepiece_vocab, write_llama_gguf  # noqa: E402
from dfrt.metrics import cosine  # noqa: E402
from dfrt.model.llama import Llama  # noqa: E402
from dfrt.runtime.default_bundle import shipped_demo  # noqa: E402
from dfrt.runtime.llm import LlamaModel  # noqa: E402


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack_shipped(tmp_path_factory.mktemp("shipped"))


def test_gguf_round_trip_is_exact_up_to_fp16(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(tmp_path / "tokenizer.model")
    torch.manual_seed(0)
    lm = new_demo_lm(tokenizer)
    gguf = write_demo_gguf(lm, tokenizer, tmp_path / "lm.gguf")
    back = read_llama_gguf(gguf, lm.cfg)
    for name, tensor in lm.state_dict().items():
        expected = tensor if tensor.ndim == 1 else tensor.half().float()  # norms stay F32
        assert torch.equal(back[name], expected), name


def test_shipped_demo_unpacks_into_a_run_llama_cpp_agrees_with(run: Path) -> None:
    visual = safetensors_torch.load_file(str(run / "weights.safetensors"))
    shipped = safetensors_torch.load_file(str(shipped_weights()))
    assert visual.keys() == shipped.keys()
    assert all(
        visual[k].dtype == torch.float32 and torch.equal(visual[k], shipped[k].float()) for k in shipped
    )

    vocab = read_sentencepiece_vocab(run / "tokenizer.model")
    lm = Llama(demo_lm_config(len(vocab.tokens))).eval()
    lm.load_state_dict(safetensors_torch.load_file(str(run / "lm.safetensors")), strict=True)
    with LlamaModel(shipped_demo() / "llm.gguf", n_ctx=128) as llm:
        ids = llm.tokenize("Question: What color did the circle turn into? Answer:", add_bos=True)
        llm.decode_tokens(ids, 0)
        expected = llm.last_logits()
    with torch.no_grad():
        got = lm(torch.tensor([ids]))[0, -1].numpy()
    assert cosine(got, expected) >= 0.999
    assert int(np.argmax(got)) == int(np.argmax(expected))


def test_a_gguf_of_another_vocabulary_is_refused(tmp_path: Path, run: Path) -> None:
    tokenizer = run / "tokenizer.model"
    vocab = read_sentencepiece_vocab(tokenizer)
    lm = Llama(demo_lm_config(len(vocab.tokens)))
    state = {k: v.float() for k, v in lm.state_dict().items()}
    bundle = Path(shutil.copytree(shipped_demo(), tmp_path / "bundle"))
    write_llama_gguf(state, lm.cfg, vocab, bundle / "llm.gguf")
    unpack_shipped(tmp_path / "same", bundle=bundle)  # the same pieces: accepted
    vocab.tokens[5] = b"<changed>"
    write_llama_gguf(state, lm.cfg, vocab, bundle / "llm.gguf")
    with pytest.raises(CheckpointError, match="pieces differ"):
        unpack_shipped(tmp_path / "other", bundle=bundle)


def test_validating_a_run_answers_as_the_shipped_bundle_does(
    run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dfrt.demo.training.validation`` on the unpacked shipped run (PyTorch visual path, LM through a GGUF
    written from the unpacked weights) gives the shipped ONNX bundle's answers on its validation clips."""
    from dfrt.demo.evaluate import OnnxEmbedder, evaluate, held_out_set
    from dfrt.demo.training.validation import validate_run
    from dfrt.demo.world import validation_clip
    from dfrt.runtime.default_bundle import demo_bundle
    from dfrt.runtime.pipeline import Pipeline

    monkeypatch.setenv("DFRT_CACHE_DIR", str(tmp_path))
    count = 14
    reference = validate_run(run, count, ("dynfocus",))["dynfocus"]
    items = held_out_set(count, tmp_path / "demo-validation", clip_of=validation_clip)
    assert [p.name for p in sorted((tmp_path / "demo-validation").iterdir())] == sorted(
        i.video.name for i in items
    )
    with Pipeline(demo_bundle(), backend="onnxruntime") as pipe:
        shipped = evaluate(items, pipe, OnnxEmbedder(pipe), ("dynfocus",))["dynfocus"]
    assert sum(reference.total.values()) == count
    assert abs(sum(reference.correct.values()) - sum(shipped.correct.values())) <= 1
    assert reference.accuracy() >= 0.5  # chance is about 0.24
