"""Defaults of the runtime's options, in a module with no imports: the CLI's parser reads them cheaply."""

DEFAULT_FPS = 1.0  # frames sampled per second, as DynFocus
DEFAULT_MAX_FRAMES = 128  # 1296 + 2 * 128 = 1552 visual tokens at most: fits a 2048-token context
DEFAULT_CTX = 4096  # LLM context length
DEFAULT_MAX_TOKENS = 256  # answer length limit
DEFAULT_TEMPERATURE = 0.2  # the reference evaluates at 0.1-0.2; 0 = greedy
DEFAULT_TOP_P = 0.9
