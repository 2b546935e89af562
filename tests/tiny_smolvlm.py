"""A tiny random SmolVLM2 checkpoint, written as a Hugging Face directory the way transformers saves one
(no weights are downloaded: the architecture is transformers' own, the sizes are small), and the bundles
dfrt exports from it. Needs torch and transformers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_tokenizer import build_bpe_tokenizer, save_hf_tokenizer

IMAGE_SIZE, PATCH, SCALE = 64, 8, 2  # 8 x 8 patches -> 4 x 4 = 16 tokens a frame
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% elif line['type'] == 'video' %}{{ '<video>' }}"
    "{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def tiny_smolvlm(directory: Path, seed: int = 0, tie_embeddings: bool = False) -> Path:
    """Write ``directory`` with config.json, model.safetensors, tokenizer files, preprocessor_config.json,
    generation_config.json; returns it. Weights are drawn wider than transformers' default (std 0.2) so
    greedy answers have clear margins (parity tests compare tokens)."""
    import torch
    import transformers

    tokenizer = build_bpe_tokenizer()
    directory.mkdir(parents=True, exist_ok=True)
    save_hf_tokenizer(tokenizer, directory, chat_template=CHAT_TEMPLATE)
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    eou = tokenizer.token_to_id("<end_of_utterance>")
    config = transformers.SmolVLMConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH,
        },
        text_config={
            "model_type": "llama",
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": vocab,
            "max_position_embeddings": 4096,
            "rope_theta": 100000.0,
            "tie_word_embeddings": tie_embeddings,
            "initializer_range": 0.2,
            "pad_token_id": tokenizer.token_to_id("<|endoftext|>"),
            "eos_token_id": eou,
        },
        scale_factor=SCALE,
        image_token_id=tokenizer.token_to_id("<image>"),
        tie_word_embeddings=tie_embeddings,
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = transformers.SmolVLMForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = eou
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    model.save_pretrained(directory)
    preprocessor = {
        "image_processor_type": "SmolVLMImageProcessor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "max_image_size": {"longest_edge": IMAGE_SIZE},
        "size": {"longest_edge": IMAGE_SIZE},
        "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": IMAGE_SIZE}},
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))
    return directory


def load_tiny(directory: Path):  # type: ignore[no-untyped-def]
    import torch
    import transformers

    return transformers.SmolVLMForConditionalGeneration.from_pretrained(
        str(directory), dtype=torch.float32
    ).eval()
