"""Byte-level BPE (SmolLM2 / SmolVLM) text model -> GGUF: llama.cpp reproduces transformers' logits, greedy
tokens and tokenizer on a tiny random LlamaForCausalLM and a tokenizer trained here."""

import functools
import json

import numpy as np
import pytest

pytest.importorskip("torch", reason="the reference model and export need torch (dfrt[export])")
pytest.importorskip("transformers", reason="the reference model is transformers' LlamaForCausalLM")
pytest.importorskip("tokenizers")
pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")
import gguf
import llama_cpp
import torch
import transformers

from dfrt.errors import CheckpointError
from dfrt.export import gguf_vocab
from dfrt.export.gguf_llm import (
    MappingSource,
    RenamedSource,
    read_bpe_vocab,
    text_model_names,
    write_llama_gguf,
    write_text_model_gguf,
)
from dfrt.model.llama import LlamaConfig
from dfrt.runtime.llm import LlamaModel
from tests.tiny_tokenizer import CHAT_TEMPLATE, build_bpe_tokenizer, save_hf_tokenizer

PROMPTS = [
    "User: What colour is the car?\nFrame from 00:03:",
    "The quick brown fox jumps over the lazy dog at 10:45, doesn't it?",
    "  two  spaces, tabs\tand ünïcödé — 2024 frames!",
]
CHAT = "<|im_start|>User: How many people walk past the door?<end_of_utterance>\nAssistant:"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return save_hf_tokenizer(build_bpe_tokenizer(), tmp_path_factory.mktemp("tok"), CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def hf_tokenizer(hf_dir):
    return transformers.AutoTokenizer.from_pretrained(hf_dir)


def _hf_model(vocab_size, tied=False, seed=0):
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        initializer_range=0.2,
        tie_word_embeddings=tied,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def vocab(hf_dir, hf_tokenizer):
    return read_bpe_vocab(
        hf_dir / "tokenizer.json", hf_dir / "tokenizer_config.json", vocab_size=len(hf_tokenizer)
    )


@pytest.fixture(scope="module")
def model(hf_tokenizer):
    return _hf_model(len(hf_tokenizer))


@pytest.fixture(scope="module")
def gguf_path(model, vocab, tmp_path_factory):
    cfg = LlamaConfig.from_hf(model.config.to_dict())
    out = tmp_path_factory.mktemp("gguf") / "smol.gguf"
    return write_llama_gguf(
        model.state_dict(), cfg, vocab, out, "smol", dtype="f32", chat_template=CHAT_TEMPLATE
    )


@pytest.fixture(scope="module")
def f32_cache():
    """llama.cpp's KV cache in F32 (its default F16 cache alone moves the logits by ~1e-3 relative)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(llama_cpp, "Llama", functools.partial(llama_cpp.Llama, type_k=0, type_v=0))  # GGML F32
        yield


@pytest.fixture(scope="module")
def llm(gguf_path, f32_cache):
    with LlamaModel(gguf_path, n_ctx=128) as llm:
        yield llm


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].numpy()


def _assert_close(got, expected):
    assert np.max(np.abs(got - expected)) <= 1e-4 * np.max(np.abs(expected))
    assert got.argmax() == expected.argmax()


def test_the_tiny_tokenizer_is_deterministic_and_smolvlm_shaped(hf_dir, hf_tokenizer):
    assert build_bpe_tokenizer().to_str() == build_bpe_tokenizer().to_str()
    assert hf_tokenizer.convert_tokens_to_ids("<|endoftext|>") == 320
    assert hf_tokenizer.convert_tokens_to_ids("<image>") == 325
    assert hf_tokenizer.convert_tokens_to_ids("<row_6_col_6>") == len(hf_tokenizer) - 1
    assert hf_tokenizer.eos_token == "<end_of_utterance>" and hf_tokenizer.bos_token == "<|im_start|>"
    assert (
        hf_tokenizer.image_token == "<image>" and hf_tokenizer.fake_image_token == "<fake_token_around_image>"
    )
    pieces = hf_tokenizer.tokenize(PROMPTS[0])
    assert len(pieces) < len(PROMPTS[0]) // 2 and "0" in pieces and "3" in pieces  # digits one by one


def test_read_bpe_vocab(vocab, hf_tokenizer):
    assert vocab.model == "gpt2" and vocab.pre == "smollm" and not vocab.add_bos
    assert len(vocab.tokens) == len(hf_tokenizer) and vocab.scores == []
    ids = hf_tokenizer.convert_tokens_to_ids
    assert (vocab.bos, vocab.eos, vocab.pad) == (
        ids("<|im_start|>"),
        ids("<end_of_utterance>"),
        ids("<|endoftext|>"),
    )
    assert vocab.eot == ids("<end_of_utterance>")
    assert (
        vocab.tokens[ids("<image>")] == b"<image>" and vocab.types[ids("<image>")] == gguf.TokenType.CONTROL
    )
    assert vocab.tokens[ids("Ġthe")] == "Ġthe".encode() and vocab.types[ids("Ġthe")] == gguf.TokenType.NORMAL
    assert len(vocab.merges) == 320 - 256 and all(m.count(" ") == 1 for m in vocab.merges)


def test_model_vocabulary_larger_than_the_tokenizer_is_padded(hf_dir, hf_tokenizer):
    padded = read_bpe_vocab(hf_dir / "tokenizer.json", hf_dir / "tokenizer_config.json", vocab_size=400)
    n = len(hf_tokenizer)
    assert len(padded.tokens) == 400 and padded.tokens[n] == f"[PAD{n}]".encode()
    assert padded.types[n] == gguf.TokenType.UNUSED
    with pytest.raises(CheckpointError, match="vocabulary is 100"):
        read_bpe_vocab(hf_dir / "tokenizer.json", vocab_size=100)


def test_llama_cpp_logits_match_transformers(model, llm, hf_tokenizer):
    ids = hf_tokenizer(CHAT, add_special_tokens=False)["input_ids"]
    llm.reset()
    llm.decode_tokens(ids, 0)
    _assert_close(llm.last_logits(), _hf_logits(model, ids))


def test_greedy_generation_matches_transformers(model, llm, hf_tokenizer):
    ids = hf_tokenizer(PROMPTS[0], add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = model.generate(
            torch.tensor([ids]), do_sample=False, max_new_tokens=20, min_new_tokens=20, pad_token_id=0
        )[0, len(ids) :].tolist()
    llm.reset()
    position = llm.decode_tokens(ids, 0)
    chain = llm.sampler(0.0, 1.0, 0)
    got = []
    try:
        for _ in range(20):
            got.append(llm.sample(chain))
            position = llm.decode_tokens(got[-1:], position)
    finally:
        llm.free_sampler(chain)
    assert got == expected
    assert len(set(got)) > 1  # peaked but not degenerate


@pytest.mark.parametrize("text", [*PROMPTS, CHAT])
def test_llama_cpp_tokenizes_and_detokenizes_as_transformers(llm, hf_tokenizer, text):
    ids = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(text, add_bos=False) == ids
    text_bytes = b"".join(llm.token_bytes(t) for t in ids)  # control tokens have no text here
    assert text_bytes.decode("utf-8") == hf_tokenizer.decode(ids, skip_special_tokens=True)


def test_end_of_utterance_ends_generation(llm, hf_tokenizer, gguf_path):
    assert llm.is_end_of_generation(hf_tokenizer.convert_tokens_to_ids("<end_of_utterance>"))
    assert not llm.is_end_of_generation(hf_tokenizer.convert_tokens_to_ids("<image>"))
    assert not llm.is_end_of_generation(hf_tokenizer.convert_tokens_to_ids("Ġthe"))
    assert not llm.adds_bos
    metadata = llm.metadata
    assert metadata["tokenizer.ggml.model"] == "gpt2" and metadata["tokenizer.ggml.pre"] == "smollm"
    assert metadata["tokenizer.chat_template"] == CHAT_TEMPLATE
    reader = gguf.GGUFReader(str(gguf_path))
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F32}


def test_prefixed_vlm_state_dict_with_tied_embeddings(hf_tokenizer, vocab, tmp_path, f32_cache):
    model = _hf_model(len(hf_tokenizer), tied=True, seed=1)
    state = model.state_dict()
    vlm = {f"model.text_model.{k[len('model.') :]}": v for k, v in state.items() if k.startswith("model.")}
    vlm["lm_head.weight"] = state["lm_head.weight"]
    vlm["model.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(8, 3, 4, 4)
    vlm["model.connector.modality_projection.proj.weight"] = torch.zeros(64, 32)
    text_config = model.config.to_dict()
    del text_config["num_attention_heads"]  # as SmolVLM2's config.json: transformers' default is 32
    text_config["num_attention_heads"] = 4
    out = write_text_model_gguf(vlm, text_config, vocab, tmp_path / "tied.gguf", "smolvlm", dtype="f32")
    stored = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(out)).tensors}
    assert len(stored) == 3 + 9 * 2 and not any("vision" in n or "connector" in n for n in stored)
    np.testing.assert_array_equal(stored["output.weight"], stored["token_embd.weight"])  # tied: a copy
    ids = hf_tokenizer(PROMPTS[1], add_special_tokens=False)["input_ids"]
    with LlamaModel(out, n_ctx=64) as llm:
        llm.decode_tokens(ids, 0)
        _assert_close(llm.last_logits(), _hf_logits(model, ids))


def test_prefixed_source_writes_the_same_file_as_plain_names(model, vocab, gguf_path, tmp_path):
    state = model.state_dict()
    vlm = {f"model.text_model.{k[len('model.') :]}": v for k, v in state.items() if k.startswith("model.")}
    vlm["lm_head.weight"] = state["lm_head.weight"]
    source = MappingSource(vlm)
    assert (
        text_model_names(vlm)["model.layers.1.mlp.up_proj.weight"]
        == "model.text_model.layers.1.mlp.up_proj.weight"
    )
    out = write_text_model_gguf(
        source, model.config.to_dict(), vocab, tmp_path / "x.gguf", "smol", "f32", CHAT_TEMPLATE
    )
    assert out.read_bytes() == gguf_path.read_bytes()
    renamed = RenamedSource(source, text_model_names(vlm))
    assert [name for name, _ in renamed.read(["model.norm.weight"])] == ["model.norm.weight"]


def test_unknown_text_model_tensor_is_refused(model, vocab, tmp_path):
    vlm = {
        f"model.text_model.{k[len('model.') :]}": v
        for k, v in model.state_dict().items()
        if k.startswith("model.")
    }
    vlm["lm_head.weight"] = model.state_dict()["lm_head.weight"]
    vlm["model.text_model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match=r"q_proj\.bias has no GGUF counterpart"):
        write_text_model_gguf(vlm, model.config.to_dict(), vocab, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def _tokenizer_json(hf_dir):
    return json.loads((hf_dir / "tokenizer.json").read_text())


HOSTILE = {
    "not JSON": lambda data: "{not json",
    "a list": lambda data: "[]",
    "no model": lambda data: json.dumps({k: v for k, v in data.items() if k != "model"}),
    "WordPiece": lambda data: json.dumps({**data, "model": {**data["model"], "type": "WordPiece"}}),
    "vocab a list": lambda data: json.dumps({**data, "model": {**data["model"], "vocab": ["a", "b"]}}),
    "negative id": lambda data: json.dumps({**data, "model": {**data["model"], "vocab": {"a": -1}}}),
    "bad merge": lambda data: json.dumps({**data, "model": {**data["model"], "merges": [["a", "b", "c"]]}}),
    "Metaspace": lambda data: json.dumps({**data, "pre_tokenizer": {"type": "Metaspace"}}),
    "normalizer": lambda data: json.dumps({**data, "normalizer": {"type": "NFC"}}),
    "added token": lambda data: json.dumps({**data, "added_tokens": [{"content": 5, "id": 1}]}),
    "deep": lambda data: "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_tokenizer_json_is_one_checkpoint_error(hf_dir, tmp_path, kind):
    path = tmp_path / "tokenizer.json"
    path.write_text(HOSTILE[kind](_tokenizer_json(hf_dir)))
    with pytest.raises(CheckpointError) as caught:
        read_bpe_vocab(path, hf_dir / "tokenizer_config.json")
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_huge_or_special_tokenizer_files_are_refused(hf_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_vocab, "MAX_BPE_TOKENIZER_BYTES", 1000)
    with pytest.raises(CheckpointError, match="limit is 1000"):
        read_bpe_vocab(hf_dir / "tokenizer.json")
    with pytest.raises(CheckpointError, match="not a regular file"):
        read_bpe_vocab(tmp_path)
    with pytest.raises(CheckpointError, match="unreadable"):
        read_bpe_vocab(tmp_path / "missing.json")


def test_bad_tokenizer_config_is_one_checkpoint_error(hf_dir, tmp_path):
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"eos_token": "<no such token>"}))
    with pytest.raises(CheckpointError, match="eos_token '<no such token>' is not in the vocabulary"):
        read_bpe_vocab(hf_dir / "tokenizer.json", config)
    config.write_text(json.dumps({"bos_token": "<|im_start|>"}))
    with pytest.raises(CheckpointError, match="no end-of-sequence token"):
        read_bpe_vocab(hf_dir / "tokenizer.json", config)
    generation = tmp_path / "generation_config.json"
    generation.write_text(json.dumps({"eos_token_id": [323, 322]}))
    assert read_bpe_vocab(hf_dir / "tokenizer.json", config, generation).eos == 323
    generation.write_text(json.dumps({"eos_token_id": 10**6}))
    with pytest.raises(CheckpointError, match="is not a token id"):
        read_bpe_vocab(hf_dir / "tokenizer.json", config, generation)
