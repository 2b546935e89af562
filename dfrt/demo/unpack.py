"""The shipped demo back into a training run directory, so training can continue from it.

    python -m dfrt.demo.unpack --out runs/shipped
    python -m dfrt.demo.train --out runs/next --resume-from runs/shipped --seed 5 --frame-steps 0 ...

A run holds ``weights.safetensors`` (DynFocus, float32), ``lm.safetensors`` (the demo LM in PyTorch) and
``tokenizer.model``. The package ships the first in fp16 and the LM only as its GGUF, so this reads the GGUF
back (undoing the q/k row permutation that llama.cpp's rope layout needs) and retrains the deterministic
tokenizer, checking that its pieces are the GGUF's, piece for piece. Training runs are not kept in the
repository (``/runs`` is ignored): this is how a session continues from what earlier sessions shipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from dfrt._optional import require
from dfrt.demo.default import shipped_demo
from dfrt.demo.lm import demo_lm_config, train_tokenizer
from dfrt.demo.reference import shipped_weights
from dfrt.errors import CheckpointError
from dfrt.export.gguf_llm import gguf_tensor_name, read_sentencepiece_vocab
from dfrt.fileio import atomic_path
from dfrt.manifest import MANIFEST_NAME
from dfrt.model.llama import Llama, LlamaConfig


def _rope_unpermute(weight: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of the converter's permutation: interleaved pairs back to rotate-half rows per head."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def read_llama_gguf(path: Path, cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """An F16/F32 LLaMA GGUF written by dfrt's converter -> a float32 Hugging Face style state dict."""
    gguf = require("gguf", "dfrt[export]")
    reader = gguf.GGUFReader(str(path))
    stored = {t.name: t for t in reader.tensors}
    state: dict[str, torch.Tensor] = {}
    for name, param in Llama(cfg).state_dict().items():
        gguf_name = gguf_tensor_name(name)
        if gguf_name not in stored:
            raise CheckpointError(f"{path}: tensor {gguf_name} missing")
        tensor = stored[gguf_name]
        if tensor.tensor_type not in (gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32):
            raise CheckpointError(f"{path}: {gguf_name} is {tensor.tensor_type.name}, only F16/F32 read back")
        array = np.asarray(tensor.data, dtype=np.float32).reshape(param.shape)
        if name.endswith("q_proj.weight"):
            array = _rope_unpermute(array, cfg.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            array = _rope_unpermute(array, cfg.num_key_value_heads)
        state[name] = torch.from_numpy(np.array(array, dtype=np.float32, order="C"))
    return state


def _gguf_tokens(path: Path) -> list[bytes]:
    gguf = require("gguf", "dfrt[export]")
    field = gguf.GGUFReader(str(path)).fields["tokenizer.ggml.tokens"]
    return [bytes(field.parts[i]) for i in field.data]


def unpack_shipped(out: Path, weights: Path | None = None, bundle: Path | None = None) -> Path:
    """``out`` as a training run holding the shipped demo's weights, LM and tokenizer."""
    safetensors = require("safetensors.torch", "dfrt[export]")
    weights = weights or shipped_weights()
    bundle = bundle or shipped_demo()
    gguf_path = bundle / json.loads((bundle / MANIFEST_NAME).read_text())["llm"]["file"]
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
