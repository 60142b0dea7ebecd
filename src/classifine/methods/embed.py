"""``embed``: frozen model embeddings + a linear head (logistic regression; ridge for ordinal).

Works on encoders (mean pooling, as sentence-transformers) and on decoders such as Gemma 3
(mean or last-token pooling). Texts are embedded in length-sorted batches, so padding, which a
frozen model pays for in full, stays small. The run's model folder holds only the head and the
encoder's name: the encoder is resolved again at load time.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from ..core.budget import plan_for_encoder, token_lengths, truncation
from ..core.data import Examples
from ..core.models import is_decoder, resolve
from ..core.settings import Settings
from ..core.task import TaskSpec
from ..errors import ModelError
from .linear import fit_head, load_head, make_head

KINDS = ("single_label", "multi_label", "ordinal")
REFUSED = {"extraction": "a pooled embedding has no token positions to name entities from: use method sft for extraction"}
NEEDS_MODEL = True
TRAINS = True


class Config(Settings):
    pooling: Literal["auto", "mean", "last", "cls"] = "auto"
    prefix: str = ""              # e.g. "passage: " for E5-style encoders
    max_length: int | None = Field(default=None, ge=8)   # None: from the training texts (core/budget.py)
    allow_truncation: bool = False
    batch_size: int = Field(default=16, ge=1)
    normalize: bool = True        # L2-normalise embeddings before the head
    C: float = Field(default=1.0, gt=0)


class Encoder:
    """A frozen transformer that turns texts into one vector each."""

    def __init__(self, model: str, pooling: str = "auto", max_length: int = 256, batch_size: int = 16,
                 prefix: str = "", normalize: bool = True):
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = resolve(model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        except OSError as e:
            raise ModelError(f"cannot load model {model!r} from {path}", [str(e)]) from e
        self.decoder = is_decoder(model)
        self.pooling = ("mean" if pooling == "auto" else pooling)
        self.max_length, self.batch_size, self.prefix, self.normalize = max_length, batch_size, prefix, normalize
        self.tokenizer.padding_side = "right"  # last-token pooling below assumes right padding
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        import torch
        from tqdm.auto import tqdm

        texts = [self.prefix + t for t in texts]
        # length-sorted batches; results are put back in the caller's order
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        for s in tqdm(starts, desc="embed", unit="batch", disable=not progress):
            idx = order[s:s + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "mean":
                vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            elif self.pooling == "last":
                last = enc["attention_mask"].sum(1) - 1
                vec = hidden[torch.arange(hidden.shape[0]), last]
            else:
                vec = hidden[:, 0]
            if self.normalize:
                vec = torch.nn.functional.normalize(vec, dim=-1)
            out[idx] = vec.float().numpy()
        return out


@lru_cache(maxsize=2)
def _encoder(model: str, pooling: str, max_length: int, batch_size: int, prefix: str, normalize: bool) -> Encoder:
    # cached: training evaluates right after fitting, and a predictor may be loaded repeatedly
    return Encoder(model, pooling, max_length, batch_size, prefix, normalize)


def _encoder_for(model: str, config: Config) -> Encoder:
    return _encoder(model, config.pooling, config.max_length, config.batch_size, config.prefix, config.normalize)


def prepare(task: TaskSpec, train: Examples, config: Config, model: str) -> tuple[Config, dict]:
    """max_length from the training texts (or the user's, checked), before anything is written."""
    facts = plan_for_encoder(model, train.texts, config, training=False, prefix=config.prefix)
    return config.model_copy(update={"max_length": facts["max_length"]}), facts


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    model_dir = run_dir / "model"
    encoder = _encoder_for(model, config)
    X = encoder.encode(train.texts, progress=progress)
    X_val = encoder.encode(validation.texts, progress=progress) if validation is not None else None
    head = make_head(task.kind, config.C, config.class_weight)
    fit_head(head, task.kind, X, train.labels, task.label_names, X_val, validation.labels if validation else None)
    head.save(model_dir)
    (model_dir / "encoder.json").write_text(json.dumps({"model": model, **config.model_dump()}, indent=1))
    return {"embedding_dim": encoder.dim, "pooling": encoder.pooling, "decoder": encoder.decoder}


class Scorer:
    def __init__(self, encoder: Encoder, head):
        self.encoder, self.head = encoder, head

    @classmethod
    def load(cls, model_dir: Path) -> "Scorer":
        meta = json.loads((model_dir / "encoder.json").read_text())
        model = meta.pop("model")
        return cls(_encoder_for(model, Config.model_validate(meta)), load_head(model_dir))

    def truncation(self, texts: list[str]) -> dict:
        """What max_length cuts from these texts (the report's truncation section)."""
        enc = self.encoder
        budget = enc.max_length - enc.tokenizer.num_special_tokens_to_add() - len(enc.tokenizer(enc.prefix, add_special_tokens=False).input_ids)
        return {"max_length": enc.max_length, **truncation(token_lengths(enc.tokenizer, texts), budget)}

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.head.predict_proba(self.encoder.encode(texts))
