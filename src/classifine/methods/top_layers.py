"""Fine-tuning a decoder's top layers on cached states of the layer below (``embed``'s ``tune_layers``).

Why: a frozen model's pooled states are cheap (one forward pass per text) but not shaped for the
task; fine-tuning the whole model (``head`` with LoRA) shapes them but trains 1-2 rows/s on a
2-core CPU, so a 30-minute budget sees ~2,000 rows. In between: run the frozen lower ``K`` layers
once per text, keep their output token by token, and train only the top ``T`` layers (initialised
from the base model's) plus a linear layer on those states for a few epochs. A training step then
costs what ``T`` layers cost forward and backward, not the whole model, so every row the budget
embeds is also trained on. Measured in ``auto``'s hybrid (Gemma 3 270M, two layers tuned, 3
epochs; BENCHMARKS.md, "Quality"): validation macro-F1 of the embeddings alone 85.0% on NSMC with
8,866 rows (frozen: 81.5% with 15,901) and 78.8% on Indonesian tweets with 4,585 rows (frozen:
67.5% with 9,481), in 426 and 395 s for the whole hybrid.

The tuned layers replace the base model's in the model cut to the chosen depth, so the run's
``model/encoder`` is an ordinary transformers model (and sentence-transformers folder) whose pooled
output the run's linear head was fitted on, exactly as for a frozen ``embed`` run.

Decoders only: their ``inputs_embeds`` enter the first layer as they are, so a model of the top
``T`` layers fed cached states computes what the whole model computes (encoders such as BERT add
position embeddings and a norm to ``inputs_embeds``).
"""
from __future__ import annotations

import copy
import time

import numpy as np

from ..core.accel import MAX_BATCH_ROWS, MAX_BATCH_TOKENS, pad, token_batches
from ..core.models import cut_config
from ..errors import ModelError
from ..scoring.decision import class_weights

BATCH_ROWS = 16
HEAD_LR = 1e-3
SCALE = 10.0   # pooled vectors are L2-normalised: logits of a unit vector need a larger scale to train
LAYERS = "layers."   # the decoder's layer weights: layers.<i>.<rest>


def _layer_output(output):
    return output[0] if isinstance(output, tuple) else output


def _shift(state: dict, offset: int) -> dict:
    """``state`` with layer ``i`` renamed ``i + offset`` (layers that fall below 0 dropped) and
    without the embedding matrix: how weights move between the cut model and its top layers."""
    out = {}
    for k, v in state.items():
        if k.startswith(LAYERS):
            i, rest = k[len(LAYERS):].split(".", 1)
            if int(i) + offset >= 0:
                out[f"{LAYERS}{int(i) + offset}.{rest}"] = v
        elif not k.startswith("embed_tokens"):
            out[k] = v
    return out


def lower_states(net, tokenizer, texts: list[str], prefix: str, max_length: int, progress: bool) -> list:
    """Each text's token states after ``net``'s last layer (before the final norm: what the next
    layer reads), as float32 tensors of the text's length."""
    import torch
    from tqdm.auto import tqdm

    captured = []
    hook = net.layers[-1].register_forward_hook(lambda m, i, o: captured.append(_layer_output(o)))
    seqs = tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length)["input_ids"]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = [None] * len(texts)
    try:
        for idx in tqdm(token_batches([len(s) for s in seqs], MAX_BATCH_TOKENS, MAX_BATCH_ROWS), desc="embed (lower layers)", unit="batch",
                        disable=not progress):
            ids, mask = pad([seqs[i] for i in idx], pad_id, False)
            captured.clear()
            with torch.inference_mode():
                net(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
            states = captured[-1]
            for j, i in enumerate(idx):
                out[i] = states[j, : len(seqs[i])].clone()
    finally:
        hook.remove()
    return out


def _batch(states: list, idx, dim: int):
    import torch

    n = max(states[i].shape[0] for i in idx)
    x = torch.zeros(len(idx), n, dim)
    mask = torch.zeros(len(idx), n, dtype=torch.long)
    for j, i in enumerate(idx):
        x[j, : states[i].shape[0]] = states[i]
        mask[j, : states[i].shape[0]] = 1
    return x, mask


def _loss_fn(kind: str, classes: list[str], y, targets, class_weight):
    """The training loss over a batch's logits, class-weighted as the run's heads are."""
    import torch

    if kind == "multi_label":
        Y = np.array([[lab in row for lab in classes] for row in y], dtype=np.float32)
        pos = Y.sum(0)
        w1, w0 = np.ones(len(classes), np.float32), np.ones(len(classes), np.float32)
        for j in range(len(classes)):
            if 0 < pos[j] < len(Y):
                cw = class_weights(["0", "1"], {"0": len(Y) - pos[j], "1": pos[j]},
                                   class_weight if class_weight in (None, "none", "balanced") else "none")
                w0[j], w1[j] = cw["0"], cw["1"]
            if isinstance(class_weight, dict):  # a per-label weight scales that label's positives (as linear.py)
                w1[j] *= float(class_weight.get(classes[j], 1.0))
        Yt, W1, W0 = torch.from_numpy(Y), torch.from_numpy(w1), torch.from_numpy(w0)

        def loss(logits, idx):
            t = Yt[idx]
            weight = t * W1 + (1 - t) * W0
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, t, weight=weight)
        return loss
    counts = {lab: sum(1 for v in y if v == lab) for lab in classes}
    weights = class_weights(classes, counts, class_weight)
    W = torch.tensor([weights[c] if counts[c] else 0.0 for c in classes], dtype=torch.float32)
    if targets is not None:
        T = torch.from_numpy(np.asarray(targets, dtype=np.float32))
    else:
        T = torch.nn.functional.one_hot(torch.tensor([classes.index(v) for v in y]), len(classes)).float()

    def loss(logits, idx):  # cross-entropy to (soft) targets, each row weighted by its classes' weights
        t = T[idx]
        return (-(t * torch.log_softmax(logits, -1)).sum(-1) * (t @ W)).mean()
    return loss


def tune(model_path: str, depth: int, tune_layers: int, tokenizer, train, validation, task, config, pool,
         select, progress: bool = True):
    """Fine-tune layers ``depth - tune_layers + 1 .. depth`` of the decoder at ``model_path`` for the
    task. Returns the base model cut to ``depth`` layers with those layers tuned (what the run saves
    as its encoder), the pooled vectors of the training and validation texts through it, and facts
    for config.yaml. ``pool(hidden, mask)`` is the run's pooling; ``select(probs)`` scores
    validation probabilities (the epoch with the best score is kept)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoConfig, AutoModel

    t0 = time.perf_counter()
    torch.manual_seed(config.seed)
    lower_depth = depth - tune_layers
    if lower_depth < 1:
        raise ModelError(f"cannot tune {tune_layers} layers of a {depth}-layer cut: at least one layer must stay frozen",
                         [f"set tune_layers to at most {depth - 1}, or a deeper layer"])
    base_config = AutoConfig.from_pretrained(model_path)

    def load(layers: int):
        from transformers.utils import logging as hf_logging

        cfg = type(base_config).from_dict(cut_config(base_config.to_dict(), layers))
        before = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the deeper layers' weights are left unread on purpose
        try:
            return AutoModel.from_pretrained(model_path, config=cfg, dtype=torch.float32).eval()
        finally:
            hf_logging.set_verbosity(before)

    lower = load(lower_depth)
    if not isinstance(getattr(lower, "layers", None), torch.nn.ModuleList):
        raise ModelError(f"{type(lower).__name__} keeps its layers elsewhere than .layers: tune_layers cannot run its top layers",
                         ["use tune_layers: 0 (frozen) or method head"])
    texts = train.texts + (validation.texts if validation is not None else [])
    states = lower_states(lower, tokenizer, texts, config.prefix, config.max_length, progress)
    del lower
    cut = load(depth)
    # fed states, never token ids: a one-row embedding matrix and no special token ids (which
    # transformers would warn lie outside that vocabulary)
    top_config = cut_config(cut.config.to_dict(), tune_layers, start=lower_depth, vocab_size=1,
                            **{f"{k}_token_id": None for k in ("pad", "bos", "eos", "unk")})
    top = AutoModel.from_config(type(cut.config).from_dict(top_config)).float()
    missing, unexpected = top.load_state_dict(_shift(cut.state_dict(), -lower_depth), strict=False)
    if unexpected or [k for k in missing if not k.startswith("embed_tokens")]:
        raise ModelError("this architecture's top layers cannot be run on their own",
                         [f"missing {missing[:3]}, unexpected {unexpected[:3]}", "use tune_layers: 0 (frozen) or method head"])
    classes = task.label_names
    dim = int(top.config.get_text_config().hidden_size if hasattr(top.config, "get_text_config") else top.config.hidden_size)
    linear = torch.nn.Linear(dim, len(classes))
    multi = task.kind == "multi_label"

    scale = SCALE if config.normalize else 1.0

    def vectors(ids):
        x, mask = _batch(states, ids, dim)
        return pool(top(inputs_embeds=x, attention_mask=mask).last_hidden_state, mask)

    def predict(ids):
        top.eval()
        out = np.zeros((len(ids), dim), dtype=np.float32)
        order = sorted(range(len(ids)), key=lambda j: states[ids[j]].shape[0])
        with torch.inference_mode():
            for s in range(0, len(order), 64):
                part = order[s:s + 64]
                out[part] = vectors([ids[j] for j in part]).numpy()
        return out

    n_train = len(train)
    loss_fn = _loss_fn(task.kind, classes, train.labels, train.targets, config.class_weight)
    opt = torch.optim.AdamW([{"params": top.parameters(), "lr": config.tune_lr},
                             {"params": linear.parameters(), "lr": HEAD_LR}], weight_decay=0.01)
    per_epoch = max(1, n_train // BATCH_ROWS)
    steps = config.tune_epochs * per_epoch
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, 1 - s / steps))
    rng = np.random.default_rng(config.seed)
    val_ids = list(range(n_train, len(texts)))
    scores, best, bar = [], None, tqdm(total=steps, desc=f"tune layers {lower_depth + 1}-{depth}", unit="step",
                                       disable=not progress)
    for epoch in range(config.tune_epochs):
        top.train()
        perm = rng.permutation(n_train)
        # batches of similar lengths (little padding), drawn from shuffled windows of 20 batches
        for w in range(0, n_train, BATCH_ROWS * 20):
            window = sorted(perm[w:w + BATCH_ROWS * 20].tolist(), key=lambda i: states[i].shape[0])
            for s in range(0, len(window), BATCH_ROWS):
                ids = window[s:s + BATCH_ROWS]
                logits = linear(vectors(ids) * scale)
                loss = loss_fn(logits, torch.tensor(ids))
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
        if val_ids:
            V = torch.from_numpy(predict(val_ids))
            with torch.inference_mode():
                z = linear(V * scale)
            probs = torch.sigmoid(z) if multi else torch.softmax(z, -1)
            scores.append(round(float(select(probs.numpy().astype(np.float64))), 4))
            if best is None or scores[-1] > max(scores[:-1]):
                best = copy.deepcopy(top.state_dict())
    bar.close()
    if best is not None:
        top.load_state_dict(best)
    cut.load_state_dict(_shift(top.state_dict(), lower_depth), strict=False)  # the tuned layers and final norm
    X = predict(list(range(n_train)))
    X_val = predict(val_ids) if val_ids else None
    facts = {"layers": [lower_depth + 1, depth], "epochs": config.tune_epochs, "lr": config.tune_lr,
             "epoch_scores": scores, "best_epoch": (int(np.argmax(scores)) + 1) if scores else config.tune_epochs,
             "seconds": round(time.perf_counter() - t0, 1)}
    return cut.eval(), X, X_val, facts
