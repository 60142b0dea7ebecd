"""int8 speed with fp32 answers: the ``onnx-int8-checked`` engine.

An int8 graph moves every probability a little, and an answer can only change where two
probabilities (or a probability and its threshold) were about that close: on the MiniLM head run
of BENCHMARKS.md all 11 of 1,520 rows whose int8 label differed from fp32's were among the 4% with
the smallest int8 margin. So the checked engine runs every text through the int8 graph and runs
again in fp32 (the ONNX graph where it exported, else PyTorch: ``check_engine`` in
model/inference.json) only the rows whose int8 answer margin (``answer_margin``) is below the
run's *check margin*: twice the largest change int8 made to any probability of any validation row,
measured when the run chose its engine (``predict/engine.py``) and kept in model/inference.json.
A row keeps its answer wherever its margin exceeds twice its own change, so the answers are fp32's
unless a new text moves further than every validation text did; the choice measures how often that
happens on held-out rows (``held_out``) before it ever takes this engine.
"""
from __future__ import annotations

import numpy as np

from ..scoring.decision import adjust, answer_margin


def check_margin(exact: np.ndarray, fast: np.ndarray) -> float:
    """Twice the largest difference of any probability between two engines' answers to the same rows."""
    exact, fast = np.asarray(exact, dtype=np.float64), np.asarray(fast, dtype=np.float64)
    return float(2 * np.abs(exact - fast).max()) if exact.size else float("inf")


def held_out(kind: str, labels: list[str], decision: dict, exact: np.ndarray, fast: np.ndarray) -> tuple[np.ndarray, float]:
    """The probabilities the checked engine gives on these rows when each half of them (even, odd
    rows) is checked with the margin measured on the other half, and the share of rows it checked:
    what to expect on texts the margin was not measured on."""
    exact, fast = np.asarray(exact, dtype=np.float64), np.asarray(fast, dtype=np.float64)
    out, rows = fast.copy(), np.arange(len(fast))
    margins = answer_margin(kind, labels, fast, decision)
    checked = np.zeros(len(fast), dtype=bool)
    for part in (rows % 2 == 0, rows % 2 == 1):
        checked |= part & (margins < check_margin(exact[~part], fast[~part]))
    out[checked] = exact[checked]
    return out, float(checked.mean()) if len(fast) else 0.0


class Check:
    """Re-scores, with the exact (fp32) scorer, the rows whose answer margin is below ``margin``.
    ``exact`` builds that scorer on first need: a batch far from every decision boundary never loads it."""

    def __init__(self, margin: float, exact):
        self.margin, self._build, self._exact = float(margin), exact, None
        self.rows_seen = self.rows_checked = 0  # the share re-run, for the record of a measurement

    def exact(self):
        if self._exact is None:
            self._exact = self._build()
        return self._exact

    def mend(self, kind: str, labels: list[str], decision: dict, texts: list[str], probs: np.ndarray) -> np.ndarray:
        near = np.nonzero(answer_margin(kind, labels, probs, decision) < self.margin)[0]
        self.rows_seen += len(texts)
        self.rows_checked += len(near)
        if not len(near):
            return probs
        probs = np.array(probs, dtype=np.float64)
        exact = self.exact().predict_proba([texts[i] for i in near])
        probs[near] = adjust(kind, np.asarray(exact, dtype=np.float64), decision)
        return probs
