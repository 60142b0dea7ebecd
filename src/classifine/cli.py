"""The command line: thin. Parses arguments, calls the library, and is the one place that turns
typed errors into messages and exit codes (no tracebacks for bad input)."""
from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
import yaml
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from .errors import ClassifineError, ConfigError
from .methods import METHODS

app = typer.Typer(add_completion=True, no_args_is_help=True,
                  help="Turn language models into dependable text classifiers (see README.md).")
err = Console(stderr=True)
out = Console()


ENGINE_OPT = typer.Option(None, "--engine", help="inference engine for head/embed runs: torch | onnx | onnx-int8 | onnx-int8-checked "
                          "(default: the run's choice in model/inference.json, or CLASSIFINE_ENGINE)")


def _use_engine(engine: str | None) -> None:
    """Every loader reads CLASSIFINE_ENGINE, so one setting reaches the server's and Ray's workers too."""
    if engine:
        from .core.accel import ENGINE_ENV, check_engine

        os.environ[ENGINE_ENV] = check_engine(engine)


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)], force=True)
    for noisy in ("transformers", "datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if quiet:  # the weight-loading, Map and shard progress bars of transformers and datasets
        os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["TQDM_DISABLE"] = "1"


DEBUG_ENV = "CLASSIFINE_DEBUG"


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"classifine {version('classifine')}")
        except PackageNotFoundError:  # pragma: no cover - a source tree without an install
            typer.echo("classifine (not installed)")
        raise typer.Exit()


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV,
                                        help="show the full traceback of an unexpected error instead of a log file"),
             show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                               help="print the version and exit")):
    if debug:
        os.environ[DEBUG_ENV] = "1"


def crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error where the user can attach it to a report."""
    import datetime
    import traceback

    from .core.models import cache_dir

    folder = cache_dir() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"crash-{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.log"
    path.write_text(f"classifine {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc)), encoding="utf-8")
    return path


def handled(fn):
    """Run a command; a ClassifineError becomes its message and exit code. Anything else is a bug:
    one line with the error, the log file holding the traceback and a hint to report it, exit 1
    (``--debug`` shows the traceback). The net is no fix: each case found is fixed at its cause."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ClassifineError as e:
            err.print(f"[bold red]error:[/] {e.summary}", highlight=False, soft_wrap=True)
            for p in e.problems:
                err.print(f"  - {p}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(e.exit_code)
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
        except (typer.Exit, typer.Abort, SystemExit, BrokenPipeError):
            raise
        except Exception as e:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            try:
                where = f"the full traceback is in {crash_log(e)}"
            except OSError:
                where = "run again with --debug for the traceback"
            err.print(f"[bold red]error:[/] {escape(f'unexpected {type(e).__name__}: {e}')}", highlight=False, soft_wrap=True)
            err.print(f"  {where}; this is a bug in classifine, please report it with that file "
                      "(or run with --debug to see it here)", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(1)
    return wrapper


def parse_settings(pairs: list[str], config_file: Optional[Path]) -> dict:
    values: dict = {}
    problems = []
    if config_file is not None:
        try:
            loaded = yaml.safe_load(config_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read settings file {config_file}", [str(e)]) from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_file} must be a mapping of setting: value")
        values.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            problems.append(f"--set {pair!r}: write KEY=VALUE, e.g. --set epochs=2")
            continue
        values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    if problems:
        raise ConfigError("invalid --set values:", problems)
    return values


def _print_json(obj) -> None:
    import json

    typer.echo(json.dumps(obj, ensure_ascii=False, indent=2, default=str))


def _headline(metrics: dict | None) -> dict | None:
    """The summary metrics of a kind, the baseline's and whether the model beats it."""
    if metrics is None:
        return None
    from .scoring.kinds import KINDS

    keys = KINDS[metrics["kind"]].summary if metrics.get("kind") in KINDS else ()
    base = metrics.get("baseline") or {}
    return {"kind": metrics.get("kind"), "n": metrics.get("n"), "data": metrics.get("data"),
            **{k: metrics[k] for k in keys if k in metrics}, "docs_per_second": metrics.get("docs_per_second"),
            "baseline": base.get("metrics"), "beats_baseline": base.get("beaten")}


def _summary(metrics: dict, title: str) -> None:
    from .scoring.kinds import KINDS, METRICS

    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    keys = KINDS[metrics["kind"]].summary if metrics.get("kind") in KINDS else ()
    for key in keys:
        if metrics.get(key) is not None:
            v = metrics[key]
            table.add_row(key, f"{100 * v:.2f}%" if METRICS[key].unit == "pct" else f"{v:.2f}")
    if metrics.get("docs_per_second") is not None:
        table.add_row("docs_per_second", f"{metrics['docs_per_second']:.2f}")
    out.print(table)
    from .evaluation.render import baseline_warning

    warning = baseline_warning(metrics.get("kind"), metrics)
    if warning:
        err.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


def _combined_json(where: Path) -> dict:
    from .evaluation.multitask import read_combined

    c = read_combined(where)
    return {"combined": {line["label"]: {"rate": line["rate"], "correct": line["num"], "rows": line["den"]}
                         for line in c["table"]}} if c else {}


def _combined(where: Path) -> None:
    """A multi-task run's combined table (evaluation/multitask.py), as the report shows it."""
    from .evaluation.multitask import read_combined
    from .evaluation.render import cell

    c = read_combined(where)
    if not c:
        return
    table = Table(title="all tasks (" + ", ".join(f"{n}: {m.replace('_', ' ')}" for n, m in c["metrics"].items()) + ")")
    table.add_column("")
    table.add_column("rate (correct/rows)", justify="right")
    for line in c["table"]:
        table.add_row(line["label"], cell(line["rate"], line["num"], line["den"]))
    out.print(table)


@app.command()
@handled
def train(
    tasks: list[Path] = typer.Argument(..., help="task spec (YAML); several train one model on every task "
                                       "(sft, orpo), the first is the run's own"),
    method: str = typer.Option(..., "--method", "-m", help=f"one of: {' | '.join(METHODS)} (see `classifine methods`), "
                               "or auto: try them within --budget and keep the best on validation"),
    model: Optional[str] = typer.Option(None, "--model", help="gemma-3-270m | minilm-l6 | smollm2-135m | local path | HF id"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<task>-<method>)"),
    train_file: Optional[Path] = typer.Option(None, "--train", help="training data (overrides data.train)"),
    validation_file: Optional[Path] = typer.Option(None, "--validation", help="validation data (default: 10% held out)"),
    test_file: Optional[Path] = typer.Option(None, "--test", help="test data, evaluated after training"),
    settings: list[str] = typer.Option([], "--set", help="hyper-parameter KEY=VALUE (repeatable), e.g. --set epochs=2"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML file of hyper-parameters"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
    resume: bool = typer.Option(False, "--resume", help="continue training from the run's last checkpoint"),
    budget: Optional[str] = typer.Option(None, "--budget", help="with --method auto: wall-clock budget, e.g. 30m, 1h, 90s"),
    min_confidence: Optional[float] = typer.Option(None, "--min-confidence", help="annotation folder as --train: keep rows "
                                                   "whose annotator confidence is at least this"),
    soft_labels: bool = typer.Option(False, "--soft-labels", help="annotation folder as --train: the annotator's "
                                     "probabilities as targets (tfidf, embed, hybrid)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="only warnings and errors: no progress bars or logs"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON (nothing else on stdout)"),
):
    """Train a classifier from a task spec; evaluates on the test data when there is any."""
    _setup_logging(quiet or as_json)
    from .core.task import load_task

    specs = [load_task(t) for t in tasks]
    spec = specs[0]
    out_dir = out_dir or Path("runs") / f"{spec.name}-{method}"
    values = parse_settings(settings, config_file)
    if len(specs) > 1 and method == "auto":
        raise ConfigError("--method auto trains one task per run", ["train several tasks into one model with --method sft or orpo"])
    if method == "auto":
        from .auto import auto

        problems = (["--set/--config: auto chooses the settings of each try"] if values else []) + \
                   (["--min-confidence/--soft-labels: train with a fixed method on annotations"] if min_confidence is not None or soft_labels else []) + \
                   (["--resume: an auto run starts again (its tries are fast to redo or were cut by the budget)"] if resume else [])
        if problems:
            raise ConfigError("options that --method auto does not take:", problems)
        run = auto(spec, out_dir, budget=budget or "30m", model=model, train=train_file, validation=validation_file,
                   test=test_file, overwrite=overwrite, progress=not (quiet or as_json))
    else:
        if budget is not None:
            raise ConfigError("--budget applies to --method auto only", ["drop --budget, or pass --method auto"])
        from .training import train as run_train

        run = run_train(specs, method=method, model=model, out=out_dir, train=train_file, validation=validation_file,
                        test=test_file, config=values, overwrite=overwrite, resume=resume, progress=not (quiet or as_json),
                        min_confidence=min_confidence, soft_labels=soft_labels)
    from .core.runs import process_rank

    if process_rank()[0] != 0:  # under `accelerate launch` the main process reports for all
        return
    import json

    metrics = json.loads((run.dir / "metrics.json").read_text()) if (run.dir / "metrics.json").exists() else None
    if as_json:
        return _print_json({"run": str(run.dir), "method": method, "model": model, "train_seconds": run.config["train_seconds"],
                            "budget": run.config.get("budget"), "auto": run.config.get("auto"), "metrics": _headline(metrics)})
    if method == "auto":
        record = run.config["auto"]
        out.print(f"auto chose [bold]{record['chosen']}[/] in {record['elapsed_seconds']:.0f} s of a "
                  f"{record['budget_seconds']:.0f} s budget → {run.dir} (leaderboard: {run.dir / record['leaderboard']})")
    else:
        out.print(f"trained [bold]{method}[/] in {run.config['train_seconds']:.1f} s → {run.dir}")
    if metrics is not None:
        _summary(metrics, f"test: {run.config['data']['test']}")
        _combined(run.dir)
        out.print(f"report: {run.dir / 'report.md'}")


@app.command("eval")
@handled
def eval_cmd(
    run_dir: Optional[Path] = typer.Argument(None, help="run directory (or use --model and --task for a zero-shot run)"),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled data (default: the run's or the spec's test file)"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="where the report goes (default: the run directory)"),
    model: Optional[str] = typer.Option(None, "--model", help="zero-shot: evaluate this causal LM without training"),
    task: list[Path] = typer.Option([], "--task", help="zero-shot: the task spec (repeat it for the base model of a "
                                    "multi-task run: every task, the combined table)"),
    decoding: str = typer.Option("score", "--decoding", help="zero-shot: score (label scoring) or generate"),
    top: int = typer.Option(10, "--top", min=0, help="most confident mistakes and most confused pairs to list"),
    overwrite: bool = typer.Option(False, "--overwrite", help="zero-shot: replace an existing output folder"),
    engine: Optional[str] = ENGINE_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON (nothing else on stdout)"),
):
    """Evaluate a run (predictions.jsonl, metrics.json, report.md, report.html, plots), or a base
    model zero-shot with --model and --task (the "base" row to compare fine-tuned runs against)."""
    _setup_logging(quiet or as_json)
    _use_engine(engine)
    quiet = quiet or as_json
    if model is not None or task:
        if model is None or not task or run_dir is not None:
            raise ConfigError("zero-shot evaluation takes --model and --task (and no run directory)",
                              ["e.g. classifine eval --model smollm2-135m --task task.yaml --out runs/base"])
        if decoding not in ("score", "generate"):
            raise ConfigError(f"unknown decoding {decoding!r}", ["use score or generate"])
        from .core.task import load_task
        from .training import zero_shot

        specs = [load_task(t) for t in task]
        target = out_dir or Path("runs") / f"{specs[0].name}-zeroshot-{Path(model).name}"
        metrics = zero_shot(specs, model, target, data, decoding=decoding, overwrite=overwrite, progress=not quiet)
        if as_json:
            return _print_json({"run": str(target), **_headline(metrics), **_combined_json(target)})
        _summary(metrics, f"zero-shot {model} on {metrics['data']}")
        _combined(target)
        out.print(f"report: {target / 'report.md'}  {target / 'report.html'}")
        return
    if run_dir is None:
        raise ConfigError("nothing to evaluate", ["pass a run directory, or --model and --task for a zero-shot run"])
    from .evaluation.multitask import evaluate_run

    metrics = evaluate_run(run_dir, data, out_dir=out_dir, progress=not quiet, top=top)
    target = out_dir or run_dir
    if as_json:
        return _print_json({"run": str(run_dir), **_headline(metrics), **_combined_json(target)})
    _summary(metrics, f"{run_dir} on {metrics['data']}")
    _combined(target)
    out.print(f"report: {target / 'report.md'}  {target / 'report.html'}")


def _emit(result: dict, output: Optional[Path], as_json: bool) -> None:
    """Markdown (or JSON) to stdout or a file; printed plainly so it can be pasted into a card."""
    import json

    from .core.runs import atomic_write_text
    from .evaluation.compare import to_markdown

    text = json.dumps(result, ensure_ascii=False, indent=2) + "\n" if as_json else to_markdown(result)
    if output is None:
        typer.echo(text, nl=False)
    else:
        atomic_write_text(output, text)
        out.print(f"written: {output}")


@app.command()
@handled
def compare(
    runs: list[Path] = typer.Argument(..., help="run directories; the first is the base the others are compared to"),
    align_on: Optional[str] = typer.Option(None, "--align-on", help="join runs evaluated on different files on this "
                                           "predictions.jsonl column (an id, or 'text') instead of refusing"),
    leaderboard_mode: bool = typer.Option(False, "--leaderboard", help="rank the runs of one task in one table instead"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the table to a file (Markdown)"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of Markdown"),
):
    """Compare runs on the same data: overall, per slice, per subset and per class, Δ in percentage points."""
    from .evaluation import compare as C

    if leaderboard_mode and align_on:
        raise ConfigError("--align-on does not apply to --leaderboard", ["a leaderboard needs every run evaluated on the same file"])
    _emit(C.leaderboard(runs) if leaderboard_mode else C.compare(runs, align_on=align_on), output, as_json)


@app.command()
@handled
def leaderboard(
    dirs: list[Path] = typer.Argument(..., help="a folder of runs (e.g. runs/), or run folders"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the table to a file (Markdown)"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of Markdown"),
):
    """Rank every evaluated run of one task: quality next to training time, docs/s and model size."""
    from .evaluation.compare import leaderboard as board

    _emit(board(dirs), output, as_json)


# the card's options, shared by `card` and `push`
BASE_OPT = typer.Option(None, "--base", help="base run to compare with (e.g. the un-tuned model)")
ALIGN_OPT = typer.Option(None, "--align-on", help="with --base: join on this column (see compare)")
LICENSE_OPT = typer.Option(None, "--license", help="license id, e.g. apache-2.0 (default: the base model's, else other)")
LICENSE_NAME_OPT = typer.Option(None, "--license-name", help="with --license other: its short name")
LICENSE_LINK_OPT = typer.Option(None, "--license-link", help="with --license other: a URL to its text")
DATASET_OPT = typer.Option([], "--dataset", help="Hub id of the training data set (repeatable)")
LANGUAGE_OPT = typer.Option([], "--language", help="language code (repeatable); default: the 'lang' slice")
NAME_OPT = typer.Option(None, "--name", help="model name (default: the run folder's name)")


@app.command()
@handled
def card(
    run_dir: Path = typer.Argument(..., help="an evaluated run directory"),
    base: Optional[Path] = BASE_OPT, align_on: Optional[str] = ALIGN_OPT, license: Optional[str] = LICENSE_OPT,
    license_name: Optional[str] = LICENSE_NAME_OPT, license_link: Optional[str] = LICENSE_LINK_OPT,
    dataset: list[str] = DATASET_OPT, language: list[str] = LANGUAGE_OPT, name: Optional[str] = NAME_OPT,
    usage_path: Optional[str] = typer.Option(None, "--usage-path", help="path the usage example loads (default: the run)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="default: RUN/README.md and RUN/MODEL_CARD.md"),
):
    """Write a Hugging Face model card (RUN/README.md, copied to MODEL_CARD.md) from the run's metrics and configuration."""
    from .evaluation.card import write_card

    path = write_card(run_dir, output=output, base=base, align_on=align_on, license=license, license_name=license_name,
                      license_link=license_link, datasets=dataset, languages=language or None, name=name,
                      usage_path=usage_path)
    out.print(f"model card: {path}")


@app.command()
@handled
def push(
    run_dir: Path = typer.Argument(..., help="an evaluated run directory"),
    repo: str = typer.Option(..., "--repo", help="Hub repository: NAME or OWNER/NAME (created if missing)"),
    private: bool = typer.Option(False, "--private", help="create the repository private"),
    token_env: str = typer.Option("HF_TOKEN", "--token-env", help="environment variable holding a write token "
                                  "(else the token of `hf auth login`)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="write the card and list the files, upload nothing"),
    base: Optional[Path] = BASE_OPT, align_on: Optional[str] = ALIGN_OPT, license: Optional[str] = LICENSE_OPT,
    license_name: Optional[str] = LICENSE_NAME_OPT, license_link: Optional[str] = LICENSE_LINK_OPT,
    dataset: list[str] = DATASET_OPT, language: list[str] = LANGUAGE_OPT, name: Optional[str] = NAME_OPT,
):
    """Upload a run to the Hugging Face Hub: the card as README.md, model/, config, metrics and reports
    (never checkpoints, logs, predictions, locks or temp files)."""
    from .evaluation.card import push as push_run

    result = push_run(run_dir, repo, private=private, token_env=token_env, dry_run=dry_run, base=base,
                      align_on=align_on, license=license, license_name=license_name, license_link=license_link,
                      datasets=dataset, languages=language or None, name=name)
    if dry_run:
        out.print(f"would upload {len(result['files'])} files of {run_dir} to {result['repo']}:", highlight=False,
                  soft_wrap=True)
        for f in result["files"]:
            typer.echo(f"  {f}")
        return
    out.print(f"pushed {len(result['files'])} files to {result['repo']}: {result['url']}", highlight=False,
              soft_wrap=True)


@app.command()
@handled
def predict(
    run_dir: Path = typer.Argument(..., help="run directory"),
    input_path: Path = typer.Option(..., "--input", "-i", help="CSV, JSONL or Parquet with the task's text fields"),
    output_path: Path = typer.Option(..., "--output", "-o", help=".jsonl or .csv"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    overwrite: bool = typer.Option(False, "--overwrite", help="discard an interrupted run's output instead of resuming it"),
    sync_seconds: float = typer.Option(2.0, "--sync-seconds", min=0, help="how often finished rows are made durable"),
    task: Optional[str] = typer.Option(None, "--task", help="multi-task run: the task to answer (default: the run's own)"),
    engine: Optional[str] = ENGINE_OPT,
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON (nothing else on stdout)"),
):
    """Predict a file in streaming batches: label + probability of every label per record.

    Finished rows are kept when the run is interrupted; re-running the same command continues."""
    _setup_logging(quiet or as_json)
    _use_engine(engine)
    from .predict.predictor import predict_file

    info = predict_file(run_dir, input_path, output_path, batch_size=batch_size, progress=not (quiet or as_json),
                        overwrite=overwrite, sync_seconds=sync_seconds, task=task)
    if as_json:
        return _print_json(info)
    resumed = f", resumed after {info['resumed_from']}" if info.get("resumed_from") else ""
    out.print(f"{info['records']} records → {info['output']} ({info['records_per_second']} rec/s{resumed})")


@app.command()
@handled
def annotate(
    task: Path = typer.Argument(..., help="task spec (YAML): labels, instruction and label descriptions make the prompt"),
    input_path: Path = typer.Option(..., "--input", "-i", help="unlabelled CSV, JSONL or Parquet with the task's text fields"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="annotation folder (annotations.jsonl, annotation.json, cache)"),
    model: str = typer.Option(..., "--model", help="the server's model name, or a local causal LM (packaged name, path, HF id)"),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1; "
                                           "without it --model runs locally with label scoring"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="environment variable that holds the API key"),
    examples: Optional[Path] = typer.Option(None, "--examples", help="labelled rows for few-shot examples"),
    shots: int = typer.Option(4, "--shots", help="examples per prompt (with --examples)"),
    choose: str = typer.Option("diverse", "--choose", help="which examples: fixed (the file's first) | diverse (one per label) | similar (nearest)"),
    concurrency: int = typer.Option(4, "--concurrency", help="requests in flight at once (server)"),
    timeout: float = typer.Option(60.0, "--timeout", help="seconds per request before it is retried"),
    retries: int = typer.Option(5, "--retries", help="retries on timeouts, 429 and 5xx"),
    logprobs: bool = typer.Option(True, "--logprobs/--no-logprobs", help="ask the server for log-probabilities "
                                  "(a probability per label); off: the answer alone, no confidence"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="rows written to disk together"),
    plan: bool = typer.Option(False, "--plan", help="print the calls and prompt tokens it would spend; call nothing"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a folder of another job (cached answers are reused)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Label an unlabelled file with an LLM: a label, a probability per label and a confidence per row.

    Resumable: answers are cached in the folder, so a re-run or a run after a crash makes no call twice."""
    _setup_logging(quiet or as_json)
    from .annotation.annotators import make_annotator
    from .annotation.runner import annotate as run_annotate

    annotator = make_annotator(model, base_url, api_key_env, concurrency, timeout, retries, logprobs=logprobs)
    info = run_annotate(task, input_path, out_dir, annotator, examples=examples, shots=shots, shot_mode=choose,
                        overwrite=overwrite, plan=plan, batch_size=batch_size, progress=not (quiet or as_json))
    if as_json:
        return _print_json(info)
    if plan:
        out.print(f"plan: {info['rows']} rows ({info['rows_done']} done), {info['requests']} requests, "
                  f"{info['cached']} cached, {info['to_make']} to make, ≈{info['prompt_tokens_estimate']} prompt tokens "
                  f"({info['note']}); annotator: {info['annotator']}")
        return
    c = info["counts"]
    out.print(f"{c['rows']} rows → {out_dir / 'annotations.jsonl'}: {c['valid']} valid, {c['invalid']} invalid "
              f"({100 * c['invalid_rate']:.1f}%); {info['calls_this_run']} calls this run, "
              f"{info['cache_hits_this_run']} answers from the cache, {info['seconds']:.1f} s")


@app.command()
@handled
def review(
    folder: Path = typer.Argument(..., help="annotation folder (the --out of classifine annotate)"),
    gold: Optional[Path] = typer.Option(None, "--gold", help="human labels for some of the rows (the task's label column)"),
    others: list[Path] = typer.Option([], "--with", help="another annotation folder of the same input (repeatable)"),
    apply: Optional[Path] = typer.Option(None, "--apply", help="reviewed CSV (columns row, reviewed_label) to merge back"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Agreement with people and between annotators, and a review queue (review.csv, report.html)."""
    _setup_logging(as_json)
    from .annotation.review import review as run_review

    info = run_review(folder, gold=gold, others=others, apply=apply)
    if as_json:
        return _print_json(info)
    if info.get("applied"):
        a = info["applied"]
        out.print(f"applied {a['applied']} reviewed labels: {a['confirmed']} confirmed, {a['changed']} changed "
                  f"({a['reviewed_total']} rows reviewed in all)")
    if info.get("gold"):
        g = info["gold"]
        m = g["metrics"]
        head = ", ".join(f"{k} {m[k]:.4f}" for k in ("accuracy", "macro_f1", "subset_accuracy") if k in m)
        kappa = f", Cohen's kappa {g['cohen_kappa']:.4f}" if "cohen_kappa" in g else ""
        out.print(f"vs human labels on {g['rows']} rows: {head}{kappa}")
    if info.get("annotators", {}).get("fleiss_kappa") is not None:
        a = info["annotators"]
        out.print(f"{len(a['annotators'])} annotators on {a['rows']} rows: Fleiss' kappa {a['fleiss_kappa']:.4f}, "
                  f"Krippendorff's alpha {a['krippendorff_alpha']:.4f}")
    for way, g in (info.get("gold_consensus") or {}).items():
        out.print(f"  combined ({way.replace('_', ' ')}) vs human labels: accuracy {g['accuracy']:.4f}, macro_f1 {g['macro_f1']:.4f}")
    q = info["queue"]
    out.print(f"review queue: {q['flagged']} flagged of {q['rows']} rows → {q['file']} (and {folder / 'report.html'})")


@app.command()
@handled
def export(
    run_dir: Path = typer.Argument(..., help="a head run directory"),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx (head runs; needs classifine's 'export' extra: onnx, onnxruntime, onnxscript)"),
    output: Optional[Path] = typer.Option(None, "--out", "-o", help="folder to write (default: RUN/onnx)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON (nothing else on stdout)"),
):
    """Export a run for other runtimes: ONNX for head runs, checked against PyTorch with onnxruntime."""
    _setup_logging(as_json)
    from .deploy.export import export as export_run

    info = export_run(run_dir, fmt, output)
    if as_json:
        return _print_json(info)
    out.print(f"{info['format']}: {info['path']} (logits within {info['max_abs_diff_vs_pytorch']:.1e} of PyTorch)",
              highlight=False, soft_wrap=True)


@app.command("predict-ray")
@handled
def predict_ray(
    run_dir: Path = typer.Argument(..., help="run directory (on the driver; each Ray actor loads it)"),
    input_path: str = typer.Argument(..., help="CSV/TSV/JSONL/Parquet file, a folder of Parquet shards, or any "
                                               "path Ray Data reads (s3://...)"),
    output: str = typer.Argument(..., help="a folder of Parquet shards, or one .jsonl/.csv file in input order"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    concurrency: int = typer.Option(1, "--concurrency", min=1, help="Ray actors, each holding one Predictor"),
    num_cpus: float = typer.Option(1.0, "--num-cpus", help="CPUs reserved per actor (fractions work)"),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS or a local Ray)"),
    engine: Optional[str] = ENGINE_OPT,
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
):
    """Predict a corpus on Ray Data (one machine or a cluster): map_batches with one Predictor per actor."""
    _setup_logging(quiet=True)
    _use_engine(engine)
    from .predict.distributed import predict_ray as run_ray

    info = run_ray(run_dir, input_path, output, batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus,
                   address=address)
    if as_json:
        import json

        typer.echo(json.dumps(info))
    else:
        out.print(f"{info['records']} records → {info['output']} ({info['records_per_second']} rec/s)")


@app.command()
@handled
def serve(
    run_dir: Optional[Path] = typer.Argument(None, help="run directory (with --sagemaker, default /opt/ml/model)"),
    host: Optional[str] = typer.Option(None, "--host", help="address to bind (default 127.0.0.1; 0.0.0.0 with "
                                                            "--sagemaker; 0.0.0.0 exposes it to the network)"),
    port: Optional[int] = typer.Option(None, "--port", "-p", min=0, max=65535, help="default 8000; 8080 with --sagemaker"),
    sagemaker: bool = typer.Option(False, "--sagemaker", help="SageMaker's container contract: port 8080 on all "
                                   "interfaces, the model from /opt/ml/model unless a run is given"),
    token: Optional[str] = typer.Option(None, "--token", envvar="CLASSIFINE_TOKEN", show_envvar=True,
                                        help="require 'Authorization: Bearer TOKEN' on the prediction routes and /metrics"),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name",
                                                    help="the model's name in the vLLM and KServe APIs (default: the task's name)"),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="records per model call (micro-batch)"),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", help="how long a batch waits for more requests"),
    no_batching: bool = typer.Option(False, "--no-batching", help="one model call per request"),
    max_records: int = typer.Option(128, "--max-records", help="records per request (more: 413)"),
    max_chars: int = typer.Option(10_000, "--max-chars", help="characters per text field (more: 422)"),
    backend: str = typer.Option("torch", "--backend", help="torch | vllm (generative runs on a CUDA GPU)"),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="vllm only: allow the model's own code"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch (and ONNX Runtime) threads for the model (default: torch's)"),
    engine: Optional[str] = ENGINE_OPT,
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level"),
):
    """Serve a run over HTTP: /v1/classify, TEI's /predict, vLLM's /classify, SageMaker's /invocations,
    KServe v2 under /v2, plus /v1/task, /healthz, /metrics and a playground at /."""
    _setup_logging(quiet=False)
    _use_engine(engine)
    logging.getLogger("classifine.serve").setLevel(logging.INFO)
    from .serve.app import ServeSettings
    from .serve.app import serve as run_server

    if run_dir is None:
        if not sagemaker:
            raise ConfigError("no run to serve", ["pass a run directory: classifine serve runs/NAME "
                                                  "(or --sagemaker to read /opt/ml/model)"])
        run_dir = Path("/opt/ml/model")
    settings = ServeSettings(max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, batching=not no_batching,
                             max_records=max_records, max_chars=max_chars, token=token, model_name=served_model_name)
    run_server(run_dir, host=host or ("0.0.0.0" if sagemaker else "127.0.0.1"), port=port if port is not None else
               (8080 if sagemaker else 8000), settings=settings, backend=backend, trust_remote_code=trust_remote_code,
               log_level=log_level, threads=threads)


@app.command()
@handled
def models(as_json: bool = typer.Option(False, "--json", help="print the list as JSON")):
    """List the packaged offline models."""
    from .core.models import PACKAGED

    if as_json:
        return _print_json([{"name": m.name, "package": m.package, "install": m.install, "languages": list(m.languages),
                             "decoder": m.decoder} for m in PACKAGED.values()])
    table = Table("name", "package", "languages", "kind")
    for m in PACKAGED.values():
        table.add_row(m.name, m.install, ", ".join(m.languages), "decoder" if m.decoder else "encoder")
    out.print(table)


@app.command()
@handled
def methods(as_json: bool = typer.Option(False, "--json", help="print the list as JSON")):
    """List the training methods."""
    if as_json:
        from .methods import get_method

        return _print_json([{"name": name, "what": what, "kinds": list(get_method(name).KINDS),
                             "needs_model": get_method(name).NEEDS_MODEL} for name, what in METHODS.items()])
    table = Table("method", "what")
    for name, what in METHODS.items():
        table.add_row(name, what)
    out.print(table)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `classifine ... | head`
        sys.exit(0)


if __name__ == "__main__":
    main()
