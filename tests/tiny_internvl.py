"""A tiny random InternVL3.5 checkpoint (InternViT + pixel shuffle + MLP projector + a Qwen3 LM), written as
a Hugging Face directory the way transformers saves one (no weights are downloaded: the architecture is
transformers' own, the sizes are small), with a tiny Qwen2-style tokenizer: NFC, the Split regex of Qwen2,
then byte-level, trained here on :data:`tests.tiny_tokenizer.TEXT`. Needs torch and transformers for the
model, ``tokenizers`` alone for the tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from tests.tiny_tokenizer import TEXT

IMAGE_SIZE, PATCH = 56, 7  # 8 x 8 patches -> pixel shuffle (ratio 0.5) -> 4 x 4 = 16 tokens a frame
TOKENS_PER_FRAME = 16
HEAD_DIM = 32  # Qwen3's head_dim is its own (not hidden / heads = 16 here), as in the real models
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<img>",
    "</img>",
    "<IMG_CONTEXT>",
    "<video>",
)
# transformers' InternVL chat template (models/internvl/convert_internvl_weights_to_hf.py): no system turn
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif content['type'] == 'video' %}{{ '<video>\n' }}{% elif content['type'] == 'text' %}"
    "{{ content['text'] }}{% endif %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{'<|im_start|>assistant\n' }}{% endif %}"
)


def build_qwen2_tokenizer(vocab_size: int = 320) -> Tokenizer:
    """A byte-level BPE with Qwen2's normalizer, pre-tokenizer, decoder and post-processor, then InternVL's
    special tokens (:data:`SPECIAL_TOKENS`) in that order."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(TEXT.splitlines() * 4, trainer=trainer)
    if tokenizer.get_vocab_size() != vocab_size:
        raise ValueError(f"the built-in text yields {tokenizer.get_vocab_size()} pieces, not {vocab_size}")
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in SPECIAL_TOKENS]
    )
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, directory: Path) -> Path:
    """``tokenizer.json`` and ``tokenizer_config.json`` as InternVL3.5-HF checkpoints have them."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": CHAT_TEMPLATE,
        "extra_special_tokens": {
            "context_image_token": "<IMG_CONTEXT>",
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "video_token": "<video>",
        },
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def tiny_internvl(directory: Path, seed: int = 0, tie_embeddings: bool = True) -> Path:
    """Write ``directory`` with config.json, model.safetensors, the tokenizer files and
    ``video_preprocessor_config.json``; returns it. Weights are drawn wider than transformers' default (std
    0.2) so greedy answers have clear margins (parity tests compare tokens)."""
    import torch
    import transformers

    tokenizer = build_qwen2_tokenizer()
    save_tokenizer(tokenizer, directory)
    end = tokenizer.token_to_id("<|im_end|>")
    config = transformers.InternVLConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": [IMAGE_SIZE, IMAGE_SIZE],
            "patch_size": [PATCH, PATCH],
            "initializer_range": 0.2,
        },
        text_config={
            "model_type": "qwen3",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "head_dim": HEAD_DIM,
            "vocab_size": tokenizer.get_vocab_size(with_added_tokens=True) + 9,  # padded, as Qwen's are
            "max_position_embeddings": 4096,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": tie_embeddings,
            "initializer_range": 0.2,
            "pad_token_id": tokenizer.token_to_id("<|endoftext|>"),
            "eos_token_id": end,
            "bos_token_id": None,
        },
        downsample_ratio=0.5,
        image_token_id=tokenizer.token_to_id("<IMG_CONTEXT>"),
        image_seq_length=TOKENS_PER_FRAME,
        tie_word_embeddings=tie_embeddings,
    )
    torch.manual_seed(seed)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = end
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(directory)
    video = {
        "video_processor_type": "InternVLVideoProcessor",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "resample": 3,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
    }
    (directory / "video_preprocessor_config.json").write_text(json.dumps(video, indent=1))
    return directory


def load_tiny(directory: Path):  # type: ignore[no-untyped-def]
    import torch
    import transformers

    return transformers.InternVLForConditionalGeneration.from_pretrained(
        str(directory), dtype=torch.float32
    ).eval()
