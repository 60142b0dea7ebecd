"""Metrics against scikit-learn on random data (several seeds) and against small hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import MultiLabelBinarizer

from classifine import metrics as M

SEEDS = [0, 1, 2, 3, 7]
# 'd' never predicted, 'e' never in the reference, 'never' in neither
LABELS = ["a", "b", "c", "d", "e", "never"]


def random_single(seed: int, n: int = 200, invalid: bool = False):
    rng = np.random.default_rng(seed)
    y_true = rng.choice(["a", "b", "c", "d"], size=n, p=[0.5, 0.25, 0.15, 0.1]).tolist()
    pool = ["a", "b", "c", "e"] + (["INVALID"] if invalid else [])
    noise = rng.choice(pool, size=n).tolist()
    keep = rng.random(n) < 0.5  # half right (where possible), half noise
    y_pred = [t if k and t != "d" else q for t, q, k in zip(y_true, noise, keep)]
    return y_true, y_pred


def approx(x):
    return pytest.approx(x, abs=1e-12)


# --- single_label ----------------------------------------------------------------------------

@pytest.mark.parametrize("invalid", [False, True], ids=["labels-only", "with-invalid"])
@pytest.mark.parametrize("seed", SEEDS)
def test_single_label_matches_sklearn(seed, invalid):
    y_true, y_pred = random_single(seed, invalid=invalid)
    assert "d" not in y_pred and "e" not in y_true
    out = M.single_label(y_true, y_pred, LABELS)

    assert out["n"] == len(y_true)
    assert out["accuracy"] == approx(skm.accuracy_score(y_true, y_pred))
    assert out["correct"] == sum(t == p for t, p in zip(y_true, y_pred))
    for avg in ("micro", "macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(y_true, y_pred, labels=LABELS, average=avg, zero_division=0)
        assert out[f"{avg}_precision"] == approx(p), avg
        assert out[f"{avg}_recall"] == approx(r), avg
        assert out[f"{avg}_f1"] == approx(f), avg

    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=LABELS, average=None, zero_division=0)
    assert list(out["per_class"]) == LABELS
    for i, lab in enumerate(LABELS):
        pc = out["per_class"][lab]
        assert pc["precision"] == approx(p[i]), lab
        assert pc["recall"] == approx(r[i]), lab
        assert pc["f1"] == approx(f[i]), lab
        assert pc["support"] == s[i], lab
    assert out["per_class"]["never"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}

    cm = out["confusion_matrix"]
    assert cm["labels"] == LABELS
    np.testing.assert_array_equal(np.array(cm["matrix"]), skm.confusion_matrix(y_true, y_pred, labels=LABELS))
    np.testing.assert_array_equal(M.confusion_matrix(y_true, y_pred, LABELS),
                                  skm.confusion_matrix(y_true, y_pred, labels=LABELS))


def test_single_label_hand_case():
    y_true = ["x", "x", "y", "y", "z"]
    y_pred = ["x", "y", "y", "y", "x"]
    out = M.single_label(y_true, y_pred, ["x", "y", "z"])
    assert out["accuracy"] == approx(3 / 5)
    # x: tp 1, fp 1, fn 1; y: tp 2, fp 1, fn 0; z: tp 0, fp 0, fn 1
    assert out["per_class"]["x"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert out["per_class"]["y"]["precision"] == approx(2 / 3)
    assert out["per_class"]["y"]["recall"] == approx(1.0)
    assert out["per_class"]["y"]["f1"] == approx(0.8)
    assert out["per_class"]["z"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert out["macro_f1"] == approx((0.5 + 0.8 + 0.0) / 3)
    assert out["micro_f1"] == approx(3 / 5)
    assert out["confusion_matrix"]["matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_prediction_outside_labels_counts_as_wrong():
    labels = ["pos", "neg"]
    y_true = ["pos", "pos", "neg", "neg"]
    good = M.single_label(y_true, ["pos", "pos", "neg", "neg"], labels)
    bad = M.single_label(y_true, ["pos", "INVALID", "neg", "neg"], labels)
    assert good["accuracy"] == 1.0
    assert bad["accuracy"] == approx(3 / 4)
    assert bad["correct"] == 3
    assert bad["per_class"]["pos"]["recall"] == approx(0.5)
    assert bad["per_class"]["pos"]["precision"] == approx(1.0)
    assert bad["per_class"]["pos"]["support"] == 2
    # the invalid row is out of the matrix but still counted in n
    assert bad["n"] == 4
    assert sum(map(sum, bad["confusion_matrix"]["matrix"])) == 3


def test_all_predictions_invalid_does_not_crash():
    out = M.single_label(["a", "b"], ["?", "??"], ["a", "b"])
    assert out["accuracy"] == 0.0
    assert out["macro_f1"] == 0.0 and out["micro_f1"] == 0.0


def test_single_label_empty_input():
    out = M.single_label([], [], ["a", "b"])
    assert out["n"] == 0 and out["accuracy"] == 0.0 and out["weighted_f1"] == 0.0


# --- multi_label -----------------------------------------------------------------------------

ML_LABELS = ["w", "x", "y", "z", "unused"]


def random_multi(seed: int, n: int = 150):
    rng = np.random.default_rng(seed)
    base = ML_LABELS[:4]

    def draw(p):
        return [[lab for lab, on in zip(base, rng.random(4) < p) if on] for _ in range(n)]

    y_true = draw(np.array([0.5, 0.3, 0.2, 0.0]))  # 'z' never in the reference
    y_pred = draw(np.array([0.4, 0.4, 0.3, 0.2]))
    return y_true, y_pred


@pytest.mark.parametrize("seed", SEEDS)
def test_multi_label_matches_sklearn(seed):
    y_true, y_pred = random_multi(seed)
    mlb = MultiLabelBinarizer(classes=ML_LABELS)
    Y, P = mlb.fit_transform(y_true), mlb.transform(y_pred)
    assert Y[:, 3].sum() == 0 and Y[:, 4].sum() == 0 and P[:, 4].sum() == 0

    out = M.multi_label(y_true, y_pred, ML_LABELS)
    assert out["n"] == len(y_true)
    assert out["subset_accuracy"] == approx(skm.accuracy_score(Y, P))
    for avg in ("micro", "macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(Y, P, average=avg, zero_division=0)
        assert out[f"{avg}_precision"] == approx(p), avg
        assert out[f"{avg}_recall"] == approx(r), avg
        assert out[f"{avg}_f1"] == approx(f), avg
    p, r, f, s = skm.precision_recall_fscore_support(Y, P, average=None, zero_division=0)
    for i, lab in enumerate(ML_LABELS):
        pc = out["per_class"][lab]
        assert (pc["precision"], pc["recall"], pc["f1"]) == (approx(p[i]), approx(r[i]), approx(f[i])), lab
        assert pc["support"] == s[i]
    assert out["label_cardinality_true"] == approx(Y.sum(1).mean())
    assert out["label_cardinality_pred"] == approx(P.sum(1).mean())
    assert "top1_exact_match" not in out


def test_multi_label_subset_accuracy_ignores_order():
    out = M.multi_label([["a", "b"], ["b"]], [["b", "a"], ["a"]], ["a", "b"])
    assert out["subset_accuracy"] == 0.5


def test_top1_exact_match_hand_case():
    y_true = [["a", "b"], ["b", "a"], ["c"], []]
    ranked = [["a", "c"], ["a", "b"], ["c"], ["a"]]
    # documented rule: the first-ranked label against the reference's FIRST label
    # row 1: 'a' vs 'a' -> hit
    # row 2: 'a' vs 'b' -> miss ('a' is in the reference, but not its first label)
    # row 3: hit; row 4: empty reference -> miss
    out = M.multi_label(y_true, [r[:1] for r in ranked], ["a", "b", "c"], ranked_pred=ranked)
    assert out["top1_exact_match"] == approx(2 / 4)


def test_top1_exact_match_empty_ranking_is_a_miss():
    out = M.multi_label([["a"], ["b"]], [[], ["b"]], ["a", "b"], ranked_pred=[[], ["b", "a"]])
    assert out["top1_exact_match"] == approx(1 / 2)


def test_label_cardinality_hand_case():
    out = M.multi_label([["a", "b"], [], ["c"], ["a", "b", "c"]], [["a"], ["a"], [], []], ["a", "b", "c"])
    assert out["label_cardinality_true"] == approx(6 / 4)
    assert out["label_cardinality_pred"] == approx(2 / 4)


# --- ordinal ---------------------------------------------------------------------------------

SCALE = ["1", "2", "3", "4", "5"]


def test_ordinal_mae_hand_case():
    y_true = ["1", "3", "5", "2"]
    y_pred = ["2", "3", "3", "5"]
    out = M.ordinal(y_true, y_pred, SCALE)
    assert out["mae"] == approx((1 + 0 + 2 + 3) / 4)
    assert out["accuracy"] == approx(1 / 4)
    assert "binary_at_threshold" not in out


def test_ordinal_mae_uses_scale_positions_not_values():
    scale = ["low", "mid", "high"]
    out = M.ordinal(["low", "high", "mid"], ["high", "high", "low"], scale)
    assert out["mae"] == approx((2 + 0 + 1) / 3)


def test_ordinal_binary_at_threshold_hand_case():
    y_true = ["1", "4", "5", "4", "2"]
    y_pred = ["4", "3", "5", "5", "2"]
    # positive = 4 or 5: true P N? -> t: [0,1,1,1,0], p: [1,0,1,1,0]; tp 2, fp 1, fn 1
    b = M.ordinal(y_true, y_pred, SCALE, threshold="4")["binary_at_threshold"]
    assert b["threshold"] == "4"
    assert (b["precision"], b["recall"], b["f1"]) == (approx(2 / 3), approx(2 / 3), approx(2 / 3))


@pytest.mark.parametrize("threshold", ["2", "4", "5"])
@pytest.mark.parametrize("seed", SEEDS)
def test_ordinal_matches_sklearn(seed, threshold):
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 4, size=120)  # '5' never in the reference
    q = np.clip(t + rng.integers(-2, 3, size=120), 0, 4)
    y_true, y_pred = [SCALE[i] for i in t], [SCALE[i] for i in q]
    out = M.ordinal(y_true, y_pred, SCALE, threshold=threshold)
    assert out["mae"] == approx(skm.mean_absolute_error(t, q))
    assert out["macro_f1"] == approx(skm.f1_score(y_true, y_pred, labels=SCALE, average="macro", zero_division=0))
    cut = SCALE.index(threshold)
    bt, bp = (t >= cut).astype(int), (q >= cut).astype(int)
    p, r, f, _ = skm.precision_recall_fscore_support(bt, bp, average="binary", zero_division=0)
    b = out["binary_at_threshold"]
    assert (b["precision"], b["recall"], b["f1"]) == (approx(p), approx(r), approx(f))


def test_ordinal_invalid_prediction_is_negative_and_does_not_crash():
    out = M.ordinal(["4", "5", "1"], ["4", "???", "1"], SCALE, threshold="4")
    assert out["accuracy"] == approx(2 / 3)
    b = out["binary_at_threshold"]
    assert b["precision"] == approx(1.0) and b["recall"] == approx(1 / 2)


# --- calibration -----------------------------------------------------------------------------

def test_ece_hand_case():
    # two bins, (0, 0.5] and (0.5, 1]
    conf = [0.9, 0.7, 0.2, 0.4]
    correct = [True, False, False, True]
    out = M.expected_calibration_error(conf, correct, bins=2)
    # bin 0: conf mean 0.3, accuracy 0.5 -> |0.2| * 2/4; bin 1: conf mean 0.8, accuracy 0.5 -> |0.3| * 2/4
    assert out["ece"] == approx(0.5 * 0.2 + 0.5 * 0.3)
    assert out["bins"] == 2
    assert [c["n"] for c in out["curve"]] == [2, 2]
    assert out["curve"][0]["confidence"] == approx(0.3) and out["curve"][0]["accuracy"] == 0.5
    assert out["curve"][1]["confidence"] == approx(0.8) and out["curve"][1]["accuracy"] == 0.5
    assert (out["curve"][1]["lower"], out["curve"][1]["upper"]) == (0.5, 1.0)


def test_ece_ten_bins_hand_case():
    conf = [0.95, 0.95, 0.55, 0.15]
    correct = [1, 0, 1, 0]
    out = M.expected_calibration_error(conf, correct, bins=10)
    expected = 0.5 * abs(0.5 - 0.95) + 0.25 * abs(1 - 0.55) + 0.25 * abs(0 - 0.15)
    assert out["ece"] == approx(expected)
    assert [c["bin"] for c in out["curve"]] == [1, 5, 9]


def test_ece_perfectly_calibrated_is_zero():
    conf = [0.75] * 4 + [0.25] * 4 + [1.0] * 3
    correct = [1, 1, 1, 0] + [1, 0, 0, 0] + [1, 1, 1]
    out = M.expected_calibration_error(conf, correct, bins=10)
    assert out["ece"] == approx(0.0)


@pytest.mark.parametrize("bins", [5, 10, 15])
@pytest.mark.parametrize("seed", SEEDS)
def test_ece_curve_counts_sum_to_n_and_ece_is_weighted_gap(seed, bins):
    rng = np.random.default_rng(seed)
    n = 300
    conf = rng.uniform(0.0, 1.0, size=n)
    conf[:3] = [0.0, 1.0, 0.5]  # the edges of the range
    correct = rng.random(n) < conf
    out = M.expected_calibration_error(conf, correct, bins=bins)
    assert sum(c["n"] for c in out["curve"]) == n
    assert all(0.0 <= c["lower"] < c["upper"] <= 1.0 for c in out["curve"])
    assert all(c["lower"] <= c["confidence"] <= c["upper"] for c in out["curve"])
    # ECE = sum over bins of (n_b / n) * |accuracy_b - confidence_b|, from the curve itself
    assert out["ece"] == approx(sum(c["n"] / n * abs(c["accuracy"] - c["confidence"]) for c in out["curve"]))
    # and from an independent binning with (lower, upper] bins (0 goes to the first)
    idx = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    expected = sum((idx == b).mean() * abs(correct[idx == b].mean() - conf[idx == b].mean())
                   for b in range(bins) if (idx == b).any())
    assert out["ece"] == pytest.approx(expected, abs=1e-9)
