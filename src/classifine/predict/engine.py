"""Which inference engine a run uses, chosen after training on measured evidence.

Every engine a method's ``Scorer`` offers (``Scorer.ENGINES``: torch, onnx, onnx-int8) predicts
the run's validation rows; an engine is *accepted* when its labels agree with fp32 PyTorch on at
least 99.5% of them and its macro-F1 (the kind's ranking metric) is within 0.5 points, and the
fastest accepted engine is kept if it beats PyTorch by at least 10%. The measurements, accepted or
not, go into ``model/inference.json`` (``core/accel.py``), so a user can see why a run uses what
it uses; ``engine: torch`` in the method settings, ``--engine`` or ``CLASSIFINE_ENGINE`` overrule it.
Where int8 is measured, so is ``onnx-int8-checked`` (predict/checked.py): int8 everywhere, fp32 for
the rows near a decision boundary; its agreement is measured on rows its check margin was not fitted on.
"""
from __future__ import annotations

import logging
import shutil
import time

import numpy as np

from ..core.accel import CHECKED, ONNX_FILES, check_engine, graph_engine, onnx_missing, save_choice
from ..core.data import Examples
from ..core.runs import Run
from ..errors import ClassifineError
from ..methods import get_method
from ..scoring.decision import decide
from ..scoring.kinds import KINDS, compute_metrics
from .checked import Check, check_margin, held_out
from .predictor import Predictor

log = logging.getLogger("classifine")
SAMPLE = 400        # validation rows predicted by every engine
MIN_ROWS = 200      # fewer cannot show 99.5% agreement with one row to spare; auto then stays on torch
AGREEMENT = 0.995   # share of labels an engine must give as fp32 PyTorch does
POINTS = 0.5        # largest change of macro-F1 (the ranking metric), in points
GAIN = 1.1          # speed-up an engine must bring to be worth a second code path


def _answers(predictor: Predictor, probs: np.ndarray) -> list:
    return decide(predictor.task.kind, predictor.labels, probs, predictor.decision)


def _same(a, b) -> bool:
    return sorted(a) == sorted(b) if isinstance(a, list) else a == b


def _rate(predictor: Predictor, texts: list[str]) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    probs = predictor.predict_proba(texts)
    return probs, len(texts) / max(time.perf_counter() - t, 1e-9)


def choose_engine(run: Run, validation: Examples | None, wanted: str = "auto") -> dict:
    """Measure the run's engines on (a sample of) ``validation``, record the choice, return it."""
    engines = getattr(get_method(run.method).Scorer, "ENGINES", None)
    if not engines:
        return {}
    wanted = check_engine(wanted)
    # graphs of an earlier attempt (a resumed run) hold the weights of before: never reuse them
    shutil.rmtree(run.model_dir / "onnx", ignore_errors=True)
    rows = len(validation) if validation is not None else 0
    if wanted == "torch" or rows == 0 or (wanted == "auto" and rows < MIN_ROWS):
        choice = {"engine": "torch", "reason": "engine: torch in the settings" if wanted == "torch" else
                  f"{rows} validation rows are too few to show another engine within tolerance (auto needs {MIN_ROWS})"}
        save_choice(run.model_dir, choice)
        return choice
    # auto measures the Scorer's own engines; a named one is measured even where auto would not take it
    candidates = [e for e in ONNX_FILES if (wanted == "auto" and e in engines) or e == graph_engine(wanted)]
    skipped = {}
    if onnx_missing():
        skipped = {e: f"needs {', '.join(onnx_missing())} (pip install 'classifine[export]')" for e in candidates}
        candidates = []
    texts, gold = validation.texts[:SAMPLE], validation.labels[:SAMPLE]
    metric = KINDS[run.task.kind].ranking
    predictors = {"torch": Predictor.load(run, engine="torch")}
    for engine in candidates:
        try:
            predictors[engine] = Predictor.load(run, engine=engine, build=True)
        except ClassifineError as e:  # an architecture the exporter cannot convert: stay on torch
            skipped[engine] = e.summary
            log.warning("engine %s is not available for this run: %s", engine, e.summary)
    measured, labels, probs_of = {}, {}, {}
    for engine, p in predictors.items():
        probs, rate = _rate(p, texts)
        probs_of[engine], labels[engine] = probs, _answers(p, probs)
        measured[engine] = {"docs_per_second": rate, metric: compute_metrics(run.task, gold, labels[engine], probs).get(metric)}
    if "onnx-int8" in predictors and wanted in ("auto", CHECKED):
        measured[CHECKED] = _measure_checked(run, predictors, probs_of, texts, gold, metric)
        labels[CHECKED] = _answers(predictors[CHECKED], probs_of[CHECKED])
    # a second, shorter timing round in the same order: the better of the two rates counts
    for engine, p in predictors.items():
        measured[engine]["docs_per_second"] = round(max(measured[engine]["docs_per_second"], _rate(p, texts[:SAMPLE // 4])[1]), 2)
    base = measured["torch"]
    for engine, m in measured.items():
        m["label_agreement"] = round(float(np.mean([_same(a, b) for a, b in zip(labels[engine], labels["torch"])])), 4)
        m["metric_change_points"] = round(100 * ((m[metric] or 0) - (base[metric] or 0)), 3)
        m["speedup"] = round(m["docs_per_second"] / base["docs_per_second"], 3)
        m["within_tolerance"] = m["label_agreement"] >= AGREEMENT and abs(m["metric_change_points"]) <= POINTS
    if wanted != "auto":  # the user's engine is used even outside tolerance; the record says so
        chosen = wanted if wanted in measured else "torch"
        reason = f"engine: {wanted} in the settings"
    else:
        fast = [e for e, m in measured.items() if e != "torch" and m["within_tolerance"] and m["speedup"] >= GAIN]
        chosen = max(fast, key=lambda e: measured[e]["docs_per_second"]) if fast else "torch"
        reason = ("fastest engine within tolerance" if fast else "no other engine was both within tolerance and "
                  f"{GAIN}x faster")
    choice = {"engine": chosen, "reason": reason, "validation_rows": len(texts), "metric": metric,
              "tolerance": {"label_agreement": AGREEMENT, "metric_points": POINTS, "min_speedup": GAIN},
              "measured": measured, "skipped": skipped}
    if CHECKED in measured:  # kept whatever is chosen: --engine onnx-int8-checked can use it later
        choice["check_margin"] = measured[CHECKED]["check_margin"]
        choice["check_engine"] = measured[CHECKED]["check_engine"]
    _drop_unused(run, graph_engine(chosen), *([choice["check_engine"]] if chosen == CHECKED else []))
    save_choice(run.model_dir, choice)
    log.info("inference engine: %s (%s)", chosen, reason)
    return choice


def check_engine_of(predictors: dict) -> str:
    """The fp32 engine that re-runs the checked rows: ONNX Runtime where the graph exported (its
    outputs match PyTorch's to 1e-4, and a call on one or two texts costs half of eager PyTorch's:
    11 vs 21 ms for one AG News text on MiniLM), else PyTorch."""
    return "onnx" if "onnx" in predictors else "torch"


def _measure_checked(run: Run, predictors: dict, probs_of: dict, texts: list[str], gold: list, metric: str) -> dict:
    """The checked engine (predict/checked.py) from the int8 and fp32 measurements: its margin from
    all sampled rows, its speed run for real, its answers with each half's margin taken from the
    other half, so its agreement is measured on rows the margin did not see."""
    exact, int8 = predictors[check_engine_of(predictors)], predictors["onnx-int8"]
    margin = check_margin(probs_of["torch"], probs_of["onnx-int8"])
    check = Check(margin, lambda: exact.scorer)
    predictors[CHECKED] = Predictor(run, int8.scorer, exact.decision, check=check)
    _, rate = _rate(predictors[CHECKED], texts)
    probs_of[CHECKED], share = held_out(run.task.kind, exact.labels, exact.decision, probs_of["torch"], probs_of["onnx-int8"])
    answers = _answers(exact, probs_of[CHECKED])
    return {"docs_per_second": rate, metric: compute_metrics(run.task, gold, answers, probs_of[CHECKED]).get(metric),
            "check_margin": round(margin, 6), "check_engine": check_engine_of(predictors), "rows_checked": round(check.rows_checked / max(check.rows_seen, 1), 4),
            "held_out_rows_checked": round(share, 4)}


def _drop_unused(run: Run, *used: str) -> None:
    """Keep only the graphs of the engines the run uses in it (an fp32 graph of a 270M model is 1 GB)."""
    folder = run.model_dir / "onnx"
    if not folder.is_dir():
        return
    keep = {f for e in used if e in ONNX_FILES for f in (ONNX_FILES[e], ONNX_FILES[e] + ".data")}
    for f in folder.iterdir():
        if f.name not in keep:
            f.unlink() if f.is_file() else shutil.rmtree(f)
    if not any(folder.iterdir()):
        folder.rmdir()
