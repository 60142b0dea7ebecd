"""Linear heads on fixed features (TF-IDF vectors for ``tfidf``, frozen embeddings for ``embed``;
the ``head`` method trains a transformer's own classification layer instead), with scikit-learn's contract:
``__init__`` stores parameters, ``fit`` returns self, learned attributes end in ``_``,
``predict`` returns labels from ``classes_``. Training uses scikit-learn; the learned weights are
saved as safetensors + JSON (never pickle), so a run can be loaded without executing stored code.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from ..core.runs import atomic_write_bytes
from ..scoring.decision import class_weights, ordinal_probabilities, probabilities

ClassWeight = str | dict[str, float] | None


class LinearHead:
    """Logistic regression: softmax over classes (single_label) or one sigmoid per label (multi_label)."""

    def __init__(self, multi_label: bool = False, C: float = 1.0, class_weight: ClassWeight = "balanced",
                 max_iter: int = 2000):
        self.multi_label = multi_label
        self.C = C
        self.class_weight = class_weight
        self.max_iter = max_iter

    def fit(self, X, y: list, classes: list[str], targets: np.ndarray | None = None) -> "LinearHead":
        """``targets`` (rows x classes, single_label): soft labels, e.g. an annotator's probabilities.
        Each row then appears once per class it gives mass to, weighted by that mass (times the
        class weight): the weighted log-loss of that expansion is the cross-entropy to the soft
        targets, which scikit-learn's LogisticRegression has no other way to take."""
        from sklearn.linear_model import LogisticRegression

        self.classes_ = list(classes)
        d = X.shape[1]
        coef = np.zeros((len(classes), d), dtype=np.float32)
        # a class never seen in training can never be predicted
        intercept = np.full(len(classes), -30.0, dtype=np.float32)
        if self.multi_label:
            Y = np.array([[lab in row for lab in classes] for row in y], dtype=int)
            for j, lab in enumerate(classes):
                pos = int(Y[:, j].sum())
                if pos == 0 or pos == len(Y):
                    intercept[j] = -30.0 if pos == 0 else 30.0
                    continue
                cw = class_weights(["0", "1"], {"0": len(Y) - pos, "1": pos},
                                   self.class_weight if self.class_weight in (None, "none", "balanced") else "none")
                if isinstance(self.class_weight, dict):  # a per-label weight scales that label's positives
                    cw["1"] *= float(self.class_weight.get(lab, 1.0))
                clf = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight={0: cw["0"], 1: cw["1"]})
                clf.fit(X, Y[:, j])
                coef[j], intercept[j] = clf.coef_[0], clf.intercept_[0]
        else:
            counts = {lab: sum(1 for v in y if v == lab) for lab in classes}
            weights = class_weights(self.classes_, counts, self.class_weight)
            seen = [lab for lab in classes if counts[lab] > 0]
            if len(seen) < 2:
                raise ValueError(f"training data has only one class ({seen}); need at least two")
            if targets is None:
                clf = LogisticRegression(C=self.C, max_iter=self.max_iter, class_weight={lab: weights[lab] for lab in seen})
                clf.fit(X, list(y))
            else:
                rows_, cols = np.nonzero(np.asarray(targets) > 1e-4)
                weight = np.asarray(targets)[rows_, cols] * np.array([weights[classes[c]] for c in cols])
                clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
                clf.fit(X[rows_], [classes[c] for c in cols], sample_weight=weight * len(y) / weight.sum())
                seen = list(clf.classes_)
            rows = [self.classes_.index(c) for c in clf.classes_]
            if len(seen) == 2:  # sklearn keeps one row for two classes: softmax([-z/2, z/2]) = sigmoid(z)
                w, b = clf.coef_[0] / 2, clf.intercept_[0] / 2
                coef[rows[0]], coef[rows[1]] = -w, w
                intercept[rows[0]], intercept[rows[1]] = -b, b
            else:
                coef[rows], intercept[rows] = clf.coef_, clf.intercept_
        self.coef_, self.intercept_ = coef, intercept
        return self

    def decision_function(self, X) -> np.ndarray:
        return np.asarray(X @ self.coef_.T, dtype=np.float64) + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        z = self.decision_function(X)
        return probabilities("multi_label" if self.multi_label else "single_label", z)

    def predict(self, X) -> list:
        p = self.predict_proba(X)
        if self.multi_label:
            return [[c for c, on in zip(self.classes_, row) if on] for row in p >= 0.5]
        return [self.classes_[i] for i in p.argmax(1)]

    def save(self, folder: Path, prefix: str = "head") -> None:
        tensors = {"coef": self.coef_, "intercept": self.intercept_}
        atomic_write_bytes(folder / f"{prefix}.safetensors", safetensors_bytes(tensors))
        meta = {"type": "linear", "multi_label": self.multi_label, "classes": self.classes_, "C": self.C,
                "class_weight": self.class_weight}
        (folder / f"{prefix}.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))


class OrdinalHead:
    """Ridge regression on the scale position. Probabilities per level come from a normal
    distribution around the prediction whose width is the residual spread on held-out data, so an
    ordinal model still gives every label a probability and the argmax is the nearest level."""

    def __init__(self, alpha: float = 1.0, class_weight: ClassWeight = "balanced"):
        self.alpha = alpha
        self.class_weight = class_weight

    def fit(self, X, y: list[str], classes: list[str], X_val=None, y_val: list[str] | None = None,
            targets: np.ndarray | None = None) -> "OrdinalHead":
        """``targets``: soft labels; the regression target is then their expected scale position."""
        from sklearn.linear_model import Ridge

        self.classes_ = list(classes)
        pos = np.array([self.classes_.index(v) for v in y], dtype=float)
        if targets is not None:
            pos = np.asarray(targets, dtype=float) @ np.arange(len(classes), dtype=float)
        counts = {lab: sum(1 for v in y if v == lab) for lab in classes}
        w = class_weights(self.classes_, counts, self.class_weight)
        reg = Ridge(alpha=self.alpha).fit(X, pos, sample_weight=np.array([w[v] for v in y]))
        self.coef_ = reg.coef_.astype(np.float32)[None, :]
        self.intercept_ = np.array([reg.intercept_], dtype=np.float32)
        if X_val is not None and y_val:
            resid = self._score(X_val) - np.array([self.classes_.index(v) for v in y_val], dtype=float)
        else:
            resid = self._score(X) - pos
        self.sigma_ = np.array([max(float(np.sqrt(np.mean(resid ** 2))), 0.25)], dtype=np.float32)
        return self

    def _score(self, X) -> np.ndarray:
        return np.asarray(X @ self.coef_.T, dtype=np.float64)[:, 0] + float(self.intercept_[0])

    def predict_proba(self, X) -> np.ndarray:
        return ordinal_probabilities(self._score(X), float(self.sigma_[0]), len(self.classes_))

    def predict(self, X) -> list[str]:
        return [self.classes_[i] for i in self.predict_proba(X).argmax(1)]

    def save(self, folder: Path, prefix: str = "head") -> None:
        tensors = {"coef": self.coef_, "intercept": self.intercept_, "sigma": self.sigma_}
        atomic_write_bytes(folder / f"{prefix}.safetensors", safetensors_bytes(tensors))
        meta = {"type": "ordinal", "classes": self.classes_, "alpha": self.alpha, "class_weight": self.class_weight}
        (folder / f"{prefix}.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))


def load_head(folder: Path, prefix: str = "head") -> LinearHead | OrdinalHead:
    meta = json.loads((folder / f"{prefix}.json").read_text())
    t = load_file(str(folder / f"{prefix}.safetensors"))
    if meta["type"] == "linear":
        head = LinearHead(multi_label=meta["multi_label"], C=meta["C"], class_weight=meta["class_weight"])
    else:
        head = OrdinalHead(alpha=meta["alpha"], class_weight=meta["class_weight"])
        head.sigma_ = t["sigma"]
    head.classes_ = meta["classes"]
    head.coef_, head.intercept_ = t["coef"], t["intercept"]
    return head


def make_head(kind: str, C: float, class_weight: ClassWeight):
    if kind == "ordinal":
        return OrdinalHead(alpha=1.0 / C, class_weight=class_weight)
    return LinearHead(multi_label=kind == "multi_label", C=C, class_weight=class_weight)


def fit_head(head, kind: str, X, y, classes, X_val=None, y_val=None, targets=None):
    if kind == "ordinal":
        return head.fit(X, y, classes, X_val, y_val, targets=targets)
    return head.fit(X, y, classes, targets=targets)
