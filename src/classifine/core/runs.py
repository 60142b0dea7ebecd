"""The run directory (README.md, "Run directory"): the unit that eval, predict, serve and card read.

Every file is written atomically (a temp file in the same folder, then a rename), so a crash leaves
either the old file or the new one, never half of one.
"""
from __future__ import annotations

import json
import os
import platform
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from ..errors import RunError
from .task import TaskSpec, load_task


def _file_mode() -> int:
    """The mode a plain open() would give a new file (0644 under the usual umask 022). Read once:
    os.umask can only be read by setting it, which must not race with other threads later."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp makes 0600: a copied run must stay readable by others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_yaml(path: Path, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("classifine", "torch", "transformers", "peft", "trl", "scikit-learn", "datasets", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def hardware() -> str:
    """What trained the run, for config.yaml and the model card."""
    cpu = platform.processor() if platform.system() != "Linux" else None  # Linux answers only the machine
    try:
        cpu = cpu or next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name")), None)
    except OSError:
        pass
    parts = [f"{platform.machine()}{f' ({cpu})' if cpu else ''}, {os.cpu_count()} CPU cores"]
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())))
    except ImportError:  # pragma: no cover
        pass
    return "; ".join(parts)


def prepare_run_dir(out: str | Path, overwrite: bool = False, resume: bool = False) -> Path:
    """Create the run folder; refuse to mix a new run into an old one unless told to."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory", ["choose another --out"])
    if (out / INCOMPLETE).exists() and not (overwrite or resume):
        raise RunError(f"{out} holds a training that did not finish (it was stopped or killed)",
                       ["pass --resume to continue it, --overwrite to start again, or choose another --out"])
    if out.is_dir() and any(out.iterdir()) and not (overwrite or resume):
        raise RunError(f"run directory {out} already holds a run",
                       ["choose another --out, pass --overwrite to replace it, or --resume to continue its training"])
    if overwrite and out.is_dir():
        import shutil

        for child in out.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    (out / MANIFEST).unlink(missing_ok=True)  # the run is being rewritten: no longer the one the manifest describes
    # decisions are tuned on the new model's raw probabilities; a stale file would be applied first
    (out / "model" / "decision.json").unlink(missing_ok=True)
    (out / "model").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / INCOMPLETE, "training started; removed when the run is complete\n")
    return out


# --- the manifest: the run checks itself --------------------------------------------------------

MANIFEST = "manifest.json"
INCOMPLETE = ".incomplete"  # from the start of `train` until the manifest is written: --resume continues
# what a run is: the files prediction needs. Reports, predictions and cards are outputs that eval
# and card rewrite, checkpoints and logs are training's own; none of them are in the manifest.
MANIFEST_FILES = ("task.yaml", "config.yaml")
MANIFEST_FOLDERS = ("model",)


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_files(run_dir: Path) -> list[Path]:
    files = [run_dir / f for f in MANIFEST_FILES if (run_dir / f).is_file()]
    for folder in MANIFEST_FOLDERS:
        files += sorted(p for p in (run_dir / folder).rglob("*") if p.is_file() and not p.name.startswith("."))
    # a multi-task run's other frozen specs (not their report folders beside them, which eval rewrites)
    return files + sorted(p for p in (run_dir / "tasks").glob("*.yaml") if p.is_file())


def share_files(run_dir: Path) -> None:
    """Give files the libraries wrote (safetensors writes 0600) the mode our own writes get, so a
    copied run stays readable by others."""
    for p in Path(run_dir).rglob("*"):
        if p.is_file() and not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & FILE_MODE != FILE_MODE:
            os.chmod(p, stat.S_IMODE(p.stat().st_mode) | FILE_MODE)


def write_manifest(run_dir: Path) -> None:
    """A checksum per file of the run, written last: its presence says the run is complete."""
    run_dir = Path(run_dir)
    share_files(run_dir)
    entries = {str(p.relative_to(run_dir)): {"sha256": file_sha256(p), "bytes": p.stat().st_size} for p in _run_files(run_dir)}
    atomic_write_json(run_dir / MANIFEST, {"version": 1, "files": entries})
    (run_dir / INCOMPLETE).unlink(missing_ok=True)


def verify_manifest(run_dir: Path) -> None:
    """Every file the manifest lists is there and unchanged, and no file was added to ``model/``;
    runs made before manifests existed (none) are taken as they are."""
    path = Path(run_dir) / MANIFEST
    if not path.is_file():
        return
    try:
        listed = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        raise RunError(f"{path} is damaged (not the JSON classifine writes)",
                       ["restore the run folder from a copy, or train it again with --overwrite"]) from None
    problems = []
    for name, entry in listed.items():
        f = Path(run_dir) / name
        if not f.is_file():
            problems.append(f"{name}: missing")
        elif f.stat().st_size != entry["bytes"] or file_sha256(f) != entry["sha256"]:
            problems.append(f"{name}: changed since training (checksum differs)")
    # only model/ is checked for strays: a multi-task run's tasks/*.yaml joined the manifest later, and
    # a spec not named in config.yaml is never read (Run.tasks)
    extra = [name for name in (str(p.relative_to(run_dir)) for p in _run_files(Path(run_dir)))
             if name not in listed and name.split("/")[0] in MANIFEST_FOLDERS]
    problems += [f"{name}: not part of the run as trained" for name in extra]
    if problems:
        raise RunError(f"run {run_dir} is damaged:", problems + [
            "restore the run folder from a copy, or train it again (classifine train ... --out RUN --overwrite)"])


@contextmanager
def run_lock(out: str | Path):
    """Hold the run folder for one ``train`` at a time: a second process on the same ``--out`` is
    refused instead of mixing its files into the first one's. The lock is the folder's own (flock
    on its descriptor), released when the process ends however it ends, SIGKILL included."""
    import fcntl

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a directory", ["choose another --out"])
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"another classifine train is writing into {out}",
                           ["wait for it to finish, or choose another --out"]) from None
        yield out
    finally:
        os.close(fd)


def process_rank() -> tuple[int, int]:
    """(rank, world size) under `accelerate launch` / torchrun; (0, 1) for a plain process."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def barrier() -> None:
    """Wait for every process of a distributed launch; a no-op in a plain process."""
    if process_rank()[1] <= 1:
        return
    import torch
    from accelerate import PartialState

    # the same shared state the Trainer uses later (gloo on CPU, nccl on CUDA)
    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


@contextmanager
def fit_dir(run_dir: Path):
    """Where a method writes during training. The main process writes into the run; the others of a
    distributed launch get a scratch folder whose checkpoints/ is the run's, so they share the
    Trainer's checkpoints (best-model loading, resume) while their own copies of the model files,
    logs and metadata go nowhere: the run directory is written once, by the main process."""
    if process_rank()[0] == 0:
        yield run_dir
        return
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="classifine-rank-") as scratch:
        (Path(scratch) / "model").mkdir()
        (Path(scratch) / "checkpoints").symlink_to((run_dir / "checkpoints").resolve(), target_is_directory=True)
        yield Path(scratch)


@dataclass
class Run:
    """A finished run: its folder, frozen task spec and recorded configuration."""

    dir: Path
    task: TaskSpec
    config: dict

    @property
    def method(self) -> str:
        return self.config["method"]

    @property
    def model_dir(self) -> Path:
        return self.dir / "model"

    @cached_property
    def tasks(self) -> dict[str, TaskSpec]:
        """Every task the run's model answers, its own first; a multi-task run keeps the others'
        frozen specs in ``tasks/<name>.yaml`` (in training order, listed in config.yaml)."""
        out = {self.task.name: self.task}
        for name in self.config.get("tasks") or []:
            if name != self.task.name:
                out[name] = load_task(self.dir / "tasks" / f"{name}.yaml")
        return out

    def task_named(self, name: str | None) -> TaskSpec:
        """The task called ``name`` (None: the run's own), or a RunError that lists the run's tasks."""
        if name is None:
            return self.task
        tasks = self.tasks
        if name not in tasks:
            raise RunError(f"the run {self.dir} has no task {name!r}", [f"its tasks: {', '.join(tasks)}"])
        return tasks[name]

    def task_dir(self, name: str, root: Path | None = None) -> Path:
        """Where a task's evaluation files go: the run's own task at the root, others in tasks/<name>/."""
        root = self.dir if root is None else Path(root)
        return root if name == self.task.name else root / "tasks" / name

    @classmethod
    def load(cls, run_dir: str | Path, partial_ok: bool = False) -> "Run":
        """The run in ``run_dir``, checked against its manifest. ``partial_ok``: a run still being
        written (training itself loads it to tune decisions before the manifest exists)."""
        d = Path(run_dir)
        if not d.is_dir():
            raise RunError(f"run directory {d} not found", ["pass the --out folder of a `classifine train` run"])
        if (d / INCOMPLETE).exists() and not partial_ok:
            raise RunError(f"the training of {d} did not finish (it was stopped or killed)",
                           [f"continue it: run the same classifine train command with --out {d} --resume",
                            "or start again with --overwrite"])
        missing = [f for f in ("task.yaml", "config.yaml", "model") if not (d / f).exists()]
        if missing:
            raise RunError(f"{d} is not a complete run: missing {missing}",
                           ["training did not finish; re-run `classifine train` (with --resume to continue)"])
        verify_manifest(d)
        try:
            config = yaml.safe_load((d / "config.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise RunError(f"{d / 'config.yaml'} is damaged: {str(e).splitlines()[0]}",
                           ["restore the run folder from a copy, or train it again with --overwrite"]) from None
        if not isinstance(config, dict) or "method" not in config:
            raise RunError(f"{d / 'config.yaml'} is not a run configuration (no method)",
                           ["restore the run folder from a copy, or train it again with --overwrite"])
        return cls(dir=d, task=load_task(d / "task.yaml"), config=config)
