import pytest

from dfrt.export.question_vocab import build_question_tokenizer
from dfrt.runtime.question_tokenizer import QuestionTokenizer

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def _tokenizer(tmp_path, max_tokens=256):
    path = tmp_path / "tokenizer.json"
    path.write_text(build_question_tokenizer(max_tokens))
    return QuestionTokenizer(path)


def test_bert_uncased_ids(tmp_path):
    ids, mask = _tokenizer(tmp_path)("What is the MAN doing?")
    assert ids.tolist() == [[101, 2054, 2003, 1996, 2158, 2725, 1029, 102]]
    assert mask.tolist() == [[1] * 8]


def test_image_placeholder_and_newlines_are_dropped(tmp_path):
    tok = _tokenizer(tmp_path)
    assert tok("<image>\nwhat is\nthe man doing?")[0].tolist() == tok("what is the man doing?")[0].tolist()


def test_long_question_keeps_its_end(tmp_path):
    tok = _tokenizer(tmp_path, max_tokens=8)
    ids, _ = tok("one two three four five six seven eight nine ten")
    assert ids.shape == (1, 8)
    assert ids[0, 0] == 101 and ids[0, -1] == 102
    assert ids[0, 1:-1].tolist() == tok("five six seven eight nine ten")[0][0, 1:-1].tolist()


def test_dec_token_follows_the_vocabulary(tmp_path):
    tok = _tokenizer(tmp_path)
    assert tok._tokenizer.token_to_id("[DEC]") == 30522


def test_default_vocabulary_is_bert_base_uncased_word_for_word():
    """`dfrt export` takes the vocabulary from the demo bundle's tokenizer: it must be BERT-base uncased's
    vocab.txt exactly (md5 of the file as Google published it)."""
    import hashlib

    from dfrt.export.question_vocab import _vocab_words, default_vocab

    words = _vocab_words(default_vocab())
    assert len(words) == 30522
    assert hashlib.md5(("\n".join(words) + "\n").encode()).hexdigest() == "64800d5d8528ce344256daf115d4965e"
