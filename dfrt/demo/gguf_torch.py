"""A LLaMA-architecture GGUF (any llama.cpp quantisation) -> the reference PyTorch :class:`Llama`.

Used to train the demo's visual path through a frozen LLM: the weights are dequantised exactly as llama.cpp
stores them, so the model trained against is the model that answers at run time. q/k rows are permuted back
from llama.cpp's interleaved-pair rotary layout to the rotate-half layout of :mod:`dfrt.model.llama`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dfrt._optional import require
from dfrt.errors import CheckpointError
from dfrt.model.llama import Llama, LlamaConfig

_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def _unpermute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Rows of each head from interleaved pairs (llama.cpp) back to [first halves | second halves]."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)
    )


def _field(reader: object, key: str) -> object:
    field = reader.fields.get(key)  # type: ignore[attr-defined]
    if field is None:
        raise CheckpointError(f"GGUF has no {key}")
    return field.contents()


def read_llama_gguf(path: Path, dtype: torch.dtype = torch.float32) -> Llama:
    """Load every tensor of a llama-architecture GGUF into a frozen :class:`Llama` in eval mode."""
    gguf = require("gguf", "dfrt[export]")
    reader = gguf.GGUFReader(str(path))
    if _field(reader, "general.architecture") != "llama":
        raise CheckpointError(f"{path.name}: not a llama-architecture GGUF")
    tensors = {t.name: t for t in reader.tensors}
    embd = tensors["token_embd.weight"]
    cfg = LlamaConfig(
        vocab_size=int(embd.shape[1]),
        hidden_size=int(_field(reader, "llama.embedding_length")),
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(_field(reader, "llama.block_count")),
        num_attention_heads=int(_field(reader, "llama.attention.head_count")),
        num_key_value_heads=int(_field(reader, "llama.attention.head_count_kv")),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, "llama.rope.freq_base")),
        max_position_embeddings=int(_field(reader, "llama.context_length")),
        tie_word_embeddings="output.weight" not in tensors,
    )
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        array = array.reshape([int(n) for n in reversed(tensor.shape)])
        if name == "token_embd.weight":
            state["model.embed_tokens.weight"] = torch.from_numpy(array)
            continue
        if name == "output_norm.weight":
            state["model.norm.weight"] = torch.from_numpy(array)
            continue
        if name == "output.weight":
            state["lm_head.weight"] = torch.from_numpy(array)
            continue
        block, index, rest = name.split(".", 2)
        if block != "blk" or rest not in _LAYER_NAMES:
            raise CheckpointError(f"{path.name}: unexpected tensor {name}")
        if rest == "attn_q.weight":
            array = _unpermute_rope(array, cfg.num_attention_heads)
        elif rest == "attn_k.weight":
            array = _unpermute_rope(array, cfg.num_key_value_heads)
        state[f"model.layers.{int(index)}.{_LAYER_NAMES[rest]}"] = torch.from_numpy(
            np.ascontiguousarray(array)
        )
    if cfg.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model = Llama(cfg)
    model.load_state_dict(state, strict=True)
    model.requires_grad_(False)
    return model.to(dtype).eval()
