"""``embed``: frozen model embeddings + a linear head (logistic regression; ridge for ordinal).

Works on encoders (mean pooling, as sentence-transformers) and on decoders such as Gemma 3
(mean or last-token pooling). Texts are embedded in length-sorted batches, so padding, which a
frozen model pays for in full, stays small.

The run's ``model/`` holds the head (``head.safetensors`` + ``head.json``, methods/linear.py),
``encoder.json`` (the base model's name and the settings) and ``encoder/``: the frozen encoder as a
sentence-transformers folder (``SentenceTransformer(model/encoder)`` gives the embeddings the head
was fitted on: same pooling, prefix as the default prompt, max_length, normalisation), so a run
predicts with sentence-transformers + numpy alone (README.md, "Load runs without classifine") and
classifine itself loads the encoder from there. Its weight files are hard links to the base
model's where the filesystem allows (the packaged models live on the same disk as the runs), so
on that machine the folder costs no disk; a copied run carries real files. ``save_encoder: false``
keeps only the name, as runs made before this folder existed, which still load by resolving it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..core.accel import Forward, cache_key, onnx_cache, onnx_missing, read_choice, requested
from ..core.budget import plan_for_encoder, token_lengths, truncation
from ..core.data import Examples
from ..core.models import is_decoder, resolve
from ..core.settings import InferenceSettings, Settings
from ..core.task import TaskSpec
from ..errors import ModelError
from .linear import fit_head, load_head, make_head

log = logging.getLogger("classifine")
KINDS = ("single_label", "multi_label", "ordinal")
REFUSED = {"extraction": "a pooled embedding has no token positions to name entities from: use method sft for extraction"}
NEEDS_MODEL = True
TRAINS = True


class Config(Settings, InferenceSettings):
    pooling: Literal["auto", "mean", "last", "cls"] = "auto"
    prefix: str = ""              # e.g. "passage: " for E5-style encoders
    max_length: int | None = Field(default=None, ge=8)   # None: from the training texts (core/budget.py)
    allow_truncation: bool = False
    batch_size: int | None = Field(default=None, ge=1)   # rows per batch at most; None: bounded by tokens
    normalize: bool = True        # L2-normalise embeddings before the head
    C: float = Field(default=1.0, gt=0)
    save_encoder: bool = True     # model/encoder as a sentence-transformers folder (hard-linked weights)


def _pooled(model, pooling: str, normalize: bool):
    """The encoder with its pooling as one module of (input_ids, attention_mask) -> vectors: what
    PyTorch runs and what ONNX exports (right padding, so the last token is at sum(mask) - 1)."""
    import torch

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()

        def forward(self, input_ids, attention_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            if pooling == "mean":
                vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            elif pooling == "last":
                vec = hidden[torch.arange(hidden.shape[0]), attention_mask.sum(1) - 1]
            else:
                vec = hidden[:, 0]
            return torch.nn.functional.normalize(vec, dim=-1) if normalize else vec

    return Pooled()


class Encoder:
    """A frozen transformer that turns texts into one vector each, run by PyTorch or ONNX Runtime
    (``engine``; core/accel.py) in token-bounded, length-sorted batches."""

    def __init__(self, model: str, pooling: str = "auto", max_length: int = 256, batch_size: int | None = None,
                 prefix: str = "", normalize: bool = True, engine: str = "torch"):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = resolve(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            config = AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load model {model!r} from {path}", [str(e)]) from e
        self.decoder = is_decoder(model)
        self.pooling = ("mean" if pooling == "auto" else pooling)
        self.max_length, self.prefix, self.normalize = max_length, prefix, normalize
        self.dim = int((config.get_text_config() if hasattr(config, "get_text_config") else config).hidden_size)
        self.tokenizer.padding_side = "right"  # last-token pooling assumes right padding
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        def module():
            try:
                net = AutoModel.from_pretrained(path, dtype=torch.float32)
            except OSError as e:
                raise ModelError(f"cannot load model {model!r} from {path}", [str(e)]) from e
            return _pooled(net, self.pooling, normalize)

        # one graph per base model and pooling, shared by every run on it (a run's encoder/ folder
        # hard-links the base model's files, so its weights have the same identity)
        src = Path(path)
        key = cache_key(self.pooling, normalize, (src / "config.json").read_text() if (src / "config.json").is_file() else path,
                        files=_weight_files(src) if src.is_dir() else [])
        self.forward = Forward(self.tokenizer, max_length, module, engine, onnx_cache(key), prefix)
        if batch_size:
            self.forward.max_rows = batch_size

    @property
    def engine(self) -> str:
        return self.forward.engine

    @property
    def model(self):
        return self.forward.module().model

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.forward(list(texts), progress=progress, desc="embed")


@lru_cache(maxsize=2)
def _encoder(model: str, pooling: str, max_length: int, batch_size: int | None, prefix: str, normalize: bool,
             engine: str) -> Encoder:
    # cached: training evaluates right after fitting, and a predictor may be loaded repeatedly
    return Encoder(model, pooling, max_length, batch_size, prefix, normalize, engine)


def _encoder_for(model: str, config: Config, engine: str = "torch") -> Encoder:
    return _encoder(model, config.pooling, config.max_length, config.batch_size, config.prefix, config.normalize, engine)


def _fit_engine(model: str, config: Config) -> Encoder:
    """The encoder that embeds the training texts: ONNX Runtime where the settings allow it and the
    graph exports (it matches PyTorch to 1e-4, checked at export), else PyTorch."""
    wanted = "onnx" if config.engine == "auto" else config.engine
    if wanted != "torch" and not onnx_missing():
        try:
            return _encoder_for(model, config, wanted)
        except ModelError as e:
            if config.engine != "auto":
                raise
            log.warning("embedding with PyTorch: %s", e.summary)
    return _encoder_for(model, config)


def prepare(task: TaskSpec, train: Examples, config: Config, model: str) -> tuple[Config, dict]:
    """max_length from the training texts (or the user's, checked), before anything is written."""
    facts = plan_for_encoder(model, train.texts, config, training=False, prefix=config.prefix)
    return config.model_copy(update={"max_length": facts["max_length"]}), facts


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    model_dir = run_dir / "model"
    encoder = _fit_engine(model, config)
    X = encoder.encode(train.texts, progress=progress)
    X_val = encoder.encode(validation.texts, progress=progress) if validation is not None else None
    head = make_head(task.kind, config.C, config.class_weight)
    fit_head(head, task.kind, X, train.labels, task.label_names, X_val, validation.labels if validation else None)
    head.save(model_dir)
    saved = save_sentence_transformer(encoder, model, model_dir / ENCODER) if config.save_encoder else None
    meta = {"model": model, **config.model_dump(), **({"sentence_transformers": ENCODER} if saved else {})}
    (model_dir / "encoder.json").write_text(json.dumps(meta, indent=1))
    if saved:
        _encoder.cache_clear()  # prediction loads the run's own folder: don't hold the base model twice
    return {"embedding_dim": encoder.dim, "pooling": encoder.pooling, "decoder": encoder.decoder, "fit_engine": encoder.engine,
            **({"encoder_weights": saved} if saved else {})}


# --- the encoder as a sentence-transformers folder ---------------------------------------------
ENCODER = "encoder"
ST_POOLING = {"mean": "pooling_mode_mean_tokens", "last": "pooling_mode_lasttoken", "cls": "pooling_mode_cls_token"}


def _weight_files(src: Path) -> list[Path]:
    """The base model's safetensors weights as one file or an index with its shards."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [index] + [src / s for s in shards]
    return [src / "model.safetensors"] if (src / "model.safetensors").is_file() else []


def _link_or_copy(src: Path, dst: Path) -> str:
    try:
        os.link(src.resolve(), dst)  # resolve: a Hub cache file is a symlink to its blob
        return "linked"
    except OSError:  # another filesystem, or a file we may not link (fs.protected_hardlinks)
        shutil.copyfile(src, dst)
        return "copied"


def save_sentence_transformer(encoder: Encoder, model: str, dest: Path) -> str:
    """Write ``encoder`` as a sentence-transformers folder at ``dest`` (the legacy module names the
    packaged MiniLM ships with; 6.x's own ``save`` writes paths older versions cannot import);
    returns how the weights got there: ``linked``,
    ``copied`` or ``written`` (a Hub id without a local safetensors folder)."""
    for stale in dest.parent.glob(f".{ENCODER}-*"):  # a write cut off by a crash
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ENCODER}-", dir=dest.parent))
    try:
        src = Path(resolve(model))
        weights = _weight_files(src) if src.is_dir() and (src / "config.json").is_file() else []
        if weights:  # the very files the encoder was loaded from: embeddings are bit-identical
            config = json.loads((src / "config.json").read_text())
            config["dtype"] = "float32"  # as classifine loads it; transformers 5 would load a bf16 base in bf16
            (tmp / "config.json").write_text(json.dumps(config, indent=1))
            how = {_link_or_copy(w, tmp / w.name) for w in weights}
            how = "copied" if "copied" in how else "linked"
        else:
            encoder.model.save_pretrained(tmp)
            how = "written"
        encoder.tokenizer.save_pretrained(tmp)  # with the pad token and right padding the pooling assumes
        modules = [("", "Transformer"), ("1_Pooling", "Pooling")] + ([("2_Normalize", "Normalize")] if encoder.normalize else [])
        (tmp / "modules.json").write_text(json.dumps([{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{t}"}
                                                      for i, (path, t) in enumerate(modules)], indent=1))
        (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": encoder.max_length, "do_lower_case": False}))
        (tmp / "1_Pooling").mkdir()
        pooling = {"word_embedding_dimension": encoder.dim, **{k: encoder.pooling == p for p, k in ST_POOLING.items()},
                   "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
                   "pooling_mode_weightedmean_tokens": False, "include_prompt": True}
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=1))
        # the prefix is the default prompt, so encode(texts) prepends it as classifine does
        prompts = {"prompts": {"document": encoder.prefix}, "default_prompt_name": "document"} if encoder.prefix else {}
        (tmp / "config_sentence_transformers.json").write_text(json.dumps({**prompts, "similarity_fn_name": "cosine"}, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return how


class Scorer:
    ENGINES = ("torch", "onnx")  # onnx-int8 on request: the auto choice keeps training's fp32 features

    def __init__(self, encoder: Encoder, head):
        self.encoder, self.head = encoder, head

    @property
    def engine(self) -> str:
        return self.encoder.engine

    @classmethod
    def load(cls, model_dir: Path, engine: str | None = None, build: bool = False) -> "Scorer":
        """``engine``: the run's choice (model/inference.json) unless overridden; graphs of the
        encoder live in the cache (``build`` changes nothing here)."""
        engine = requested(engine) or read_choice(model_dir)["engine"]
        meta = json.loads((model_dir / "encoder.json").read_text())
        model = meta.pop("model")
        folder = meta.pop("sentence_transformers", None)  # runs made before it name the base model only
        if folder and (model_dir / folder / "modules.json").is_file():
            model = str(model_dir / folder)
        return cls(_encoder_for(model, Config.model_validate(meta), engine), load_head(model_dir))

    def truncation(self, texts: list[str]) -> dict:
        """What max_length cuts from these texts (the report's truncation section)."""
        enc = self.encoder
        budget = enc.max_length - enc.tokenizer.num_special_tokens_to_add() - len(enc.tokenizer(enc.prefix, add_special_tokens=False).input_ids)
        return {"max_length": enc.max_length, **truncation(token_lengths(enc.tokenizer, texts), budget)}

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.head.predict_proba(self.encoder.encode(texts))
