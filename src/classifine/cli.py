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
from rich.table import Table

from .errors import ClassifineError, ConfigError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turn language models into dependable text classifiers (see README.md).")
err = Console(stderr=True)
out = Console()


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(level=logging.ERROR if quiet else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err, show_time=False, show_path=False)], force=True)
    for noisy in ("transformers", "datasets", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def handled(fn):
    """Run a command; a ClassifineError becomes its message and exit code."""
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


def _summary(metrics: dict, title: str) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("accuracy", "subset_accuracy", "macro_f1", "weighted_f1", "micro_f1", "mae", "docs_per_second"):
        if key in metrics and metrics[key] is not None:
            v = metrics[key]
            table.add_row(key, f"{v:.2f}" if key in ("mae", "docs_per_second") else f"{100 * v:.2f}%")
    out.print(table)


@app.command()
@handled
def train(
    task: Path = typer.Argument(..., help="task spec (YAML)"),
    method: str = typer.Option(..., "--method", "-m", help="tfidf | embed | head"),
    model: Optional[str] = typer.Option(None, "--model", help="gemma-3-270m | minilm-l6 | smollm2-135m | local path | HF id"),
    out_dir: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default runs/<task>-<method>)"),
    train_file: Optional[Path] = typer.Option(None, "--train", help="training data (overrides data.train)"),
    validation_file: Optional[Path] = typer.Option(None, "--validation", help="validation data (default: 10% held out)"),
    test_file: Optional[Path] = typer.Option(None, "--test", help="test data, evaluated after training"),
    settings: list[str] = typer.Option([], "--set", help="hyper-parameter KEY=VALUE (repeatable), e.g. --set epochs=2"),
    config_file: Optional[Path] = typer.Option(None, "--config", help="YAML file of hyper-parameters"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing run directory"),
    resume: bool = typer.Option(False, "--resume", help="continue training from the run's last checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars or warnings"),
):
    """Train a classifier from a task spec; evaluates on the test data when there is any."""
    _setup_logging(quiet)
    from .task import load_task
    from .training import train as run_train

    spec = load_task(task)
    out_dir = out_dir or Path("runs") / f"{spec.name}-{method}"
    values = parse_settings(settings, config_file)
    run = run_train(spec, method=method, model=model, out=out_dir, train=train_file, validation=validation_file,
                    test=test_file, config=values, overwrite=overwrite, resume=resume, progress=not quiet)
    out.print(f"trained [bold]{method}[/] in {run.config['train_seconds']:.1f} s → {run.dir}")
    if (run.dir / "metrics.json").exists():
        import json

        _summary(json.loads((run.dir / "metrics.json").read_text()), f"test: {run.config['data']['test']}")
        out.print(f"report: {run.dir / 'report.md'}")


@app.command("eval")
@handled
def eval_cmd(
    run_dir: Path = typer.Argument(..., help="run directory"),
    data: Optional[Path] = typer.Option(None, "--data", help="labelled data (default: the run's test file)"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Evaluate a run: metrics.json, report.md, confusion.png and predictions.jsonl in the run directory."""
    _setup_logging(quiet)
    from .training import evaluate_run

    metrics = evaluate_run(run_dir, data, progress=not quiet)
    _summary(metrics, f"{run_dir} on {metrics['data']}")
    out.print(f"report: {run_dir / 'report.md'}")


@app.command()
@handled
def predict(
    run_dir: Path = typer.Argument(..., help="run directory"),
    input_path: Path = typer.Option(..., "--input", "-i", help="CSV, JSONL or Parquet with the task's text fields"),
    output_path: Path = typer.Option(..., "--output", "-o", help=".jsonl or .csv"),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Predict a file in streaming batches: label + probability of every label per record."""
    _setup_logging(quiet)
    from .predictor import predict_file

    info = predict_file(run_dir, input_path, output_path, batch_size=batch_size, progress=not quiet)
    out.print(f"{info['records']} records → {info['output']} ({info['records_per_second']} rec/s)")


@app.command()
def models():
    """List the packaged offline models."""
    from .models import PACKAGED

    table = Table("name", "package", "languages", "kind")
    for m in PACKAGED.values():
        table.add_row(m.name, m.install, ", ".join(m.languages), "decoder" if m.decoder else "encoder")
    out.print(table)


@app.command()
def methods():
    """List the training methods."""
    from .methods import METHODS

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
