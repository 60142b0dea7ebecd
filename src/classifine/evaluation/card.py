"""``classifine card``: a Hugging Face model card written from the run itself, as the run folder's
README.md (what the Hub shows) with MODEL_CARD.md as a copy of it.

Every number comes from the run's metrics.json (through ``scoring.kinds.key_metrics`` and the report's
own tables), every training fact from config.yaml and the Trainer's log history, every fact about the
base model from the model registry (``core.models``), so the card cannot disagree with the report.
The YAML front matter is built as data and dumped with PyYAML, never templated, so it always parses.
Reports, predictions and cards are outputs, outside the run's manifest: rewriting them leaves
``Run.load``'s verification intact.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..core.data import read_table
from ..core.runs import Run, atomic_write_bytes, atomic_write_text
from ..errors import RunError
from ..methods import is_generative
from ..scoring.kinds import HEADLINE, METRICS, key_metrics
from .compare import compare
from .hub import base_model_id, expected_answer, model_facts, plain_usage, prompt_text
from .render import _png, _pyplot, baseline_warning, pct, render_template, sections
from .report import read_predictions

MIN_SLICE_ROWS = 30
WIDGET_ROWS = 3
LOSS_IMAGE = "loss.png"
CARD, ALIAS = "README.md", "MODEL_CARD.md"
# the README section (classifine's own) that explains loading tfidf and embed runs by hand
PLAIN_LOADING = "Load runs without classifine"


def _weights_origin(run: Run) -> str | None:
    model = run.config.get("model")
    if not model:
        return None
    facts = model_facts(run)
    if facts.get("weights"):
        return facts["weights"]
    if base_model_id(run):
        return f"downloaded from the Hugging Face Hub ({model})"
    return "a local folder given at training time"


def license_metadata(run: Run, license: str | None = None, license_name: str | None = None,
                     license_link: str | None = None) -> dict:
    """The card's license: the one given, else the base model's (a fine-tune inherits its terms),
    else ``other``. ``license_name``/``license_link`` say what ``other`` means."""
    if license is None:
        facts = model_facts(run)
        license = facts.get("license") or "other"
        license_name = license_name or facts.get("license_name")
        license_link = license_link or facts.get("license_link")
    meta = {"license": license}
    if license == "other":
        meta.update({k: v for k, v in (("license_name", license_name), ("license_link", license_link)) if v})
    return meta


def _license_note(run: Run, meta: dict, given: str | None) -> str:
    named = ", ".join(f"`{meta[k]}`" for k in ("license", "license_name") if meta.get(k))
    link = f" ({meta['license_link']})" if meta.get("license_link") else ""
    if given is not None:
        return f"{named}{link}, as given to `classifine card`"
    if model_facts(run).get("license"):
        return f"{named}{link}, the base model's: a fine-tune is a derivative and carries its terms"
    if run.config.get("model"):
        return f"{named}: classifine does not know this base model's license; check its terms and pass --license"
    return f"{named}: no base model; pass --license to choose one"


def pipeline_tag(run: Run) -> str:
    return "text-generation" if run.task.kind == "extraction" or is_generative(run.method) else "text-classification"


def library_name(run: Run) -> str:
    if run.method == "head":
        return "transformers"
    if is_generative(run.method):
        return "peft" if (run.model_dir / "adapter_config.json").is_file() else "transformers"
    return "classifine"  # tfidf and embed heads are safetensors + JSON that only classifine assembles


def _languages(run: Run, m: dict, given: list[str] | None) -> list[str]:
    if given:
        return list(given)
    for col in ("lang", "language", "languages"):
        values = m.get("slices", {}).get(col)
        if values:
            return [v for v in values if v != "(blank)"]
    texts = [x["text"] for x in m.get("mistakes", [])]
    return ["ko"] if any("\uac00" <= ch <= "\ud7a3" for t in texts for ch in t) else []


def _widget(run: Run, rows: list[dict]) -> list[dict]:
    """A few short, correctly predicted evaluation texts (different references where possible)."""
    short = [r for r in rows if 20 <= len(r["text"]) <= 400]
    good = [r for r in short if r["gold"] == r["pred"]] or short  # extraction rows never compare equal
    good.sort(key=lambda r: (-(r.get("confidence") or 0.0), r["row"]))
    picked, seen = [], set()
    for r in good:
        key = json.dumps(r["gold"], sort_keys=True)
        if key not in seen:
            picked.append(r)
            seen.add(key)
        if len(picked) == WIDGET_ROWS:
            break
    out = []
    for i, r in enumerate(picked, 1):
        text = prompt_text(run, r["text"])[0] if is_generative(run.method) else r["text"]
        title = r["gold"] if isinstance(r["gold"], str) else f"example {i}"
        out.append({"text": text, "example_title": title})
    return out


def _index_result(task, m: dict, pipeline: str, datasets: list[str]) -> dict:
    """One model-index result: a task's metrics on its evaluation data."""
    metrics = []
    for r in key_metrics(task.kind, m):
        if METRICS[r["key"]].hub:
            entry = {"type": METRICS[r["key"]].hub, "value": round(r["value"], 4), "name": r["name"]}
            if r["key"].startswith(("macro_", "micro_", "weighted_")):
                entry["args"] = {"average": r["key"].split("_")[0]}
            metrics.append(entry)
    data_name = Path(str(m.get("data", "test"))).name
    dataset = {"name": f"{task.name} ({data_name})", "type": datasets[0] if datasets else task.name, "split": "test"}
    return {"task": {"type": pipeline, "name": f"{task.name}: {task.kind.replace('_', ' ')}"}, "dataset": dataset,
            "metrics": metrics}


def _front_matter(run: Run, m: dict, name: str, languages: list[str], license: dict, datasets: list[str],
                  widget: list[dict], others: list[dict] = ()) -> str:
    """The Hub metadata; a multi-task run gets a model-index result per evaluated task."""
    task = run.task
    pipeline = pipeline_tag(run)
    results = [_index_result(task, m, pipeline, datasets)] + [_index_result(o["task"], o["m"], pipeline, datasets)
                                                               for o in others]
    meta: dict = {}
    if languages:
        meta["language"] = languages
    meta.update(license)
    meta["library_name"] = library_name(run)
    meta["pipeline_tag"] = pipeline
    base = base_model_id(run)
    if base:
        meta["base_model"] = base
    if datasets:
        meta["datasets"] = list(datasets)
    meta["tags"] = ["classifine", *dict.fromkeys(t.kind.replace("_", "-") for t in [task, *(o["task"] for o in others)]),
                    run.method, *(["multi-task"] if others else [])]
    meta["metrics"] = sorted({e["type"] for r in results for e in r["metrics"]})
    if widget:
        meta["widget"] = widget
    meta["model-index"] = [{"name": name, "results": results}]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip()


def _example(run: Run, m: dict, rows: list[dict]) -> tuple[dict, dict]:
    """A real evaluation row (correctly predicted, short) for the usage example, with its prediction."""
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


def _usage_code(run: Run, repo_id: str | None, path: str, record: dict, row: dict) -> str:
    """Python that loads the run with classifine and predicts a real evaluation row; the comment is
    the prediction recorded for that row in predictions.jsonl (tests execute this and compare)."""
    kind = run.task.kind
    if kind == "multi_label":
        show = 'print(result["labels"])'
    elif kind == "extraction":
        show = f'print(result[{json.dumps(run.task.entity)}])'
    else:
        show = 'print(result["label"], result.get("confidence"))'
    expected = expected_answer(run, row) + (f" {row['confidence']:.3f}" if kind in ("single_label", "ordinal")
                                            and "confidence" in row else "")
    where = f"snapshot_download({json.dumps(repo_id)})" if repo_id else json.dumps(path, ensure_ascii=False)
    return "\n".join((["from huggingface_hub import snapshot_download"] if repo_id else []) + [
        "import classifine", "", f"predictor = classifine.load({where})",
        f"result = predictor.predict([{json.dumps(record, ensure_ascii=False)}])[0]", f"{show}  # {expected}"])


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
    if (run.model_dir / "adapter_config.json").is_file() and model_facts(run).get("weights"):
        out.append(f"The adapter was trained on the base model's packaged weights ({model_facts(run)['weights']}); "
                   "on other copies of the base model its answers may differ.")
    return out


def log_history(run: Run) -> list[dict]:
    """The Trainer's log history, from the newest checkpoint's trainer_state.json (the Trainer
    writes it last in a checkpoint, and each holds the history up to its step); [] without one."""
    found = []
    for ckpt in (run.dir / "checkpoints").glob("checkpoint-*/trainer_state.json"):
        try:
            state = json.loads(ckpt.read_text(encoding="utf-8"))
            found.append((int(state.get("global_step", 0)), state.get("log_history") or []))
        except (OSError, ValueError):
            continue  # cut off by a kill while saving: the one before it still has the history
    return max(found, key=lambda x: x[0])[1] if found else []


def loss_curve(run: Run, image_dir: Path | None) -> dict | None:
    """Training and validation loss by step (None for runs without a Trainer, e.g. tfidf); with
    ``image_dir``, the curve is also drawn into ``image_dir/loss.png``."""
    history = log_history(run)
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    val = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not val:
        return None
    metric = (run.config.get("config") or {}).get("metric")
    by_step: dict[int, dict] = {}
    for h in history:
        if "step" in h and ("loss" in h or "eval_loss" in h):
            row = by_step.setdefault(h["step"], {"step": h["step"], "epoch": round(h.get("epoch", 0.0), 2)})
            row["train"] = h.get("loss", row.get("train"))
            row["validation"] = h.get("eval_loss", row.get("validation"))
            if metric and f"eval_{metric}" in h:
                row["metric"] = h[f"eval_{metric}"]
    rows = [by_step[s] for s in sorted(by_step)]
    if len(rows) > 20:  # a table is a summary; the image has every point
        keep = {round(i * (len(rows) - 1) / 19) for i in range(20)}
        rows = [r for i, r in enumerate(rows) if i in keep]
    image = None
    if image_dir is not None:
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        if train:
            ax.plot(*zip(*train), label="training loss", color="#4c78a8")
        if val:
            ax.plot(*zip(*val), "o-", label="validation loss", color="#f58518")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=8)
        fig.tight_layout()
        atomic_write_bytes(image_dir / LOSS_IMAGE, _png(fig))
        image = LOSS_IMAGE
    return {"rows": rows, "metric": metric, "image": image}


def _environment(run: Run, m: dict) -> list[str]:
    cfg = run.config
    out = [f"hardware: {cfg.get('hardware') or 'not recorded'}"]
    seconds = cfg.get("train_seconds")
    if run.method == "zeroshot":
        out.append("training: none (the base model evaluated zero-shot)")
    elif seconds is not None:
        out.append(f"training wall time: {seconds:.1f} s" + (f" ({seconds / 3600:.2f} h)" if seconds >= 36 else ""))
    if m.get("docs_per_second"):
        out.append(f"prediction: {m['docs_per_second']:.1f} texts/s on the evaluation data "
                   f"({m.get('prediction_seconds', 0):.2f} s for {m['n']} rows)")
    out.append("carbon emitted: not measured; estimate it from the hardware and the time above, e.g. with "
               "https://mlco2.github.io/impact")
    return out


def _install_hint() -> str:
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = [u.split(",", 1)[1].strip() for u in metadata("classifine").get_all("Project-URL") or []]
    except PackageNotFoundError:
        urls = []
    if urls:
        return f'pip install "classifine @ git+{urls[0]}"'
    return "pip install -e /path/to/classifine   # a checkout of classifine's git repository (not on PyPI)"


def _other_tasks(run: Run) -> list[dict]:
    """The other tasks of a multi-task run that were evaluated: spec, metrics and report tables."""
    out = []
    for name, task in list(run.tasks.items())[1:]:
        path = run.task_dir(name) / "metrics.json"
        if path.is_file():
            m = json.loads(path.read_text(encoding="utf-8"))
            out.append({"task": task, "m": m, "sections": [s for s in sections(task, m, {})
                                                          if s["title"] in ("Overall", "Subsets") or s["title"].startswith("By ")]})
    return out


def card_context(run_dir: str | Path, base: str | Path | None = None, license: str | None = None,
                 license_name: str | None = None, license_link: str | None = None, datasets: list[str] | None = None,
                 languages: list[str] | None = None, name: str | None = None, usage_path: str | None = None,
                 repo_id: str | None = None, align_on: str | None = None, image_dir: Path | None = None) -> dict:
    """Everything the template needs. ``repo_id``: the Hub repository the card is written for (the
    usage examples download it); ``image_dir``: where the loss curve is drawn (None: no image)."""
    run = Run.load(run_dir)
    path = run.dir / "metrics.json"
    if not path.is_file() or not (run.dir / "predictions.jsonl").is_file():
        raise RunError(f"run {run.dir} has no evaluation to put in a card",
                       [f"evaluate it first: classifine eval {run.dir} --data TEST_FILE"])
    m = json.loads(path.read_text(encoding="utf-8"))
    rows = read_predictions(run.dir / "predictions.jsonl")
    name = name or run.dir.name
    langs = _languages(run, m, languages)
    record, example_row = _example(run, m, rows)
    others = _other_tasks(run)
    comparison = compare([base, run.dir], align_on=align_on) if base is not None else None
    cfg = run.config
    lic = license_metadata(run, license, license_name, license_link)
    local = usage_path or str(run.dir)
    classifine_code = _usage_code(run, repo_id, local, record, example_row)
    facts = model_facts(run)
    return {
        "name": name, "run": run, "task": run.task, "m": m, "cfg": cfg,
        "front_matter": _front_matter(run, m, name, langs, lic, list(datasets or []), _widget(run, rows), others),
        "other_tasks": others,
        "license_note": _license_note(run, lic, license),
        "base_model": base_model_id(run) or cfg.get("model"), "weights_origin": _weights_origin(run),
        "model_package": facts.get("package"), "headline": key_metrics(run.task.kind, m)[0],
        "key_metrics": key_metrics(run.task.kind, m), "sections": sections(run.task, m, {}),
        "comparison": comparison, "limitations": _limitations(run, m, langs), "languages": langs,
        "environment": _environment(run, m), "loss": loss_curve(run, image_dir),
        "usage_path": repo_id or local, "repo_id": repo_id,
        "plain": plain_usage(run, example_row, repo_id, local), "plain_section": PLAIN_LOADING,
        "usage_code": classifine_code, "install": _install_hint(),
        "data_name": Path(str(m.get("data", ""))).name, "hyper": dict(cfg.get("config") or {}),
        "trainer": {k: v for k, v in (cfg.get("info") or {}).items()
                    if k in ("steps", "train_loss", "best_metric", "trainable_parameters", "resumed")},
    }


def write_card(run_dir: str | Path, output: str | Path | None = None, **kwargs) -> Path:
    """Render the card. Default: the run folder's README.md (the Hub shows it) and MODEL_CARD.md
    (the same text, where earlier versions wrote it); returns README.md's path. ``output``: that one
    file instead, with the loss curve beside it."""
    target = Path(output) if output is not None else None
    ctx = card_context(run_dir, image_dir=target.parent if target is not None else Path(run_dir), **kwargs)
    text = render_template("model_card.md.j2", **ctx)
    if target is not None:
        atomic_write_text(target, text)
        return target
    # a copy, not a symlink: a run folder copied or uploaded file by file keeps both readable
    atomic_write_text(ctx["run"].dir / CARD, text)
    atomic_write_text(ctx["run"].dir / ALIAS, text)
    return ctx["run"].dir / CARD


def push(run_dir: str | Path, repo: str, private: bool = False, token_env: str | None = "HF_TOKEN",
         dry_run: bool = False, **card_options) -> dict:
    """``classifine push``: refresh the card for the Hub repository ``repo`` and upload the run's
    publishable files (``hub.upload_files``). ``dry_run`` writes the card and lists the files
    without a token or the network. Returns {"repo", "files", "url"}."""
    from . import hub

    run = Run.load(run_dir)  # an unfinished or damaged run is refused before anything happens
    hub.check_repo_id(repo)
    if dry_run:
        write_card(run.dir, repo_id=repo, **card_options)
        return {"repo": repo, "files": hub.upload_files(run.dir), "url": None}
    token = hub.hub_token(token_env)
    repo_id = hub.create_repo(repo, token, private=private)
    write_card(run.dir, repo_id=repo_id, **card_options)  # the usage examples download repo_id
    files = hub.upload_files(run.dir)
    url = hub.upload(run.dir, repo_id, token, files, f"classifine push of {run.dir.name} ({run.method})")
    return {"repo": repo_id, "files": files, "url": url}
