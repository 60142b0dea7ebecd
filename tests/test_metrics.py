"""Metrics against scikit-learn on random data (several seeds) and against small hand-computed cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.preprocessing import MultiLabelBinarizer

from classifine.scoring import metrics as M

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


# --- invalid outputs ---------------------------------------------------------------------------

def test_invalid_output_rate_hand_case():
    out = M.invalid_output([False, True, False, True, True])
    assert out == {"n": 5, "invalid": 3, "rate": approx(3 / 5)}
    assert M.invalid_output([])["rate"] == 0.0


# --- extraction: normalisation -----------------------------------------------------------------

@pytest.mark.parametrize("name,expected", [
    ("Acme Corp.", "Acme"), ("Acme Corp", "Acme"), ("Acme Corporation", "Acme"), ("Acme, Inc.", "Acme"),
    ("Apple Inc", "Apple"), ("Samsung Electronics Co., Ltd.", "Samsung Electronics"), ("Hooli LLC", "Hooli"),
    ("Tesco PLC", "Tesco"), ("Siemens AG", "Siemens"), ("Bosch GmbH", "Bosch"), ("Nestlé S.A.", "Nestlé"),
    ("Philips N.V.", "Philips"), ("㈜카카오", "카카오"), ("(주)카카오", "카카오"), ("주식회사 카카오", "카카오"),
    ("삼성전자(주)", "삼성전자"), ("삼성전자 주식회사", "삼성전자"),
    # not legal forms: a word that merely ends in the letters, or a name that is nothing but the form
    ("Bag", "Bag"), ("Disco", "Disco"), ("Costco", "Costco"), ("AG", "AG"), ("Inc.", "Inc."),
])
def test_strip_legal_suffixes(name, expected):
    assert M.strip_legal_suffixes(name) == expected


def test_normalize_steps_are_independent_of_list_order():
    name = "  ACME \t Widgets   Corp. "
    assert M.normalize_entity(name, []) == "ACME \t Widgets   Corp."  # only the ends are trimmed
    assert M.normalize_entity(name, ["whitespace"]) == "ACME Widgets Corp."
    assert M.normalize_entity(name, ["casefold"]) == "acme \t widgets   corp."
    full = M.normalize_entity(name, ["casefold", "strip_suffixes", "whitespace"])
    assert full == "acme widgets"
    assert M.normalize_entity(name, ["whitespace", "casefold", "strip_suffixes"]) == full
    assert M.normalize_entity("STRASSE", ["casefold"]) == M.normalize_entity("straße", ["casefold"])


# --- extraction: metrics -----------------------------------------------------------------------

def E(name, conf=0.9):
    return {"name": name, "confidence": conf}


def test_extraction_hand_case_with_confidence_filter():
    gold = [["Acme", "Globex"], [], ["Initech"], ["Hooli"]]
    pred = [
        [E("Globex"), E("Acme")],                      # order-free: exact
        [E("Umbrella", 0.3)],                          # dropped under 0.5: exact (both empty)
        [E("Initech"), E("Hooli", 0.8)],               # one spurious entity: not exact
        [E("Hooli", 0.4)],                             # dropped: the gold entity is missed
    ]
    out = M.extraction(gold, pred, min_confidence=0.5)
    assert out["n"] == 4 and out["correct"] == 2 and out["exact_match"] == approx(2 / 4)
    # kept: Globex, Acme, Initech, Hooli(row 3) -> tp 3 (Acme, Globex, Initech), fp 1, fn 1 (Hooli row 4)
    assert (out["true_positives"], out["false_positives"], out["false_negatives"]) == (3, 1, 1)
    assert out["precision"] == approx(3 / 4) and out["recall"] == approx(3 / 4) and out["f1"] == approx(3 / 4)
    # rows with gold entities: 0, 2, 3 -> only row 0 exact
    assert out["rows_with_entities"] == 3 and out["correct_with_entities"] == 1
    assert out["exact_match_with_entities"] == approx(1 / 3)


def test_extraction_without_filter_counts_low_confidence_entities():
    gold = [["Hooli"], []]
    pred = [[E("Hooli", 0.4)], [E("Umbrella", 0.3)]]
    assert M.extraction(gold, pred, min_confidence=0.0)["exact_match"] == approx(1 / 2)
    assert M.extraction(gold, pred, min_confidence=0.5)["exact_match"] == approx(1 / 2)
    assert M.extraction(gold, pred, min_confidence=0.35)["exact_match"] == approx(2 / 2)
    # the boundary is inclusive: an entity at exactly min_confidence is kept
    assert M.extraction([["A"]], [[E("A", 0.5)]], min_confidence=0.5)["exact_match"] == 1.0


def test_extraction_normalisation_makes_variants_match():
    gold = [["Samsung Electronics Co., Ltd."], ["㈜카카오", "LG"], ["Acme Corp"]]
    pred = [[E("samsung  electronics")], [{"text": "카카오", "confidence": 0.99}, "LG"], [E("ACME")]]
    raw = M.extraction(gold, pred)
    assert raw["exact_match"] == approx(0 / 3)
    assert raw["true_positives"] == 1  # only "LG" matches without normalisation
    norm = M.extraction(gold, pred, normalize=["casefold", "whitespace", "strip_suffixes"])
    assert norm["exact_match"] == 1.0 and norm["f1"] == 1.0
    # casefold alone is not enough for the legal forms
    assert M.extraction(gold, pred, normalize=["casefold", "whitespace"])["correct"] == 0


def test_extraction_duplicates_collapse_and_blank_gold_is_ignored():
    out = M.extraction([["Acme", "Acme", " "]], [[E("Acme"), E("acme")]], normalize=["casefold"])
    assert out["exact_match"] == 1.0 and (out["true_positives"], out["false_positives"]) == (1, 0)


def test_extraction_rejects_entity_without_name():
    with pytest.raises(ValueError, match="name"):
        M.extraction([["A"]], [[{"confidence": 0.9}]])


@pytest.mark.parametrize("seed", SEEDS)
def test_extraction_matches_sklearn_multilabel(seed):
    """Entity sets are multi-label rows over the entity vocabulary: exact match is sklearn's subset
    accuracy and entity P/R/F1 its micro average."""
    rng = np.random.default_rng(seed)
    vocab = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "삼성전자"]
    gold, pred, kept = [], [], []
    for _ in range(120):
        g = [v for v in vocab if rng.random() < 0.25]
        p = [E(v, float(rng.uniform(0.0, 1.0))) for v in vocab if rng.random() < (0.7 if v in g else 0.15)]
        gold.append(g)
        pred.append(p)
        kept.append([e["name"] for e in p if e["confidence"] >= 0.4])
    out = M.extraction(gold, pred, min_confidence=0.4)
    mlb = MultiLabelBinarizer(classes=vocab)
    Y, P = mlb.fit_transform(gold), mlb.transform(kept)
    assert out["exact_match"] == approx(skm.accuracy_score(Y, P))
    p, r, f, _ = skm.precision_recall_fscore_support(Y, P, average="micro", zero_division=0)
    assert (out["precision"], out["recall"], out["f1"]) == (approx(p), approx(r), approx(f))


def test_extraction_calibration_is_over_predicted_entities():
    gold = [["A"], ["B"]]
    pred = [[E("A", 0.9), E("X", 0.9)], [E("B", 0.2)]]
    cal = M.extraction(gold, pred)["calibration"]
    # bin (0.8, 0.9]: two entities, one right -> |0.5 - 0.9|; bin (0.1, 0.2]: one right -> |1 - 0.2|
    assert cal["ece"] == approx(2 / 3 * 0.4 + 1 / 3 * 0.8)
    assert sum(c["n"] for c in cal["curve"]) == 3


# --- subsets and confusions --------------------------------------------------------------------

def test_subset_scores_single_label_hand_case():
    gold = ["econ", "econ_crime", "sport", "econ", "crime"]
    pred = ["econ_crime", "econ_crime", "econ", "sport", "crime"]
    s = M.subset_scores("single_label", gold, pred, ["econ", "econ_crime"])
    # subset rows 0, 1, 3; predicted inside the group: 0, 1 -> recall 2/3; exact label only row 1
    assert (s["n"], s["found"], s["relevant"]) == (3, 2, 3) and s["recall"] == approx(2 / 3)
    assert s["correct"] == 1 and s["accuracy"] == approx(1 / 3)
    # predicted inside the group: rows 0, 1, 2 -> precision 2/3
    assert s["predicted"] == 3 and s["precision"] == approx(2 / 3)


@pytest.mark.parametrize("seed", SEEDS)
def test_subset_recall_matches_sklearn_binary_recall(seed):
    y_true, y_pred = random_single(seed, invalid=True)
    group = ["a", "c"]
    s = M.subset_scores("single_label", y_true, y_pred, group)
    bt, bp = [t in group for t in y_true], [q in group for q in y_pred]
    assert s["recall"] == approx(skm.recall_score(bt, bp, zero_division=0))
    assert s["precision"] == approx(skm.precision_score(bt, bp, zero_division=0))
    rows = [i for i, t in enumerate(y_true) if t in group]
    assert s["accuracy"] == approx(skm.accuracy_score([y_true[i] for i in rows], [y_pred[i] for i in rows]))


def test_subset_scores_multi_label_hand_case():
    gold = [["econ", "sport"], ["sport"], ["econ"], []]
    pred = [["econ"], ["econ"], [], ["econ", "sport"]]
    s = M.subset_scores("multi_label", gold, pred, ["econ"])
    # rows with 'econ' in the reference: 0, 2; found in row 0 only; predicted 'econ' in rows 0, 1, 3
    assert (s["n"], s["relevant"], s["found"], s["predicted"]) == (2, 2, 1, 3)
    assert s["recall"] == approx(1 / 2) and s["precision"] == approx(1 / 3)
    assert s["correct"] == 0  # neither row's full label set is right


def test_confused_pairs_single_label_match_the_confusion_matrix():
    y_true, y_pred = random_single(3)
    pairs = M.confused_pairs(y_true, y_pred, top=100)
    labels = sorted(set(y_true) | set(y_pred))
    cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
    expected = {(labels[i], labels[j]): int(cm[i, j]) for i in range(len(labels)) for j in range(len(labels))
                if i != j and cm[i, j]}
    assert {(p["gold"], p["pred"]): p["count"] for p in pairs} == expected
    counts = [p["count"] for p in pairs]
    assert counts == sorted(counts, reverse=True)
    assert M.confused_pairs(y_true, y_pred, top=3) == pairs[:3]


def test_confused_pairs_multi_label_hand_case():
    gold = [["a", "b"], ["a"], ["c"]]
    pred = [["a", "c"], ["c", "b"], ["c"]]
    # row 0: missed b, added c -> (b, c); row 1: missed a, added c and b -> (a, c), (a, b)
    pairs = M.confused_pairs(gold, pred)
    assert {(p["gold"], p["pred"]): p["count"] for p in pairs} == {("b", "c"): 1, ("a", "c"): 1, ("a", "b"): 1}
