"""Tiny random SigLIP and CLIP checkpoints, saved as Hugging Face directories (transformers' own
architectures, small sizes, no download): the frame scorers of the tests. Needs torch and transformers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.scorers.test_runtime import WORDS, word_tokenizer

TOWER = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
VOCAB = 40
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def save_tokenizer(directory: Path, clip: bool) -> None:
    import transformers
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(json.dumps(word_tokenizer(WORDS, clip=clip)))
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        unk_token="<unk>",
        eos_token="<|endoftext|>" if clip else "</s>",
    )
    fast.save_pretrained(str(directory))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "CLIPTokenizer" if clip else "SiglipTokenizer"
    config_path.write_text(json.dumps(config))


def build(directory: Path, kind: str) -> Path:
    """A tiny random ``kind`` ("siglip" or "clip") checkpoint in ``directory`` (32 px frames)."""
    import torch
    import transformers

    torch.manual_seed(0)
    text = dict(TOWER, vocab_size=VOCAB, max_position_embeddings=12)
    vision = dict(TOWER, image_size=32, patch_size=8)
    if kind == "siglip":
        text.update(pad_token_id=0, eos_token_id=1, bos_token_id=None)
        config = transformers.SiglipConfig(text_config=text, vision_config=vision)
        model = transformers.SiglipModel(config)
        processor = {"size": {"height": 32, "width": 32}, "resample": 3, "image_mean": [0.5] * 3}
        processor.update(image_std=[0.5] * 3, rescale_factor=1 / 255, do_rescale=True, do_normalize=True)
    else:
        text.update(eos_token_id=3, bos_token_id=1, pad_token_id=0)  # not 2: transformers' legacy pooling
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
        model = transformers.CLIPModel(config)
        processor = {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 32}, "resample": 3}
        processor.update(image_mean=CLIP_MEAN, image_std=CLIP_STD, do_center_crop=True)
    model.save_pretrained(str(directory))
    (directory / "preprocessor_config.json").write_text(json.dumps(processor))
    save_tokenizer(directory, clip=kind == "clip")
    return directory
