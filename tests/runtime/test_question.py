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


def test_questions_that_are_not_valid_text_are_cleaned(tmp_path):
    """Undecodable argv bytes (surrogateescape), lone surrogates and control characters never reach the
    ``tokenizers`` binding as they are (it cannot encode them): they are cleaned first."""
    tok = _tokenizer(tmp_path)
    assert tok("what is the caf\udce9 doing?")[0].tolist() == tok("what is the caf\ufffd doing?")[0].tolist()
    assert tok("a\ud800b\x00c")[0].shape[1] >= 3
    assert tok("\x1b[31mman")[0].tolist() == tok(" [31mman")[0].tolist()


def test_a_question_that_is_not_text_is_one_error(tmp_path):
    from dfrt.errors import InputError

    with pytest.raises(InputError, match="must be text"):
        _tokenizer(tmp_path)(b"what?")


def test_tokenizer_ids_beyond_the_vocabulary_are_refused(tmp_path):
    from dfrt.errors import ConfigError

    path = tmp_path / "tokenizer.json"
    path.write_text(build_question_tokenizer(256))
    QuestionTokenizer(path, vocab_size=30523, max_tokens=256)
    with pytest.raises(ConfigError, match="vocabulary id"):
        QuestionTokenizer(path, vocab_size=1000, max_tokens=256)
    with pytest.raises(ConfigError, match="max_length"):
        QuestionTokenizer(path, vocab_size=30523, max_tokens=64)
