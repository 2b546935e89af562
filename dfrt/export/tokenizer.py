"""The question tokenizer: BERT-base uncased WordPiece + ``[DEC]``, left-truncated, as ``tokenizers`` JSON."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from dfrt.errors import ExportError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEC_TOKEN = "[DEC]"  # the reference adds it as BOS; it takes id 30522


def default_vocab() -> Path:
    return Path(str(resources.files("dfrt") / "data" / "bert-base-uncased-vocab.txt"))


def build_question_tokenizer(max_tokens: int, vocab: Path | None = None) -> str:
    """``tokenizers`` JSON: lower-casing BERT normaliser, WordPiece, ``[CLS] q [SEP]``, truncated on the left
    to ``max_tokens`` (specials included), like the reference's ``BertTokenizer(truncation_side='left')``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = vocab or default_vocab()
    if not vocab.is_file():
        raise ExportError(f"question vocabulary not found: {vocab}")
    words = vocab.read_text(encoding="utf-8").splitlines()
    ids = {word: i for i, word in enumerate(words)}
    missing = [s for s in SPECIALS if s not in ids]
    if missing:
        raise ExportError(f"{vocab}: not a BERT vocabulary (no {', '.join(missing)})")
    tokenizer = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    tokenizer.decoder = decoders.WordPiece()
    tokenizer.add_special_tokens(list(SPECIALS))
    tokenizer.add_special_tokens([DEC_TOKEN])
    tokenizer.enable_truncation(max_length=max_tokens, direction="left")
    return tokenizer.to_str()
