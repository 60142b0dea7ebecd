"""``pretrain``: train a byte-level BPE tokenizer and a small Llama-style causal LM from scratch on
raw text (the training texts, plus an optional ``corpus`` file), then fine-tune it into the
classifier with ``sft`` — the "pretrain a small model, then SFT it" recipe at a size that trains
on a CPU in minutes. The pretrained model is kept in ``model/pretrained`` and its size and
validation perplexity are recorded.
"""
from __future__ import annotations

import math
from pathlib import Path

from pydantic import Field

from ..core.data import Examples, read_table
from ..core.settings import Settings, quiet_trainer
from ..core.task import TaskSpec
from ..errors import DataError
from ..generative.causal_lm import GenerativeScorer
from ..generative.trainer import plan_budget
from . import build_config, sft

KINDS = ("single_label", "multi_label", "ordinal", "extraction")
REFUSED: dict[str, str] = {}
NEEDS_MODEL = False
TRAINS = True
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


class Config(Settings):
    corpus: str | None = None          # extra raw text: .txt (one document per line) or a table with a `text` column
    vocab_size: int = Field(default=8000, ge=300)
    hidden_size: int = Field(default=256, ge=16)
    layers: int = Field(default=4, ge=1)
    heads: int = Field(default=4, ge=1)
    block_size: int = Field(default=128, ge=16)
    pretrain_epochs: float = Field(default=3.0, gt=0)
    pretrain_learning_rate: float = Field(default=1e-3, gt=0)
    pretrain_batch_size: int = Field(default=16, ge=1)
    sft: dict = Field(default_factory=dict)   # settings for the sft stage (full fine-tuning by default)


def _corpus(config: Config, train: Examples) -> list[str]:
    texts = list(train.texts)
    if config.corpus:
        path = Path(config.corpus)
        if path.suffix == ".txt":
            if not path.is_file():
                raise DataError(f"corpus file {path} not found", ["check the path given as corpus"])
            texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            frame = read_table(path)
            if "text" not in frame.columns:
                raise DataError(f"{path} has no 'text' column", [f"columns found: {list(frame.columns)}"])
            texts += [t for t in frame["text"].astype(str) if t.strip()]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int, folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
                                   unk_token="<unk>")
    fast.save_pretrained(folder)
    return fast


def _blocks(tokenizer, texts: list[str], block: int) -> list[dict]:
    """Concatenate documents (each closed by eos) and cut into equal blocks, the usual LM recipe."""
    ids: list[int] = []
    for t in texts:
        ids += [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    return [{"input_ids": ids[i:i + block], "labels": ids[i:i + block]} for i in range(0, len(ids) - block + 1, block)]


def pretrain(tokenizer, texts: list[str], val_texts: list[str], config: Config, folder: Path, progress: bool) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments, default_data_collator

    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.hidden_size * 4,
                      num_hidden_layers=config.layers, num_attention_heads=config.heads, num_key_value_heads=config.heads,
                      max_position_embeddings=max(512, config.block_size * 4), tie_word_embeddings=True,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(cfg)
    train_blocks = _blocks(tokenizer, texts, config.block_size)
    val_blocks = _blocks(tokenizer, val_texts, config.block_size) or train_blocks[:8]
    if not train_blocks:
        raise DataError("too little text to pretrain on", [f"the corpus gives fewer than one block of {config.block_size} tokens: add a corpus file"])
    args = TrainingArguments(output_dir=str(folder / "checkpoints"), num_train_epochs=config.pretrain_epochs,
                             learning_rate=config.pretrain_learning_rate, per_device_train_batch_size=config.pretrain_batch_size,
                             per_device_eval_batch_size=config.pretrain_batch_size, lr_scheduler_type="cosine",
                             warmup_steps=0.05, weight_decay=0.1, save_strategy="no", eval_strategy="no",
                             logging_steps=20, report_to="none", seed=config.seed, use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=not progress)
    trainer = quiet_trainer(Trainer(model=model, args=args, train_dataset=train_blocks, data_collator=default_data_collator),
                            progress)
    result = trainer.train()
    val_loss = trainer.evaluate(val_blocks)["eval_loss"]
    model.save_pretrained(folder)
    return {"parameters": int(sum(p.numel() for p in model.parameters())), "vocab_size": len(tokenizer),
            "train_tokens": len(train_blocks) * config.block_size, "pretrain_steps": int(result.global_step),
            "pretrain_loss": round(float(result.training_loss), 4), "validation_perplexity": round(math.exp(val_loss), 2)}


def prepare(task: TaskSpec, train: Examples, config: Config, model: str | None) -> tuple[Config, dict]:
    return config, {}  # the tokenizer is trained in fit; the sft stage's budget is read there


def fit(task: TaskSpec, train: Examples, validation: Examples | None, config: Config, model: str | None,
        run_dir: Path, progress: bool = True, resume: bool = False) -> dict:
    # --- setup: the sft stage's settings are checked before minutes of pretraining ---
    sft_config = build_config(sft, "sft", {"lora": False, "learning_rate": 5e-4, "epochs": 3,
                                           "class_weight": config.class_weight, "seed": config.seed, **config.sft},
                              task.label_names)
    folder = run_dir / "model" / "pretrained"
    texts = _corpus(config, train)
    tokenizer = train_tokenizer(texts, config.vocab_size, folder)
    # the new tokenizer decides the sft stage's budgets (or whether the user's max_length fits):
    # a problem there is reported now, not after the minutes of pretraining
    sft_config, budget = plan_budget(task, train, sft_config, tokenizer)
    # --- pretrain, then hand the model to sft ---
    info = pretrain(tokenizer, texts, validation.texts if validation else [], config, folder, progress)
    sft_info = sft.fit(task, train, validation, sft_config, str(folder.resolve()), run_dir, progress, resume)
    return {"pretrain": info, "sft": sft_info, "sft_config": sft_config.model_dump(mode="json"), "sft_budget": budget}


Scorer = GenerativeScorer
