"""compare and leaderboard: the tables agree with each run's metrics.json, differences are in
percentage points, and runs evaluated on different rows are refused unless aligned."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import classifine
from classifine.cli import app
from classifine.evaluation.compare import compare, leaderboard, model_size, to_markdown
from classifine.errors import RunError
from classifine.evaluation.multitask import evaluate_run

ROOT = Path(__file__).resolve().parents[1]
NEWS = ROOT / "examples" / "news_category" / "task.yaml"
TEST = NEWS.parent / "test.csv"
SMALL = {"ngram_min": 2, "ngram_max": 3, "max_features": 5000, "C": 2.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, settings in {"word": {"analyzer": "word", "ngram_max": 1}, "char": SMALL}.items():
        out[name] = classifine.train(NEWS, method="tfidf", out=base / name, config=settings, progress=False).dir
    return out


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def cell(c: int, n: int) -> str:
    return f"{100 * c / n:.2f}% ({c}/{n})"


def row(section: dict, label: str) -> list[str]:
    found = [r for r in section["rows"] if r[0] == label]
    assert len(found) == 1, (label, [r[0] for r in section["rows"]])
    return found[0]


def section(result: dict, title: str) -> dict:
    return next(s for s in result["sections"] if s["title"] == title)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def test_comparison_numbers_equal_each_runs_metrics(runs):
    a, b = metrics(runs["word"]), metrics(runs["char"])
    result = compare([runs["word"], runs["char"]])
    overall = section(result, "Overall")
    assert overall["headers"] == ["", "word", "char", "Δ"]
    assert row(overall, "accuracy") == ["accuracy", cell(a["correct"], a["n"]), cell(b["correct"], b["n"]),
                                        f"{100 * (b['accuracy'] - a['accuracy']):+.2f} pp"]
    assert row(overall, "macro F1")[3] == f"{100 * (b['macro_f1'] - a['macro_f1']):+.2f} pp"
    for col in ("lang", "month"):
        s = section(result, f"Accuracy by {col}")
        for value, sa in a["slices"][col].items():
            sb = b["slices"][col][value]
            assert row(s, f"{col} = {value}")[1:] == [cell(sa["correct"], sa["n"]), cell(sb["correct"], sb["n"]),
                                                       f"{100 * (sb['accuracy'] - sa['accuracy']):+.2f} pp"]
    sub_a, sub_b = a["subsets"]["economic"], b["subsets"]["economic"]
    assert row(section(result, "Subsets"), "economic: recall")[1:3] == [cell(sub_a["found"], sub_a["relevant"]),
                                                                         cell(sub_b["found"], sub_b["relevant"])]
    per_class = section(result, "F1 per class")
    for lab, pc in a["per_class"].items():
        assert row(per_class, f"{lab} (n={pc['support']})")[1] == f"{100 * pc['f1']:.2f}%"
    md = to_markdown(result)
    assert "| accuracy | " + cell(a["correct"], a["n"]) in md and "same in every run" in md


def test_three_runs_get_a_delta_column_each(runs, tmp_path):
    third = shutil.copytree(runs["char"], tmp_path / "char-copy")
    result = compare([runs["word"], runs["char"], third])
    overall = section(result, "Overall")
    assert overall["headers"] == ["", "word", "char", "Δ char − word", "char-copy", "Δ char-copy − word"]
    assert row(overall, "accuracy")[3] == row(overall, "accuracy")[5]


def test_refuses_runs_evaluated_on_different_data(runs, tmp_path):
    other = shutil.copytree(runs["char"], tmp_path / "char-on-train")
    evaluate_run(other, data=NEWS.parent / "train.csv", progress=False)
    with pytest.raises(RunError) as e:
        compare([runs["word"], other])
    text = e.value.render()
    assert "refusing to compare" in text and "--align-on" in text and "train.csv" in text
    r = CliRunner().invoke(app, ["compare", str(runs["word"]), str(other)])
    assert r.exit_code == 2 and "refusing to compare" in r.output and "Traceback" not in r.output


def test_align_on_an_id_column_compares_the_shared_rows(runs, tmp_path):
    with TEST.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    part = write_csv(tmp_path / "part.csv", rows[::-1][:70])  # other order, fewer rows
    other = shutil.copytree(runs["char"], tmp_path / "char-part")
    evaluate_run(other, data=part, progress=False)
    with pytest.raises(RunError, match="refusing"):
        compare([runs["word"], other])
    result = compare([runs["word"], other], align_on="id")
    assert result["alignment"] == {"rows": 70, "aligned_on": "id", "dropped": {"word": 50, "char-part": 0}}
    # the base run's accuracy on exactly those 70 rows, counted from its predictions.jsonl
    keep = {r["id"] for r in rows[::-1][:70]}
    preds = [json.loads(x) for x in (runs["word"] / "predictions.jsonl").read_text().splitlines()]
    hits = sum(p["gold"] == p["pred"] for p in preds if p["id"] in keep)
    assert row(section(result, "Overall"), "accuracy")[1] == cell(hits, 70)
    assert "70 shared rows" in to_markdown(result)


def test_align_on_refuses_missing_column_duplicates_and_label_conflicts(runs, tmp_path):
    with pytest.raises(RunError, match="no column 'nope'"):
        compare([runs["word"], runs["char"]], align_on="nope")
    with pytest.raises(RunError, match="duplicate"):
        compare([runs["word"], runs["char"]], align_on="lang")
    with TEST.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    relabelled = [dict(r, category="non_economic" if r["category"] == "economic" else r["category"]) for r in rows]
    other = shutil.copytree(runs["char"], tmp_path / "char-relabelled")
    evaluate_run(other, data=write_csv(tmp_path / "relabelled.csv", relabelled), progress=False)
    with pytest.raises(RunError, match="different reference labels"):
        compare([runs["word"], other], align_on="id")
    with pytest.raises(RunError) as e:  # without alignment the message says what differs
        compare([runs["word"], other])
    assert "reference labels differ" in e.value.summary


def test_refuses_different_tasks_and_unevaluated_runs(runs, toy_tasks, tmp_path):
    toy = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "toy", progress=False).dir
    with pytest.raises(RunError, match="different tasks"):
        compare([runs["word"], toy])
    bare = shutil.copytree(runs["char"], tmp_path / "bare")
    (bare / "metrics.json").unlink()
    with pytest.raises(RunError) as e:
        compare([runs["word"], bare, tmp_path / "missing"])
    assert len(e.value.problems) == 2 and "classifine eval" in e.value.render()
    with pytest.raises(RunError, match="at least two"):
        compare([runs["word"]])


def test_leaderboard_ranks_by_macro_f1_with_costs(runs, tmp_path):
    board = leaderboard([runs["word"], runs["char"]])
    order = sorted(runs, key=lambda k: -metrics(runs[k])["macro_f1"])
    assert [r["run"] for r in board["rows"]] == order
    table = board["sections"][0]
    assert table["headers"][4:] == ["accuracy", "macro F1", "train time", "docs/s", "model size"]
    for r, line in zip(board["rows"], table["rows"]):
        run = runs[r["run"]]
        m = metrics(run)
        config = classifine.core.runs.Run.load(run).config
        assert line[4] == cell(m["correct"], m["n"]) and line[5] == f"{100 * m['macro_f1']:.2f}%"
        assert r["train_seconds"] == config["train_seconds"] and r["docs_per_second"] == m["docs_per_second"]
        assert r["model_bytes"] == sum(p.stat().st_size for p in (run / "model").rglob("*") if p.is_file()) > 0
    assert model_size(classifine.core.runs.Run.load(runs["char"])) == board["rows"][order.index("char")]["model_bytes"]


def test_leaderboard_command_scans_a_folder_and_skips_unevaluated(runs, tmp_path):
    folder = tmp_path / "all"
    folder.mkdir()
    for name, run in runs.items():
        shutil.copytree(run, folder / name)
    shutil.copytree(runs["char"], folder / "unevaluated")
    (folder / "unevaluated" / "metrics.json").unlink()
    (folder / "notes").mkdir()
    out = tmp_path / "board.md"
    r = CliRunner().invoke(app, ["leaderboard", str(folder), "--output", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text()
    assert "| 1 |" in text and "| 2 |" in text and "| 3 |" not in text
    assert "unevaluated: not evaluated" in text and "notes: not a run" in text
    r = CliRunner().invoke(app, ["compare", "--leaderboard", str(folder / "word"), str(folder / "char"), "--json"])
    assert r.exit_code == 0 and [x["run"] for x in json.loads(r.output)["rows"]] == [x["run"] for x in leaderboard([folder])["rows"]]


def test_leaderboard_refuses_mixed_data(runs, tmp_path):
    other = shutil.copytree(runs["char"], tmp_path / "char-on-train")
    evaluate_run(other, data=NEWS.parent / "train.csv", progress=False)
    with pytest.raises(RunError, match="different data"):
        leaderboard([runs["word"], other])
    r = CliRunner().invoke(app, ["compare", "--leaderboard", "--align-on", "id", str(runs["word"]), str(other)])
    assert r.exit_code == 2 and "does not apply" in r.output


def test_compare_cli_writes_markdown(runs, tmp_path):
    out = tmp_path / "cmp.md"
    r = CliRunner().invoke(app, ["compare", str(runs["word"]), str(runs["char"]), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert out.read_text() == to_markdown(compare([runs["word"], runs["char"]]))
