"""SmolVLM2 (and Idefics3): SigLIP + pixel-shuffle connector + a SmolLM2 (Llama) LM, video frames with
timestamps. dfrt adds question-aware key frames at full tokens, pooled tokens for the rest, a hard budget."""
