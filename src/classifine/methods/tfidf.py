"""``tfidf``: character n-gram TF-IDF + logistic regression (ordinal: ridge on the scale).

The baseline every report shows: seconds to train, no GPU, strong on short texts and on Korean,
where character n-grams sidestep tokenisation. The vocabulary and IDF weights are saved as JSON +
safetensors and the vectorizer is rebuilt from them at load time (no pickle).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field
from safetensors.numpy import load_file
from safetensors.numpy import save as safetensors_bytes

from ..core.data import Examples
from ..core.runs import atomic_write_bytes
from ..core.settings import Settings
from ..core.task import TaskSpec
from .linear import fit_head, load_head, make_head

KINDS = ("single_label", "multi_label", "ordinal")
NEEDS_MODEL = False
TRAINS = True
SOFT_LABELS = True  # single_label/ordinal heads train on an annotator's probabilities (linear.py)
REFUSED = {"extraction": "tfidf classifies whole texts and cannot name entities: use method sft for extraction"}


class Config(Settings):
    analyzer: Literal["char_wb", "char", "word"] = "char_wb"
    ngram_min: int = Field(default=1, ge=1)
    ngram_max: int = Field(default=4, ge=1)
    max_features: int = Field(default=200_000, ge=100)
    min_df: int = Field(default=1, ge=1)
    sublinear_tf: bool = True
    C: float = Field(default=10.0, gt=0)


def _vectorizer(config: Config, vocabulary: dict | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer=config.analyzer, ngram_range=(config.ngram_min, config.ngram_max),
                           max_features=None if vocabulary else config.max_features, min_df=1 if vocabulary else config.min_df,
                           sublinear_tf=config.sublinear_tf, lowercase=True, vocabulary=vocabulary, dtype=np.float32)


def prepare(task: TaskSpec, train: Examples, config: Config, model: str | None) -> tuple[Config, dict]:
    return config, {}  # character n-grams see the whole text: no token budget


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str | None,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    model_dir = run_dir / "model"
    vec = _vectorizer(config)
    X = vec.fit_transform(train.texts)
    X_val = vec.transform(validation.texts) if validation is not None else None
    head = make_head(task.kind, config.C, config.class_weight)
    fit_head(head, task.kind, X, train.labels, task.label_names, X_val, validation.labels if validation else None,
             targets=train.targets)
    vocab = {term: int(i) for term, i in vec.vocabulary_.items()}
    (model_dir / "vocabulary.json").write_text(json.dumps(vocab, ensure_ascii=False))
    atomic_write_bytes(model_dir / "idf.safetensors", safetensors_bytes({"idf": vec.idf_.astype(np.float32)}))
    (model_dir / "tfidf.json").write_text(config.model_dump_json(indent=1))
    head.save(model_dir)
    return {"features": len(vocab)}


class Scorer:
    def __init__(self, vectorizer, head):
        self.vectorizer, self.head = vectorizer, head

    @classmethod
    def load(cls, model_dir: Path) -> "Scorer":
        config = Config.model_validate_json((model_dir / "tfidf.json").read_text())
        vocab = json.loads((model_dir / "vocabulary.json").read_text(encoding="utf-8"))
        vec = _vectorizer(config, vocabulary=vocab)
        vec.idf_ = load_file(str(model_dir / "idf.safetensors"))["idf"]
        return cls(vec, load_head(model_dir))

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        return self.head.predict_proba(self.vectorizer.transform(texts))
