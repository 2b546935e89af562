"""Questions are untrusted text: :func:`clean_question` is the one cleaning both tokenizers apply first.

A question from argv may carry undecodable bytes (Python keeps them as lone surrogates, ``surrogateescape``),
and one from the Python API any lone surrogate; neither can be encoded to UTF-8, so the ``tokenizers`` and
llama.cpp bindings would raise deep inside. Here they become U+FFFD, control characters become spaces, and
the length is bounded. No imports beyond the errors: the LLM side uses the same function.
"""

from __future__ import annotations

from dfrt.errors import InputError

MAX_QUESTION_CHARS = 1 << 16  # longer questions keep their end (both sides truncate on the left anyway)

# C0 controls but tab, newline and carriage return; DEL; C1 controls: each becomes a space
_CONTROLS = {c: " " for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), *range(0x7F, 0xA0))}


def clean_question(text: object, max_chars: int = MAX_QUESTION_CHARS) -> str:
    """``text`` as valid Unicode: lone surrogates (undecodable argv bytes included) -> U+FFFD, surrogate
    pairs joined, control characters -> spaces, at most the last ``max_chars`` characters.

    Not text at all (bytes, None): :class:`InputError`.
    """
    if not isinstance(text, str):
        raise InputError(f"the question must be text, got {type(text).__name__}")
    if len(text) > 4 * max_chars:  # cut early so the work below stays bounded, then exactly
        text = text[-4 * max_chars :]
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    text = text.translate(_CONTROLS)
    return text[-max_chars:] if len(text) > max_chars else text
