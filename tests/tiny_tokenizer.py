"""A tiny byte-level BPE tokenizer shaped like SmolVLM's (SmolLM2's tokenizer plus SmolVLM's added tokens).

Trained here, deterministically, on a few built-in English paragraphs: no download. The pre-tokenizer is
SmolLM2's (each digit on its own, then GPT-2's byte-level regex), the one llama.cpp calls ``smollm``.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<video>",
)
GRID_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))

BOS, EOS, PAD = "<|im_start|>", "<end_of_utterance>", "<|endoftext|>"

# SmolVLM2's chat template, shortened to text and image parts.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

TEXT = """\
User: What colour is the car? Assistant: The car is red.
User: How many people walk past the door? Assistant: Three people walk past the door.
User: What happens at the end of the video? Assistant: A dog runs across the street and the camera turns.
You are a helpful assistant that answers questions about a video. Look at the frames and answer briefly.
Frame from 00:03: a red car waits at the corner while a man opens the door of the shop.
Frame from 00:07: two children play with a ball in the park; the sky is blue and the grass is green.
Frame from 00:12: the woman in the yellow coat crosses the road, then the bus arrives at 10:45.
Frame from 01:30: a cat sleeps on the window, the light changes from white to orange.
The quick brown fox jumps over the lazy dog. What colour is the shape that appeared near the end?
Is there a person in the room? Yes, there is one person. No, there is nobody. Which one is bigger?
Where is the ball? Why did the man stop? When does the music start? Who is holding the camera?
0 1 2 3 4 5 6 7 8 9 10 11 12 24 30 45 59 60 100 2024 00:00 00:15 00:30 00:45 01:00 - + = % $ # @ & *
Questions, answers, colours, frames, videos, seconds, minutes: "quoted" (parenthesised) [bracketed] {braced}
It's the car's colour; they're here, we've seen it, I'm sure, you'll see, he'd know. Done! Really? Yes...
"""


def build_bpe_tokenizer(vocab_size: int = 320, grid_tokens: bool = True) -> Tokenizer:
    """A byte-level BPE of ``vocab_size`` trained pieces (256 bytes + merges), then SmolVLM's special tokens
    (:data:`SPECIAL_TOKENS`, then :data:`GRID_TOKENS` when ``grid_tokens``) in that order."""
    if vocab_size < 256:
        raise ValueError("a byte-level vocabulary needs at least the 256 byte pieces")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
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
    specials = SPECIAL_TOKENS + (GRID_TOKENS if grid_tokens else ())
    tokenizer.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False, single_word=False)
            for t in specials
        ]
    )
    return tokenizer


def save_hf_tokenizer(tokenizer: Tokenizer, directory: Path, chat_template: str | None = None) -> Path:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` as SmolVLM2's
    checkpoints have them, so ``AutoTokenizer.from_pretrained(directory)`` loads; return ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    extra = {
        "fake_image_token": "<fake_token_around_image>",
        "image_token": "<image>",
        "end_of_utterance_token": "<end_of_utterance>",
        "global_image_token": "<global-img>",
        "video_token": "<video>",
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": PAD,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "extra_special_tokens": {k: v for k, v in extra.items() if v in vocab},
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": PAD}
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    return directory
