"""Benchmarks of the generative methods on this CPU (results: bench/results/generative.json; the
tables go into BENCHMARKS.md). Each phase runs in its own process so its peak memory is its own.

    python bench/generative.py matmul                       # fp32 matmul rate: the efficiency ceiling
    python bench/generative.py step                         # sft step time at batch 8 x 128 on Gemma 3 270M
    python bench/generative.py step-vs-trl [--no-checkpointing]   # the same step: ours vs TRL's SFTTrainer, alternating
    python bench/generative.py train ko_hate_speech_kocohub --train-rows 1200
    python bench/generative.py train id_multilabel_hate_abusive --train-rows 1500 --validation-rows 600
    python bench/generative.py decode ko_hate_speech_kocohub --rows 500
    python bench/generative.py offsets id_multilabel_hate_abusive   # the test predictions without class offsets
    python bench/generative.py train ko_nsmc_sentiment --method pretrain --train-rows 20000 --test-rows 1000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "bench" / "results" / "generative.json"
TASKS = {"ko_hate_speech_kocohub": "ko_hate_speech_kocohub.yaml", "id_multilabel_hate_abusive": "id_hate_3class.yaml",
         "en_finentity_companies": "en_finentity.yaml", "ko_nsmc_sentiment": "ko_nsmc_sentiment.yaml"}
SFT = {"epochs": 1, "batch_size": 8, "max_length": 128, "learning_rate": 2e-4, "eval_rows": 150, "logging_steps": 25}


def peak_rss_mib() -> int:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def record(key: str, value: dict) -> None:
    value = {**value, "peak_rss_mib": peak_rss_mib(), "load_average": round(os.getloadavg()[0], 2),
             "when": time.strftime("%Y-%m-%d %H:%M")}
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    print(json.dumps({key: value}, ensure_ascii=False), flush=True)


def matmul() -> None:
    import torch

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for _ in range(3):
        a @ b
    n, t = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    sec = (time.perf_counter() - t) / n
    record("matmul_fp32_2048", {"seconds": round(sec, 4), "gflops": round(2 * 2048 ** 3 / sec / 1e9, 1),
                                "threads": torch.get_num_threads()})


def _fake_batch(B: int = 8, T: int = 128, A: int = 6):
    """B sequences of T random tokens whose last A tokens are the answer (a label or a short JSON)."""
    import torch

    torch.manual_seed(0)
    ids = torch.randint(1000, 200000, (B, T))
    labels = torch.full_like(ids, -100)
    labels[:, -A:] = ids[:, -A:]
    return ids, labels


def step(full_logits: bool) -> None:
    import torch

    from classifine.generative.causal_lm import load_causal_lm
    from classifine.generative.trainer import answer_loss
    from classifine.methods.sft import Config

    tok, net = load_causal_lm("gemma-3-270m", Config())
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    ids, labels = _fake_batch()
    (B, T), A = ids.shape, int((labels[0] != -100).sum())
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
             "position_ids": torch.arange(T).repeat(B, 1), "weights": torch.ones(B),
             "logits_to_keep": 0 if full_logits else A + 1}
    times = []
    for i in range(6):
        t = time.perf_counter()
        loss, _ = answer_loss(net, dict(batch))
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 1:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t)
    sec = sum(times) / len(times)
    base = net.get_base_model()
    emb = base.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in base.parameters()) - emb  # the tied LM head is counted below
    positions = B * T if full_logits else B * (A + 1)
    # forward 2N + backward w.r.t. activations 2N per token (frozen weights get no weight gradient)
    flops = 4 * body * B * T + 4 * emb * positions
    record(f"sft_step_gemma270m_b8x128_{'full_logits' if full_logits else 'answer_positions'}",
           {"seconds_per_step": round(sec, 3), "tokens_per_second": round(B * T / sec, 1),
            "model_gflop_per_step": round(flops / 1e9, 1), "achieved_gflops": round(flops / sec / 1e9, 1)})


def step_vs_trl(steps: int = 5, checkpointing: bool = True) -> None:
    """One sft step of ours (answer_loss) against TRL's SFTTrainer on the same batch, same LoRA
    model, same optimizer, alternating so that machine noise hits both alike. TRL >= 1.4 projects
    only the loss positions through the LM head (its fused LM head), as ours does. SFTConfig turns
    gradient checkpointing on by default; ``checkpointing=False`` measures TRL without it (ours
    never checkpoints unless asked)."""
    import tempfile

    import torch
    import trl
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from classifine.generative.causal_lm import load_causal_lm
    from classifine.generative.trainer import answer_loss
    from classifine.methods.sft import Config

    tok, net = load_causal_lm("gemma-3-270m", Config())
    ids, labels = _fake_batch()
    (B, T), A = ids.shape, int((labels[0] != -100).sum())
    ours = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels,
            "position_ids": torch.arange(T).repeat(B, 1), "weights": torch.ones(B), "logits_to_keep": A + 1}
    rows = [{"input_ids": r, "completion_mask": [0] * (T - A) + [1] * A} for r in ids.tolist()]
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, per_device_train_batch_size=B, max_length=T, completion_only_loss=True,
                         bf16=False, use_cpu=True, report_to="none", gradient_checkpointing=checkpointing)
        trainer = SFTTrainer(model=net, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(B)])
        assert int((theirs["labels"] != -100).sum()) == B * A, "TRL scores the same answer tokens"
        net.train()
        with torch.no_grad():  # the same loss on the same batch before any step: equal answers weigh alike
            first = {"ours": round(float(answer_loss(net, dict(ours))[0]), 4),
                     "trl": round(float(trainer.compute_loss(net, dict(theirs))), 4)}
        opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
        run = {"ours": lambda: answer_loss(net, dict(ours))[0],
               "trl": lambda: trainer.compute_loss(net, dict(theirs))}
        times: dict[str, list[float]] = {k: [] for k in run}
        for i in range(steps + 1):
            for name, fn in run.items():
                t = time.perf_counter()
                loss = fn()
                loss.backward()
                opt.step()
                opt.zero_grad()
                if i:  # the first round warms up allocators and kernels
                    times[name].append(time.perf_counter() - t)
    sec = {k: round(sum(v) / len(v), 3) for k, v in times.items()}
    record(f"sft_step_ours_vs_trl_sfttrainer_b8x128{'' if checkpointing else '_no_checkpointing'}",
           {"seconds_per_step": sec, "trl_over_ours": round(sec["trl"] / sec["ours"], 3), "steps": steps,
            "trl": trl.__version__, "trl_gradient_checkpointing": checkpointing, "loss_before_training": first})


def train(name: str, train_rows: int, test_rows: int, config: dict, method: str = "sft", validation_rows: int = 0,
          tag: str = "") -> None:
    import pandas as pd
    from sklearn.model_selection import train_test_split

    import classifine
    from classifine.core.task import load_task

    task = load_task(ROOT / "bench" / "tasks" / TASKS[name])
    work = Path(os.environ.get("BENCH_WORK", "/tmp/classifine-bench")) / name
    work.mkdir(parents=True, exist_ok=True)
    frames = {}
    for split, n in (("train", train_rows), ("test", test_rows)):
        df = pd.read_csv(task.data_path(split), dtype=str, keep_default_na=False)
        rest = df.iloc[:0]
        if n < len(df):
            strat = df[task.label_column] if task.kind == "single_label" else None
            df, rest = train_test_split(df, train_size=n, stratify=strat, random_state=13)
        df.to_csv(work / f"{split}.csv", index=False)
        frames[split] = len(df)
        if split == "train" and validation_rows:  # scoring rows is cheap next to training on them
            strat = rest[task.label_column] if task.kind == "single_label" else None
            val, _ = train_test_split(rest, train_size=validation_rows, stratify=strat, random_state=13)
            val.to_csv(work / "validation.csv", index=False)
            frames["validation"] = len(val)
    out = work / f"run-{method}"
    settings = {**SFT, **config} if method == "sft" else config
    t0 = time.time()
    run = classifine.train(task, method=method, model="gemma-3-270m" if method == "sft" else None, out=out,
                           train=work / "train.csv", validation=work / "validation.csv" if validation_rows else None,
                           test=work / "test.csv", config=settings, overwrite=True, progress=False)
    m = json.loads((out / "metrics.json").read_text())
    keep = {k: m[k] for k in ("accuracy", "macro_f1", "exact_match", "precision", "recall", "f1", "n") if k in m}
    if task.kind == "extraction":  # the same predictions without the confidence filter
        from classifine.scoring import metrics as M
        from classifine.evaluation.report import read_predictions

        rows = read_predictions(out / "predictions.jsonl")
        unfiltered = M.extraction([r["gold"] for r in rows], [r["pred_all"] if "pred_all" in r else r["pred"] for r in rows],
                                  0.0, task.normalize)
        keep["exact_match_without_filter"] = unfiltered["exact_match"]
    else:
        keep["per_class_f1"] = {k: round(v["f1"], 4) for k, v in m["per_class"].items()}
    info = run.config["info"]
    decision_path = out / "model" / "decision.json"
    decision = json.loads(decision_path.read_text()) if decision_path.exists() else {}
    record(f"{method}_{name}{'_' + tag if tag else ''}", {**keep, "train_rows": frames["train"], "validation_rows": frames.get("validation", "10% of train"),
                                "test_rows": frames["test"], "config": settings, "offsets": decision.get("offsets"),
                                "macro_f1_validation": decision.get("macro_f1_validation"),
                                "train_seconds": run.config["train_seconds"], "total_seconds": round(time.time() - t0, 1),
                                "steps": info.get("steps", info.get("sft", {}).get("steps")), "pretrain": info.get("pretrain"),
                                "temperature": decision.get("temperature", info.get("temperature")),
                                "ece_validation": [decision.get("ece_validation_before"), decision.get("ece_validation_after")],
                                "ece_test": m.get("calibration", {}).get("ece"), "run": str(out)})


def without_offsets(name: str, method: str = "sft") -> None:
    """The same test predictions with the validation-tuned class offsets undone: what the trained
    model alone gives. The saved probabilities are softmax((log p + offsets) / T): scale back by T,
    then subtract the offsets."""
    import numpy as np
    from sklearn.metrics import f1_score, roc_auc_score

    from classifine.evaluation.report import read_predictions

    out = Path(os.environ.get("BENCH_WORK", "/tmp/classifine-bench")) / name / f"run-{method}"
    decision = json.loads((out / "model" / "decision.json").read_text())
    rows = read_predictions(out / "predictions.jsonl")
    labels = list(rows[0]["probabilities"])
    probs = np.array([[r["probabilities"][lab] for lab in labels] for r in rows])
    gold = np.array([labels.index(r["gold"]) for r in rows])
    z = np.log(np.clip(probs, 1e-12, 1.0)) * decision.get("temperature", 1.0) - np.asarray(decision.get("offsets", 0.0))
    value = {"offsets": decision.get("offsets"), "auc": {lab: round(roc_auc_score(gold == k, probs[:, k]), 4) for k, lab in enumerate(labels)}}
    for key, pred in (("with_offsets", probs.argmax(1)), ("without_offsets", z.argmax(1))):
        value[key] = {"accuracy": round(float((pred == gold).mean()), 4), "macro_f1": round(f1_score(gold, pred, average="macro"), 4),
                      "per_class_f1": dict(zip(labels, np.round(f1_score(gold, pred, average=None, labels=range(len(labels))), 4).tolist())),
                      "predicted": dict(zip(labels, np.bincount(pred, minlength=len(labels)).tolist()))}
    record(f"offsets_{method}_{name}", value)


def decode(name: str, rows: int, mode: str, batch: int) -> None:
    import numpy as np

    from classifine.core.data import load_examples
    from classifine.predict.predictor import Predictor
    from classifine.scoring.kinds import compute_metrics
    from classifine.scoring.decision import decide

    run = Path(os.environ.get("BENCH_WORK", "/tmp/classifine-bench")) / name / "run-sft"
    pred = Predictor.load(run)
    ex = load_examples(pred.task, run.parent / "test.csv")
    ex = ex.subset(range(min(rows, len(ex))))
    pred.scorer.decoding = mode
    pred.scorer.meta["score_batch_size"] = batch
    t0 = time.time()
    probs = np.concatenate([pred.predict_proba(ex.texts[i:i + 32]) for i in range(0, len(ex), 32)])
    sec = time.time() - t0
    # generate mode marks an invalid answer with uniform probabilities (GenerativeScorer._generate)
    invalid = [mode == "generate" and bool(np.allclose(r, r[0])) for r in probs]
    labels = decide("single_label", pred.task.label_names, probs, {})
    labels = ["(invalid)" if bad else lab for lab, bad in zip(labels, invalid)]  # wrong, as in the report
    m = compute_metrics(pred.task, ex.labels, labels, probs, invalid)
    record(f"decode_{name}_{mode}_batch{batch}", {"rows": len(ex), "seconds": round(sec, 1), "docs_per_second": round(len(ex) / sec, 2),
                                                  "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                                                  "invalid_rate": float(np.mean(invalid))})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["matmul", "step", "step-vs-trl", "train", "decode", "offsets"])
    ap.add_argument("dataset", nargs="?")
    ap.add_argument("--train-rows", type=int, default=1200)
    ap.add_argument("--test-rows", type=int, default=500)
    ap.add_argument("--validation-rows", type=int, default=0, help="a separate validation set from the unused training rows")
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--mode", default="score", choices=["score", "generate"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--full-logits", action="store_true")
    ap.add_argument("--no-checkpointing", action="store_true", help="step-vs-trl: TRL without its default gradient checkpointing")
    ap.add_argument("--set", nargs="*", default=[], help="method settings KEY=VALUE")
    ap.add_argument("--method", default="sft", choices=["sft", "pretrain"])
    ap.add_argument("--tag", default="", help="suffix of the result's key, to keep earlier results of the same dataset")
    args = ap.parse_args()
    if args.phase == "matmul":
        matmul()
    elif args.phase == "step":
        step(args.full_logits)
    elif args.phase == "step-vs-trl":
        step_vs_trl(checkpointing=not args.no_checkpointing)
    elif args.phase == "train":
        import yaml

        settings = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
        train(args.dataset, args.train_rows, args.test_rows, settings, args.method, args.validation_rows, args.tag)
    elif args.phase == "offsets":
        without_offsets(args.dataset, args.method)
    else:
        decode(args.dataset, args.rows, args.mode, args.batch)


if __name__ == "__main__":
    main()
