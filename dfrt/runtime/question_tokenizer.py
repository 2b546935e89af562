"""The question tokenizer of a bundle (BERT WordPiece + [DEC], truncated on the left), via ``tokenizers``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dfrt._optional import require
from dfrt.errors import ConfigError


class QuestionTokenizer:
    def __init__(self, path: Path) -> None:
        tokenizers = require("tokenizers", "tokenizers")
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ConfigError(f"{path}: not a valid tokenizer file ({e})") from e

    def __call__(self, question: str) -> tuple[np.ndarray, np.ndarray]:
        """Question text -> (input_ids, attention_mask), each int64 (1, L). The reference strips ``<image>``
        and newlines from the conditioning text; so do we."""
        text = " ".join(question.replace("<image>", " ").split())
        encoding = self._tokenizer.encode(text)
        ids = np.asarray(encoding.ids, dtype=np.int64)[None]
        return ids, np.ones_like(ids)
