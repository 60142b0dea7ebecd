"""Settings shared by the methods that train a transformer (``head``, ``sft``, ``orpo``), declared
once, with one builder each (TRL's ``get_peft_config`` / ``get_quantization_config`` are the model).

A method's ``Config`` inherits the groups it uses and restates only the defaults it changes; the
constraints live in the annotated types, so ``epochs: Positive = 3.0`` keeps ``epochs > 0``.
The builders turn settings into what transformers and peft take: the quantisation config, the
LoRA wrapper, ``TrainingArguments`` (or TRL's subclass), the TensorBoard callback, the resume check.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, ModelError
from .models import resolve

Positive = Annotated[float, Field(gt=0)]
NonNegative = Annotated[float, Field(ge=0)]
AtLeast1 = Annotated[int, Field(ge=1)]
Dropout = Annotated[float, Field(ge=0, lt=1)]
ClassWeight = Literal["balanced", "none"] | dict[str, float]


class Settings(BaseModel):
    """Every method's Config: unknown keys are errors (reported with a "did you mean")."""

    model_config = ConfigDict(extra="forbid")
    class_weight: ClassWeight = "balanced"
    seed: int = 13


class TrainerSettings(Settings):
    """The HF Trainer's knobs as every trained method exposes them."""

    epochs: Positive = 2.0
    max_steps: int = -1
    learning_rate: Positive = 2e-4
    batch_size: AtLeast1 = 8
    gradient_accumulation: AtLeast1 = 1
    max_length: Annotated[int, Field(ge=16)] | None = None   # None: from the training texts (core/budget.py)
    allow_truncation: bool = False  # accept a max_length that cuts the typical input to under half
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup: NonNegative = 0.05                 # < 1: a fraction of the steps; else steps
    weight_decay: NonNegative = 0.0
    eval_steps: AtLeast1 | None = None         # None: evaluate (and checkpoint) once per epoch
    early_stopping_patience: AtLeast1 = 3
    gradient_checkpointing: bool = False
    logging_steps: AtLeast1 = 10
    max_train_seconds: Positive | None = None  # stop (evaluated and saved) once training has run this long


class InferenceSettings(BaseModel):
    """How a frozen forward pass runs after training (core/accel.py): ``auto`` measures the engines
    on validation and keeps the fastest whose answers match fp32 PyTorch (predict/engine.py)."""

    engine: Literal["auto", "torch", "onnx", "onnx-int8", "onnx-int8-checked"] = "auto"


class AdapterSettings(BaseModel):
    """LoRA (peft) and 4-bit NF4 loading (bitsandbytes, CUDA only): QLoRA when both are on."""

    lora: bool = True
    lora_r: AtLeast1 = 16
    lora_alpha: AtLeast1 = 32
    lora_dropout: Dropout = 0.05
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    load_in_4bit: bool = False


class GenerativeSettings(BaseModel):
    """How a generative run answers (label scoring or free generation) and is evaluated in training."""

    merge: bool = False           # also save merged 16-bit weights (model/merged) for plain transformers / vLLM
    decoding: Literal["score", "generate"] = "score"
    max_new_tokens: AtLeast1 = 24
    calibrate: bool = True
    eval_rows: AtLeast1 = 200     # validation rows scored at each evaluation
    negatives: AtLeast1 = 2       # multi_label: sampled "no" questions per "yes"
    score_batch_size: AtLeast1 = 16  # documents per label-scoring batch: 16 beat 8 and 32 on CPU (BENCHMARKS.md)
    answer_budget: AtLeast1 | None = None  # tokens kept for the answer; None: from the training answers


class MultiTaskSettings(BaseModel):
    """More task specs trained into (or, zero-shot, answered by) the same model: each adds its own
    training data and prompt; the run answers, evaluates and serves every one (training.py)."""

    tasks: list[str] = Field(default_factory=list)


# --- builders ---------------------------------------------------------------------------------

def quantization_config(adapters: AdapterSettings):
    """NF4 with double quantisation and bf16 compute (the QLoRA recipe), or None."""
    if not adapters.load_in_4bit:
        return None
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("load_in_4bit (4-bit NF4 / QLoRA) needs a CUDA GPU",
                          ["set load_in_4bit: false on CPU; LoRA alone works"])
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def with_adapters(net, adapters: AdapterSettings, task_type: str):
    """The model as it trains: prepared for k-bit training when 4-bit, wrapped in LoRA when asked."""
    if adapters.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        net = prepare_model_for_kbit_training(net)
    if adapters.lora or adapters.load_in_4bit:
        from peft import LoraConfig, get_peft_model

        net = get_peft_model(net, LoraConfig(task_type=task_type, r=adapters.lora_r, lora_alpha=adapters.lora_alpha,
                                             lora_dropout=adapters.lora_dropout, target_modules=adapters.target_modules))
    return net


def load_for_training(auto_class, model: str, adapters: AdapterSettings, task_type: str, what: str, **kwargs):
    """(tokenizer, model) from a model name, quantised and wrapped as the settings say; a model
    that cannot be loaded is a ModelError naming it. The tokenizer always has a pad token."""
    import torch
    from transformers import AutoTokenizer

    path = resolve(model)
    quant = quantization_config(adapters)
    if quant is not None:
        kwargs["quantization_config"] = quant
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        net = auto_class.from_pretrained(path, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"cannot load {model!r} {what}", [str(e).splitlines()[0]]) from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, with_adapters(net, adapters, task_type)


def training_arguments(settings: TrainerSettings, run_dir: Path, metric: str, progress: bool,
                       args_class=None, **extra):
    """``TrainingArguments`` (or ``args_class``, e.g. TRL's ORPOConfig) with the best checkpoint
    chosen by ``metric`` (lower is better only for loss and MAE), evaluated and saved on the same
    schedule, bf16 only on a CUDA GPU that has it (bf16 made a step 25x slower on CPU)."""
    import torch

    if args_class is None:
        from transformers import TrainingArguments as args_class
    cuda = torch.cuda.is_available()
    strategy = "epoch" if settings.eval_steps is None else "steps"
    args = dict(
        output_dir=str(run_dir / "checkpoints"), num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        learning_rate=settings.learning_rate, per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size, gradient_accumulation_steps=settings.gradient_accumulation,
        lr_scheduler_type=settings.scheduler, warmup_steps=settings.warmup, weight_decay=settings.weight_decay,
        eval_strategy=strategy, save_strategy=strategy, eval_steps=settings.eval_steps, save_steps=settings.eval_steps,
        save_total_limit=2, load_best_model_at_end=True, metric_for_best_model=metric,
        greater_is_better=metric not in ("loss", "mae"), logging_steps=settings.logging_steps, report_to="none",
        seed=settings.seed, use_cpu=not cuda, bf16=cuda and torch.cuda.is_bf16_supported(), disable_tqdm=not progress)
    if settings.gradient_checkpointing:  # transformers 5 warns on every run when the argument is passed at all
        args["gradient_checkpointing"] = True
    return args_class(**{**args, **extra})


def trainer_callbacks(settings: TrainerSettings, run_dir: Path) -> list:
    """Early stopping on the selection metric, and TensorBoard logs in ``run/logs`` (transformers 5
    dropped ``TrainingArguments.logging_dir``, so the callback is handed its folder)."""
    from transformers import EarlyStoppingCallback
    from transformers.integrations import TensorBoardCallback

    tensorboard = TensorBoardCallback()
    extra = [stop_after(settings.max_train_seconds)] if settings.max_train_seconds else []
    tensorboard.logging_dir = str(run_dir / "logs")
    return [EarlyStoppingCallback(settings.early_stopping_patience), tensorboard, *extra]


def stop_after(seconds: float):
    """A callback that ends training after ``seconds`` of it (``auto``'s budget): the step it stops
    at is evaluated and saved, so the best checkpoint is chosen among everything trained."""
    import time

    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.deadline = time.monotonic() + seconds

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() > self.deadline and not control.should_training_stop:
                control.should_training_stop = True
                control.should_evaluate = control.should_save = True
            return control

    return StopAfter()


def quiet_trainer(trainer, progress: bool):
    """Without progress output, the Trainer prints every log dict instead of a bar (PrinterCallback):
    ``--quiet`` means only warnings and errors, so that printer goes too. Returns the trainer."""
    if not progress:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    return trainer


def resume_checkpoint(run_dir: Path, resume: bool) -> str | None:
    """The Trainer checkpoint ``--resume`` continues from: the newest *complete* one. The Trainer
    writes a checkpoint's trainer_state.json after its weights, optimizer and RNG states, so a
    checkpoint without a readable one was cut off (SIGKILL while saving); it is removed, and the
    one before it is used."""
    import json
    import shutil

    if not resume:
        return None
    found = sorted((run_dir / "checkpoints").glob("checkpoint-*"),
                   key=lambda p: int(p.name.rsplit("-", 1)[1]) if p.name.rsplit("-", 1)[1].isdigit() else -1, reverse=True)
    for ckpt in found:
        try:
            json.loads((ckpt / "trainer_state.json").read_text())
            return str(ckpt)
        except (OSError, ValueError):
            shutil.rmtree(ckpt, ignore_errors=True)
    return None
