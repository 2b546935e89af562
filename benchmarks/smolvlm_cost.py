"""SmolVLM2 through dfrt at real size, random weights: dfrt's default budget against uniform frames.

    python benchmarks/smolvlm_cost.py [--models 500m,2.2b] [--cache /tmp/dfrt-smolvlm-cost]
        [--json benchmarks/smolvlm-cost.json] [--plot benchmarks/smolvlm_cost.png] [--build-only]

Builds (once; cached under ``--cache``) Hugging Face checkpoints of the SmolVLM2-500M-Video-Instruct and
SmolVLM2-2.2B-Instruct configurations with RANDOM weights (transformers' own
``SmolVLMForConditionalGeneration``; nothing is downloaded) and a random SigLIP-B/16-224 frame scorer, and
exports each through ``dfrt.families.smolvlm.export.export_checkpoint(..., scorer=...)`` (the LM quantised
as a user would run it: Q8_0 for 500M, Q4_K_M for 2.2B). Then, per model, in one process:

1. per-frame times of the scorer's image tower and of the VLM's visual graph (SigLIP + connector), onnxruntime
   against PyTorch eager of the same modules, a batch of a few frames, the two interleaved;
2. for synthetic videos of 30 s, 2 min and 10 min (OpenCV, 1 fps sampling, dfrt's default cap of 128 frames):
   dfrt's default plan (``dpe`` key frames from the scorer, pooled frames between them) against uniform 8, 16,
   32 and 64 frames at full tokens (``Pipeline.embed(video, q, frames=KeyFrameSelection(...), rods=False)``),
   each through the same llama.cpp context: visual tokens, prompt tokens, prefill seconds, a few generated
   tokens, and the end-to-end seconds (decode + scorer + visual encoder + host steps + prefill + generation).

The visual encoder's seconds of a configuration are (frames it encodes) x (the measured onnxruntime seconds a
frame, at batch ``--batch``): the graph is linear in frames and running it on up to 64 frames per
configuration would take most of an hour on 2 cores. The frames' rows fed to the LLM are real outputs of the
exported graph (a few frames encoded once, reused for the others: values do not change llama.cpp's cost).
One dfrt-default run at 2 min encodes its frames for real, as a check of that product (``--encode-check``).
``--max-prefill-tokens 2.2b=1000`` leaves longer prompts unprefilled (reported as not measured) where a
2-core machine cannot afford them. Prefill is measured
for every distinct prompt length (a prompt of the same token count, e.g. uniform-32 at 2 min and at 10 min,
reuses the measurement: llama.cpp's cost depends on the count, not the values); see ``prefill_reused``.

Weights are random: accuracy is not measured, cost only. The model dimensions are from memory of the public
configs ([U]: unverified here, nothing is reachable). The measuring is shared with InternVL3.5's
``benchmarks/internvl_cost.py``: ``benchmarks/vlm_cost.py``.
"""

from __future__ import annotations

import gc
import json
import random
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vlm_cost import ROOT, CostFamily, main

# --- the configurations (from memory of the public config.json files: [U] unverified here) -----------------
MODELS: dict[str, dict[str, Any]] = {
    "500m": {
        "name": "SmolVLM2-500M-Video-Instruct",
        # ggml-org's GGUF of this model ships Q8_0 and F16 [U]; its 960-wide rows do not fit K-quants
        "quantize": "q8_0",
        "scale_factor": 4,
        "vision": {  # SigLIP-B/16 at 512 px [U]
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 512,
            "patch_size": 16,
        },
        "text": {  # SmolLM2-360M-like [U]
            "hidden_size": 960,
            "intermediate_size": 2560,
            "num_hidden_layers": 32,
            "num_attention_heads": 15,
            "num_key_value_heads": 5,
            "max_position_embeddings": 8192,
            "rope_theta": 100000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": True,
        },
    },
    "2.2b": {
        "name": "SmolVLM2-2.2B-Instruct",
        "quantize": "q4_k_m",  # the usual on-device pick for a ~2B GGUF [U: ggml-org ships Q4_K_M]
        "scale_factor": 3,
        "vision": {  # SigLIP so400m at 384 px, patch 14 [U]
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "image_size": 384,
            "patch_size": 14,
        },
        "text": {  # SmolLM2-1.7B-like [U]
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 24,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "max_position_embeddings": 8192,
            "rope_theta": 130000.0,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
        },
    },
}
VOCAB = 49280  # SmolVLM2's vocabulary (SmolLM2's 49152 plus added tokens) [U]
UNVERIFIED = (
    "Model dimensions are from memory of the public config.json files of HuggingFaceTB/SmolVLM2-500M-Video-"
    "Instruct, HuggingFaceTB/SmolVLM2-2.2B-Instruct and google/siglip-base-patch16-224 [U]: not checked "
    "against them here (nothing is reachable). Also [U]: vocabulary 49280, contexts 8192, rope thetas, tied "
    "embeddings (500M yes, 2.2B no), and which GGUF quantisation their users run."
)
QUESTION = "What does the person in the red coat do after the car stops?"
DURATIONS = (30, 120, 600)
UNIFORM = (8, 16, 32, 64)
FPS, MAX_FRAMES = 1.0, 128  # dfrt's defaults (checked below)
GOAL_SECONDS, GOAL_FRAMES, GOAL_TOKENS, GOAL_COST = 120, 32, 4.0, 1.3
MAX_NEW_TOKENS = 4


def build_tokenizer(vocab: int = VOCAB) -> Any:
    """A byte-level BPE shaped like SmolVLM2's: SmolLM2's pre-tokenizer (digits one by one), trained here on
    the
    tests' built-in text (so "Frame from 00:12:" splits as a real English BPE would split it) plus random
    words (to reach the real vocabulary size), then SmolVLM's special and grid tokens, ``vocab`` in all."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    from tests.tiny_tokenizer import GRID_TOKENS, SPECIAL_TOKENS, TEXT

    specials = SPECIAL_TOKENS + GRID_TOKENS
    pieces = vocab - len(specials)
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = [
        " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(12))
        for _ in range(40000)
    ]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=pieces,
        min_frequency=1,
        show_progress=False,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    from dfrt.families.smolvlm.prompt import INTRO, number_words

    intros = [INTRO.format(count=number_words(n), duration=f"0:0{n % 10}:00") for n in range(1, 130)]
    tokenizer.train_from_iterator(TEXT.splitlines() * 200 + intros * 20 + words, trainer=trainer)
    if tokenizer.get_vocab_size() != pieces:
        raise RuntimeError(f"the corpus yields {tokenizer.get_vocab_size()} pieces, not {pieces}")
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in specials]
    )
    return tokenizer


def build_checkpoint(key: str, directory: Path) -> Path:
    """A random-weight Hugging Face SmolVLM2 directory of the ``key`` configuration (bf16 safetensors)."""
    import torch
    import transformers

    from tests.tiny_smolvlm import CHAT_TEMPLATE
    from tests.tiny_tokenizer import save_hf_tokenizer

    spec = MODELS[key]
    tokenizer = build_tokenizer()
    directory.mkdir(parents=True, exist_ok=True)
    save_hf_tokenizer(tokenizer, directory, chat_template=CHAT_TEMPLATE)
    eou = tokenizer.token_to_id("<end_of_utterance>")
    text = dict(
        spec["text"],
        model_type="llama",
        vocab_size=tokenizer.get_vocab_size(with_added_tokens=True),
        pad_token_id=tokenizer.token_to_id("<|endoftext|>"),
        eos_token_id=eou,
    )
    config = transformers.SmolVLMConfig(
        vision_config=dict(spec["vision"]),
        text_config=text,
        scale_factor=spec["scale_factor"],
        image_token_id=tokenizer.token_to_id("<image>"),
        tie_word_embeddings=spec["text"]["tie_word_embeddings"],
    )
    torch.manual_seed(0)
    model = transformers.SmolVLMForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = eou
    model.to(torch.bfloat16).save_pretrained(directory)
    del model
    gc.collect()
    size = spec["vision"]["image_size"]
    preprocessor = {
        "image_processor_type": "SmolVLMImageProcessor",
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "max_image_size": {"longest_edge": size},
        "size": {"longest_edge": size},
        "video_sampling": {"fps": 1, "max_frames": 64, "video_size": {"longest_edge": size}},
    }
    (directory / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=1))
    return directory


def drop_text(model: Any) -> None:
    del model.model.text_model, model.lm_head


FAMILY = CostFamily(
    title="SmolVLM2",
    models=MODELS,
    vocab=VOCAB,
    unverified=UNVERIFIED,
    build_version=2,  # 2: default budget 256
    build_checkpoint=build_checkpoint,
    export_module="dfrt.families.smolvlm.export",
    drop_text=drop_text,
    cache=Path("/tmp/dfrt-smolvlm-cost"),
    json=ROOT / "benchmarks" / "smolvlm-cost.json",
    plot=ROOT / "benchmarks" / "smolvlm_cost.png",
    encode_check="500m",
    n_ctx=8192,
    doc=__doc__ or "",
)

if __name__ == "__main__":
    sys.exit(main(FAMILY))
