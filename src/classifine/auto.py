"""``classifine train TASK --method auto --budget 30m``: try methods in order of expected value
within a wall-clock budget, score each on validation, keep the best as the run.

Reads top to bottom: setup (spec, data, one fixed validation split, the budget checked against the
cheapest try) → tries (each an ordinary ``classifine.train`` run in ``out/tries/<name>``, given
only the training and validation files, so no try can read test data) → the leaderboard → the
best try becomes ``out`` itself → its inference engine is measured → the test data is evaluated,
once, after the choice.

Which tries, and how many rows each gets, comes from measurements taken here, not from a table:
the TF-IDF baseline first (all rows; its time is extrapolated from a fit on a sample), then per
language model a ``hybrid`` (TF-IDF + the model's embeddings from the layer chosen on validation,
a decoder's top two of those layers tuned for the task), then a fine-tuned ``head``. Before a
model's tries, a probe embeds a few training texts to measure its docs/s on this machine (ONNX
export included); a try gets as many rows as fit its share of what is left of the budget and is
not started when even the fewest useful rows would not fit.
"""
from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .core.accel import reuse_outputs
from .core.data import check_trainable, load_examples, sample_rows, split_validation
from .core.models import resolve
from .core.runs import Run, atomic_write_json, atomic_write_text, atomic_write_yaml, run_lock, write_manifest
from .core.task import TaskSpec, as_task
from .errors import ClassifineError, ConfigError, DataError
from .evaluation.report import evaluate
from .methods import get_method
from .predict.engine import choose_engine
from .predict.predictor import Predictor, batched_proba
from .scoring.decision import decide
from .scoring.kinds import KINDS, compute_metrics
from .training import train as train_run

log = logging.getLogger("classifine")
UNITS = {"h": 3600, "m": 60, "s": 1}
MAX_VALIDATION = 2000   # rows held out for choosing: enough to separate tries by a point, cheap to embed
MIN_ROWS = 200          # fewer training rows than this make a model try not worth its time
SPEED_ROWS = 200        # validation texts a try's docs/s is measured on
PROBE_ROWS = 128        # texts embedded to measure a model's docs/s (batched by length as every pass is)
# a training row costs this many ONNX probe passes (fwd + bwd in PyTorch, optimiser): the head tries'
# estimates with 12 were 1.3-1.8x what they took on NSMC, kocohub and id_hate (BENCHMARKS.md)
TRAIN_COST = 9.0
SAFETY = 1.15           # estimates are scaled up by this before they are compared with the budget
TUNE_LAYERS = 2         # a decoder's hybrid tunes its top two kept layers (methods/top_layers.py)
TUNE_LOWER = 1.5        # the frozen layers below them run this many times the probe's docs/s (a cut model)
TUNE_EPOCH = 2.4        # a tuning epoch over a row costs 1/TUNE_EPOCH of a probe pass (measured on NSMC)
LEADERBOARD = "leaderboard"


def parse_budget(text: str | float | int) -> float:
    """Seconds from ``30m``, ``90s``, ``1h30m``, ``2h`` or a bare number of minutes."""
    if isinstance(text, (int, float)):
        seconds = float(text) * 60
    else:
        s = str(text).strip().lower()
        if re.fullmatch(r"\d+(\.\d+)?", s):
            seconds = float(s) * 60
        elif s and re.fullmatch(r"(\d+(\.\d+)?[hms])+", s):
            seconds = sum(float(n) * UNITS[u] for n, _, u in re.findall(r"(\d+(\.\d+)?)([hms])", s))
        else:
            raise ConfigError(f"--budget {text!r} is not a duration",
                              ["write it as 30m, 90s, 1h30m or a number of minutes (e.g. --budget 30m)"])
    if seconds <= 0:
        raise ConfigError(f"--budget {text!r} is not a positive duration", ["e.g. --budget 30m"])
    return seconds


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Try:
    name: str
    method: str
    model: str | None = None
    config: dict = field(default_factory=dict)
    weight: float = 1.0           # share of the budget left, relative to the tries still to come
    status: str = "planned"       # done | skipped | failed
    reason: str = ""
    rows: int | None = None
    estimate_seconds: float | None = None
    train_seconds: float | None = None
    validation: dict = field(default_factory=dict)
    docs_per_second: float | None = None
    model_bytes: int | None = None


def default_models(texts: list[str]) -> list[str]:
    """The packaged models worth trying on these texts: MiniLM reads English (other scripts become
    [UNK]), so it is tried only when nearly all letters are Latin; Gemma 3 270M reads many languages."""
    sample = "".join(texts[:500])
    letters = [c for c in sample if c.isalpha()]
    latin = sum(c.isascii() for c in letters) / max(len(letters), 1)
    return (["minilm-l6"] if latin > 0.95 else []) + ["gemma-3-270m"]


def plan(task: TaskSpec, models: list[str]) -> list[Try]:
    """The tries in order: cheapest and most often best first; a method that refuses the task's kind
    stays in the list as skipped, with its reason, so the leaderboard says why it is absent."""
    tries = [Try("tfidf", "tfidf")]
    for model in models:
        # a decoder's top layers are tuned on cached states: on NSMC and id_hate that gained more than
        # the frozen model's whole view added to TF-IDF (BENCHMARKS.md); encoders stay frozen
        embed = {"layer": "auto", **({"tune_layers": TUNE_LAYERS} if _decoder(model) else {})}
        tries.append(Try(f"hybrid:{model}", "hybrid", model, {"embed": embed}, weight=2.0))
    for model in models:
        tries.append(Try(f"head:{model}", "head", model, {"epochs": 2, "eval_steps": None}, weight=1.0))
    for t in tries:
        module = get_method(t.method)
        if task.kind not in module.KINDS:
            t.status, t.reason = "skipped", module.REFUSED.get(task.kind, f"{t.method} does not support {task.kind} tasks")
    return tries


def _decoder(model: str) -> bool:
    from .core.models import is_decoder

    try:
        return is_decoder(model)
    except (ClassifineError, OSError, ValueError):  # a model that does not load fails its tries, with the reason
        return False


class Probe:
    """A model's measured speed on this machine: texts per second through its frozen forward pass,
    and what loading (and exporting) it cost."""

    def __init__(self, model: str, texts: list[str], config):
        from .methods.embed import _depth, candidate_layers, fit_encoder

        t0 = time.perf_counter()
        # the encoder the hybrid's embed part fits with (cached there): ONNX where it exports
        encoder = fit_encoder(model, config, tuple(candidate_layers(_depth(resolve(model)))))
        encoder.forward(texts[:16])  # warm-up: first calls (allocations, new shapes) are not the steady rate
        self.load_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        encoder.forward(texts)
        self.docs_per_second = len(texts) / max(time.perf_counter() - t1, 1e-6)
        self.engine = encoder.engine

    def learn(self, t: "Try", n_val: int) -> None:
        """Correct the estimate with what a finished hybrid try really took: its embedding pass ran
        the same graph over its rows and validation, and the graph is now exported and cached."""
        if t.method == "hybrid" and t.status == "done" and t.train_seconds:
            spent = max(t.train_seconds - 15, 1.0)
            self.docs_per_second = _hybrid_passes(t, t.rows, n_val) / spent
            self.load_seconds = min(self.load_seconds, 15.0)


def _hybrid_passes(t: Try, rows: int, n_val: int) -> float:
    """A hybrid try's work in probe passes: train + validation embedded once (reused by the
    tuning), or with tuned layers the depth chosen on a sample, the frozen layers' pass over every
    row and the tuning epochs."""
    from .methods.embed import CHOOSE_ROWS

    tune = t.config.get("embed", {}).get("tune_layers", 0)
    if not tune:
        return rows + n_val
    epochs = t.config.get("embed", {}).get("tune_epochs", 3)
    return min(rows, CHOOSE_ROWS) + n_val + (rows + n_val) / TUNE_LOWER + epochs * rows / TUNE_EPOCH


def estimate(t: Try, rows: int, n_val: int, probe: Probe | None, tfidf_seconds: float) -> float:
    """Seconds a try is expected to take with ``rows`` training rows (before ``SAFETY``)."""
    if t.method == "tfidf":
        return tfidf_seconds
    r = probe.docs_per_second
    if t.method == "hybrid":  # TF-IDF is reused from the tfidf try
        return probe.load_seconds + (_hybrid_passes(t, rows, n_val) + SPEED_ROWS) / r + 15
    epochs = float(t.config.get("epochs", 2))
    return probe.load_seconds + epochs * (TRAIN_COST * rows + n_val) / r + n_val / r + 20


def could_run(t: Try, left: float, probe: Probe | None, n_train: int, n_val: int) -> bool:
    """Whether a later try could fit in what is left at all, as far as is known now (a model not yet
    probed might): only those hold back a share of the budget for it."""
    if t.method == "tfidf" or probe is None:
        return True
    return estimate(t, min(MIN_ROWS, n_train), n_val, probe, 0.0) * SAFETY <= left


def affordable_rows(t: Try, seconds: float, n_train: int, n_val: int, probe: Probe | None, tfidf_seconds: float) -> int:
    """The most training rows whose estimate fits in ``seconds``."""
    if t.method == "tfidf":
        return n_train if tfidf_seconds * SAFETY <= seconds else 0
    lo, hi = 0, n_train
    while lo < hi:  # estimates grow with rows: bisect
        mid = (lo + hi + 1) // 2
        if estimate(t, mid, n_val, probe, tfidf_seconds) * SAFETY <= seconds:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _tfidf_seconds(task: TaskSpec, train_ex, val_ex) -> float:
    """TF-IDF's fit time on all rows, extrapolated from a fit on a sample (slightly worse than
    linear: the vocabulary and the solver's iterations grow with the rows)."""
    import tempfile

    from .methods import build_config

    n = min(len(train_ex), 500)
    idx = np.random.default_rng(0).choice(len(train_ex), n, replace=False)
    part = train_ex.subset(sorted(int(i) for i in idx))
    method = get_method("tfidf")
    config = build_config(method, "tfidf", {}, task.label_names)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model").mkdir()
        t0 = time.perf_counter()
        try:
            method.fit(task, part, None, config, None, Path(tmp), progress=False)
        except ValueError:  # a sample with one class: the time is still the time
            pass
        seconds = time.perf_counter() - t0
    return 2.0 + seconds * (len(train_ex) / n) ** 1.2 + 2 * seconds * len(val_ex) / n


def _split(task: TaskSpec, train_path: Path, val_path: Path | None, seed: int):
    train_ex = load_examples(task, train_path)
    if val_path is not None:
        return train_ex, load_examples(task, val_path), False
    fraction = min(0.1, MAX_VALIDATION / max(len(train_ex), 1))
    tr, va = split_validation(task, train_ex, fraction=fraction, seed=seed)
    return tr, va, True


def _model_bytes(run_dir: Path) -> int:
    return sum(p.stat().st_size for p in (run_dir / "model").rglob("*") if p.is_file())


def _validation_scores(run: Run, val_ex) -> tuple[dict, float]:
    """The try's metrics on validation with its tuned decisions, and its docs/s (PyTorch, on up to
    ``SPEED_ROWS`` validation texts embedded afresh: features reused from training would time a lookup)."""
    predictor = Predictor.load(run, engine="torch")
    probs = batched_proba(predictor, val_ex.texts, progress=False)  # the fit's validation vectors, reused
    sample = val_ex.texts[:SPEED_ROWS]
    with reuse_outputs(False):
        t0 = time.perf_counter()
        batched_proba(predictor, sample, progress=False)
        rate = len(sample) / max(time.perf_counter() - t0, 1e-6)
    pred = decide(run.task.kind, predictor.labels, probs, predictor.decision)
    m = compute_metrics(run.task, val_ex.labels, pred)
    keys = KINDS[run.task.kind].summary
    return {k: round(float(m[k]), 4) for k in keys if k in m}, round(rate, 1)


def _hybrid_note(info: dict, metric: str) -> str:
    scores = info.get("validation_scores") or {}
    alone = (f"; alone (validation {metric}, before class offsets): tfidf {100 * scores['1.0']:.2f}%, "
             f"embed {100 * scores['0.0']:.2f}%") if "1.0" in scores and "0.0" in scores else ""
    embed = info["parts"]["embed"]
    tuned = embed.get("tuning")
    layers = f", layers {tuned['layers'][0]}-{tuned['layers'][1]} tuned ({len(tuned['epoch_scores'])} epochs)" if tuned else ""
    return f"weight on TF-IDF {info['weight']}, embedding layer {embed.get('layer')}{layers}{alone}"


def _say(progress: bool, message: str) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)
    log.info(message)


def _write_frame(examples, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    examples.frame.to_csv(path, index=False)
    return path


def _try_config(t: Try, rows: int, tries_dir: Path, seconds: float) -> dict:
    from .core.models import is_decoder

    if t.method == "hybrid":
        return {**t.config, "embed_rows": rows, "reuse_tfidf": str(tries_dir / "tfidf") if (tries_dir / "tfidf" / "model").is_dir() else None}
    if t.method == "head":  # LoRA on decoders; encoders are small enough to fine-tune whole
        tuned = {"lora": True, "learning_rate": 2e-4, "batch_size": 8} if is_decoder(t.model) else \
                {"lora": False, "learning_rate": 5e-5, "batch_size": 16}
        # the estimate is a guess; the Trainer's own clock is the guarantee
        return {**tuned, **t.config, "max_train_seconds": max(30.0, seconds * 0.7)}
    return dict(t.config)


def _write_leaderboard(folder: Path, task: TaskSpec, tries: list[Try], facts: dict) -> None:
    metric = KINDS[task.kind].ranking
    rows = [asdict(t) for t in tries]
    atomic_write_json(folder / f"{LEADERBOARD}.json", {"metric": metric, **facts, "tries": rows})
    lines = [f"# Leaderboard ({task.name}, validation {metric}; budget {_clock(facts['budget_seconds'])})", "",
             f"| try | status | rows | validation {metric} | train s | docs/s | model MiB | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for t in sorted(tries, key=lambda t: -(t.validation.get(metric) or -1)):
        v = t.validation.get(metric)
        lines.append(f"| {t.name}{' **(chosen)**' if t.name == facts.get('chosen') else ''} | {t.status} | {t.rows or ''} | "
                     f"{'' if v is None else f'{100 * v:.2f}%'} | {'' if t.train_seconds is None else f'{t.train_seconds:.1f}'} | "
                     f"{t.docs_per_second or ''} | {'' if t.model_bytes is None else round(t.model_bytes / 2**20, 1)} | "
                     f"{t.reason.replace('|', '/')} |")
    atomic_write_text(folder / f"{LEADERBOARD}.md", "\n".join(lines) + "\n")


def auto(task: TaskSpec | str | Path | dict, out: str | Path, budget: str | float = "30m", model: str | None = None,
         train: str | Path | None = None, validation: str | Path | None = None, test: str | Path | None = None,
         overwrite: bool = False, progress: bool = True, seed: int = 13) -> Run:
    """Try methods within ``budget`` (a duration: ``30m``, ``1h``, ``90s``), keep the one that scores
    best on validation as the run in ``out``; ``out/leaderboard.md`` lists every try."""
    # --- setup: every input is checked, and the budget against the cheapest try, before a write ---
    start = time.monotonic()
    seconds = parse_budget(budget)
    deadline = start + seconds
    task = as_task(task)
    if task.kind == "extraction":
        raise ConfigError("auto compares whole-text classifiers, and extraction names entities",
                          ["train extraction tasks with --method sft"])
    if model:
        resolve(model)
    train_path = Path(train) if train is not None else task.data_path("train")
    if train_path is None:
        raise DataError("no training data", ["pass --train FILE or set data.train in the task spec"])
    val_path = Path(validation) if validation is not None else task.data_path("validation")
    test_path = Path(test) if test is not None else task.data_path("test")
    if test_path is not None and not test_path.is_file():  # only its existence: no try may read it
        raise DataError(f"test data {test_path} does not exist", ["pass --test FILE, or drop it to skip the evaluation"])
    train_ex, val_ex, held_out = _split(task, train_path, val_path, seed)
    check_trainable(task, train_ex, val_ex, held_out=held_out)
    tfidf_seconds = _tfidf_seconds(task, train_ex, val_ex)
    need = tfidf_seconds * SAFETY
    if need > seconds - (time.monotonic() - start):
        raise ConfigError(f"a budget of {_clock(seconds)} is too small for any try",
                          [f"the smallest try (tfidf on {len(train_ex)} rows) needs about {_clock(need)}",
                           f"give --budget {int(np.ceil((need + time.monotonic() - start) / 60))}m or more"])
    models = [model] if model else default_models(train_ex.texts)
    tries = plan(task, models)
    from .core.runs import prepare_run_dir

    out = Path(out)
    with run_lock(out):
        prepare_run_dir(out, overwrite=overwrite)
        tries_dir = out / "tries"
        data_dir = tries_dir / "data"
        train_file = _write_frame(train_ex, data_dir / "train.csv")
        val_file = _write_frame(val_ex, data_dir / "validation.csv")
        blind = task.model_copy(update={"data": task.data.model_copy(update={"test": None, "validation": None})})
        facts = {"budget_seconds": seconds, "train_rows": len(train_ex), "validation_rows": len(val_ex),
                 "validation": str(val_path) if val_path else f"{len(val_ex)} rows held out from {train_path}",
                 "models": models, "chosen": None}
        reserve = 0.05 * seconds  # the winner's engine measurement and the write-up
        probes: dict[str, Probe] = {}

        def execute(t: Try, rows: int, allot: float, step: str) -> None:
            probe = probes.get(t.model)
            t.rows, t.estimate_seconds = rows, round(estimate(t, rows, len(val_ex), probe, tfidf_seconds), 1)
            _say(progress, f"auto {step} {t.name} on {rows:,} rows, about {_clock(t.estimate_seconds)} "
                           f"- {_clock(deadline - time.monotonic())} of {_clock(seconds)} left")
            where = tries_dir / _slug(t.name)
            path = train_file
            if t.method == "head" and rows < len(train_ex):
                path = _write_frame(sample_rows(task, train_ex, rows, seed), data_dir / f"train-{rows}.csv")
            t0 = time.monotonic()
            try:
                with reuse_outputs():
                    run = train_run(blind, t.method, where, model=t.model, train=path, validation=val_file,
                                    config=_try_config(t, rows, tries_dir, allot), overwrite=True, progress=progress,
                                    choose_engine_now=False)
                    t.train_seconds = round(time.monotonic() - t0, 1)
                    t.validation, t.docs_per_second = _validation_scores(run, val_ex)
                t.model_bytes, t.status = _model_bytes(where), "done"
                if t.method == "hybrid":
                    t.reason = _hybrid_note(run.config["info"], KINDS[task.kind].ranking)
            except ClassifineError as e:
                t.status, t.reason, t.train_seconds = "failed", e.summary, round(time.monotonic() - t0, 1)
                log.warning("auto: %s failed: %s", t.name, e.summary)
            _write_leaderboard(out, task, tries, facts)

        # --- tries ---
        runnable = [t for t in tries if t.status == "planned"]
        for i, t in enumerate(runnable):
            left = deadline - time.monotonic() - reserve
            if t.model and t.model not in probes and left > 30:
                probes[t.model] = Probe(t.model, _probe_texts(train_ex.texts), _embed_config(task, t.model, train_ex))
            probe = probes.get(t.model)
            left = deadline - time.monotonic() - reserve
            later = [u for u in runnable[i + 1:]
                     if u.status == "planned" and could_run(u, left, probes.get(u.model), len(train_ex), len(val_ex))]
            share = left if not later else left * t.weight / (t.weight + sum(u.weight for u in later))
            if t.model and probe is None:
                t.status, t.reason = "skipped", f"{_clock(left)} left: too little to load {t.model}"
                continue
            fewest = min(MIN_ROWS, len(train_ex))
            # a try whose fewest rows do not fit its share, but fit what is left, runs at that minimum:
            # the share is an aim for spreading the budget, the budget itself is the limit
            floor = estimate(t, fewest, len(val_ex), probe, tfidf_seconds) * SAFETY
            allot = max(share, min(floor, left))
            rows = affordable_rows(t, allot, len(train_ex), len(val_ex), probe, tfidf_seconds)
            if rows < fewest:
                t.status, t.reason = "skipped", f"needs about {_clock(floor)} for {fewest} rows; {_clock(left)} of the budget was left"
                _say(progress, f"auto: skip {t.name}: {t.reason}")
                continue
            execute(t, rows, allot, f"[{i + 1}/{len(runnable)}]")
            if t.model:
                probes[t.model].learn(t, len(val_ex))

        # --- the best model-based try again on more rows, when what is left clearly allows it ---
        metric = KINDS[task.kind].ranking
        done = [t for t in tries if t.status == "done"]
        best = max(done, key=lambda t: (t.validation.get(metric, -1), t.docs_per_second or 0)) if done else None
        if best is not None and best.method in ("hybrid", "head") and best.rows < len(train_ex):
            more = Try(f"{best.name} (more rows)", best.method, best.model, dict(best.config))
            left = deadline - time.monotonic() - reserve
            rows = affordable_rows(more, left, len(train_ex), len(val_ex), probes[best.model], tfidf_seconds)
            if rows >= min(len(train_ex), int(1.5 * best.rows)):
                tries.append(more)
                execute(more, rows, left, "[more rows]")

        # --- choose: validation only; test data has not been read ---
        done = [t for t in tries if t.status == "done"]
        if not done:
            raise ConfigError("no try finished within the budget", [t.name + ": " + t.reason for t in tries])
        best = max(done, key=lambda t: (t.validation.get(metric, -1), t.docs_per_second or 0))
        facts["chosen"] = best.name
        _write_leaderboard(out, task, tries, facts)
        _say(progress, f"auto: chose {best.name} (validation {metric} {100 * best.validation[metric]:.2f}%)")
        src = tries_dir / _slug(best.name)
        shutil.rmtree(out / "model")
        for entry in list(src.iterdir()):
            shutil.move(str(entry), str(out / entry.name))
        src.rmdir()
        (tries_dir / "CHOSEN").write_text(f"{best.name}: moved to the run folder above\n")

        # --- save: the chosen run's engine, its spec with the test data, the auto record ---
        run = Run.load(out, partial_ok=True)
        choose_engine(run, val_ex, "auto")
        if test_path is not None:
            frozen = run.task.model_copy(update={"data": run.task.data.model_copy(update={"test": str(test_path.resolve())})})
            atomic_write_text(out / "task.yaml", frozen.to_yaml())
        record = dict(run.config)
        record["auto"] = {**facts, "elapsed_seconds": round(time.monotonic() - start, 1), "leaderboard": f"{LEADERBOARD}.md"}
        record["data"] = {**record["data"], "test": str(test_path) if test_path else None}
        atomic_write_yaml(out / "config.yaml", record)
        write_manifest(out)
        run = Run.load(out)
        _say(progress, f"auto: {_clock(time.monotonic() - start)} of a {_clock(seconds)} budget")

        # --- evaluate on the test data, once, after the choice ---
        if test_path is not None:
            evaluate(Predictor.load(run), load_examples(run.task, test_path), out, progress=progress)
        return run


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name).strip("-")


def _probe_texts(texts: list[str]) -> list[str]:
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.choice(len(texts), min(PROBE_ROWS, len(texts)), replace=False)]


def _embed_config(task: TaskSpec, model: str, train_ex):
    """The embed settings a hybrid try starts from, max_length read from the data as ``embed`` does."""
    from .methods import build_config

    method = get_method("embed")
    return method.prepare(task, train_ex, build_config(method, "embed", {}, task.label_names), model)[0]
