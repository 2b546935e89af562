"""InternVL3.5: InternViT + pixel shuffle + an MLP projector + a Qwen3 LM, video frames as "FrameN: <img>...".
dfrt adds question-aware key frames at full tokens, pooled tokens for the rest, a hard budget."""
