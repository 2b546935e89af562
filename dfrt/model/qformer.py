"""InstructBLIP-style Q-Former: 32 learned queries read the frame through cross-attention while attending,
together with the question tokens, to each other.

Module names follow the LAVIS / Hugging Face BERT layout (``bert.embeddings``, ``bert.encoder.layer.N``,
``crossattention``, ``intermediate_query``...), so checkpoints load by prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dfrt.config import QFormerConfig

MASK_VALUE = -10000.0  # BERT's additive mask; finite, so it is also safe in fp16 engines


class Embeddings(nn.Module):
    """Word + absolute position embeddings for the text; queries are prepended without positions."""

    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)

    def forward(self, input_ids: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        positions = self.position_embeddings.weight[: input_ids.shape[1]]
        text = self.word_embeddings(input_ids) + positions
        return self.LayerNorm(torch.cat([queries, text], dim=1))


class SelfAttention(nn.Module):
    """The q/k/v projections and scaled dot-product attention of one BERT attention block."""

    def __init__(self, cfg: QFormerConfig, kv_width: int) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.hidden, cfg.hidden)
        self.key = nn.Linear(kv_width, cfg.hidden)
        self.value = nn.Linear(kv_width, cfg.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, h = x.shape
        return x.reshape(b, n, self.heads, h // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return out.transpose(1, 2).flatten(2)


class Residual(nn.Module):
    """BERT's post-LN output: LayerNorm(dense(x) + residual)."""

    def __init__(self, in_width: int, cfg: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_width, cfg.hidden)
        self.LayerNorm = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class AttentionBlock(nn.Module):
    def __init__(self, cfg: QFormerConfig, kv_width: int) -> None:
        super().__init__()
        self.self = SelfAttention(cfg, kv_width)
        self.output = Residual(cfg.hidden, cfg)

    def forward(self, x: torch.Tensor, context: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, context, bias), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: QFormerConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    """Self-attention over [queries | text]; queries also cross-attend to the frame (every other layer);
    queries and text then take separate feed-forward branches."""

    def __init__(self, cfg: QFormerConfig, index: int, vision_width: int) -> None:
        super().__init__()
        self.attention = AttentionBlock(cfg, cfg.hidden)
        self.has_cross_attention = index % cfg.cross_attention_freq == 0
        if self.has_cross_attention:
            self.crossattention = AttentionBlock(cfg, vision_width)
        self.intermediate = Intermediate(cfg)
        self.output = Residual(cfg.intermediate, cfg)
        self.intermediate_query = Intermediate(cfg)
        self.output_query = Residual(cfg.intermediate, cfg)

    def forward(
        self, x: torch.Tensor, bias: torch.Tensor, image: torch.Tensor, num_queries: int
    ) -> torch.Tensor:
        x = self.attention(x, x, bias)
        queries, text = x[:, :num_queries], x[:, num_queries:]
        if self.has_cross_attention:
            queries = self.crossattention(queries, image, None)
        queries = self.output_query(self.intermediate_query(queries), queries)
        text = self.output(self.intermediate(text), text)
        return torch.cat([queries, text], dim=1)


class Encoder(nn.Module):
    def __init__(self, cfg: QFormerConfig, vision_width: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg, i, vision_width) for i in range(cfg.layers))


class Bert(nn.Module):
    def __init__(self, cfg: QFormerConfig, vision_width: int) -> None:
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg, vision_width)


class QFormer(nn.Module):
    """(frame tokens (R, 1+P*P, W), question ids (1, L), mask (1, L)) -> q_emb (R, Nq, W).

    ``ln_vision`` (``vlm_att_ln``) normalises all frame tokens, CLS included; ``proj``
    (``vlm_att_projector``) maps the query outputs back to the vision width.
    """

    def __init__(self, cfg: QFormerConfig, vision_width: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.bert = Bert(cfg, vision_width)
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_queries, cfg.hidden))
        self.ln_vision = nn.LayerNorm(vision_width)
        self.proj = nn.Linear(cfg.hidden, vision_width)
        nn.init.normal_(self.query_tokens, std=0.02)

    def forward(
        self, frame_tokens: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        frames = frame_tokens.shape[0]
        image = self.ln_vision(frame_tokens)
        queries = self.query_tokens.expand(frames, -1, -1)
        x = self.bert.embeddings(input_ids.expand(frames, -1), queries)
        # queries always attend; text positions follow the tokenizer's mask. (R, 1, 1, Nq + L), additive.
        mask = torch.cat(
            [torch.ones_like(queries[:, :, 0]), attention_mask.expand(frames, -1).to(x.dtype)], 1
        )
        bias = ((1.0 - mask) * MASK_VALUE)[:, None, None, :]
        for layer in self.bert.encoder.layer:
            x = layer(x, bias, image, self.cfg.num_queries)
        return self.proj(x[:, : self.cfg.num_queries])
