"""sft, orpo and pretrain end to end with a tiny Gemma 3 built in the test."""
from __future__ import annotations

import json

import numpy as np
import pytest

import classifine
from classifine.errors import ConfigError

from toy import QUICK


def _check_run(out, kind, labels):
    assert (out / "metrics.json").is_file() and (out / "model" / "generative.json").is_file()
    rec = classifine.load(out).predict([{"title": "goal match", "body": "Acme Corp storm"}])[0]
    if kind == "extraction":
        assert isinstance(rec["company"], list) and all(e["confidence"] >= 0.5 for e in rec["entities"])
        return rec
    p = np.array(list(rec["probabilities"].values()))
    assert list(rec["probabilities"]) == labels and ((p > 0) & (p < 1)).all()
    if kind != "multi_label":
        assert rec["label"] in labels and p.sum() == pytest.approx(1, abs=1e-4)
    return rec


@pytest.mark.parametrize("kind", ["single_label", "multi_label", "ordinal", "extraction"])
def test_sft_every_kind(small_tasks, tmp_path, gemma_path, kind):
    out = tmp_path / "run"
    config = {**QUICK, "max_length": 384} if kind == "extraction" else QUICK  # byte-level toy tokens are many
    run = classifine.train(small_tasks[kind], method="sft", model=gemma_path, out=out, config=config, progress=False)
    _check_run(out, kind, run.task.label_names)
    meta = json.loads((out / "model" / "generative.json").read_text())
    assert meta["base_model"] == gemma_path and (out / "model" / "adapter_config.json").is_file()
    if kind != "extraction":
        decision = json.loads((out / "model" / "decision.json").read_text())
        assert (meta["temperature"] if kind == "multi_label" else decision["temperature"]) > 0


def test_sft_lora_weights_change_and_merge_loads_without_peft(small_tasks, tmp_path, gemma_path):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    classifine.train(small_tasks["single_label"], method="sft", model=gemma_path, out=out,
                     config={**QUICK, "merge": True, "lora_r": 4}, progress=False)
    adapter = load_file(str(out / "model" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: non-zero means it trained
    import subprocess
    import sys

    code = ("import sys, torch\nfrom transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(out / 'model' / 'merged')!r})\n"
            "assert 'peft' not in sys.modules and next(m.parameters()).dtype == torch.bfloat16\nprint('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-1500:]


def test_generate_decoding_counts_invalid_answers(small_tasks, tmp_path, gemma_path):
    out = tmp_path / "run"
    classifine.train(small_tasks["single_label"], method="sft", model=gemma_path, out=out,
                     config={**QUICK, "max_steps": 2, "decoding": "generate", "max_new_tokens": 4}, progress=False)
    preds = classifine.load(out).predict([{"title": "goal", "body": "match"}] * 3)
    # an untrained tiny model answers gibberish: flagged invalid, never passed off as a label
    for rec in preds:
        if rec.get("invalid"):
            assert len(set(rec["probabilities"].values())) == 1
        else:
            assert max(rec["probabilities"].values()) == 1.0
    assert any(r.get("invalid") for r in preds)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CUDA GPU is present: QLoRA is allowed there")
def test_qlora_is_refused_without_cuda(small_tasks, tmp_path, gemma_path):
    with pytest.raises(ConfigError, match="CUDA"):
        classifine.train(small_tasks["single_label"], method="sft", model=gemma_path, out=tmp_path / "r",
                         config={**QUICK, "load_in_4bit": True}, progress=False)


@pytest.mark.parametrize("kind", ["single_label", "multi_label", "extraction"])
def test_orpo(small_tasks, tmp_path, gemma_path, kind):
    out = tmp_path / "run"
    cfg = {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "eval_rows": 8, "max_length": 384 if kind == "extraction" else 128}
    if kind == "single_label":  # a multi-task run: the ordinal task is trained into the same model
        cfg["tasks"] = [str(small_tasks["ordinal"])]
    run = classifine.train(small_tasks[kind], method="orpo", model=gemma_path, out=out, config=cfg, progress=False)
    info = run.config["info"]
    assert 0.0 <= info["rejected_from_own_answers"] <= 1.0 and info["steps"] > 0
    if kind == "single_label":
        assert set(info["pairs"]) == {"toy-single_label", "toy-ordinal"}
        assert (out / "tasks" / "toy-ordinal.yaml").is_file()
    _check_run(out, kind, run.task.label_names)


def test_orpo_pairs_use_the_models_own_wrong_answers(small_tasks, gemma_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from classifine.core.data import load_examples
    from classifine.methods.orpo import Config, build_pairs
    from classifine.generative.prompts import PromptFormat
    from classifine.core.task import load_task

    task = load_task(small_tasks["single_label"])
    ex = load_examples(task, task.data_path("train"))
    tok = AutoTokenizer.from_pretrained(gemma_path)
    rows = build_pairs(task, ex, PromptFormat.for_tokenizer(tok), AutoModelForCausalLM.from_pretrained(gemma_path), tok, Config(max_length=256))
    assert len(rows) == len(ex)
    for row, gold in zip(rows, ex.labels):
        assert row["chosen"].startswith(gold) and not row["rejected"].startswith(gold + "<")
    assert any(r["own"] for r in rows), "an untrained model is wrong often: some rejections are its own answers"
    from classifine.generative.trainer import example_weights

    weights = example_weights(task, ex, "balanced")  # drawn by the sampler: TRL's ORPO loss takes no weights
    assert [r["draw"] for r in rows] == [weights[g] for g in ex.labels] and len(set(weights.values())) > 1


def test_extraction_answers_with_and_without_entities_are_drawn_equally(small_tasks, gemma_path):
    from transformers import AutoTokenizer

    from classifine.core.data import load_examples
    from classifine.core.task import load_task
    from classifine.generative.prompts import PromptFormat
    from classifine.generative.trainer import example_weights, training_features
    from classifine.methods.sft import Config

    task = load_task(small_tasks["extraction"])
    ex = load_examples(task, task.data_path("train"))
    empty = sum(1 for y in ex.labels if not y)
    assert 0 < empty < len(ex) and empty != len(ex) - empty
    w = example_weights(task, ex, "balanced")
    assert w["none"] * empty == pytest.approx(w["entities"] * (len(ex) - empty))  # equal total weight
    assert example_weights(task, ex, "none") == {"entities": 1.0, "none": 1.0}
    fmt = PromptFormat.for_tokenizer(AutoTokenizer.from_pretrained(gemma_path))
    feats, _ = training_features(task, fmt, ex, Config(max_length=384, answer_budget=40))
    assert [f["draw"] for f in feats] == [w["entities" if y else "none"] for y in ex.labels]


def test_pretrain_then_sft(small_tasks, tmp_path):
    out = tmp_path / "run"
    run = classifine.train(small_tasks["single_label"], method="pretrain", out=out, progress=False,
                           config={"vocab_size": 350, "hidden_size": 32, "layers": 2, "heads": 2, "block_size": 32,
                                   "pretrain_epochs": 2, "sft": {"epochs": 1, "eval_rows": 8, "max_length": 128}})
    info = run.config["info"]["pretrain"]
    assert info["parameters"] > 0 and info["validation_perplexity"] > 1 and info["vocab_size"] <= 350
    meta = json.loads((out / "model" / "generative.json").read_text())
    assert meta["base_model"].endswith("model/pretrained")
    _check_run(out, "single_label", run.task.label_names)


def test_pretrain_refuses_a_too_short_sft_max_length_before_pretraining(small_tasks, tmp_path):
    from classifine.errors import ConfigError

    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="leaves no room"):
        classifine.train(small_tasks["single_label"], method="pretrain", out=out, progress=False,
                         config={"vocab_size": 350, "hidden_size": 32, "layers": 2, "heads": 2, "block_size": 32,
                                 "sft": {"max_length": 24}})
    pretrained = out / "model" / "pretrained"
    assert (pretrained / "tokenizer.json").is_file() and not (pretrained / "model.safetensors").exists()


def test_class_balanced_sampler_draws_classes_evenly_without_repeating_frequent_examples():
    from collections import Counter

    from classifine.generative.trainer import ClassBalancedSampler, balanced_sampler
    from classifine.scoring.decision import class_weights

    labels = ["common"] * 90 + ["rare"] * 10
    w = class_weights(["common", "rare"], Counter(labels), "balanced")
    sampler = ClassBalancedSampler([w[y] for y in labels], seed=3)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        assert len(epoch) == len(sampler) == 100
        counts = Counter(epoch)
        assert sum(c for i, c in counts.items() if labels[i] == "rare") == 50   # 10 rows x 5 each
        assert max(c for i, c in counts.items() if labels[i] == "common") == 1  # thinned, never repeated
    assert first != second and list(ClassBalancedSampler([w[y] for y in labels], seed=3)) == first
    assert balanced_sampler([1.0] * 5, seed=3) is None  # equal weights: the Trainer's own shuffling


def test_sft_class_weights_act_by_sampling_so_a_rare_class_fills_a_third_of_the_batches(small_tasks, gemma_path, tmp_path):
    from classifine.core.data import load_examples
    from classifine.generative.causal_lm import load_causal_lm
    from classifine.generative.trainer import make_trainer, training_features
    from classifine.methods.sft import Config
    from classifine.generative.prompts import PromptFormat
    from classifine.core.task import load_task

    task = load_task(small_tasks["single_label"])
    ex = load_examples(task, task.data_path("train"))
    rare = task.label_names[-1]
    keep = [i for i, y in enumerate(ex.labels) if y != rare] + [i for i, y in enumerate(ex.labels) if y == rare][:2]
    train = ex.subset(keep)
    tok, net = load_causal_lm(gemma_path, Config(lora_r=2))
    fmt = PromptFormat.for_tokenizer(tok)
    rare_answer = fmt.ids(fmt.answer(task, rare))
    seen = {}
    for balance_by in ("sampling", "loss"):
        config = Config(**{**QUICK, "balance_by": balance_by})
        feats, _ = training_features(task, fmt, train, config)
        trainer = make_trainer(task, net, tok, feats, ex, config, tmp_path / balance_by, progress=False)
        n = hits = 0
        for _ in range(10):  # ten epochs of the Trainer's own dataloader
            for batch in trainer.get_train_dataloader():
                ids = batch["input_ids"].tolist()
                hits += sum(row[-len(rare_answer):] == rare_answer for row in ids)
                n += len(ids)
                assert batch["weights"].tolist() == [1.0] * len(ids) or balance_by == "loss"
        seen[balance_by] = hits / n
    k = len(task.label_names)
    assert abs(seen["sampling"] - 1 / k) < 0.08       # drawn as often as the other classes
    assert seen["loss"] == pytest.approx(2 / len(train), abs=1e-9)  # seen once per epoch, weighted in the loss


def test_zero_shot_is_a_method_and_older_zero_shot_runs_still_load(small_tasks, gemma_path, tmp_path):
    import shutil

    import yaml

    from classifine.core.runs import Run
    from classifine.training import zero_shot

    base = tmp_path / "base"
    m = zero_shot(small_tasks["single_label"], gemma_path, base, progress=False)
    run = Run.load(base)
    assert run.method == "zeroshot" and m["n"] == 8 and m["invalid_output"]["rate"] == 0.0
    assert "train" not in run.config["data"] and not (base / "model" / "decision.json").exists(), "nothing trained or tuned"
    assert sorted(p.name for p in (base / "model").iterdir()) == ["generative.json"], "no weights: it names its base model"
    records = [{"title": "goal match", "body": "striker"}, {"title": "rain", "body": "storm wind"}]
    expected = classifine.load(base).predict(records)
    # the layout written before zero-shot became a method: method "sft", the meta file alone
    old = tmp_path / "old"
    shutil.copytree(base, old)
    (old / "manifest.json").unlink()  # runs of that layout predate the manifest
    config = yaml.safe_load((old / "config.yaml").read_text())
    config.update({"method": "sft", "config": {"zero_shot": True, "decoding": "score"}, "info": {"zero_shot": True}})
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    (old / "model" / "generative.json").write_text(json.dumps({
        "kind": "single_label", "labels": run.task.label_names, "base_model": gemma_path, "zero_shot": True,
        "max_length": 512, "decoding": "score", "max_new_tokens": 24, "score_batch_size": 8, "temperature": 1.0}))
    got = classifine.load(old).predict(records)
    # that run scored the answers' closing tokens when it was written, and still does; new runs don't
    assert json.loads((base / "model" / "generative.json").read_text())["score_answer_end"] is False
    assert [r["label"] for r in got] == [r["label"] for r in expected] and got != expected
    assert all(abs(a["probabilities"][k] - b["probabilities"][k]) < 0.01 for a, b in zip(got, expected) for k in a["probabilities"])
