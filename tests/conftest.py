from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the Hub; a download attempt fails fast
# graphs the tests export stay out of the user's cache: one folder per test session, shared by the
# xdist workers (they inherit the variable) and removed by the process that made it (a Gemma graph
# is 1 GB; left behind, every session's graphs filled the disk)
if not os.environ.get("CLASSIFINE_ONNX_CACHE"):
    os.environ["CLASSIFINE_ONNX_CACHE"] = tempfile.mkdtemp(prefix="classifine-onnx-")
    atexit.register(shutil.rmtree, os.environ["CLASSIFINE_ONNX_CACHE"], ignore_errors=True)

from toy import tiny_bert, tiny_gemma, write_task  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    # two workers on two cores: more torch threads per worker only make them wait on each other
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def bert_path(tmp_path_factory) -> str:
    return str(tiny_bert(tmp_path_factory.mktemp("tiny-bert")))


@pytest.fixture(scope="session")
def gemma_path(tmp_path_factory) -> str:
    return str(tiny_gemma(tmp_path_factory.mktemp("tiny-gemma")))


@pytest.fixture(scope="session")
def small_tasks(tmp_path_factory) -> dict[str, Path]:
    """Fewer rows, for the generative methods."""
    base = tmp_path_factory.mktemp("gen")
    return {k: write_task(base / k, k, n_train=40, n_test=8) for k in ("single_label", "multi_label", "ordinal", "extraction")}


@pytest.fixture(scope="session")
def toy_tasks(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("toy")
    return {kind: write_task(base / kind, kind) for kind in ("single_label", "multi_label", "ordinal", "extraction")}


def pytest_collection_modifyitems(config, items):
    # slow tests last, so a failure in the fast ones shows first
    items.sort(key=lambda it: 1 if it.get_closest_marker("slow") else 0)
