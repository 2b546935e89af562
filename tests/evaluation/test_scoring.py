"""dfrt eval --dataset: the multiple-choice prompt, the letter extraction, free-answer normalisation."""

from __future__ import annotations

import pytest

from dfrt.evaluation.scoring import (
    MC_PROMPT,
    extract_letter,
    fill,
    judge_choice,
    judge_free,
    letter_list,
    match_option_text,
    normalise_answer,
    split_lettered,
)

pytestmark = pytest.mark.runtime

OPTIONS = ("a red circle", "a blue square", "the green triangle", "nothing")


def test_the_prompt_is_video_mme_s() -> None:
    prompt = fill(MC_PROMPT, "What appeared?", OPTIONS)
    assert prompt == (
        "Select the best answer to the following multiple-choice question based on the video. Respond with "
        "only the letter (A, B, C, or D) of the correct option.\nWhat appeared?\nA. a red circle\n"
        "B. a blue square\nC. the green triangle\nD. nothing\nThe best answer is:"
    )
    assert letter_list(2) == "A or B" and letter_list(3) == "A, B, or C" and letter_list(1) == "A"
    # one pass: a question that contains a placeholder is not expanded; other braces stay
    assert fill("{question} {x} {letters}", "say {options}", ("x", "y")) == "say {options} {x} A or B"


@pytest.mark.parametrize(
    ("response", "letter"),
    [
        ("C", "C"),
        (" C.", "C"),
        ("(B) a blue square", "B"),
        ("The best answer is: D", "D"),
        ("the answer is A", "A"),
        ("Answer: B) blue", "B"),
        ("I think B", "B"),  # I is no option of four
        ("Down", None),  # lmms-eval would read D out of it
        ("E", None),  # out of range
        ("", None),
        ("a blue square", None),  # no capital letter standing alone
    ],
)
def test_letter_extraction(response: str, letter: str | None) -> None:
    assert extract_letter(response, 4) == letter


def test_an_option_named_by_its_text() -> None:
    assert match_option_text(" Blue square.", OPTIONS) == "B"  # articles and punctuation ignored
    assert match_option_text("I saw the green triangle", OPTIONS) == "C"
    assert match_option_text("a red circle or a blue square", OPTIONS) is None  # two options named
    assert match_option_text("purple", OPTIONS) is None
    judged = judge_choice("blue square", OPTIONS, "B")
    assert (judged.prediction, judged.correct, judged.matched_by) == ("B", True, "text")
    judged = judge_choice("blue square", OPTIONS, "B", letters_only=True)
    assert (judged.prediction, judged.correct, judged.matched_by) == (None, False, None)
    wrong = judge_choice("B", OPTIONS, "C")
    assert wrong.matched_by == "letter" and not wrong.correct


def test_free_answers_match_after_squad_normalisation() -> None:
    assert normalise_answer("  The Red, circle!  ") == "red circle"
    assert judge_free(" Red.", ("red",)).correct
    assert judge_free("an apple", ("Apple", "pear")).correct
    assert not judge_free("red circle", ("red",)).correct  # exact match, not containment
    assert judge_free("Two", ("two",)).prediction == "two"


def test_lettered_options_lose_their_letters_only_when_all_are_lettered_in_order() -> None:
    assert split_lettered(["A. red", "B) blue", "(C) green", "D: pink"]) == ("red", "blue", "green", "pink")
    assert split_lettered(["A. Lincoln", "Washington"]) == ("A. Lincoln", "Washington")
    assert split_lettered(["B. red", "A. blue"]) == ("B. red", "A. blue")


def test_dfrt_evaluation_imports_without_torch() -> None:
    """dfrt eval --dataset runs on the runtime alone (pip install dfrt), as on a Jetson."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "onnx", "transformers"):
                    raise ImportError(f"blocked: {name}")
                return None

        sys.meta_path.insert(0, Block())
        import dfrt.evaluation, dfrt.evaluation.strategies, dfrt.commands.eval
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
