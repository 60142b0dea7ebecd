"""``classifine card``: a Hugging Face model card (MODEL_CARD.md) written from the run itself.

Every number comes from the run's metrics.json (through ``scoring.kinds.key_metrics`` and the report's
own tables), every training fact from config.yaml, so the card cannot disagree with the report.
The YAML front matter is built as data and dumped with PyYAML, never templated, so it always parses.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..core.data import read_table
from ..core.runs import Run, atomic_write_text
from ..errors import RunError
from ..methods import is_generative
from ..scoring.kinds import HEADLINE, METRICS, key_metrics
from .compare import compare
from .render import baseline_warning, pct, render_template, sections
from .report import read_predictions

# Hub ids of the packaged offline models, for the card's base_model field
HUB_IDS = {"gemma-3-270m": "google/gemma-3-270m", "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
           "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
MIN_SLICE_ROWS = 30


def _base_model(run: Run) -> str | None:
    model = run.config.get("model")
    if not model:
        return None
    if model in HUB_IDS:
        return HUB_IDS[model]
    # a Hub id has one slash and is not a path; local folders mean nothing on the Hub
    return model if model.count("/") == 1 and not Path(model).expanduser().exists() else None


def _languages(run: Run, m: dict, given: list[str] | None) -> list[str]:
    if given:
        return list(given)
    for col in ("lang", "language", "languages"):
        values = m.get("slices", {}).get(col)
        if values:
            return [v for v in values if v != "(blank)"]
    texts = [x["text"] for x in m.get("mistakes", [])]
    return ["ko"] if any("\uac00" <= ch <= "\ud7a3" for t in texts for ch in t) else []


def _front_matter(run: Run, m: dict, name: str, languages: list[str], license: str) -> str:
    task, kind = run.task, run.task.kind
    pipeline = "text-generation" if kind == "extraction" or is_generative(run.method) else "text-classification"
    metrics = []
    for r in key_metrics(kind, m):
        if METRICS[r["key"]].hub:
            entry = {"type": METRICS[r["key"]].hub, "value": round(r["value"], 4), "name": r["name"]}
            if r["key"].startswith(("macro_", "micro_", "weighted_")):
                entry["args"] = {"average": r["key"].split("_")[0]}
            metrics.append(entry)
    data_name = Path(str(m.get("data", "test"))).name
    meta: dict = {}
    if languages:
        meta["language"] = languages
    meta["license"] = license
    meta["library_name"] = "transformers" if run.method == "head" else "classifine"
    meta["pipeline_tag"] = pipeline
    base = _base_model(run)
    if base:
        meta["base_model"] = base
    meta["tags"] = ["classifine", kind.replace("_", "-"), run.method]
    meta["metrics"] = sorted({e["type"] for e in metrics})
    meta["model-index"] = [{"name": name, "results": [{
        "task": {"type": pipeline, "name": kind.replace("_", " ")},
        "dataset": {"name": f"{task.name} ({data_name})", "type": task.name, "split": "test"},
        "metrics": metrics}]}]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()


def _example(run: Run, m: dict) -> tuple[dict, dict]:
    """A real evaluation row (correctly predicted, short) for the usage example, with its prediction."""
    rows = read_predictions(run.dir / "predictions.jsonl")
    good = [r for r in rows[:500] if r["gold"] == r["pred"]] or rows[:1]
    # a readable, clear-cut example: a mid-length text the model got right with high confidence
    readable = [r for r in good if 30 <= len(r["text"]) <= 240] or good
    row = max(readable, key=lambda r: (r.get("confidence") or 0.0, -len(r["text"]), -r["row"]))
    fields = list(run.task.text)
    record = None
    data = Path(str(m.get("data", "")))
    if data.is_file():
        frame = read_table(data)
        if len(frame) >= row["row"] and all(f in frame.columns for f in fields):
            record = {f: str(frame[f].iloc[row["row"] - 1]) for f in fields}
    if record is None:  # the data moved: split the joined text back into fields where it can be
        parts = row["text"].split("\n")
        record = dict(zip(fields, parts)) if len(parts) == len(fields) else {fields[0]: row["text"]}
    return record, row


def _usage_code(run: Run, path: str, record: dict, row: dict) -> str:
    """Python that loads the run and predicts a real evaluation row; the comment is the prediction
    recorded for that row in predictions.jsonl (tests execute this and compare)."""
    kind = run.task.kind
    if kind == "multi_label":
        show, expected = 'print(result["labels"])', repr(list(row["pred"]))
    elif kind == "extraction":
        show, expected = f'print(result[{json.dumps(run.task.entity)}])', repr([e["name"] for e in row["pred"]
                                                                                  if e.get("confidence", 1.0) >= run.task.min_confidence])
    else:
        conf = f" {row['confidence']:.3f}" if "confidence" in row else ""
        show, expected = 'print(result["label"], result.get("confidence"))', f"{row['pred']}{conf}"
    return "\n".join(["import classifine", "", f"predictor = classifine.load({json.dumps(path, ensure_ascii=False)})",
                      f"result = predictor.predict([{json.dumps(record, ensure_ascii=False)}])[0]",
                      f"{show}  # {expected}"])


def _limitations(run: Run, m: dict, languages: list[str]) -> list[str]:
    out = [w for w in [baseline_warning(run.task.kind, m)] if w]
    kind, cfg = run.task.kind, run.config.get("config", {})
    stats = run.config.get("label_stats", {}).get("train", {})
    ratio = stats.get("imbalance_ratio")
    if ratio and ratio >= 2:
        per = stats.get("per_label", {})
        rare = sorted(per, key=per.get)[:3]
        out.append(f"Imbalanced training data: the largest label has {ratio:.1f}× the rows of the smallest "
                   f"(rarest: {', '.join(f'{r} ({per[r]})' for r in rare)}); class_weight was `{cfg.get('class_weight', 'n/a')}`.")
    if m.get("per_class"):
        worst = min(m["per_class"].items(), key=lambda kv: kv[1]["f1"])
        out.append(f"Weakest label: `{worst[0]}` (F1 {pct(worst[1]['f1'])} on {worst[1]['support']} rows).")
    head = HEADLINE[kind]
    for col, values in m.get("slices", {}).items():
        # a 3-row group at 33% is noise, not a finding: only groups with enough rows are ranked
        sized = {v: s for v, s in values.items() if s["n"] >= MIN_SLICE_ROWS}
        if len(sized) > 1:
            low = min(sized.items(), key=lambda kv: kv[1][head])
            k = len(values) - len(sized)
            small = f"; {k} smaller group{'s' if k > 1 else ''} not ranked" if k else ""
            out.append(f"Weakest {col}: `{low[0]}` ({METRICS[head].header} {pct(low[1][head])} on {low[1]['n']} rows{small}).")
    model_langs = (run.config.get("model_info") or {}).get("languages") or []
    lang_note = f"Evaluated only on: {', '.join(languages)}." if languages else "The evaluation data's languages were not recorded."
    if model_langs and languages and "multilingual" not in model_langs:
        outside = [x for x in languages if x not in model_langs]
        if outside:
            lang_note += f" The base model is meant for {', '.join(model_langs)}: quality on {', '.join(outside)} is suspect."
    out.append(lang_note)
    if "max_length" in cfg:
        out.append(f"Context length: inputs are truncated to {cfg['max_length']} tokens; longer texts are judged on their beginning.")
    elif run.method == "tfidf":
        unit = "word" if cfg.get("analyzer") == "word" else "character"
        out.append(f"No context limit, but {unit} n-grams see surface forms, not meaning: paraphrases and unseen vocabulary hurt.")
    if "invalid_output" in m:
        inv = m["invalid_output"]
        out.append(f"Output validity: {pct(inv['rate'])} ({inv['invalid']}/{inv['n']}) of outputs could not be parsed "
                   "as a valid answer and count as wrong.")
    elif is_generative(run.method):
        out.append("Output validity: this evaluation recorded no invalid-output flags, so the share of unparseable "
                   "answers is unknown; evaluate with the run's own decoding to measure it.")
    else:
        out.append(f"Output validity: method `{run.method}` scores the task's labels directly, so every output is a "
                   "valid label (no free-text or JSON generation to fail).")
    if "calibration" in m:
        ece = m["calibration"]["ece"]
        out.append(f"Calibration: expected calibration error {ece:.3f}; "
                   + ("treat probabilities as rankings, not as frequencies." if ece > 0.05 else "probabilities are usable as confidences."))
    return out


def card_context(run_dir: str | Path, base: str | Path | None = None, license: str = "other",
                 languages: list[str] | None = None, name: str | None = None, usage_path: str | None = None,
                 align_on: str | None = None) -> dict:
    run = Run.load(run_dir)
    path = run.dir / "metrics.json"
    if not path.is_file() or not (run.dir / "predictions.jsonl").is_file():
        raise RunError(f"run {run.dir} has no evaluation to put in a card",
                       [f"evaluate it first: classifine eval {run.dir} --data TEST_FILE"])
    m = json.loads(path.read_text(encoding="utf-8"))
    name = name or run.dir.name
    langs = _languages(run, m, languages)
    record, example_row = _example(run, m)
    comparison = None
    if base is not None:
        comparison = compare([base, run.dir], align_on=align_on)
    cfg = run.config
    hardware = cfg.get("hardware") or "not recorded"
    return {
        "name": name, "run": run, "task": run.task, "m": m, "cfg": cfg, "front_matter": _front_matter(run, m, name, langs, license),
        "base_model": _base_model(run) or cfg.get("model"), "headline": key_metrics(run.task.kind, m)[0],
        "key_metrics": key_metrics(run.task.kind, m), "sections": sections(run.task, m, {}),
        "comparison": comparison, "limitations": _limitations(run, m, langs), "languages": langs,
        "hardware": hardware, "usage_path": usage_path or str(run.dir),
        "usage_code": _usage_code(run, usage_path or str(run.dir), record, example_row),
        "data_name": Path(str(m.get("data", ""))).name, "hyper": {k: v for k, v in (cfg.get("config") or {}).items()},
    }


def write_card(run_dir: str | Path, output: str | Path | None = None, **kwargs) -> Path:
    """Render MODEL_CARD.md (default: into the run directory) and return its path."""
    ctx = card_context(run_dir, **kwargs)
    text = render_template("model_card.md.j2", **ctx)
    target = Path(output) if output is not None else ctx["run"].dir / "MODEL_CARD.md"
    atomic_write_text(target, text)
    return target
