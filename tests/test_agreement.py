"""Agreement metrics against scikit-learn, statsmodels and the krippendorff package on random data
(several seeds, with missing ratings), against published worked examples, and on edge cases."""
from __future__ import annotations

import numpy as np
import pytest

from classifine.scoring import metrics as M

SEEDS = [0, 1, 2, 3, 7]
POOL = ["a", "b", "c", "d"]


def approx(x):
    return pytest.approx(x, abs=1e-12)


def random_ratings(seed: int, items: int = 60, raters: int = 5, missing: float = 0.0) -> list[list[str | None]]:
    """Raters follow a per-item 'true' label with prob. 0.6, else noise; some ratings go missing."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(POOL, size=items, p=[0.4, 0.3, 0.2, 0.1])
    out = []
    for t in truth:
        row = [str(t) if rng.random() < 0.6 else str(rng.choice(POOL)) for _ in range(raters)]
        out.append([None if rng.random() < missing else r for r in row])
    return out


# --- Cohen ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", SEEDS)
def test_cohen_matches_sklearn(seed):
    skm = pytest.importorskip("sklearn.metrics")
    a, b = (list(x) for x in zip(*[r[:2] for r in random_ratings(seed, items=200)]))
    assert M.cohen_kappa(a, b) == approx(skm.cohen_kappa_score(a, b))
    # labels: an unused label changes nothing; leaving one out drops the pairs that use it
    for labels in (POOL + ["never"], ["a", "b", "c"]):
        assert M.cohen_kappa(a, b, labels) == approx(skm.cohen_kappa_score(a, b, labels=labels))


def test_cohen_hand_cases():
    assert M.cohen_kappa(list("abcab"), list("abcab")) == 1.0
    # 2x2 with po = 0.5, pe = 0.5 -> 0
    assert M.cohen_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == approx(0.0)
    # systematic disagreement is below chance
    assert M.cohen_kappa(["a", "b"] * 5, ["b", "a"] * 5) == approx(-1.0)


def test_cohen_single_label_and_errors():
    assert M.cohen_kappa(["x"] * 4, ["x"] * 4) == 1.0  # sklearn: nan (0/0); we document 1.0
    with pytest.raises(ValueError, match="no item"):
        M.cohen_kappa([], [])
    with pytest.raises(ValueError, match="no item"):
        M.cohen_kappa(["a"], ["b"], labels=["c"])
    with pytest.raises(ValueError, match="rated 2 and 1"):
        M.cohen_kappa(["a", "b"], ["a"])


# --- Fleiss --------------------------------------------------------------------------------------

def _statsmodels_fleiss(ratings):
    ir = pytest.importorskip("statsmodels.stats.inter_rater")
    labels = sorted({r for item in ratings for r in item if r is not None})
    table = np.array([[item.count(lab) for lab in labels] for item in ratings])
    return ir.fleiss_kappa(table, method="fleiss")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("raters", [2, 3, 6])
def test_fleiss_matches_statsmodels(seed, raters):
    ratings = random_ratings(seed, raters=raters)
    assert M.fleiss_kappa(ratings) == approx(_statsmodels_fleiss(ratings))
    assert M.fleiss_kappa(ratings, labels=POOL + ["never"]) == approx(M.fleiss_kappa(ratings))


def test_fleiss_wikipedia_example():
    # Fleiss' kappa article on Wikipedia: 10 items, 14 raters, 5 categories -> 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = [[c for c, k in zip("12345", row) for _ in range(k)] for row in table]
    assert M.fleiss_kappa(ratings) == pytest.approx(0.20993, abs=1e-5)


def test_fleiss_two_raters_equals_scott_pi():
    # with two raters Fleiss' kappa is Scott's pi (pooled marginals)
    a, b = ["a", "a", "a", "b", "b", "c"], ["a", "a", "b", "b", "c", "c"]
    p = np.array([5, 4, 3]) / 12
    pe, po = p @ p, 4 / 6
    assert M.fleiss_kappa([list(x) for x in zip(a, b)]) == approx((po - pe) / (1 - pe))


def test_fleiss_varying_raters():
    ratings = random_ratings(5, raters=6, missing=0.3)
    # by hand: mean per-item agreement over items with 2+ ratings, p_j over all their ratings
    kept = [[r for r in item if r is not None] for item in ratings]
    kept = [k for k in kept if len(k) >= 2]
    p_i = [sum(k.count(c) * (k.count(c) - 1) for c in POOL) / (len(k) * (len(k) - 1)) for k in kept]
    flat = [r for k in kept for r in k]
    p_e = sum((flat.count(c) / len(flat)) ** 2 for c in POOL)
    assert M.fleiss_kappa(ratings) == approx((np.mean(p_i) - p_e) / (1 - p_e))
    # items with fewer than two ratings are skipped
    assert M.fleiss_kappa(ratings + [["a", None, None], [None, None, None]]) == approx(M.fleiss_kappa(ratings))


# --- Krippendorff --------------------------------------------------------------------------------

def _package_alpha(ratings):
    kd = pytest.importorskip("krippendorff")
    code = {lab: i for i, lab in enumerate(POOL)}
    data = np.array([[np.nan if r is None else code[r] for r in item] for item in ratings], dtype=float).T
    return kd.alpha(reliability_data=data, level_of_measurement="nominal")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("missing", [0.0, 0.2, 0.5])
def test_alpha_matches_krippendorff_package(seed, missing):
    ratings = random_ratings(seed, raters=4, missing=missing)
    assert M.krippendorff_alpha(ratings) == approx(_package_alpha(ratings))


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers x 12
# units with missing values; nominal alpha = 0.743.
KRIPPENDORFF_2011 = [
    "1 2 3 3 2 1 4 1 2 . . .",
    "1 2 3 3 2 2 4 1 2 5 . 3",
    ". 3 3 3 2 3 4 2 2 5 1 .",
    "1 2 3 3 2 4 4 1 2 5 1 .",
]


def test_alpha_worked_example():
    by_rater = [[None if v == "." else v for v in row.split()] for row in KRIPPENDORFF_2011]
    ratings = [list(item) for item in zip(*by_rater)]
    assert M.krippendorff_alpha(ratings) == pytest.approx(0.743, abs=5e-4)
    kd = pytest.importorskip("krippendorff")
    data = np.array([[np.nan if v is None else float(v) for v in row] for row in by_rater])
    assert M.krippendorff_alpha(ratings) == approx(kd.alpha(reliability_data=data, level_of_measurement="nominal"))


def test_alpha_two_raters_no_missing_is_close_to_scott_pi():
    # alpha = 1 - (n-1)/n * (1 - pi) ... i.e. Scott's pi corrected for small samples
    a, b = ["a", "a", "a", "b", "b", "c"], ["a", "a", "b", "b", "c", "c"]
    pi = M.fleiss_kappa([list(x) for x in zip(a, b)])
    n = 12
    assert M.krippendorff_alpha([list(x) for x in zip(a, b)]) == approx(1 - (n - 1) / n * (1 - pi))


# --- shared edge cases ---------------------------------------------------------------------------

@pytest.mark.parametrize("fn", [M.fleiss_kappa, M.krippendorff_alpha])
def test_edge_cases(fn):
    assert fn([["a", "a", "a"], ["b", "b", None], ["c", "c", "c"]]) == 1.0  # perfect agreement
    assert fn([["x", "x"], ["x", None, "x"], ["x", "x", "x"]]) == 1.0       # one label only
    assert fn([["a", "b"], ["b", "a"]]) < 0
    for empty in ([], [[]], [["a"], ["b", None], [None, None]]):
        with pytest.raises(ValueError, match="two or more ratings"):
            fn(empty)
    with pytest.raises(ValueError, match="two or more ratings"):
        fn([["a", "b"]], labels=["c"])  # ratings outside `labels` are dropped
