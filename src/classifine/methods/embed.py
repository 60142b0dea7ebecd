"""``embed``: frozen model embeddings + a linear head (logistic regression; ridge for ordinal).

Works on encoders (mean pooling, as sentence-transformers) and on decoders such as Gemma 3
(mean or last-token pooling). Texts are embedded in length-sorted batches, so padding, which a
frozen model pays for in full, stays small.

**Which layer** (``layer``): the last layer of a decoder is shaped to predict the next token, and
a middle one often classifies better (Gemma 3 270M on 3,000 NSMC reviews: layer 12 of 18 gave
79.3% macro-F1, the last 76.0%; BENCHMARKS.md). ``auto`` pools several candidate depths from one
forward pass of the training and validation texts, fits a head on each and keeps the depth that
scores best on validation. The encoder is then saved cut to that many layers (``num_hidden_layers``
in its config), so prediction runs only the layers it needs, and a plain ``AutoModel`` or
sentence-transformers load of ``model/encoder`` gives the same vectors (the final norm of a
decoder applies to the cut model's last layer exactly as classifine pools it; checked at fit time).

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

from ..core.accel import CHECKED, Forward, cache_key, graph_engine, onnx_cache, onnx_missing, read_choice, remember, requested
from ..core.budget import plan_for_encoder, token_lengths, truncation
from ..core.data import Examples, sample_rows
from ..core.models import cut_config, is_decoder, resolve
from ..core.settings import InferenceSettings, Settings
from ..core.task import TaskSpec
from ..errors import ConfigError, ModelError
from ..scoring.kinds import selection_score
from .linear import fit_head, load_head, make_head

log = logging.getLogger("classifine")
KINDS = ("single_label", "multi_label", "ordinal")
REFUSED = {"extraction": "a pooled embedding has no token positions to name entities from: use method sft for extraction"}
NEEDS_MODEL = True
TRAINS = True
SOFT_LABELS = True  # single_label/ordinal heads train on an annotator's probabilities (linear.py)


class Config(Settings, InferenceSettings):
    pooling: Literal["auto", "mean", "last", "cls"] = "auto"
    prefix: str = ""              # e.g. "passage: " for E5-style encoders
    max_length: int | None = Field(default=None, ge=8)   # None: from the training texts (core/budget.py)
    allow_truncation: bool = False
    batch_size: int | None = Field(default=None, ge=1)   # rows per batch at most; None: bounded by tokens
    normalize: bool = True        # L2-normalise embeddings before the head
    C: float | Literal["auto"] = "auto"   # auto: chosen on validation from C_GRID
    layer: int | Literal["auto", "last"] = "auto"   # layers kept (1..n); auto: chosen on validation
    save_encoder: bool = True     # model/encoder as a sentence-transformers folder (hard-linked weights)
    tune_layers: int = Field(default=0, ge=0)   # decoders: the top layers kept are fine-tuned (methods/top_layers.py)
    tune_epochs: int = Field(default=3, ge=1)
    tune_lr: float = Field(default=1e-4, gt=0)


C_GRID = (0.25, 1.0, 4.0, 16.0)   # the head's inverse regularisation, tried on the chosen layer
CANDIDATES = 6                   # depths compared by layer: auto
CHOOSE_ROWS = 2000               # with tune_layers: training rows the depth is chosen on


def candidate_layers(n: int) -> list[int]:
    """Depths ``layer: auto`` compares: from a third of the model to its last layer, evenly spread
    (the lowest layers carry little more than the tokens; measured, BENCHMARKS.md)."""
    low = max(1, round(n / 3))
    return sorted({int(round(x)) for x in np.linspace(low, n, min(CANDIDATES, n - low + 1))})


def _final_norm(model):
    """The norm a decoder applies after its last layer (``last_hidden_state`` of a model cut to k
    layers is that norm of layer k's output); None for encoders, whose layers end normalised."""
    for name in ("norm", "ln_f", "final_layernorm"):
        module = getattr(model, name, None)
        if module is not None and hasattr(module, "weight"):
            return module
    return None


def pool_states(hidden, attention_mask, pooling: str, normalize: bool):
    """One vector per row of token states (right padding, so the last token is at sum(mask) - 1)."""
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "mean":
        vec = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    elif pooling == "last":
        vec = hidden[torch.arange(hidden.shape[0]), attention_mask.sum(1) - 1]
    else:
        vec = hidden[:, 0]
    return torch.nn.functional.normalize(vec, dim=-1) if normalize else vec


def _pooled(model, pooling: str, normalize: bool, candidates: tuple[int, ...] | None = None):
    """The encoder with its pooling as one module of (input_ids, attention_mask) -> vectors: what
    PyTorch runs and what ONNX exports (right padding, so the last token is at sum(mask) - 1).
    With ``candidates``: (rows, len(candidates), dim), the pooled output of a cut to each depth."""
    import torch

    norm = _final_norm(model) if candidates else None
    depth = model.config.num_hidden_layers

    def pool(hidden, attention_mask):
        return pool_states(hidden, attention_mask, pooling, normalize)

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model.eval()

        def forward(self, input_ids, attention_mask):
            if not candidates:
                return pool(self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state, attention_mask)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            states = out.hidden_states  # [embeddings, layer 1, ..., layer n]; the last already normed
            return torch.stack([pool(states[k] if (norm is None or k == depth) else norm(states[k]), attention_mask)
                                for k in candidates], dim=1)

    return Pooled()


def _depth(path: str) -> int:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return int((config.get_text_config() if hasattr(config, "get_text_config") else config).num_hidden_layers)


class Encoder:
    """A frozen transformer that turns texts into one vector each, run by PyTorch or ONNX Runtime
    (``engine``; core/accel.py) in token-bounded, length-sorted batches."""

    def __init__(self, model: str, pooling: str = "auto", max_length: int = 256, batch_size: int | None = None,
                 prefix: str = "", normalize: bool = True, engine: str = "torch", layers: int | None = None,
                 candidates: tuple[int, ...] | None = None, loaded=None):
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
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.dim, self.depth = int(text_config.hidden_size), int(text_config.num_hidden_layers)
        self.layers = self.depth if layers is None else min(int(layers), self.depth)
        self.candidates = tuple(candidates) if candidates else None
        self.tokenizer.padding_side = "right"  # last-token pooling assumes right padding
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

        def module():
            from transformers.utils import logging as hf_logging

            if loaded is not None:  # a model in memory (tuned layers): PyTorch only, it has no files to key a graph by
                return _pooled(loaded, self.pooling, normalize)

            kwargs = {}
            if self.layers < self.depth:
                kwargs["config"] = type(config).from_dict(cut_config(config.to_dict(), self.layers))
            before = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # a cut model leaves the deeper layers' weights unread: not news
            try:
                net = AutoModel.from_pretrained(path, dtype=torch.float32, **kwargs)
            except OSError as e:
                raise ModelError(f"cannot load model {model!r} from {path}", [str(e)]) from e
            finally:
                hf_logging.set_verbosity(before)
            return _pooled(net, self.pooling, normalize, self.candidates)

        # one graph per base model, pooling and depth, shared by every run on it (a run's encoder/
        # folder hard-links the base model's files, so its weights have the same identity)
        src = Path(path)
        key = cache_key(self.pooling, normalize, self.layers, self.candidates,
                        (src / "config.json").read_text() if (src / "config.json").is_file() else path,
                        files=_weight_files(src) if src.is_dir() else [])
        self.forward = Forward(self.tokenizer, max_length, module, "torch" if loaded is not None else engine, onnx_cache(key),
                               prefix, memo_key=None if loaded is not None else key)
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
            shape = (0, len(self.candidates), self.dim) if self.candidates else (0, self.dim)
            return np.zeros(shape, dtype=np.float32)
        return self.forward(list(texts), progress=progress, desc="embed")


@lru_cache(maxsize=2)
def _encoder(model: str, pooling: str, max_length: int, batch_size: int | None, prefix: str, normalize: bool,
             engine: str, layers: int | None = None, candidates: tuple[int, ...] | None = None) -> Encoder:
    # cached: training evaluates right after fitting, and a predictor may be loaded repeatedly
    return Encoder(model, pooling, max_length, batch_size, prefix, normalize, engine, layers, candidates)


def _encoder_for(model: str, config: Config, engine: str = "torch", candidates: tuple[int, ...] | None = None) -> Encoder:
    layers = config.layer if isinstance(config.layer, int) else None
    return _encoder(model, config.pooling, config.max_length, config.batch_size, config.prefix, config.normalize, engine,
                    None if candidates else layers, candidates)


def fit_encoder(model: str, config: Config, candidates: tuple[int, ...] | None = None) -> Encoder:
    """The encoder that embeds the training texts: ONNX Runtime where the settings allow it and the
    graph exports (it matches PyTorch to 1e-4, checked at export), else PyTorch."""
    # the checked engine compares with fp32 answers: the head learns from fp32 features
    wanted = "onnx" if config.engine in ("auto", CHECKED) else config.engine
    if wanted != "torch" and not onnx_missing():
        try:
            return _encoder_for(model, config, wanted, candidates)
        except ModelError as e:
            if config.engine not in ("auto", CHECKED):
                raise
            log.warning("embedding with PyTorch: %s", e.summary)
    return _encoder_for(model, config, candidates=candidates)


def prepare(task: TaskSpec, train: Examples, config: Config, model: str) -> tuple[Config, dict]:
    """max_length from the training texts (or the user's, checked), before anything is written."""
    if isinstance(config.layer, int):
        depth = _depth(resolve(model))
        if not 1 <= config.layer <= depth:
            raise ConfigError(f"layer {config.layer} is outside {model}'s {depth} layers",
                              [f"set layer to 1..{depth}, 'last' or 'auto' (chosen on validation)"])
    if config.tune_layers:
        problems, depth = [], _depth(resolve(model))
        if config.tune_layers >= depth:
            problems.append(f"{model} has {depth} layers: set tune_layers below {depth} (one layer at least stays frozen)")
        if not is_decoder(model):
            problems.append(f"{model} is not a decoder: tune_layers feeds cached states to its top layers, which only "
                            "decoders take as they are; use method head to fine-tune an encoder")
        if isinstance(config.layer, int) and config.tune_layers >= config.layer:
            problems.append(f"tune_layers {config.tune_layers} leaves none of the {config.layer} kept layers frozen: "
                            f"set it below {config.layer}")
        if not config.save_encoder:
            problems.append("the tuned layers live only in model/encoder: drop save_encoder: false")
        if problems:
            raise ConfigError("tune_layers cannot be used with these settings:", problems)
    facts = plan_for_encoder(model, train.texts, config, training=False, prefix=config.prefix)
    return config.model_copy(update={"max_length": facts["max_length"]}), facts


def _best(scores: dict, prefer) -> object:
    """The key with the best validation score; near-ties (within 0.1 point) go to ``prefer``'s
    smallest value (fewer layers run faster; a smaller C regularises more)."""
    top = max(scores.values())
    return min((k for k, v in scores.items() if v >= top - 1e-3), key=prefer)


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    model_dir = run_dir / "model"
    y_val = validation.labels if validation is not None else None
    choose = validation is not None and len(validation) > 0

    def head_for(X, Xv, C, rows=train):
        head = make_head(task.kind, C, config.class_weight)
        return fit_head(head, task.kind, X, rows.labels, task.label_names, Xv, y_val, targets=rows.targets)

    facts: dict = {}
    C = 1.0 if config.C == "auto" else config.C
    if config.layer == "auto" and choose:
        # one forward pass, every candidate depth pooled from it; a head per depth, kept on validation
        # tuning needs a frozen layer below the tuned ones: shallower depths are not candidates
        depths = candidate_layers(_depth(resolve(model)))
        encoder = fit_encoder(model, config, tuple([k for k in depths if k > config.tune_layers] or depths[-1:]))
        # tuning replaces these vectors by its own: a sample of the rows is enough to choose the depth
        rows = sample_rows(task, train, CHOOSE_ROWS, config.seed) if config.tune_layers else train
        Xs, Xs_val = encoder.encode(rows.texts, progress=progress), encoder.encode(validation.texts, progress=progress)
        scores = {k: selection_score(task, y_val, head_for(Xs[:, i], Xs_val[:, i], C, rows).predict_proba(Xs_val[:, i]))
                  for i, k in enumerate(encoder.candidates)}
        layers = _best(scores, prefer=lambda k: k)
        i = encoder.candidates.index(layers)
        X, X_val = Xs[:, i], Xs_val[:, i]
        facts["layer_scores"] = {str(k): round(v, 4) for k, v in scores.items()}
        depth = encoder.depth
    else:
        encoder = fit_encoder(model, config)
        X = encoder.encode(train.texts, progress=progress)
        X_val = encoder.encode(validation.texts, progress=progress) if validation is not None else None
        layers, depth = encoder.layers, encoder.depth
    tuned = None
    if config.tune_layers:  # the kept layers' top ones trained for the task; X are then the tuned vectors
        from .top_layers import tune

        tuned, X, X_val, facts["tuning"] = tune(
            resolve(model), layers, config.tune_layers, encoder.tokenizer, train, validation, task, config,
            pool=lambda h, m: pool_states(h, m, encoder.pooling, config.normalize),
            select=lambda p: selection_score(task, y_val, p), progress=progress)
    if config.C == "auto" and choose:
        scores = {c: selection_score(task, y_val, head_for(X, X_val, c).predict_proba(X_val)) for c in C_GRID}
        C = _best(scores, prefer=lambda c: c)
        facts["C_scores"] = {str(c): round(v, 4) for c, v in scores.items()}
    head = head_for(X, X_val, C)
    head.save(model_dir)
    final = config.model_copy(update={"layer": layers, "C": C})
    if tuned is not None:  # the base model's files would not hold the tuned layers: written, checked below
        cut = Encoder(model, encoder.pooling, final.max_length, final.batch_size, final.prefix, final.normalize, loaded=tuned)
    else:
        cut = _encoder_for(model, final)  # what prediction runs: only the chosen layers (built on first use)
    if encoder.candidates and layers < depth and tuned is None:
        _check_cut(cut, validation.texts[:4], X_val[:4])
    saved = save_sentence_transformer(cut, model, model_dir / ENCODER, link=tuned is None) if config.save_encoder else None
    meta = {"model": model, **final.model_dump(), **({"sentence_transformers": ENCODER} if saved else {})}
    (model_dir / "encoder.json").write_text(json.dumps(meta, indent=1))
    if saved:
        _encoder.cache_clear()  # prediction loads the run's own folder: don't hold the base model twice
        # the cut model's vectors are the chosen depth's (checked above): the pipeline's tuning pass
        # over validation, right after this, need not run the model again
        own = _encoder_for(str(model_dir / ENCODER), final)
        if tuned is not None:
            _check_cut(own, (validation.texts if validation is not None else train.texts)[:4],
                       (X_val if validation is not None else X)[:4])
        if validation is not None:
            remember(own.forward, validation.texts, X_val)
    return {"embedding_dim": encoder.dim, "pooling": encoder.pooling, "decoder": encoder.decoder, "fit_engine": encoder.engine,
            "layer": layers, "depth": depth, "C": C, **facts, **({"encoder_weights": saved} if saved else {})}


def _check_cut(cut: Encoder, texts: list[str], expected: np.ndarray) -> None:
    """The model cut to the chosen depth must give the vectors the head was fitted on (a model whose
    last norm classifine does not find would not): refuse rather than save a run that predicts otherwise."""
    got = cut.forward(list(texts))  # PyTorch, unmemoised: this is the check
    if not np.allclose(got, expected, atol=1e-3):
        raise ModelError(f"the saved {cut.layers}-layer encoder does not reproduce the vectors its head was fitted on",
                         [f"largest difference {float(np.abs(got - expected).max()):.2e}",
                          "set layer: last (the whole model) for this architecture"])


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


def save_sentence_transformer(encoder: Encoder, model: str, dest: Path, link: bool = True) -> str:
    """Write ``encoder`` as a sentence-transformers folder at ``dest`` (the legacy module names the
    packaged MiniLM ships with; 6.x's own ``save`` writes paths older versions cannot import);
    returns how the weights got there: ``linked``,
    ``copied`` or ``written`` (a Hub id without a local safetensors folder)."""
    for stale in dest.parent.glob(f".{ENCODER}-*"):  # a write cut off by a crash
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{ENCODER}-", dir=dest.parent))
    try:
        src = Path(resolve(model))
        weights = _weight_files(src) if link and src.is_dir() and (src / "config.json").is_file() else []
        if weights:  # the very files the encoder was loaded from: embeddings are bit-identical
            config = json.loads((src / "config.json").read_text())
            if encoder.layers < encoder.depth:  # the deeper layers' weights stay in the file, unread
                config = cut_config(config, encoder.layers)
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
    # int8 moves a decoder's features far (Gemma 3 270M on AG News: 94% of labels kept), so auto
    # takes it mostly as onnx-int8-checked, which re-runs the rows near a boundary in fp32
    ENGINES = ("torch", "onnx", "onnx-int8")

    def __init__(self, encoder: Encoder, head):
        self.encoder, self.head = encoder, head

    @property
    def engine(self) -> str:
        return self.encoder.engine

    @classmethod
    def load(cls, model_dir: Path, engine: str | None = None, build: bool = False) -> "Scorer":
        """``engine``: the run's choice (model/inference.json) unless overridden; graphs of the
        encoder live in the cache (``build`` changes nothing here)."""
        engine = graph_engine(requested(engine) or read_choice(model_dir)["engine"])
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
