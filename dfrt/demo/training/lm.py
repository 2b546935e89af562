"""The demo's language model: a small LLaMA trained from scratch alongside the visual model.

Why not the frozen SmolLM2-135M-Instruct the first demo used: training through it on this 2-core CPU cost
about 5 s per 8 clips, and a 60-minute run (about 10k clips) stayed at chance; a 4-layer LLaMA of width 256
learns the cross-frame reasoning (which shape was there only briefly, which one left) with every weight
trainable at a fraction of that cost. It is a real LLaMA: written to GGUF by dfrt's converter and run by
llama.cpp exactly like a converted checkpoint. It only knows this world's questions and answer words.

The tokenizer is a sentencepiece BPE model (byte fallback: any text tokenises) trained on the world's
question templates and answer words; it travels inside the GGUF.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from dfrt._optional import require
from dfrt.demo.world import ANSWERS, COLOURS, DIRECTIONS, QUESTIONS, SHAPES
from dfrt.export.gguf_llm import read_sentencepiece_vocab, write_llama_gguf
from dfrt.model.llama import Llama, LlamaConfig

DEMO_LM_WIDTH = 256
VOCAB_SIZE = 400


def demo_lm_config(vocab_size: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=DEMO_LM_WIDTH,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )


def corpus() -> list[str]:
    """Every question the world asks (templates filled every way) and every answer word."""
    fills = {
        "colour": list(COLOURS),
        "shape": list(SHAPES),
        "when": ["start", "end"],
    }
    sentences = []
    for templates in QUESTIONS.values():
        for template in templates:
            keys = [k for k in fills if "{" + k + "}" in template]
            for values in itertools.product(*(fills[k] for k in keys)):
                sentences.append(template.format(**dict(zip(keys, values, strict=True))))
    sentences += [f"Question: {q} Answer: {a}" for q, a in zip(sentences, itertools.cycle(ANSWERS))]
    sentences += [f"{a}." for a in (*ANSWERS, *DIRECTIONS)]
    for i in range(60):  # the training-only whole-clip descriptions (dfrt.demo.training.train.describe)
        c, s, d, w = (
            list(COLOURS)[i % 5],
            SHAPES[i % 3],
            DIRECTIONS[i % 4],
            ("start", "end")[i % 2],
        )
        sentences.append(
            f"Describe the video. {c} {s}, {c} {s} moving {d}, {c} {s} turning {c}, {c} {s} brief {w}, "
            f"{c} {s} leaving."
        )
    return sentences


def train_tokenizer(out: Path) -> Path:
    """``out`` (a sentencepiece ``.model``), trained deterministically on :func:`corpus`."""
    sentencepiece = require("sentencepiece", "dfrt[export]")
    prefix = out.with_suffix("")
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus() * 4),
        model_prefix=str(prefix),
        vocab_size=VOCAB_SIZE,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        hard_vocab_limit=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    prefix.with_suffix(".vocab").unlink(missing_ok=True)
    return out


def new_demo_lm(tokenizer: Path) -> Llama:
    """A randomly initialised demo LM sized to ``tokenizer``'s vocabulary."""
    vocab = read_sentencepiece_vocab(tokenizer)
    model = Llama(demo_lm_config(len(vocab.tokens)))
    for module in model.modules():
        if isinstance(module, torch.nn.Linear | torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=0.02)
    return model


def write_demo_gguf(model: Llama, tokenizer: Path, out: Path) -> Path:
    """The demo LM as an F16 GGUF (norms F32) through dfrt's checkpoint converter."""
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    return write_llama_gguf(state, model.cfg, read_sentencepiece_vocab(tokenizer), out, name="dfrt-demo-lm")
