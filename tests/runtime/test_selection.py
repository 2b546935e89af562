import numpy as np
import pytest

from dfrt.runtime.selection import (
    EventPrototypes,
    evenly_spaced,
    interleave_order,
    kmeans_prototypes,
    prototype_means,
    select_key_frames,
    tokens_per_frame,
    top_k_ascending,
)

pytestmark = pytest.mark.runtime  # runs on a torch-free install (pip install dfrt)


def test_top_k_breaks_ties_towards_lower_index():
    assert top_k_ascending(np.array([0.5, 1.0, 0.5, 1.0, 0.5]), 3).tolist() == [0, 1, 3]
    assert top_k_ascending(np.zeros(6), 2).tolist() == [0, 1]


def test_top_k_refuses_nan():
    from dfrt.errors import InputError

    with pytest.raises(InputError):
        top_k_ascending(np.array([0.1, np.nan]), 1)


def test_evenly_spaced_seeds_are_distinct_and_ascending():
    seeds = evenly_spaced(81, 80)
    assert seeds[0] == 0 and np.all(np.diff(seeds) > 0) and seeds[-1] < 81


def test_short_videos_are_their_own_prototypes():
    p = kmeans_prototypes(np.random.rand(80, 5), 80, 10)
    assert p.seeds.tolist() == list(range(80)) == p.assignment.tolist()


def test_kmeans_recovers_separated_events():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 100
    labels = np.repeat(np.arange(4), 30)  # four events of 30 frames each
    x = centres[labels] + rng.normal(size=(120, 16))
    p = kmeans_prototypes(x, 4, 10)
    # frames of one event share a prototype, different events do not
    for e in range(4):
        assert len(set(p.assignment[labels == e])) == 1
    assert len(set(p.assignment)) == 4
    means = prototype_means(x, p)
    for e in range(4):
        np.testing.assert_allclose(means[p.assignment[labels == e][0]], x[labels == e].mean(0), rtol=1e-6)


def test_empty_prototype_falls_back_to_its_seed():
    x = np.arange(6, dtype=np.float64)[:, None]
    p = EventPrototypes(seeds=np.array([0, 3, 5]), assignment=np.array([0, 0, 0, 0, 2, 2]))
    np.testing.assert_allclose(prototype_means(x, p)[:, 0], [1.5, 3.0, 4.5])


def test_selection_and_interleave_layout():
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3])
    p = kmeans_prototypes(np.zeros((5, 1)), 80, 10)
    sel = select_key_frames(scores, p, 5, 0.45)
    assert sel.key_frames.tolist() == [1, 3, 4]
    assert sel.rod_frames.tolist() == [0, 2]
    assert tokens_per_frame(sel, 38).tolist() == [2, 38, 2, 38, 38]
    order = interleave_order(sel, 38)
    cones, rods = np.arange(3 * 38), 3 * 38 + np.arange(4)
    expected = np.concatenate([rods[:2], cones[:38], rods[2:], cones[38:76], cones[76:]])
    assert order.tolist() == expected.tolist()


def test_single_frame_gets_rod_then_cone():
    p = kmeans_prototypes(np.zeros((1, 1)), 80, 10)
    sel = select_key_frames(np.array([0.0]), p, 1, 0.45)
    assert sel.all_key
    assert interleave_order(sel, 38).tolist() == [38, 39, *range(38)]
    assert tokens_per_frame(sel, 38).tolist() == [40]


def test_frame_scores_give_seed_frames_their_own_prototype_score():
    from dfrt.runtime.selection import frame_scores

    # frame 3 seeds prototype 1, but k-means grouped it with prototype 0
    p = EventPrototypes(seeds=np.array([0, 3, 5]), assignment=np.array([0, 0, 1, 0, 2, 2]))
    assert frame_scores(np.array([0.1, 1.0, 0.5]), p).tolist() == [0.1, 0.1, 1.0, 1.0, 0.5, 0.5]


def test_selected_prototypes_follow_the_time_order_of_their_key_frames():
    p = EventPrototypes(seeds=np.array([4, 0, 2]), assignment=np.array([1, 1, 2, 2, 0]))
    sel = select_key_frames(np.array([0.9, 0.8, 0.1]), p, 5, 0.5)
    assert sel.selected.tolist() == [1, 0] and sel.key_frames.tolist() == [0, 4]
