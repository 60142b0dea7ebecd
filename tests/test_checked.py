"""The checked engine's arithmetic (predict/checked.py, scoring/decision.answer_margin): an answer
cannot change unless a probability moves by half the row's margin, and the check re-runs exactly
the rows below the margin."""
from __future__ import annotations

import numpy as np
import pytest

from classifine.predict.checked import Check, check_margin, held_out
from classifine.scoring.decision import answer_margin, decide, softmax

LABELS = ["a", "b", "c", "d"]


def _perturbed(probs: np.ndarray, limit: np.ndarray, rng) -> np.ndarray:
    """Each row moved by at most ``limit`` (per row) in every probability, adversarially: the top
    label down, every other label up (the move that changes an argmax soonest)."""
    step = rng.uniform(0.0, 1.0, probs.shape) * limit[:, None]
    sign = np.where(probs == probs.max(1, keepdims=True), -1.0, 1.0)
    return probs + sign * step


@pytest.mark.parametrize("kind", ["single_label", "ordinal"])
def test_argmax_answers_hold_within_half_the_margin(kind):
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(2000, 4)) * 2)
    margin = answer_margin(kind, LABELS, probs, {})
    np.testing.assert_allclose(margin, np.sort(probs, 1)[:, -1] - np.sort(probs, 1)[:, -2])
    moved = _perturbed(probs, 0.499 * margin, rng)
    assert decide(kind, LABELS, moved, {}) == decide(kind, LABELS, probs, {})
    # and the bound is tight: the top two moved by just over half the margin swap
    top = probs.argmax(1)
    second = np.argsort(probs, 1)[:, -2]
    swapped = probs.copy()
    swapped[np.arange(len(probs)), top] -= 0.51 * margin
    swapped[np.arange(len(probs)), second] += 0.51 * margin
    assert all(a != b for a, b in zip(decide(kind, LABELS, swapped, {}), decide(kind, LABELS, probs, {})))


def test_multi_label_answers_hold_within_half_the_margin_with_thresholds_and_top_k():
    rng = np.random.default_rng(1)
    probs = rng.uniform(size=(3000, 4))
    for decision in ({}, {"thresholds": {"a": 0.3, "b": 0.7, "c": 0.5, "d": 0.2}},
                     {"thresholds": {"a": 0.3, "b": 0.4, "c": 0.5, "d": 0.2}, "top_k": 2}):
        margin = answer_margin("multi_label", LABELS, probs, decision)
        assert (margin >= 0).all()
        for _ in range(5):
            moved = probs + rng.uniform(-1, 1, probs.shape) * 0.499 * margin[:, None]
            assert [sorted(x) for x in decide("multi_label", LABELS, moved, decision)] == \
                   [sorted(x) for x in decide("multi_label", LABELS, probs, decision)]
    # a label exactly on its threshold has no margin at all
    assert answer_margin("multi_label", LABELS, np.array([[0.5, 0.9, 0.1, 0.1]]), {})[0] == 0


def test_margin_of_nothing_and_of_one_label():
    assert answer_margin("single_label", LABELS, np.zeros((0, 4)), {}).shape == (0,)
    assert np.isinf(answer_margin("single_label", ["only"], np.ones((3, 1)), {})).all()


def test_check_margin_is_twice_the_largest_change():
    exact = np.array([[0.6, 0.4], [0.2, 0.8]])
    assert check_margin(exact, exact + [[0.01, -0.01], [-0.05, 0.05]]) == pytest.approx(0.1)
    assert check_margin(np.zeros((0, 2)), np.zeros((0, 2))) == float("inf")


class _Recorder:
    """A scorer that answers from a table and remembers which texts it was asked about."""

    def __init__(self, table: dict):
        self.table, self.asked = table, []

    def predict_proba(self, texts):
        self.asked.append(list(texts))
        return np.array([self.table[t] for t in texts])


def test_check_reruns_exactly_the_rows_below_the_margin_and_keeps_the_rest():
    texts = ["far", "near", "tie"]
    fast = np.array([[0.9, 0.1], [0.52, 0.48], [0.5, 0.5]])
    exact = _Recorder({"far": [0.8, 0.2], "near": [0.45, 0.55], "tie": [0.4, 0.6]})
    built = []
    check = Check(0.1, lambda: built.append(1) or exact)
    got = check.mend("single_label", ["x", "y"], {}, texts, fast)
    assert exact.asked == [["near", "tie"]] and built == [1]
    np.testing.assert_allclose(got, [[0.9, 0.1], [0.45, 0.55], [0.4, 0.6]])
    assert (check.rows_seen, check.rows_checked) == (3, 2)
    np.testing.assert_allclose(fast[1], [0.52, 0.48])  # the caller's array is not written to
    # the exact scorer's probabilities get the run's decision (offsets, temperature) like the fast ones
    t = Check(1.0, lambda: exact).mend("single_label", ["x", "y"], {"temperature": 2.0}, ["near"], fast[1:2])
    np.testing.assert_allclose(t, softmax(np.log([[0.45, 0.55]]) / 2.0))
    # nothing near a boundary: the exact scorer is never built
    lazy = Check(0.01, lambda: pytest.fail("built"))
    lazy.mend("single_label", ["x", "y"], {}, ["far"], fast[:1])


def test_held_out_checks_each_half_with_the_other_halfs_margin():
    exact = np.array([[0.7, 0.3], [0.55, 0.45], [0.65, 0.35], [0.52, 0.48]])
    fast = exact + np.array([[0.01, -0.01], [-0.1, 0.1], [0.0, 0.0], [0.0, 0.0]])
    got, share = held_out("single_label", ["x", "y"], {}, exact, fast)
    # even rows (0, 2) get the odd rows' margin 0.2 and have margins 0.42 and 0.3; odd rows (1, 3)
    # get the even rows' 0.02 and have 0.1 and 0.04: nothing is checked
    np.testing.assert_allclose(got, fast)
    assert share == 0.0
    fast[3] = [0.505, 0.495]  # margin 0.01, below the even rows' 0.02
    got, share = held_out("single_label", ["x", "y"], {}, exact, fast)
    np.testing.assert_allclose(got[3], exact[3])
    np.testing.assert_allclose(got[:3], fast[:3])
    assert share == 0.25
