"""Retrieval metrics against hand-computed similarity matrices."""
import math

import numpy as np
import pytest

from clipvip.metrics import (
    all_metrics,
    dual_softmax,
    order_accuracy,
    ranks_from_positives,
    retrieval_metrics,
    summarize_ranks,
    v2t_metrics,
)

# 3 texts x 3 videos, ground truth on the diagonal.
#   t0 -> v0: nothing >= 0.9            rank 1
#   t1 -> v1: 0.5 and 0.6 >= 0.4        rank 3
#   t2 -> v2: 0.7 >= 0.6                rank 2
SIM3 = np.array([[0.9, 0.1, 0.3], [0.5, 0.4, 0.6], [0.2, 0.7, 0.6]])


def test_three_by_three_known_ranks():
    m = retrieval_metrics(SIM3, [0, 1, 2])
    assert m["R1"] == pytest.approx(100 / 3)
    assert m["R5"] == 100.0 and m["R10"] == 100.0
    assert m["MdR"] == 2.0
    assert m["MnR"] == 2.0


def test_three_by_three_video_to_text_with_a_tie():
    # columns: v0 [0.9, .5, .2] -> rank 1; v1 [.1, .4, .7] -> rank 2; v2 [.3, .6, .6] -> tie: rank 1 or 2
    m = v2t_metrics(SIM3, [0, 1, 2], ties="pessimistic")
    assert m["R1"] == pytest.approx(100 / 3)
    assert m["MdR"] == 2.0
    assert m["MnR"] == pytest.approx(5 / 3)
    m = v2t_metrics(SIM3, [0, 1, 2])  # expected: v2 is first half the time, at mean rank 1.5
    assert m["R1"] == pytest.approx(50.0)
    assert m["MdR"] == 1.5 and m["MnR"] == pytest.approx(1.5)
    assert v2t_metrics(SIM3, [0, 1, 2], ties="optimistic")["R1"] == pytest.approx(200 / 3)


def test_tie_rules_on_a_constant_matrix():
    sim = np.full((4, 4), 0.25)
    assert retrieval_metrics(sim, [0, 1, 2, 3], ties="pessimistic") == \
        {"R1": 0.0, "R5": 100.0, "R10": 100.0, "MdR": 4.0, "MnR": 4.0}
    assert retrieval_metrics(sim, [0, 1, 2, 3], ties="optimistic") == \
        {"R1": 100.0, "R5": 100.0, "R10": 100.0, "MdR": 1.0, "MnR": 1.0}
    # expected: chance, exactly (the ground truth is equally likely in each of the 4 places)
    assert retrieval_metrics(sim, [0, 1, 2, 3]) == {"R1": 25.0, "R5": 100.0, "R10": 100.0, "MdR": 2.5, "MnR": 2.5}
    # a single tie with the ground truth costs exactly one place, pessimistically
    assert ranks_from_positives(np.array([[0.5, 0.5, 0.1]]), np.array([[True, False, False]])).tolist() == [2]
    with pytest.raises(ValueError, match="ties must be one of expected, pessimistic, optimistic; got 'fair'"):
        retrieval_metrics(sim, [0, 1, 2, 3], ties="fair")


def test_expected_ties_equal_random_tie_breaking_and_use_the_tolerance():
    # Scores on a coarse grid, so that many negatives tie with the ground truth; the reference breaks every
    # tie by a random jitter far below the grid step, many times over, and averages pessimistic R@K.
    rng = np.random.default_rng(0)
    sim = rng.integers(0, 4, size=(40, 30)).astype(np.float64) / 4
    gt = rng.integers(0, 30, size=40)
    trials = [retrieval_metrics(sim + rng.uniform(0, 1e-3, sim.shape), gt, ties="pessimistic")
              for _ in range(3000)]
    expected = retrieval_metrics(sim, gt)
    for key in ("R1", "R5", "R10"):
        assert expected[key] == pytest.approx(np.mean([t[key] for t in trials]), abs=0.5), key
    assert expected["MnR"] == pytest.approx(np.mean([t["MnR"] for t in trials]), abs=0.1)
    # within TIE_TOL a float32 rounding difference is a tie; beyond it, an order
    near = np.array([[0.5, 0.5 + 4e-7, 0.1]])
    assert retrieval_metrics(near, [0])["R1"] == 50.0
    assert retrieval_metrics(near, [0], ties="pessimistic")["R1"] == 0.0
    assert retrieval_metrics(np.array([[0.5, 0.5 + 1e-5, 0.1]]), [0])["R1"] == 0.0


def test_recall_at_5_and_10_boundaries():
    # 12 items; ground truth scores below exactly k-1 others -> rank k
    scores = np.linspace(1.0, 0.0, 12)
    ranks = [ranks_from_positives(scores[None], np.eye(12, dtype=bool)[k - 1][None])[0] for k in (1, 5, 6, 10, 11)]
    assert ranks == [1, 5, 6, 10, 11]
    m = summarize_ranks(ranks)
    assert m["R1"] == 20.0 and m["R5"] == 40.0 and m["R10"] == 80.0
    assert m["MdR"] == 6.0 and m["MnR"] == pytest.approx(33 / 5)


# 5 captions of 2 videos: c0..c2 -> v0, c3..c4 -> v1
SIM_MULTI = np.array([[0.8, 0.2], [0.3, 0.5], [0.4, 0.4], [0.1, 0.45], [0.6, 0.3]])
IDX_MULTI = [0, 0, 0, 1, 1]


def test_multi_caption_both_directions():
    m = all_metrics(SIM_MULTI, IDX_MULTI, ties="pessimistic")
    # t2v ranks: c0 1, c1 2, c2 2 (tie), c3 1, c4 2
    assert m["t2v"]["R1"] == 40.0
    assert m["t2v"]["MdR"] == 2.0
    assert m["t2v"]["MnR"] == pytest.approx(1.6)
    expected = all_metrics(SIM_MULTI, IDX_MULTI)["t2v"]  # c2's tie: first half the time, mean rank 1.5
    assert expected["R1"] == 50.0 and expected["MdR"] == 1.5 and expected["MnR"] == pytest.approx(1.5)
    # v2t: v0's best caption c0 (0.8) beats every other video's caption -> 1;
    #      v1's best caption c3 (0.45) is beaten by c1 (0.5) of v0 -> 2 (its own c4 does not count)
    assert m["v2t"]["R1"] == 50.0
    assert m["v2t"]["MdR"] == 1.5
    assert m["v2t"]["MnR"] == 1.5


def test_v2t_other_positive_captions_do_not_push_the_rank_down():
    # both captions of v0 tie at the top: the first correct caption is still at position 1
    sim = np.array([[0.9, 0.1], [0.9, 0.2], [0.3, 0.8]])
    assert v2t_metrics(sim, [0, 0, 1])["R1"] == 100.0


def test_dual_softmax_matches_hand_computation():
    sim = np.array([[0.7, 0.3], [0.6, 0.5]])
    out = dual_softmax(sim)
    # column v0: softmax(100*[0.7, 0.6]); column v1: softmax(100*[0.3, 0.5])
    expected = np.array(
        [
            [0.7 / (1 + math.exp(-10)), 0.3 / (1 + math.exp(20))],
            [0.6 / (1 + math.exp(10)), 0.5 / (1 + math.exp(-20))],
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_dsl_fixes_a_hub_video():
    # v0 is a hub: t1 prefers it (0.6 > 0.5) although its ground truth is v1
    sim = np.array([[0.7, 0.3], [0.6, 0.5]])
    m = all_metrics(sim, [0, 1])
    assert m["t2v"]["R1"] == 50.0 and m["t2v"]["MnR"] == 1.5
    assert m["t2v_dsl"]["R1"] == 100.0 and m["t2v_dsl"]["MnR"] == 1.0
    assert m["v2t"]["R1"] == 100.0 and m["v2t_dsl"]["R1"] == 100.0


def test_v2t_dsl_modes():
    # video x text softmax over videos (transpose) vs the released code's reuse of the t2v-DSL matrix
    sim = np.array([[0.64, 0.27, 0.04], [0.02, 0.81, 0.91], [0.61, 0.73, 0.54]])
    idx = [0, 1, 2]
    transposed = all_metrics(sim, idx)["v2t_dsl"]
    clipvip = all_metrics(sim, idx, v2t_dsl="clipvip")["v2t_dsl"]
    assert transposed == v2t_metrics(dual_softmax(sim.T).T, idx)
    assert clipvip == v2t_metrics(dual_softmax(sim), idx)
    assert transposed["R1"] == pytest.approx(100 / 3) and clipvip["R1"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError):
        all_metrics(sim, idx, v2t_dsl="nope")


def test_input_validation():
    with pytest.raises(ValueError):
        retrieval_metrics(SIM3, [0, 1])
    with pytest.raises(ValueError):
        all_metrics(SIM3, [0, 1, 3])


# ------------------------------------------------------------------------------------------ order accuracy
def test_order_accuracy_perfect_reversed_and_ties():
    true = np.array([0.9, 0.5, 0.1, -0.2])
    assert order_accuracy(true, true - 0.1) == 100.0          # every caption prefers the real order
    assert order_accuracy(true, true + 0.1) == 0.0            # every caption prefers the reversed frames
    assert order_accuracy(true, true) == 50.0                 # an order-blind encoder: all ties, exactly 50
    # mixed: win, loss, tie, tie -> (1 + 0 + 0.5 + 0.5) / 4
    assert order_accuracy(true, [0.8, 0.6, 0.1, -0.2]) == 50.0
    assert order_accuracy([0.3, 0.3, 0.3], [0.2, 0.3, 0.4]) == 50.0
    assert order_accuracy([0.3, 0.3, 0.3], [0.2, 0.2, 0.3]) == pytest.approx(100 * 2.5 / 3)
    # float rounding of an order-blind encoder (frames summed in another order) is a tie, not a win
    assert order_accuracy([0.3 + 1e-8, 0.5], [0.3, 0.5 + 1e-8]) == 50.0


def test_order_accuracy_rejects_bad_shapes():
    with pytest.raises(ValueError):
        order_accuracy([0.1, 0.2], [0.1])
    with pytest.raises(ValueError):
        order_accuracy([], [])
