"""The shipped demo back into a training run directory, so training can continue from it.

    python -m dfrt.demo.training.unpack --out runs/shipped
    python -m dfrt.demo.training.train --out runs/next --resume-from runs/shipped --seed 5 --frame-steps 0 ...

A run holds ``weights.safetensors`` (DynFocus, float32), ``lm.safetensors`` (the demo LM in PyTorch) and
``tokenizer.model``. The package ships the first in fp16 and the LM only as its GGUF, so this reads the GGUF
back (undoing the q/k row permutation that llama.cpp's rope layout needs) and retrains the deterministic
tokenizer, checking that its pieces are the GGUF's, piece for piece. Training runs are not kept in the
repository (``/runs`` is ignored): this is how a session continues from what earlier sessions shipped.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dfrt._optional import require
from dfrt.demo.training.lm import demo_lm_config, train_tokenizer
from dfrt.demo.training.reference import shipped_weights
from dfrt.errors import CheckpointError
from dfrt.export.gguf_llm import read_llama_gguf, read_sentencepiece_vocab
from dfrt.fileio import atomic_path
from dfrt.runtime.bundle import Bundle
from dfrt.runtime.default_bundle import shipped_demo


def _gguf_tokens(path: Path) -> list[bytes]:
    gguf = require("gguf", "dfrt[export]")
    field = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]) for i in field.data]


def unpack_shipped(out: Path, weights: Path | None = None, bundle: Path | None = None) -> Path:
    """``out`` as a training run holding the shipped demo's weights, LM and tokenizer."""
    safetensors = require("safetensors.torch", "dfrt[export]")
    weights = weights or shipped_weights()
    opened = Bundle.open(bundle or shipped_demo(), verify=False)
    if opened.llm_file is None:
        raise CheckpointError(f"{opened.root} carries no LLM")
    gguf_path = opened.path(opened.llm_file)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(out / "tokenizer.model")
    vocab = read_sentencepiece_vocab(tokenizer)
    if vocab.tokens != _gguf_tokens(gguf_path):
        raise CheckpointError(f"the retrained tokenizer's pieces differ from {gguf_path}'s")
    lm_state = read_llama_gguf(gguf_path, demo_lm_config(len(vocab.tokens)))
    visual = {k: v.float().contiguous() for k, v in safetensors.load_file(str(weights)).items()}
    for name, state in (("weights", visual), ("lm", lm_state)):
        with atomic_path(out / f"{name}.safetensors") as tmp:
            safetensors.save_file(state, str(tmp))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/shipped"))
    args = parser.parse_args()
    print(f"shipped demo unpacked into {unpack_shipped(args.out)}")


if __name__ == "__main__":
    main()
