"""InternVL3.5 through dfrt at real size, random weights: dfrt's default budget against uniform frames.

    python benchmarks/internvl_cost.py [--models 1b,2b] [--cache /tmp/dfrt-internvl-cost]
        [--json benchmarks/internvl-cost.json] [--plot benchmarks/internvl_cost.png] [--build-only]
        [--max-prefill-tokens 1b=9000,2b=3500]

The second family beside ``benchmarks/smolvlm_cost.py``, measured the same way (``benchmarks/vlm_cost.py``,
whose docstring has the method). Builds (once; cached under ``--cache``) Hugging Face checkpoints of the
InternVL3.5-1B-HF and InternVL3.5-2B-HF configurations with RANDOM weights (transformers' own
``InternVLForConditionalGeneration``; nothing is downloaded): InternViT-300M at 448 px (patch 14, pixel
shuffle 0.5: 256 tokens a frame) and a Qwen3-0.6B / Qwen3-1.7B language model, with a random SigLIP-B/16-224
frame scorer, exported through ``dfrt.families.internvl.export.export_checkpoint(..., scorer=...)`` (the LM
quantised Q8_0 for 1B, Q4_K_M for 2B).

The tokenizer is a Qwen2-style byte-level BPE (NFC, Qwen2's Split regex: digits one by one) trained here to
Qwen2's 151,643 pieces on English text, InternVL's frame lines and random words, then InternVL's special
tokens; the model's embedding rows are padded to 151,936 as Qwen's are. So "Frame12: <img>" and the
question split as a real English BPE splits them (to within a token [U]), and the LM's embedding and output
rows have the real count.

Weights are random: accuracy is not measured, cost only. The model dimensions are from memory of the public
configs ([U]: unverified here, nothing is reachable).
"""

from __future__ import annotations

import gc
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vlm_cost import QUESTION, ROOT, CostFamily, main

# --- the configurations (from memory of the public config.json files: [U] unverified here) -----------------
VISION = {  # InternViT-300M-448px-V2_5 [U] (transformers' InternVLVisionConfig defaults are the same shape)
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": [448, 448],
    "patch_size": [14, 14],
    "norm_type": "layer_norm",
    "layer_norm_eps": 1e-6,
    "use_qk_norm": False,
    "attention_bias": True,  # InternViT's qkv_bias [U]
}
QWEN3 = {  # shared by Qwen3-0.6B and -1.7B [U]
    "model_type": "qwen3",
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "max_position_embeddings": 40960,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
MODELS: dict[str, dict[str, Any]] = {
    "1b": {
        "name": "InternVL3_5-1B-HF",
        "quantize": "q8_0",  # the usual pick for a sub-1B LM (Q4 hurts small models most) [U]
        "vision": VISION,
        "text": dict(QWEN3, hidden_size=1024, intermediate_size=3072),  # Qwen3-0.6B [U]
    },
    "2b": {
        "name": "InternVL3_5-2B-HF",
        "quantize": "q4_k_m",  # the usual on-device pick for a ~2B GGUF [U]
        "vision": VISION,
        "text": dict(QWEN3, hidden_size=2048, intermediate_size=6144),  # Qwen3-1.7B [U]
    },
}
VOCAB = 151936  # Qwen3's embedding rows (151,643 BPE pieces plus added tokens, padded) [U]
PIECES = 151643  # Qwen2's byte-level BPE pieces before the added tokens [U]
UNVERIFIED = (
    "Model dimensions are from memory of the public config.json files of OpenGVLab/InternVL3_5-1B-HF, "
    "OpenGVLab/InternVL3_5-2B-HF (InternViT-300M-448px, Qwen3-0.6B, Qwen3-1.7B) and "
    "google/siglip-base-patch16-224 [U]: not checked against them here (nothing is reachable). Also [U]: "
    "vocabulary 151936 rows (151643 BPE pieces), InternViT's qkv bias, rope theta 1e6, tied embeddings for "
    "both LMs, and which GGUF quantisation their users run."
)


# --- building ----------------------------------------------------------------------------------------------
def build_tokenizer(pieces: int = PIECES) -> Any:
    """A byte-level BPE shaped like Qwen2's (:func:`tests.tiny_internvl.build_qwen2_tokenizer`'s normalizer,
    pre-tokenizer and decoder), trained here on the tests' built-in text, InternVL's frame lines and the
    benchmark's question (so they split as a real English BPE splits them) plus random words (to reach
    ``pieces``), then InternVL's special tokens."""
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

    from dfrt.families.internvl.prompt import frame_layout
    from tests.tiny_internvl import QWEN2_PATTERN, SPECIAL_TOKENS
    from tests.tiny_tokenizer import TEXT

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
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [
        " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 10))) for _ in range(12))
        for _ in range(60000)
    ]
    frames = ["".join(text for text, _ in frame_layout([256] * 8))] * 200
    trainer = trainers.BpeTrainer(
        vocab_size=pieces,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = TEXT.splitlines() * 200 + frames + [QUESTION] * 200 + words
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    if tokenizer.get_vocab_size() != pieces:
        raise RuntimeError(f"the corpus yields {tokenizer.get_vocab_size()} pieces, not {pieces}")
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in SPECIAL_TOKENS]
    )
    return tokenizer


def build_checkpoint(key: str, directory: Path) -> Path:
    """A random-weight InternVL3.5 ``-HF`` directory of the ``key`` configuration (bf16 safetensors), as
    :func:`tests.tiny_internvl.tiny_internvl` writes a tiny one."""
    import torch
    import transformers

    from tests.tiny_internvl import save_tokenizer

    spec = MODELS[key]
    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, directory)
    end = tokenizer.token_to_id("<|im_end|>")
    text = dict(
        spec["text"],
        vocab_size=VOCAB,
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=end,
        bos_token_id=None,
    )
    config = transformers.InternVLConfig(
        vision_config=dict(spec["vision"]),
        text_config=text,
        downsample_ratio=0.5,
        image_token_id=tokenizer.token_to_id("<IMG_CONTEXT>"),
        image_seq_length=256,
        tie_word_embeddings=spec["text"]["tie_word_embeddings"],
    )
    torch.manual_seed(0)
    model = transformers.InternVLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = end
    model.generation_config.pad_token_id = text["pad_token_id"]
    model.to(torch.bfloat16).save_pretrained(directory)
    del model
    gc.collect()
    size = spec["vision"]["image_size"][0]
    video = {
        "video_processor_type": "InternVLVideoProcessor",
        "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225],
        "size": {"height": size, "width": size},
        "resample": 3,
        "do_resize": True,
        "do_rescale": True,
        "do_normalize": True,
    }
    (directory / "video_preprocessor_config.json").write_text(json.dumps(video, indent=1))
    return directory


def drop_text(model: Any) -> None:
    del model.model.language_model, model.lm_head


FAMILY = CostFamily(
    title="InternVL3.5",
    models=MODELS,
    vocab=VOCAB,
    unverified=UNVERIFIED,
    build_version=2,  # 2: pooled frames 4 x 4
    build_checkpoint=build_checkpoint,
    export_module="dfrt.families.internvl.export",
    drop_text=drop_text,
    cache=Path("/tmp/dfrt-internvl-cost"),
    json=ROOT / "benchmarks" / "internvl-cost.json",
    plot=ROOT / "benchmarks" / "internvl_cost.png",
    encode_check="",  # the default plan shows every sampled frame at 2 min: 120 real encodes, too long here
    n_ctx=17408,  # uniform-64: 16,384 rows plus the frame lines and the question
    doc=__doc__ or "",
)

if __name__ == "__main__":
    sys.exit(main(FAMILY))
