"""The question tokenizer: BERT-base uncased WordPiece + ``[DEC]``, left-truncated, as ``tokenizers`` JSON."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from dfrt.errors import ExportError

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
DEC_TOKEN = "[DEC]"  # the reference adds it as BOS; it takes id 30522


def default_vocab() -> Path:
    """The question tokenizer the package already ships (the demo bundle's): its WordPiece vocabulary is
    BERT-base uncased's, word for word (30,522 entries), so no second copy of it is carried."""
    return Path(str(resources.files("dfrt") / "data" / "demo" / "tokenizer.json"))


def _vocab_words(vocab: Path) -> list[str]:
    """A vocabulary's words in id order: a ``vocab.txt`` (one a line) or a ``tokenizers`` WordPiece JSON."""
    text = vocab.read_text(encoding="utf-8")
    if vocab.suffix != ".json":
        return text.splitlines()
    try:
        ids: dict[str, int] = json.loads(text)["model"]["vocab"]
        words = sorted(ids, key=ids.__getitem__)
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{vocab}: not a WordPiece tokenizer JSON ({e})") from e
    if [ids[w] for w in words] != list(range(len(words))):
        raise ExportError(f"{vocab}: WordPiece ids are not 0..{len(words) - 1}")
    return words


def build_question_tokenizer(max_tokens: int, vocab: Path | None = None) -> str:
    """``tokenizers`` JSON: lower-casing BERT normaliser, WordPiece, ``[CLS] q [SEP]``, truncated on the left
    to ``max_tokens`` (specials included), like the reference's ``BertTokenizer(truncation_side='left')``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = vocab or default_vocab()
    if not vocab.is_file():
        raise ExportError(f"question vocabulary not found: {vocab}")
    words = _vocab_words(vocab)
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
