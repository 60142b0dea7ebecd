"""Faster forward passes of frozen models on CPU.

Two levers, both measured before they are used (BENCHMARKS.md, "Inference speed"):
- **Batches bounded by padded tokens, not rows** (TEI's ``max-batch-tokens``), over texts sorted
  by length: short texts travel in large batches, long ones in small batches, and padding, which a
  frozen model pays for in full, stays small.
- **ONNX Runtime** for the forward pass: ``torch.onnx`` (dynamo exporter) writes the graph, ORT
  fuses attention, layer norms and GELU and runs it 2-4x faster than eager PyTorch on this CPU, at
  the same fp32 numbers (every export is checked against PyTorch, refused beyond ``TOLERANCE``).
  ``onnx-int8`` quantises the weights of the exported graph (ORT dynamic quantisation): faster
  again, but it moves probabilities, so a run uses it only where its validation labels agree.
  ``onnx-int8-checked`` runs the int8 graph and gives the fp32 answer wherever int8's could differ
  (``predict/checked.py``): the Predictor adds the check, every Scorer sees ``onnx-int8``.

Which engine a run uses is chosen after training (``predict/engine.py``), recorded in
``model/inference.json`` (this module alone writes and reads it) and can be overridden per call
(``--engine``) or per machine (``CLASSIFINE_ENGINE``). ``torch`` is always available; the others
need the ``export`` extra (onnx, onnxruntime, onnxscript).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelError
from .runs import atomic_write_json

log = logging.getLogger("classifine")
ENGINES = ("torch", "onnx", "onnx-int8")
CHECKED = "onnx-int8-checked"  # int8 graph + fp32 for rows near a decision boundary (predict/checked.py)
ENGINE_ENV = "CLASSIFINE_ENGINE"
ONNX_CACHE_ENV = "CLASSIFINE_ONNX_CACHE"  # default: <CLASSIFINE_CACHE>/onnx
ONNX_CACHE_GB_ENV = "CLASSIFINE_ONNX_CACHE_GB"
ONNX_CACHE_GB = 8.0  # a Gemma 270M graph is 1.1 GB; each pooling/depth/model is its own graph
INFERENCE = "inference.json"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}  # plus "<file>.data" for external weights
TOLERANCE = 1e-4        # largest |ONNX - PyTorch| accepted on an export's check inputs
INPUTS = ["input_ids", "attention_mask"]  # what every exported graph takes (token types default to zeros)
# texts of different lengths: the check uses other lengths and batch sizes than the example
EXAMPLE = ["a short text", "a somewhat longer text to give the example batch a second length", "two words"]
CHECK = ["one", "a longer text than any in the example batch, so the sequence axis must really be dynamic here",
         "", "numbers 1 2 3 and a few more words", "x"]
MAX_BATCH_TOKENS = 4096  # padded tokens per batch; measured: larger batches gain nothing on 2 cores
MAX_BATCH_ROWS = 128
MIN_SPLIT_ROWS = 16      # a batch this full may end early to save padding (see token_batches)
MIN_FILL = 0.8           # ... where the next text is shorter than this share of the batch's longest
GRAPH_VERSION = 2        # part of every cache key: bump when export or quantisation changes (2: per-channel int8)


def token_batches(lengths, max_tokens: int = MAX_BATCH_TOKENS, max_rows: int = MAX_BATCH_ROWS) -> list[np.ndarray]:
    """Indices of the texts in batches, longest first, each holding at most ``max_tokens`` padded
    tokens (rows x longest row) and ``max_rows`` rows; a text longer than ``max_tokens`` goes alone.
    A batch of ``MIN_SPLIT_ROWS`` rows or more also ends where the next text is shorter than
    ``MIN_FILL`` of its longest: on a CPU the cost is linear in padded tokens from 16 rows up, so
    padding is pure loss (64 random Korean comments in one batch padded to the longest ran at 20
    docs/s with Gemma 3 270M, the same texts in batches of similar lengths at 40)."""
    lengths = np.asarray(lengths)
    order = np.argsort(-lengths, kind="stable")
    batches, start = [], 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)  # sorted: the first row is the batch's longest
        rows = max(1, min(max_rows, max_tokens // longest))
        end = min(start + rows, len(order))
        short = np.nonzero(lengths[order[start + MIN_SPLIT_ROWS:end]] < MIN_FILL * longest)[0]
        if len(short):
            end = start + MIN_SPLIT_ROWS + int(short[0])
        batches.append(order[start:end])
        start = end
    return batches


# --- which engine -----------------------------------------------------------------------------

def onnx_missing() -> list[str]:
    """The packages the ONNX engines need and this environment lacks."""
    return [m for m in ("onnx", "onnxruntime", "onnxscript") if importlib.util.find_spec(m) is None]


def check_engine(engine: str) -> str:
    if engine not in ("auto", *ENGINES, CHECKED):
        raise ConfigError(f"unknown inference engine {engine!r}", [f"engines: auto, {', '.join(ENGINES)}, {CHECKED}"])
    if engine.startswith("onnx") and onnx_missing():
        raise ConfigError(f"engine {engine} needs {', '.join(onnx_missing())}", ["pip install 'classifine[export]'"])
    return engine


def requested(engine: str | None = None) -> str | None:
    """The engine asked for by the caller, else by ``CLASSIFINE_ENGINE``; None: the run's choice."""
    engine = engine or os.environ.get(ENGINE_ENV) or None
    return check_engine(engine) if engine and engine != "auto" else None


def graph_engine(engine: str) -> str:
    """What runs a Scorer's forward pass for ``engine``: the checked engine's graph is int8's."""
    return "onnx-int8" if engine == CHECKED else engine


def save_choice(model_dir: Path, choice: dict) -> None:
    atomic_write_json(Path(model_dir) / INFERENCE, choice)


def read_choice(model_dir: Path) -> dict:
    """What was chosen after training; ``{"engine": "torch"}`` for runs from before the choice."""
    path = Path(model_dir) / INFERENCE
    return json.loads(path.read_text()) if path.exists() else {"engine": "torch"}


# --- ONNX -------------------------------------------------------------------------------------

def export(module, example: dict, path: Path, output: str, check: dict | None = None) -> float:
    """Write ``module(**inputs) -> one tensor`` as ONNX at ``path`` with dynamic batch and sequence
    axes on every input; returns the largest |ONNX - PyTorch| on ``check`` (other shapes than the
    example's). Written to a temporary folder first, so ``path`` is complete or absent."""
    import torch

    if onnx_missing():
        raise ConfigError(f"ONNX needs {', '.join(onnx_missing())}", ["pip install 'classifine[export]'"])
    names = list(example)
    # the dynamo exporter: the TorchScript one froze a shape of BERT's embeddings on transformers 5
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.stem}-", dir=path.parent))
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        try:
            with warnings.catch_warnings():  # axis-renaming and pytree deprecation notes, nothing to act on
                warnings.simplefilter("ignore")
                torch.onnx.export(module.eval(), tuple(example[k] for k in names), str(tmp / path.name), dynamo=True,
                                  input_names=names, output_names=[output], verbose=False,
                                  dynamic_shapes={k: {0: batch, 1: seq} for k in names})
        except Exception as e:  # the exporter's own errors name the operator it could not convert
            raise ModelError("torch.onnx could not export the model", [str(e).splitlines()[0][:300]]) from e
        diff = 0.0
        if check is not None:
            got = OnnxModel(tmp / path.name)(**{k: v.numpy() for k, v in check.items()})
            with torch.inference_mode():
                want = module(**check).float().numpy()
            diff = float(np.abs(got - want).max())
            if not diff <= TOLERANCE:
                raise ModelError(f"the ONNX graph's outputs differ from PyTorch's by {diff:.2e} (more than {TOLERANCE})",
                                 ["the PyTorch model itself is fine: use it (engine torch)"])
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == path.name):  # the graph last: complete when present
            os.replace(f, path.parent / f.name)
        return diff
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def quantize(src: Path, dst: Path) -> None:
    """int8 weights, activations quantised on the fly (ORT dynamic quantisation). Written in a
    temporary folder under its final name: external weights record the file name they belong to."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.stem}-", dir=dst.parent))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # per channel: the same speed as per tensor, and on MiniLM 99.3% labels kept against 98.2%
            quantize_dynamic(str(src), str(tmp / dst.name), weight_type=QuantType.QInt8, per_channel=True,
                             use_external_data_format=src.with_name(src.name + ".data").exists())
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == dst.name):  # the graph last: complete when present
            os.replace(f, dst.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OnnxModel:
    """An ONNX Runtime session on as many threads as torch uses (``--threads`` caps both)."""

    def __init__(self, path: Path):
        import onnxruntime as ort
        import torch

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # ORT warns about every unused initializer of a pruned graph
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise ModelError(f"onnxruntime cannot load {path}", [str(e).splitlines()[0][:300], "use --engine torch"]) from e
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, **arrays) -> np.ndarray:
        return self.session.run(None, {k: np.asarray(arrays[k], dtype=np.int64) for k in self.inputs})[0]


def outputs(model, field: str):
    """A transformers model as a module of ``(input_ids, attention_mask) -> one output tensor``
    (``logits``, ``last_hidden_state``): the shape ``torch.onnx`` exports and ``Forward`` runs."""
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()

        def forward(self, input_ids, attention_mask):
            return getattr(self.model(input_ids=input_ids, attention_mask=attention_mask), field)

    return Outputs()


def encode_pt(tokenizer, texts: list[str]) -> dict:
    enc = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return {k: enc[k] for k in INPUTS}


def graph(folder: Path, engine: str, module_factory, tokenizer) -> Path:
    """The ONNX file of ``engine`` in ``folder``, exported (fp32) and quantised (int8) on first use."""
    fp32, target = folder / ONNX_FILES["onnx"], folder / ONNX_FILES[engine]
    if target.is_file():
        prune_cache(keep=folder)  # marks it used
        return target
    if not fp32.is_file():
        log.info("exporting the model to ONNX (once) in %s", folder)
        export(module_factory(), encode_pt(tokenizer, EXAMPLE), fp32, "output", check=encode_pt(tokenizer, CHECK))
    if engine == "onnx-int8":
        quantize(fp32, target)
    prune_cache(keep=folder)
    return target


def pad(seqs: list[list[int]], pad_id: int, left: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) of equal-length rows, padded on the tokenizer's side."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


class Forward:
    """Texts -> one output row per text through a frozen model: tokenized once, run in
    token-bounded batches, longest first, by ``module_factory()`` (a torch module of
    ``(input_ids, attention_mask)``, built only when needed) or by its ONNX graph in ``folder``."""

    def __init__(self, tokenizer, max_length: int, module_factory, engine: str = "torch", folder: Path | None = None,
                 prefix: str = "", memo_key: str | None = None):
        self.tokenizer, self.max_length, self.prefix, self.engine = tokenizer, max_length, prefix, engine
        self.memo_key = memo_key  # identity of the graph (model, pooling, depth...): outputs may be reused
        self.max_tokens, self.max_rows = MAX_BATCH_TOKENS, MAX_BATCH_ROWS
        self._factory, self._module = module_factory, None
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left = getattr(tokenizer, "padding_side", "right") == "left"
        if engine == "torch":
            self._onnx = None
        else:
            self._onnx = OnnxModel(graph(folder, engine, self.module, tokenizer))
            self._module = None  # the graph holds the weights: the torch copy is not kept

    def module(self):
        if self._module is None:
            self._module = self._factory().eval()
        return self._module

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        if self._onnx is not None:
            return self._onnx(input_ids=ids, attention_mask=mask)
        import torch

        with torch.inference_mode():
            return self.module()(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()

    def __call__(self, texts: list[str], progress: bool = False, desc: str = "forward") -> np.ndarray:
        from tqdm.auto import tqdm

        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        key = _memo_key(self, texts)
        if key is not None and key in _MEMO:
            _MEMO.move_to_end(key)
            return _MEMO[key]
        seqs = self.tokenizer([self.prefix + t for t in texts], truncation=True, max_length=self.max_length)["input_ids"]
        out = None
        for idx in tqdm(token_batches([len(s) for s in seqs], self.max_tokens, self.max_rows), desc=desc, unit="batch", disable=not progress):
            rows = self._run(*pad([seqs[i] for i in idx], self.pad_id, self.left))
            if out is None:
                out = np.zeros((len(texts), *rows.shape[1:]), dtype=np.float32)
            out[idx] = rows
        if key is not None:
            _store(key, out)
        return out


# --- outputs reused within one fit ------------------------------------------------------------
# A frozen model gives the same vectors for the same texts: inside ``reuse_outputs()`` (a fit, the
# tuning pass after it) they are computed once. Off everywhere else, so prediction, serving and
# every speed measurement run the model for real.
_MEMO: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
MEMO_BYTES = 1 << 30
_REUSE = [False]


@contextmanager
def reuse_outputs(on: bool = True):
    """Within the block, outputs of the same graph for the same texts are computed once
    (``on=False``: a block inside one that runs the model for real, e.g. to time it)."""
    _REUSE.append(on)
    try:
        yield
    finally:
        _REUSE.pop()
        if not any(_REUSE):
            _MEMO.clear()


def _memo_key(forward: "Forward", texts: list[str]) -> tuple | None:
    if not _REUSE[-1] or forward.memo_key is None:
        return None
    return forward.memo_key, forward.engine, hashlib.sha256("\x00".join(texts).encode()).hexdigest()


def _store(key: tuple, out: np.ndarray) -> None:
    if out.nbytes > MEMO_BYTES // 2:
        return
    _MEMO[key] = out
    while sum(a.nbytes for a in _MEMO.values()) > MEMO_BYTES:
        _MEMO.popitem(last=False)


def remember(forward: "Forward", texts: list[str], out: np.ndarray) -> None:
    """Record ``out`` as ``forward``'s outputs for ``texts`` (vectors known to be the same, e.g. a
    chosen layer's from a pass over several), for the rest of the ``reuse_outputs`` block."""
    key = _memo_key(forward, list(texts))
    if key is not None and len(texts):
        _store(key, np.asarray(out, dtype=np.float32))


def onnx_cache(key: str) -> Path:
    """Where graphs of models outside a run (an embed encoder; a run without its own graph) live."""
    from .models import cache_dir

    return Path(os.environ.get(ONNX_CACHE_ENV) or cache_dir() / "onnx") / key


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def prune_cache(keep: Path, limit_gb: float | None = None) -> list[Path]:
    """Remove the least recently used graphs of the ONNX cache until it holds at most ``limit_gb``
    (``CLASSIFINE_ONNX_CACHE_GB``, default 8; 0 keeps only ``keep``). A graph is rebuilt when
    needed again, so nothing is lost but the export time. Graphs inside runs are never touched;
    ``keep`` (just written or used) always stays. Returns the folders removed."""
    root = onnx_cache("")
    keep = Path(keep)
    if keep.parent.resolve() != root.resolve():
        return []  # a run's own graph
    if limit_gb is None:
        raw = os.environ.get(ONNX_CACHE_GB_ENV)
        try:
            limit_gb = float(raw) if raw else ONNX_CACHE_GB
        except ValueError:
            raise ConfigError(f"{ONNX_CACHE_GB_ENV}={raw!r} is not a number", [f"e.g. {ONNX_CACHE_GB_ENV}=8 (gigabytes)"]) from None
    try:
        os.utime(keep)  # used now: the last to go
    except OSError:  # a cache we may read but not write (shared, read-only): leave it as it is
        return []
    folders = sorted((f for f in root.iterdir() if f.is_dir() and not f.name.startswith(".")),
                     key=lambda f: f.stat().st_mtime)
    sizes = {f: _size(f) for f in folders}
    total, removed = sum(sizes.values()), []
    for f in folders:
        if total <= limit_gb * 1e9:
            break
        if f.resolve() == keep.resolve():
            continue
        shutil.rmtree(f, ignore_errors=True)
        total -= sizes[f]
        removed.append(f)
    if removed:
        log.info("ONNX cache over %.1f GB: removed %d least recently used graph(s)", limit_gb, len(removed))
    return removed


def cache_key(*parts, files: list[Path] = ()) -> str:
    """A key for an exported graph of a model that lives outside the run (the embed encoder): the
    settings that change the graph and the identity (size, mtime) of the model's weight files."""
    h = hashlib.sha256(json.dumps([GRAPH_VERSION, *(str(p) for p in parts)]).encode())
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]
