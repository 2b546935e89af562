"""The synthetic world: deterministic, answerable, brief events really brief, mp4s decode as drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dfrt.demo.world import (
    ANSWERS,
    BRIEF_KINDS,
    COLOURS,
    KINDS,
    SECONDS,
    SHAPES,
    TEST_SEED_BASE,
    TRAIN_SEEDS,
    VALIDATION_SEED_BASE,
    held_out_clip,
    make_clip,
    validation_clip,
)
from dfrt.runtime.video import read_video

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def test_same_seed_same_clip_and_different_seeds_differ() -> None:
    a, b = make_clip(123), make_clip(123)
    assert (a.kind, a.question, a.answer) == (b.kind, b.question, b.answer)
    assert np.array_equal(a.sampled_frames(), b.sampled_frames())
    assert not np.array_equal(make_clip(124).sampled_frames(), a.sampled_frames())


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_one_word_answer_from_the_vocabulary(kind: str) -> None:
    for seed in range(30):
        clip = make_clip(seed, kind)
        assert clip.kind == kind and clip.answer in ANSWERS and "{" not in clip.question
        assert clip.evidence and all(0 <= s < SECONDS for s in clip.evidence)


def test_kinds_are_balanced_when_drawn_from_the_seed() -> None:
    counts = {k: 0 for k in KINDS}
    for seed in range(700):
        counts[make_clip(seed).kind] += 1
    assert min(counts.values()) > 60


def _visible_colour_pixels(frame: np.ndarray, colour: str) -> int:
    rgb = np.asarray(COLOURS[colour], dtype=np.int16)
    return int((np.abs(frame.astype(np.int16) - rgb).sum(-1) < 30).sum())


@pytest.mark.parametrize("kind", ["brief_colour", "brief_when"])
def test_brief_events_show_in_one_or_two_sampled_frames_only(kind: str) -> None:
    for seed in range(40):
        clip = make_clip(seed, kind)
        frames = clip.sampled_frames()
        showing = [t for t in range(SECONDS) if _visible_colour_pixels(frames[t], clip.answer) > 200]
        assert showing == clip.evidence, (seed, showing, clip.evidence)
        assert 1 <= len(showing) <= 2


def test_held_out_set_never_meets_training_seeds() -> None:
    clips = [held_out_clip(i) for i in range(len(KINDS) * 2)]
    assert all(c.seed >= TEST_SEED_BASE for c in clips)
    assert [c.kind for c in clips[: len(KINDS)]] == list(KINDS)
    assert {c.kind for c in clips} >= set(BRIEF_KINDS)


def test_validation_set_is_apart_from_training_and_test() -> None:
    """Checkpoints are chosen on the validation clips, so the test set's figures stay unbiased."""
    clips = [validation_clip(i) for i in range(len(KINDS))]
    assert [c.kind for c in clips] == list(KINDS)
    assert all(c.seed >= VALIDATION_SEED_BASE > TEST_SEED_BASE >= TRAIN_SEEDS.stop for c in clips)
    assert VALIDATION_SEED_BASE - TEST_SEED_BASE > 10**6  # room for any test-set size


def test_written_clip_decodes_to_the_drawn_frames(tmp_path: Path) -> None:
    clip = held_out_clip(0)  # a brief event: the one frame that shows it must survive decoding
    video = read_video(clip.write(tmp_path / "clip.mp4"), fps=1.0)
    assert video.num_frames == SECONDS
    assert np.allclose(video.timestamps, np.arange(SECONDS), atol=0.01)
    drawn = clip.sampled_frames()
    error = np.abs(video.frames.astype(np.float32) - drawn.astype(np.float32)).mean(axis=(1, 2, 3))
    assert error.max() < 4.0, error
    for t in clip.evidence:
        assert _visible_colour_pixels(video.frames[t], clip.answer) > 150


def test_patch_labels_mark_each_visible_shape_at_its_centre() -> None:
    grid = 8
    for seed in range(30):
        clip = make_clip(seed)
        t = 5.0
        colours, shapes = clip.patch_labels(t, grid)
        visible = [s for s in clip.shapes if s.centre(t) is not None]
        for shape in visible:
            x, y = shape.centre(t)  # type: ignore[misc]
            patch = min(int(y * grid), grid - 1) * grid + min(int(x * grid), grid - 1)
            assert colours[patch] == 1 + list(COLOURS).index(shape.colour_at(t))
            assert shapes[patch] == 1 + SHAPES.index(shape.shape)
        covered = int((colours > 0).sum())
        assert len(visible) <= covered <= 9 * len(visible)  # a shape spans a few patches, not the frame


def test_calibration_clips_come_with_their_questions(tmp_path: Path) -> None:
    from dfrt.calibration.dataset import calibration_questions, find_videos
    from dfrt.demo.samples import CALIBRATION_SEED_BASE, write_calibration
    from dfrt.demo.world import TRAIN_SEEDS

    videos = write_calibration(tmp_path, 6)
    assert find_videos(tmp_path) == videos
    assert TRAIN_SEEDS.stop >= CALIBRATION_SEED_BASE + 6  # the training distribution, not the test set
    asked = [make_clip(CALIBRATION_SEED_BASE + i).question for i in range(6)]
    assert calibration_questions(tmp_path) == tuple(dict.fromkeys(asked))  # dfrt build reads them


def test_scores_flag_a_kind_answered_with_one_word_whatever_the_video() -> None:
    from dfrt.demo.evaluate import Scores

    scores = Scores()
    for expected in ("right", "left", "up", "down", "left", "up", "down", "left"):
        scores.add("moved", "right", expected)  # a model that always says "right"
    for answer in ("red", "blue", "green", "red", "red", "yellow", "purple", "blue"):
        scores.add("left", answer, answer)  # answers that follow the video
    for _ in range(8):
        scores.add("count", "two", "two")  # one word, but the right one: a clip set, not a guess
    assert scores.accuracy(["moved"]) == 0.125 and scores.top_answer("moved") == ("right", 1.0)
    assert scores.constant_kinds() == {"moved": ("right", 1.0)}
    assert scores.one_answer_line() == "moved ('right' 100%)" and Scores().one_answer_line() == ""
    assert scores.to_dict()["top_answer"] == {
        "moved": {"answer": "right", "share": 1.0},
        "left": {"answer": "red", "share": 0.375},
        "count": {"answer": "two", "share": 1.0},
    }
    assert scores.to_dict()["one_answer_kinds"] == ["moved"]  # in dfrt eval --json too
    few = Scores()
    for expected in ("right", "left", "up"):
        few.add("moved", "right", expected)
    assert few.constant_kinds() == {} == Scores().constant_kinds()  # too few questions to say
