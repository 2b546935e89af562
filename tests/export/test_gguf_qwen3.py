"""Qwen3 (InternVL3.5's LM) -> llama.cpp's "qwen3" GGUF, and Qwen2's byte-level BPE: llama.cpp reproduces
transformers' logits; the one free-form pre-tokenizer regex accepted is Qwen2's, exactly."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from dfrt.errors import CheckpointError, ConfigError  # noqa: E402
from dfrt.export.gguf_llm import (  # noqa: E402
    LANGUAGE_MODEL_PREFIX,
    Qwen3Config,
    read_bpe_vocab,
    write_text_model_gguf,
)
from dfrt.metrics import cosine  # noqa: E402
from dfrt.runtime.llm import LlamaModel  # noqa: E402
from dfrt.runtime.text_tokenizer import PromptTokenizer  # noqa: E402
from tests.tiny_internvl import (  # noqa: E402
    build_qwen2_tokenizer,
    load_tiny,
    save_tokenizer,
    tiny_internvl,
)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return save_tokenizer(build_qwen2_tokenizer(), tmp_path_factory.mktemp("qwen2-tokenizer"))


def _edited(directory: Path, tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    data = json.loads((directory / "tokenizer.json").read_text())
    edit(data)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


def test_qwen2s_tokenizer_is_llama_cpps_qwen2_padded_to_the_model(tokenizer_dir) -> None:
    vocab = read_bpe_vocab(
        tokenizer_dir / "tokenizer.json", tokenizer_dir / "tokenizer_config.json", None, 400
    )
    assert (vocab.model, vocab.pre, len(vocab.tokens)) == ("gpt2", "qwen2", 400)
    assert vocab.tokens[-1] == b"[PAD399]" and not vocab.add_bos and vocab.bos is None
    assert vocab.eos == vocab.eot  # <|im_end|>


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex="(a+)+$"),
        lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(behavior="Removed"),
        lambda d: d["pre_tokenizer"]["pretokenizers"][0].update(invert=True),
    ],
)
def test_any_other_split_is_refused_by_the_export_and_the_runtime(tokenizer_dir, tmp_path, edit) -> None:
    path = _edited(tokenizer_dir, tmp_path, edit)
    with pytest.raises(CheckpointError, match="pre_tokenizer"):
        read_bpe_vocab(path, tokenizer_dir / "tokenizer_config.json")
    with pytest.raises(ConfigError, match="pre_tokenizer 'Split' is not accepted"):
        PromptTokenizer(path)


def test_a_normalizer_other_than_nfc_is_refused(tokenizer_dir, tmp_path) -> None:
    path = _edited(tokenizer_dir, tmp_path, lambda d: d.update(normalizer={"type": "NFKC"}))
    with pytest.raises(CheckpointError, match="normalizer"):
        read_bpe_vocab(path, tokenizer_dir / "tokenizer_config.json")


def test_the_runtime_tokenizes_as_transformers(tokenizer_dir) -> None:
    ours = PromptTokenizer(tokenizer_dir / "tokenizer.json")
    theirs = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir))
    text = "Frame1: <img></img>\nWhat's the car's colour?  It's 10:45 —  café\r\n"
    expected = theirs(text, add_special_tokens=False)["input_ids"]
    assert ours.ids([(text, True)]) == expected


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):  # type: ignore[no-untyped-def]
    internvl_checkpoint = tiny_internvl(tmp_path_factory.mktemp("internvl") / "checkpoint")
    model = load_tiny(internvl_checkpoint)
    text = {**model.config.text_config.to_dict(), "tie_word_embeddings": True}
    vocab = read_bpe_vocab(
        internvl_checkpoint / "tokenizer.json",
        internvl_checkpoint / "tokenizer_config.json",
        vocab_size=text["vocab_size"],
    )
    out = tmp_path_factory.mktemp("qwen3") / "llm.gguf"
    write_text_model_gguf(
        model.state_dict(), text, vocab, out, "tiny", dtype="f32", prefix=LANGUAGE_MODEL_PREFIX, arch="qwen3"
    )
    return model, out


def test_the_gguf_is_llama_cpps_qwen3(qwen3) -> None:
    _, path = qwen3
    reader = gguf.GGUFReader(str(path))
    fields = {name: reader.fields[name] for name in reader.fields}
    arch = fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "qwen3"
    for key in ("qwen3.attention.key_length", "qwen3.attention.value_length"):
        assert int(fields[key].parts[fields[key].data[0]][0]) == 32  # the head_dim, not hidden / heads
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q_norm.weight", "blk.1.attn_k_norm.weight"} <= names
    assert {"token_embd.weight", "output.weight", "output_norm.weight"} <= names  # tied: written twice


def test_llama_cpp_logits_match_transformers(qwen3) -> None:
    model, path = qwen3
    ids = [321, 84, 82, 263, 198, 309, 16, 25, 220, 39, 68, 75, 75, 78, 220]
    with torch.no_grad():
        hidden = model.model.language_model(input_ids=torch.tensor([ids])).last_hidden_state
        expected = model.lm_head(hidden)[0, -1].numpy()
    with LlamaModel(path, n_ctx=64) as llm:
        llm.decode_tokens(ids, 0)
        got = llm.last_logits()
    assert cosine(got, expected) >= 0.9999
    np.testing.assert_allclose(got, expected, atol=1e-2)


def test_qwen3_configs_llama_cpp_cannot_run_are_refused() -> None:
    base = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2}  # fmt: skip
    assert Qwen3Config.from_hf(base).head_dim == 4
    for extra in ({"use_sliding_window": True}, {"attention_bias": True}, {"hidden_act": "gelu"},
                  {"rope_parameters": {"rope_type": "yarn", "factor": 4.0}},
                  {"layer_types": ["sliding_attention"]}):  # fmt: skip
        with pytest.raises(CheckpointError):
            Qwen3Config.from_hf(copy.deepcopy({**base, **extra}))
