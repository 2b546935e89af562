"""``dfrt bench``: measured figures (tokens, memory, latency, roofline, LLM prefill), report and plot."""
