"""``--method auto --budget``: tries within a budget, chosen on validation only."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

import classifine
from classifine import auto as auto_mod
from classifine.auto import parse_budget, plan
from classifine.cli import app
from classifine.core.runs import Run
from classifine.core.task import load_task
from classifine.errors import ConfigError


@pytest.mark.parametrize("text,seconds", [("30m", 1800), ("90s", 90), ("1h30m", 5400), ("2h", 7200), ("45", 2700),
                                          ("1.5m", 90), (10, 600)])
def test_parse_budget(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["soon", "30 minutes", "-5m", "0", "m", "", "1d"])
def test_parse_budget_refuses_what_is_not_a_duration(text):
    with pytest.raises(ConfigError, match="budget"):
        parse_budget(text)


def test_auto_keeps_the_best_try_and_writes_the_leaderboard(toy_tasks, tmp_path, bert_path):
    out = tmp_path / "auto"
    run = classifine.train(toy_tasks["single_label"], method="auto", out=out, budget="5m", model=bert_path, progress=False)
    board = json.loads((out / "leaderboard.json").read_text())
    done = [t for t in board["tries"] if t["status"] == "done"]
    assert {t["method"] for t in done} == {"tfidf", "hybrid", "head"}
    for t in done:
        assert t["validation"]["macro_f1"] is not None and t["train_seconds"] is not None
        assert t["docs_per_second"] > 0 and t["model_bytes"] > 0 and t["rows"] > 0
    best = max(done, key=lambda t: (t["validation"]["macro_f1"], t["docs_per_second"]))
    assert board["chosen"] == best["name"]
    assert run.config["method"] == best["method"]
    assert run.config["auto"]["chosen"] == best["name"] and run.config["auto"]["elapsed_seconds"] <= 5 * 60 * 1.1
    assert "(chosen)" in (out / "leaderboard.md").read_text()
    # the chosen try is the run itself: checked by its manifest, evaluated on the test data, predicting
    Run.load(out)
    assert json.loads((out / "metrics.json").read_text())["n"] == 30
    assert load_task(out / "task.yaml").data.test  # `classifine eval RUN` finds the test data again
    pred = classifine.load(out).predict([{"title": "goal match", "body": "striker league"}])[0]
    assert pred["label"] in run.task.label_names
    assert (out / "tries").is_dir() and not (out / "tries" / auto_mod._slug(best["name"])).exists()


def test_auto_never_reads_test_data_before_choosing(toy_tasks, tmp_path, bert_path, monkeypatch):
    events = []
    for module in (auto_mod, classifine.training):
        real = module.load_examples

        def spy(task, path, *a, _real=real, **k):
            events.append(("read", str(path)))
            return _real(task, path, *a, **k)
        monkeypatch.setattr(module, "load_examples", spy)
    real_choose = auto_mod.choose_engine
    monkeypatch.setattr(auto_mod, "choose_engine", lambda *a, **k: (events.append(("chosen", "")), real_choose(*a, **k))[1])
    spec = toy_tasks["single_label"]
    test_file = str(load_task(spec).data_path("test"))
    classifine.train(spec, method="auto", out=tmp_path / "a", budget="5m", model=bert_path, progress=False)
    reads = [p for e, p in events if e == "read"]
    chosen_at = events.index(("chosen", ""))
    assert test_file not in [p for e, p in events[:chosen_at] if e == "read"], "a try read the test data"
    assert reads.count(test_file) == 1  # once, for the final evaluation


def test_the_budget_stops_tries_that_cannot_finish(toy_tasks, tmp_path, bert_path, monkeypatch):
    class SlowProbe:  # as if the model embedded half a text per second on this machine
        def __init__(self, *a, **k):
            self.docs_per_second, self.load_seconds, self.engine = 0.5, 1.0, "torch"

    monkeypatch.setattr(auto_mod, "Probe", SlowProbe)
    out = tmp_path / "a"
    run = classifine.train(toy_tasks["single_label"], method="auto", out=out, budget="60s", model=bert_path, progress=False)
    board = json.loads((out / "leaderboard.json").read_text())
    status = {t["method"]: t for t in board["tries"]}
    assert status["tfidf"]["status"] == "done"
    for m in ("hybrid", "head"):
        assert status[m]["status"] == "skipped" and "needs about" in status[m]["reason"]
        assert status[m]["train_seconds"] is None, "a skipped try was started"
    assert run.config["method"] == "tfidf"


def test_a_budget_too_small_for_any_try_is_refused_before_writing(toy_tasks, tmp_path):
    with pytest.raises(ConfigError, match="too small") as e:
        classifine.train(toy_tasks["single_label"], method="auto", out=tmp_path / "a", budget="0.01s", progress=False)
    assert "smallest try (tfidf" in str(e.value) and "--budget" in str(e.value)
    assert not (tmp_path / "a").exists()


def test_plan_skips_methods_that_refuse_the_kind(toy_tasks):
    task = load_task(toy_tasks["single_label"])
    tries = plan(task.model_copy(update={"kind": "extraction"}), ["m"])
    assert all(t.status == "skipped" and t.reason for t in tries)
    assert [t.method for t in plan(task, ["a", "b"])] == ["tfidf", "hybrid", "hybrid", "head", "head"]


def test_a_decoders_hybrid_tunes_its_top_layers_and_costs_more_per_row(toy_tasks, gemma_path, bert_path):
    task = load_task(toy_tasks["single_label"])
    tries = {t.name.split(":")[0] + (":dec" if t.model == gemma_path else ""): t for t in plan(task, [gemma_path, bert_path])}
    assert tries["hybrid:dec"].config["embed"]["tune_layers"] == auto_mod.TUNE_LAYERS
    assert "tune_layers" not in tries["hybrid"].config["embed"]
    probe = SimpleNamespace(docs_per_second=40.0, load_seconds=5.0)
    tuned = auto_mod.estimate(tries["hybrid:dec"], 10_000, 1_000, probe, 1.0)
    frozen = auto_mod.estimate(tries["hybrid"], 10_000, 1_000, probe, 1.0)
    assert 1.5 * frozen < tuned < 3 * frozen


def test_default_models_follow_the_script():
    assert auto_mod.default_models(["The market rallied on strong earnings"] * 5) == ["minilm-l6", "gemma-3-270m"]
    assert auto_mod.default_models(["영화가 정말 재미있었다"] * 5) == ["gemma-3-270m"]


def test_cli_auto_bad_input(toy_tasks, tmp_path):
    runner = CliRunner()
    spec = str(toy_tasks["single_label"])
    r = runner.invoke(app, ["train", spec, "--method", "auto", "--budget", "soon", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "not a duration" in r.output and "30m" in r.output
    r = runner.invoke(app, ["train", spec, "--method", "tfidf", "--budget", "5m", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "--method auto only" in r.output
    r = runner.invoke(app, ["train", spec, "--method", "auto", "--set", "C=2", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "auto chooses the settings" in r.output
    assert not any((tmp_path / d).exists() for d in "abc")


def test_max_train_seconds_stops_the_trainer_and_keeps_a_checkpoint(toy_tasks, tmp_path, bert_path):
    config = {"epochs": 50, "batch_size": 4, "learning_rate": 1e-3, "max_train_seconds": 3, "logging_steps": 5}
    run = classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=tmp_path / "h", config=config,
                           progress=False)
    state = json.loads(next((tmp_path / "h" / "checkpoints").glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["epoch"] < 50, "training ran to the end despite the time limit"
    assert run.config["info"]["best_checkpoint"]


def test_a_finished_hybrid_corrects_the_model_estimate():
    probe = object.__new__(auto_mod.Probe)
    probe.docs_per_second, probe.load_seconds = 5.0, 80.0  # a slow first probe, export included
    t = auto_mod.Try("hybrid:m", "hybrid", "m", rows=1000, status="done", train_seconds=115.0)
    probe.learn(t, 500)
    assert probe.docs_per_second == pytest.approx(1500 / 100) and probe.load_seconds == 15.0
    before = probe.docs_per_second
    probe.learn(auto_mod.Try("head:m", "head", "m", rows=10, status="done", train_seconds=500.0), 500)
    assert probe.docs_per_second == before  # a head try's time is training, not embedding


def test_a_try_that_cannot_run_holds_back_no_share(toy_tasks, tmp_path, bert_path, monkeypatch):
    """A head try whose 200-row minimum could never fit leaves its share to the hybrid before it."""
    class Probe:
        def __init__(self, *a, **k):
            # all 540 training rows fit the budget left, not the two-thirds a head try would hold back
            self.docs_per_second, self.load_seconds, self.engine = 7.0, 1.0, "torch"

        def learn(self, t, n_val):
            pass

    from toy import write_task

    monkeypatch.setattr(auto_mod, "Probe", Probe)
    monkeypatch.setattr(auto_mod, "TRAIN_COST", 1e4)  # training costs 10,000 passes per row: never fits
    spec = write_task(tmp_path / "t", "single_label", n_train=600, n_test=10)
    run = classifine.train(spec, method="auto", out=tmp_path / "a", budget="3m", model=bert_path, progress=False)
    board = {t["method"]: t for t in json.loads((tmp_path / "a" / "leaderboard.json").read_text())["tries"]}
    assert board["head"]["status"] == "skipped"
    assert board["hybrid"]["rows"] == run.config["auto"]["train_rows"]  # the whole share, so every row
    assert auto_mod.could_run(auto_mod.Try("head:m", "head", "m"), 1e9, Probe(), 1000, 100)
    assert not auto_mod.could_run(auto_mod.Try("head:m", "head", "m"), 60, Probe(), 1000, 100)
