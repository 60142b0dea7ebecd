"""The evaluation report: every number is checked against an independent count over
predictions.jsonl, the HTML is self-contained and renders in a real browser."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn import metrics as skm
from typer.testing import CliRunner

import classifine
from classifine.scoring import metrics as M
from classifine.cli import app
from classifine.core.data import load_examples
from classifine.predict.predictor import Predictor
from classifine.evaluation.multitask import evaluate_run
from classifine.evaluation.report import INVALID, assemble, evaluate
from classifine.evaluation.render import render_html, render_markdown
from classifine.core.task import load_task, parse_task

ROOT = Path(__file__).resolve().parents[1]
NEWS = ROOT / "examples" / "news_category" / "task.yaml"
CHROMIUM = Path("/usr/bin/chromium")
FAST = {"ngram_min": 2, "ngram_max": 3, "max_features": 5000, "C": 2.0}  # small vocabulary: same report, faster


@pytest.fixture(scope="module")
def news_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("news") / "tfidf"
    classifine.train(NEWS, method="tfidf", out=out, config=FAST, progress=False)
    return out


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]


def cell(c: int, n: int) -> str:
    return f"{100 * c / n:.2f}% ({c}/{n})"


def test_every_artefact_is_written(news_run):
    for name in ("predictions.jsonl", "metrics.json", "report.md", "report.html", "confusion.png", "reliability.png"):
        assert (news_run / name).is_file(), name
    for png in ("confusion.png", "reliability.png"):
        assert (news_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = rows_of(news_run)
    assert len(rows) == 120
    # ids and slice columns travel with each row (for compare --align-on and the breakdowns)
    assert {"id", "lang", "month", "text", "gold", "pred", "confidence", "probabilities"} <= set(rows[0])


def test_overall_numbers_match_sklearn_on_the_written_predictions(news_run):
    m = json.loads((news_run / "metrics.json").read_text())
    rows = rows_of(news_run)
    gold, pred = [r["gold"] for r in rows], [r["pred"] for r in rows]
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(gold, pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(gold, pred, average="macro"))
    report = (news_run / "report.md").read_text()
    correct = sum(g == p for g, p in zip(gold, pred))
    assert f"| accuracy | {cell(correct, len(rows))} |" in report


@pytest.mark.parametrize("column", ["lang", "month"])
def test_slices_count_rows_and_hits_per_value(news_run, column):
    m = json.loads((news_run / "metrics.json").read_text())
    rows = rows_of(news_run)
    report = (news_run / "report.md").read_text()
    values = sorted({r[column] for r in rows})
    assert sorted(m["slices"][column]) == values
    for v in values:
        sub = [r for r in rows if r[column] == v]
        hits = sum(r["gold"] == r["pred"] for r in sub)
        s = m["slices"][column][v]
        assert (s["n"], s["correct"]) == (len(sub), hits)
        # averaged over the labels that occur in the slice's references
        present = sorted({r["gold"] for r in sub})
        assert s["macro_f1"] == pytest.approx(skm.f1_score([r["gold"] for r in sub], [r["pred"] for r in sub],
                                                           labels=present, average="macro", zero_division=0))
        assert f"| {v} | {len(sub)} | {cell(hits, len(sub))} |" in report
    if column == "month":  # dates read in date order, not by group size
        assert list(m["slices"][column]) == values


def test_subset_recall_on_economic_news(news_run):
    m = json.loads((news_run / "metrics.json").read_text())
    econ = set(load_task(NEWS).subsets["economic"].label_in)
    rows = [r for r in rows_of(news_run) if r["gold"] in econ]
    found = sum(r["pred"] in econ for r in rows)
    s = m["subsets"]["economic"]
    assert (s["n"], s["found"]) == (len(rows), found)
    assert cell(found, len(rows)) in (news_run / "report.md").read_text()


def test_most_confident_mistakes_and_confused_pairs(news_run):
    m = json.loads((news_run / "metrics.json").read_text())
    rows = rows_of(news_run)
    wrong = [r for r in rows if r["gold"] != r["pred"]]
    assert m["mistakes_total"] == len(wrong)
    listed = m["mistakes"]
    assert len(listed) == min(10, len(wrong))
    by_row = {r["row"]: r for r in rows}
    for x in listed:
        r = by_row[x["row"]]
        assert r["gold"] != r["pred"] and (x["gold"], x["pred"]) == (r["gold"], r["pred"])
        assert x["confidence"] == pytest.approx(r["probabilities"][r["pred"]], abs=1e-4)
        assert r["text"].startswith(x["text"].split(" / ")[0].rstrip("…"))
    confs = [x["confidence"] for x in listed]
    assert confs == sorted(confs, reverse=True)
    assert confs[0] == pytest.approx(max(r["probabilities"][r["pred"]] for r in wrong), abs=1e-4)
    labels = list(load_task(NEWS).labels)
    cm = skm.confusion_matrix([r["gold"] for r in rows], [r["pred"] for r in rows], labels=labels)
    off = sorted((int(cm[i, j]) for i in range(len(labels)) for j in range(len(labels)) if i != j and cm[i, j]), reverse=True)
    assert [p["count"] for p in m["confused_pairs"]] == off[:10]
    top = m["confused_pairs"][0]
    assert cm[labels.index(top["gold"]), labels.index(top["pred"])] == top["count"]


def test_calibration_curve_matches_the_predictions(news_run):
    m = json.loads((news_run / "metrics.json").read_text())
    rows = rows_of(news_run)
    conf = [max(r["probabilities"].values()) for r in rows]
    ref = M.expected_calibration_error(conf, [r["gold"] == r["pred"] for r in rows])
    assert m["calibration"]["ece"] == pytest.approx(ref["ece"], abs=1e-5)
    assert sum(c["n"] for c in m["calibration"]["curve"]) == len(rows)


def test_html_is_self_contained(news_run):
    html = (news_run / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"https?://", html), "the page must not reach the network"
    assert "<script" not in html and "<link" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    m = json.loads((news_run / "metrics.json").read_text())
    assert cell(m["correct"], m["n"]) in html


def test_html_escapes_data():
    task = parse_task({"name": "t", "kind": "single_label", "text": "x", "label_column": "y",
                       "labels": ["a", "b"], "slices": ["src"]})
    texts = ["<script>alert(1)</script>", "fine", "<b>bold</b> | pipe"]
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    m = assemble(task, texts, ["b", "b", "a"], ["a", "b", "b"], probs, None, {"src": ["<i>x</i>", "y", "y"]})
    m.update({"method": "stub", "model": None, "data": "<data>", "docs_per_second": 1.0, "evaluated": "now"})
    html = render_html(task, m, {})
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;i&gt;x&lt;/i&gt;" in html
    md = render_markdown(task, m, {})
    assert "\\| pipe" in md  # a pipe in a cell would break the Markdown table


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (apt-get install chromium "
                    "fonts-nanum); the headless-browser check of report.html needs it")
def test_report_renders_in_headless_chromium(news_run, tmp_path):
    from PIL import Image

    shot = tmp_path / "report.png"
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1280,2000", (news_run / "report.html").resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert img.shape[:2] == (2000, 1280)
    ink = (img.sum(2) < 600).mean()  # anything clearly darker than white
    assert ink > 0.01, "the screenshot is blank"
    # the confusion heat map is the only strongly blue thing on the page: the data: image rendered
    blue = ((img[..., 2] - img[..., 0]) > 80).mean()
    assert blue > 0.002, "the embedded confusion-matrix image did not render"
    dom = subprocess.run(cmd[:-2] + ["--dump-dom", cmd[-1]], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<table") >= 6 and "Most confident mistakes" in dom


class InvalidScorer:
    """Wraps a real scorer and fails on texts that mention 'storm', like free generation would."""

    def __init__(self, inner):
        self.inner, self.last_invalid = inner, []

    def predict_proba(self, texts):
        self.last_invalid = ["storm" in t for t in texts]
        return self.inner.predict_proba(texts)


def test_invalid_outputs_are_reported_and_count_as_wrong(toy_tasks, tmp_path):
    spec = toy_tasks["single_label"]
    run = classifine.train(spec, method="tfidf", out=tmp_path / "run", progress=False)
    predictor = Predictor.load(run.dir)
    predictor.scorer = InvalidScorer(predictor.scorer)
    examples = load_examples(run.task, spec.parent / "test.csv")
    m = evaluate(predictor, examples, tmp_path / "eval", progress=False)
    bad = ["storm" in t for t in examples.texts]
    assert 0 < sum(bad) < len(bad)
    assert m["invalid_output"] == {"n": len(bad), "invalid": sum(bad), "rate": pytest.approx(sum(bad) / len(bad))}
    rows = rows_of(tmp_path / "eval")
    assert [r["invalid"] for r in rows] == bad
    assert all(r["pred"] == INVALID for r, b in zip(rows, bad) if b)
    assert m["correct"] == sum(r["gold"] == r["pred"] for r in rows if not r["invalid"])
    assert f"| invalid outputs | {cell(sum(bad), len(bad))} |" in (tmp_path / "eval" / "report.md").read_text()


def test_extraction_report_from_entity_predictions(toy_tasks, tmp_path):
    """Extraction has no trainable method yet: a stub predictor returns entities the way the
    generative predictor does (kept entities and those under min_confidence, separately)."""
    spec = parse_task({"name": "orgs", "kind": "extraction", "text": ["title", "body"], "label_column": "label",
                       "entity": "company", "min_confidence": 0.5, "normalize": ["casefold", "strip_suffixes"],
                       "slices": ["lang"]})
    examples = load_examples(spec, toy_tasks["extraction"].parent / "test.csv")
    gold_by_text = dict(zip(examples.texts, examples.labels))

    def predict_texts(texts):
        out = []
        for i, t in enumerate(texts):
            ents = [{"name": g.upper() + (" Inc." if k == 0 else ""), "confidence": 0.9} for k, g in enumerate(gold_by_text[t])]
            if i % 4 == 0:
                ents.append({"name": "Spurious Ltd", "confidence": 0.8})
            low = [{"name": "Umbrella", "confidence": 0.2}]
            out.append({"company": [e["name"] for e in ents], "entities": ents, "below_min_confidence": low})
        return out

    stub = SimpleNamespace(task=spec, decision={}, predict_texts=predict_texts,
                           run=SimpleNamespace(method="stub", config={"model": None}, dir=tmp_path))
    m = evaluate(stub, examples, tmp_path, progress=False)
    expected = M.extraction(examples.labels, [e["entities"] + e["below_min_confidence"] for e in predict_texts(examples.texts)],
                            0.5, ["casefold", "strip_suffixes"])
    for k in ("exact_match", "correct", "precision", "recall", "f1", "true_positives", "false_positives"):
        assert m[k] == expected[k], k
    # rows 0, 4, 8, ... got one spurious entity; every other row is right after normalisation
    assert m["correct"] == len(examples) - len(range(0, len(examples), 4))
    assert m["false_positives"] == len(range(0, len(examples), 4))
    assert set(m["slices"]["lang"]) == {"en", "ko"}
    assert all(x["confidence"] == 0.8 for x in m["mistakes"])
    report = (tmp_path / "report.md").read_text()
    assert f"| entity-set exact match | {cell(m['correct'], m['n'])} |" in report
    assert (tmp_path / "report.html").is_file() and not (tmp_path / "confusion.png").exists()


@pytest.mark.parametrize("kind", ["multi_label", "ordinal"])
def test_other_kinds_get_their_metrics_in_the_report(toy_tasks, tmp_path, kind):
    run = classifine.train(toy_tasks[kind], method="tfidf", out=tmp_path / "run", progress=False)
    m = json.loads((run.dir / "metrics.json").read_text())
    report = (run.dir / "report.md").read_text()
    rows = rows_of(run.dir)
    if kind == "multi_label":
        exact = sum(set(r["gold"]) == set(r["pred"]) for r in rows)
        assert f"| subset accuracy | {cell(exact, len(rows))} |" in report
        top1 = sum(bool(r["gold"]) and max(r["probabilities"], key=r["probabilities"].get) == r["gold"][0] for r in rows)
        assert f"| top-1 exact match | {cell(top1, len(rows))} |" in report
    else:
        mae = np.mean([abs(int(r["gold"]) - int(r["pred"])) for r in rows])
        assert m["mae"] == pytest.approx(mae)
        assert f"| MAE (scale steps) | {mae:.4f} |" in report and "binary F1 (≥ 4)" in report
    assert set(m["slices"]["lang"]) == {"en", "ko"}


def test_eval_cli_writes_elsewhere_and_keeps_the_run_report(news_run, tmp_path):
    before = (news_run / "metrics.json").read_text()
    other = tmp_path / "on-train"
    r = CliRunner().invoke(app, ["eval", str(news_run), "--data", str(NEWS.parent / "train.csv"), "--out", str(other),
                                 "--quiet", "--top", "3"])
    assert r.exit_code == 0, r.output
    m = json.loads((other / "metrics.json").read_text())
    assert m["n"] == 240 and len(m["mistakes"]) <= 3 and (other / "report.html").is_file()
    assert (news_run / "metrics.json").read_text() == before
    assert m["fingerprint"]["sha256"] != json.loads(before)["fingerprint"]["sha256"]


def test_fingerprint_depends_on_rows_not_on_the_run(news_run, tmp_path):
    again = evaluate_run(news_run, out_dir=tmp_path / "again", progress=False)
    first = json.loads((news_run / "metrics.json").read_text())
    assert again["fingerprint"] == first["fingerprint"]
    shuffled = tmp_path / "shuffled.csv"
    lines = (NEWS.parent / "test.csv").read_text(encoding="utf-8").splitlines()
    shuffled.write_text("\n".join([lines[0]] + lines[1:][::-1]) + "\n", encoding="utf-8")
    other = evaluate_run(news_run, data=shuffled, out_dir=tmp_path / "shuffled", progress=False)
    assert other["accuracy"] == pytest.approx(first["accuracy"])
    assert other["fingerprint"]["sha256"] != first["fingerprint"]["sha256"]


def test_eval_of_unfinished_run_is_a_message(tmp_path):
    (tmp_path / "half").mkdir()
    r = CliRunner().invoke(app, ["eval", str(tmp_path / "half")])
    assert r.exit_code == 2 and "not a complete run" in r.output and "Traceback" not in r.output
    shutil.rmtree(tmp_path / "half")


def test_slice_macro_f1_averages_the_labels_present_in_the_slice():
    task = parse_task({"name": "t", "kind": "single_label", "text": "x", "label_column": "y",
                       "labels": ["neg", "pos", "mixed"], "slices": ["rating"]})
    gold = ["neg", "neg", "neg", "neg", "pos", "pos"]
    pred = ["neg", "neg", "neg", "pos", "pos", "neg"]
    m = assemble(task, [f"t{i}" for i in range(6)], gold, pred, None, None, {"rating": ["1"] * 4 + ["10"] * 2})
    one = m["slices"]["rating"]["1"]
    # only 'neg' occurs in rating 1: precision 3/3, recall 3/4 -> F1 6/7; 'pos' (a false positive
    # there) and 'mixed' do not drag the average down
    assert (one["n"], one["correct"], one["macro_f1"]) == (4, 3, pytest.approx(6 / 7))
    ten = m["slices"]["rating"]["10"]
    assert (ten["n"], ten["correct"], ten["macro_f1"]) == (2, 1, pytest.approx(2 / 3))
    # the overall macro F1 keeps the task-wide convention (every label of the spec)
    assert m["macro_f1"] == pytest.approx(skm.f1_score(gold, pred, labels=["neg", "pos", "mixed"], average="macro",
                                                       zero_division=0))
    assert list(m["slices"]["rating"]) == ["1", "10"] and "calibration" not in m


def test_slice_columns_missing_from_the_data_are_named(news_run, tmp_path):
    stripped = tmp_path / "no-month.csv"
    with (NEWS.parent / "test.csv").open(encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = lines[0].split(",")
    assert header[-1] == "month"  # drop the last column of every row
    stripped.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n", encoding="utf-8")
    m = evaluate_run(news_run, data=stripped, out_dir=tmp_path / "out", progress=False)
    assert m["missing_slices"] == ["month"] and list(m["slices"]) == ["lang"]
    assert "missing from the data: month" in (tmp_path / "out" / "report.md").read_text()
