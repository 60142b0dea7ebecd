"""Token budgets read from the data, before anything trains.

A method that tokenizes takes ``max_length`` from the training texts (enough to keep 95% of them
whole, capped by the model's context and a memory estimate) unless the user sets one; a value set
by the user that leaves less than half of the typical input is refused with the numbers and the
value that would fit (``allow_truncation: true`` insists). What the chosen budget cuts is measured
(rows truncated, share of their tokens kept) and recorded in config.yaml and the report.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np

from ..errors import ConfigError, ModelError
from .accel import MAX_BATCH_ROWS
from .models import resolve

log = logging.getLogger("classifine")
COVER = 0.95          # the share of training texts the default max_length keeps whole
SAMPLE = 5000         # texts measured (a fixed sample of larger sets: the percentiles barely move)


def token_lengths(tokenizer, texts: list[str], seed: int = 0) -> np.ndarray:
    """Tokens per text (no special tokens), for all texts or a fixed sample of ``SAMPLE``."""
    if len(texts) > SAMPLE:
        idx = np.random.default_rng(seed).choice(len(texts), SAMPLE, replace=False)
        texts = [texts[i] for i in idx]
    if not texts:
        return np.zeros(0, dtype=int)
    return np.array([len(ids) for ids in tokenizer(list(texts), add_special_tokens=False).input_ids], dtype=int)


def truncation(lengths: np.ndarray, budget: int) -> dict:
    """What a budget of ``budget`` text tokens does to texts of these lengths."""
    lengths = np.asarray(lengths)
    cut = lengths[lengths > budget]
    return {"rows": int(len(lengths)), "truncated_rows": int(len(cut)),
            "truncated_share": round(len(cut) / len(lengths), 4) if len(lengths) else 0.0,
            # of the truncated rows, the share of their tokens the model still sees
            "tokens_kept_share": round(float(np.mean(budget / cut)), 4) if len(cut) else 1.0}


def model_caps(model_path: str, batch_size: int, training: bool) -> dict[str, int | None]:
    """Upper limits on max_length from the model's config (loaded once): its context length, and
    the longest sequence whose activations for one batch fit in a quarter of this machine's memory
    (fp32; about 40 floats per layer and hidden unit per token in training with the LM head
    restricted to the answer, 8 without gradients) — an estimate, to keep a default from swapping.
    None where the config does not say."""
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError):
        return {}
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    context = getattr(cfg, "max_position_embeddings", None)
    hidden, layers = getattr(cfg, "hidden_size", None), getattr(cfg, "num_hidden_layers", None)
    memory = None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError, AttributeError):
        total = None
    if hidden and layers and total:
        memory = max(64, int(total / 4 / (batch_size * hidden * layers * (40 if training else 8) * 4)))
    return {"model context": int(context) if context else None, "memory estimate": memory}


def plan_max_length(lengths: np.ndarray, overhead: int, requested: int | None, allow_truncation: bool,
                    caps: dict[str, int | None], floor: int = 16, parts: dict[str, int] | None = None) -> dict:
    """The max_length to use and the facts behind it.

    ``overhead``: tokens around the text (special tokens; a prompt's frame and answer budget, listed
    in ``parts`` for the message). ``requested``: the user's value, or None for the data-derived
    default. ``caps``: named upper limits (model context, memory estimate)."""
    parts = parts or {}
    median = int(np.median(lengths)) if len(lengths) else 0
    cover = int(math.ceil(np.quantile(lengths, COVER))) if len(lengths) else 0
    fit = overhead + max(8, -(-cover // 8) * 8)  # rounded up to a multiple of 8
    limits = {name: cap for name, cap in caps.items() if cap}
    if requested is None:
        max_length, source = max(floor, fit), f"data: keeps {COVER:.0%} of training texts whole"
        for name, cap in limits.items():
            if cap < max_length:
                max_length, source = cap, f"data, capped by the {name} ({cap})"
    else:
        max_length, source = requested, "set"
        budget = requested - overhead
        blind = budget < 8  # no setting makes a text of fewer than 8 tokens worth classifying
        if blind or (budget < 0.5 * median and not allow_truncation):
            around = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in parts.items())
            summary = (f"max_length {requested} leaves no room for the input text" if blind else
                       f"max_length {requested} leaves {budget} tokens for the input text, less than half of a typical "
                       f"training text ({median} tokens, median)")
            raise ConfigError(summary, [
                f"around the text: {around} (= {overhead} tokens); the text keeps {max(budget, 0)} of its tokens",
                f"--set max_length={min([fit, *limits.values()])} keeps {COVER:.0%} of the training texts whole",
                *([] if blind else ["or --set allow_truncation=true to train on the cut texts anyway"])])
    budget = max_length - overhead
    facts = {"max_length": int(max_length), "max_length_source": source, "text_tokens_median": median,
             f"text_tokens_p{round(COVER * 100)}": cover, "tokens_around_text": int(overhead), **parts,
             "text_budget": int(budget), "train": truncation(lengths, budget)}
    cut = facts["train"]
    if cut["truncated_rows"]:
        log.warning("%d of %d training texts (%.1f%%) are longer than the %d tokens max_length=%d leaves for them; they keep "
                    "%.0f%% of their tokens on average", cut["truncated_rows"], cut["rows"], 100 * cut["truncated_share"],
                    budget, max_length, 100 * cut["tokens_kept_share"])
    return facts


def load_tokenizer(model: str):
    """(tokenizer, local path or Hub id) of a model name, for measuring texts before training."""
    from transformers import AutoTokenizer

    path = resolve(model)
    try:
        return AutoTokenizer.from_pretrained(path), path
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load the tokenizer of {model!r}", [str(e).splitlines()[0]]) from e


def plan_for_encoder(model: str, texts: list[str], config, training: bool, prefix: str = "") -> dict:
    """``plan_max_length`` for a model that reads the text alone (``head``, ``embed``): around the
    text are the tokenizer's special tokens and the optional prefix."""
    tokenizer, path = load_tokenizer(model)
    specials = tokenizer.num_special_tokens_to_add()
    prefixed = len(tokenizer(prefix, add_special_tokens=False).input_ids) if prefix else 0
    # batches bounded by tokens (core/accel.py) hold at most MAX_BATCH_ROWS rows
    caps = model_caps(path, config.batch_size or MAX_BATCH_ROWS, training)
    parts = {"special_tokens": specials, **({"prefix_tokens": prefixed} if prefix else {})}
    return plan_max_length(token_lengths(tokenizer, texts, config.seed), specials + prefixed, config.max_length,
                           config.allow_truncation, caps, floor=8, parts=parts)
