"""Decoding for generative methods.

- ``score_continuations``: log P(continuation | prompt) for many continuations of each prompt. The
  prompt runs once; its KV cache is repeated for the continuations; the LM head is applied only at
  the positions that predict continuation tokens (Gemma's 262k-vocab head is most of the cost).
- ``LabelScorer``: a score for every label (log P(label | prompt), or the log-odds of "yes" per
  label for multi-label), so the answer is always a valid label. It decides *what* is scored;
  *how* is an engine: ``score_continuations`` on a torch model here, vLLM's prompt log-probs in
  ``serve/vllm.py``.
- ``generate_answers`` + ``parse_answer``: free generation, the way hand-written recipes decode,
  kept for comparison; unparseable answers are counted as invalid, never hidden.
- ``EntityDecoder``: greedy decoding constrained to ``{"<entity>": ["...", ...]}``, so every answer
  parses; each entity's confidence is the product of its tokens' probabilities.
"""
from __future__ import annotations

import copy
import inspect
import json
import math
from functools import lru_cache

import numpy as np

from ..core.task import TaskSpec
from ..errors import ConfigError
from .prompts import PromptFormat, answer_text


def lm_parts(model):
    """(decoder that returns hidden states, LM head, final-logit softcap) of a causal LM, also
    when wrapped by peft."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), getattr(base.config, "final_logit_softcapping", None)


def cache_keyword(model) -> str:
    """The forward keyword of the KV cache: transformers 5.2x renamed ``past_key_values`` to ``cache``
    (the old name warns on every call and goes in 5.40); the versions before know only the old one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def cache_of(out):
    """The KV cache a forward returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _head_logprobs(head, softcap, hidden, rows, targets, chunk: int = 256):
    """log P(targets[i] | hidden[rows[i]]): each hidden row goes through the LM head once, however
    many targets read it."""
    import torch

    out = torch.zeros(len(rows), dtype=torch.float32)
    for s in range(0, hidden.shape[0], chunk):
        logits = head(hidden[s:s + chunk]).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logp = torch.log_softmax(logits, -1)
        sel = ((rows >= s) & (rows < s + chunk)).nonzero()[:, 0]
        out[sel] = logp[rows[sel] - s, targets[sel]]
    return out


def _target_logits(head, softcap, hidden, rows, targets):
    """The LM head's logit of targets[i] at hidden[rows[i]], without the normaliser over the vocabulary."""
    import torch

    logits = (hidden[rows] * head.weight[targets]).sum(-1).float()
    if head.bias is not None:
        logits = logits + head.bias[targets].float()
    return torch.tanh(logits / softcap) * softcap if softcap else logits


def _sliding_window(model) -> int | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    types = getattr(cfg, "layer_types", None)
    if types is not None and not any("sliding" in t for t in types):
        return None
    return getattr(cfg, "sliding_window", None) or None


def _left_pad(seqs: list[list[int]], pad: int):
    import torch

    T = max(len(p) for p in seqs)
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, p in enumerate(seqs):  # left padding: every sequence ends at the same position
        ids[i, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, T - len(p):] = 1
    return ids, mask


def score_continuations(model, tokenizer, prompts: list[list[int]], conts: list[list[int]], batch_size: int = 8,
                        shared: list[int] | None = None, scored_from: list[int] | None = None,
                        relative: bool = False) -> np.ndarray:
    """(n_prompts, n_conts) array of summed log-probabilities of each continuation after each prompt.

    ``shared``: tokens that precede every prompt (the task's frame); their KV cache is computed once
    and reused for every batch. ``scored_from[j]``: how many leading tokens of continuation j are
    context only (fed, not scored), e.g. a multi-label question before its yes/no. ``relative``: the
    caller compares a prompt's continuations with each other only (a softmax over labels), so a
    constant per prompt may be left in: where every continuation scores one token after every state
    (one-token labels), each state's log-normaliser over the vocabulary is that constant, and the LM
    head computes only the target rows instead of all 262k."""
    import torch

    if any(not p for p in prompts) or any(not c for c in conts):
        raise ValueError("prompts and continuations must not be empty")
    decoder, head, softcap = lm_parts(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    shared, scored_from = shared or [], scored_from or [0] * len(conts)
    L, width, S = len(conts), max(len(c) for c in conts), len(shared)
    C = torch.full((L, width), pad, dtype=torch.long)
    cmask = torch.zeros((L, width), dtype=torch.long)
    for j, c in enumerate(conts):  # continuations are right-padded: they all start after the prompt
        C[j, :len(c)] = torch.tensor(c)
        cmask[j, :len(c)] = 1
    scored = cmask.bool() & (torch.arange(width)[None, :] >= torch.tensor(scored_from)[:, None])
    # The state that predicts token j of a continuation depends only on the tokens before it, so
    # continuations that share a prefix (every label at j = 0; a multi-label question before its
    # yes/no) share that state: it goes through the 262k LM head once per document, not per label.
    pair_l, pair_j = scored.nonzero(as_tuple=True)
    prefixes: dict[tuple, int] = {}   # prefix -> its state's index u
    reps: list[tuple[int, int]] = []  # (continuation, position) that computes state u
    units: list[int] = []             # u of each scored pair
    for l, j in zip(pair_l.tolist(), pair_j.tolist()):
        key = tuple(conts[l][:j])
        if key not in prefixes:
            prefixes[key] = len(reps)
            reps.append((l, j))
        units.append(prefixes[key])
    pair_u = torch.tensor(units)
    # each continuation reads each state exactly once: the normaliser is the same for all of them
    targets_only = relative and len(units) == L * len(reps) and len(set(zip(pair_l.tolist(), units))) == len(units) \
        and isinstance(head, torch.nn.Linear)
    (rep_l, rep_j), U, pair_t = torch.tensor(reps).T, len(reps), C[pair_l, pair_j]
    result = np.zeros((len(prompts), L))
    kv = cache_keyword(decoder)
    with torch.inference_mode():
        frame = cache_of(decoder(input_ids=torch.tensor([shared]), use_cache=True)) if S else None
    # documents of similar length share a batch, so little compute goes to padding
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    window = _sliding_window(model)
    for s in range(0, len(prompts), batch_size):
        rows = order[s:s + batch_size]
        seqs, B = [prompts[i] for i in rows], len(rows)
        # The cached frame puts each row's padding between frame and text. Sliding-window layers
        # measure the window in cache slots, padding included, so where padding could push the
        # frame out of the window the batch runs with the frame inline and left padding instead.
        inline = frame is None or (window is not None and S + max(map(len, seqs)) + width > window)
        ids, mask = _left_pad([shared + p for p in seqs] if inline else seqs, pad)
        pos = (0 if inline else S) + (mask.cumsum(-1) - 1).clamp(min=0)
        if not inline:
            mask = torch.cat([torch.ones((B, S), dtype=torch.long), mask], 1)
        with torch.inference_mode():
            cache = None
            if not inline:
                cache = copy.deepcopy(frame)
                cache.batch_repeat_interleave(B)
            first = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=width > 1, **{kv: cache})
            # token j of a continuation is predicted by position j-1 (the prompt's last for j = 0)
            hidden = first.last_hidden_state[:, -1:].repeat_interleave(L, 0)
            if width > 1:  # one-token continuations need nothing but the prompt's last state
                cache = cache_of(first)
                cache.batch_repeat_interleave(L)
                cont_ids = C.repeat(B, 1)
                full_mask = torch.cat([mask.repeat_interleave(L, 0), cmask.repeat(B, 1)], 1)
                cont_pos = pos[:, -1:].repeat_interleave(L, 0) + 1 + torch.arange(width)[None, :]
                second = decoder(input_ids=cont_ids, attention_mask=full_mask, position_ids=cont_pos,
                                 use_cache=False, **{kv: cache})
                hidden = torch.cat([hidden, second.last_hidden_state[:, :-1]], 1)
            states = hidden.view(B, L, width, -1)[:, rep_l, rep_j].reshape(B * U, -1)
            b = torch.arange(B)[:, None]
            if targets_only:
                lp = _target_logits(head, softcap, states, (b * U + pair_u).reshape(-1), pair_t.repeat(B))
            else:
                lp = _head_logprobs(head, softcap, states, (b * U + pair_u).reshape(-1), pair_t.repeat(B))
            sums = torch.zeros(B * L, dtype=lp.dtype).index_add_(0, (b * L + pair_l).reshape(-1), lp)
        result[rows] = sums.view(B, L).double().numpy()
    return result


class LabelScorer:
    """Scores every label of a single_label / ordinal / multi_label task for a batch of texts.

    ``engine(prompts, continuations, shared, scored_from) -> (n_prompts, n_continuations)`` sums
    the log-probabilities of each continuation's scored tokens after ``shared + prompt``; the
    default runs ``score_continuations`` on ``model``.

    ``answer_end=False`` leaves out the tokens every answer ends with (a JSON answer's `"}` and the
    end of turn) wherever the labels stay told apart without them: the model closes a well-formed
    answer with probability near 1 whatever the label, and those tokens took 43% of a JSON run's
    scoring time (BENCHMARKS.md, "Inference speed"). Runs saved before it score them
    (``score_answer_end`` in ``generative.json``), so their calibration keeps meaning the same scores."""

    def __init__(self, model, tokenizer, task: TaskSpec, batch_size: int = 8, engine=None, answer_end: bool = False):
        self.tokenizer, self.task, self.common = tokenizer, task, []
        self.fmt = PromptFormat.for_tokenizer(tokenizer)
        if task.kind == "multi_label":
            yes_no = [self.fmt.ids(w + self.fmt.end_text) for w in ("yes", "no")]
            questions = self.fmt.question_ids(task)
            self.conts = [q + yn for q in questions for yn in yes_no]
            self.scored_from = [len(q) for q in questions for _ in yes_no]  # only the answer is scored
        else:
            conts = [self.fmt.ids(self.fmt.answer(task, lab)) for lab in task.label_names]
            check_label_tokens(task, [self.fmt.ids(answer_text(task, lab)) for lab in task.label_names])
            # What every label's answer starts with (`{"label": "` of a JSON answer) adds the same
            # log-probability to each label, and the scores only ever meet a softmax over labels: it
            # joins the prompt, so the body runs it once per document instead of once per label and
            # the LM head never reads its states (measured: BENCHMARKS.md, "Inference speed").
            self.common = _common_prefix(conts)
            self.conts = [c[len(self.common):] for c in conts]
            self.scored_from = [0] * len(self.conts)
        if not answer_end:
            self.conts = _without_common_end(self.conts, self.scored_from)
        # a batch holds batch x continuations sequences: keep it near 64 when there are many labels
        batch = max(1, min(batch_size, 64 // len(self.conts)))
        # scores only ever meet a softmax over this prompt's labels (or a yes-no difference)
        self.engine = engine or (lambda prompts, conts, shared, scored_from: score_continuations(
            model, tokenizer, prompts, conts, batch, shared=shared, scored_from=scored_from, relative=True))

    def scores(self, texts: list[str]) -> np.ndarray:
        """single_label/ordinal: log P(label | prompt) up to a constant per text, which a softmax over
        labels cancels (the answers' common start; with one-token labels also the LM head's normaliser);
        multi_label: log-odds of "yes" per label."""
        prompts = [self.fmt.text_ids(self.task, t) + self.common for t in texts]
        s = self.engine(prompts, self.conts, self.fmt.head_ids(self.task), self.scored_from)
        return s if self.task.kind != "multi_label" else s[:, 0::2] - s[:, 1::2]


def _common_prefix(seqs: list[list[int]]) -> list[int]:
    """The tokens all sequences start with, leaving at least one token of each to score."""
    n = 0
    while all(len(q) > n + 1 for q in seqs) and len({q[n] for q in seqs}) == 1:
        n += 1
    return list(seqs[0][:n])


def _without_common_end(seqs: list[list[int]], scored_from: list[int]) -> list[list[int]]:
    """``seqs`` less the tokens they all end with, as far as each keeps a scored token and none
    becomes the start of another ("hate" must still be told from "hateful" by its closing quote)."""
    n = 0
    while all(len(q) - (n + 1) > f for q, f in zip(seqs, scored_from)) and len({q[-(n + 1)] for q in seqs}) == 1:
        cut = [tuple(q[:len(q) - n - 1]) for q in seqs]
        if any(a != b and b[:len(a)] == a for a in cut for b in cut):
            break
        n += 1
    return [q[:len(q) - n] for q in seqs]


def check_label_tokens(task: TaskSpec, ids: list[list[int]]) -> None:
    problems = []
    for lab, seq in zip(task.label_names, ids):
        if not seq:
            problems.append(f"label {lab!r} tokenizes to nothing: give it a visible name")
    seen: dict[tuple, str] = {}
    for lab, seq in zip(task.label_names, ids):
        if tuple(seq) in seen and seq:
            problems.append(f"labels {seen[tuple(seq)]!r} and {lab!r} tokenize identically: rename one of them")
        seen.setdefault(tuple(seq), lab)
    if problems:
        raise ConfigError("the labels cannot be scored with this tokenizer:", problems)


def generate_answers(model, tokenizer, prompts: list[list[int]], max_new_tokens: int = 24, batch_size: int = 8,
                     stop: list[int] | None = None) -> list[str]:
    """Greedy answers to prompts given as token ids; generation ends at any token of ``stop`` (the
    end-of-turn marker the model was trained to emit) or at eos."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    eos = [t for t in [tokenizer.eos_token_id, *(stop or [])] if t is not None]
    out = []
    for s in range(0, len(prompts), batch_size):
        ids, mask = _left_pad(prompts[s:s + batch_size], pad)
        with torch.inference_mode():
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=pad, eos_token_id=eos)
        out += tokenizer.batch_decode(gen[:, ids.shape[1]:], skip_special_tokens=True)
    return out


def parse_answer(task: TaskSpec, text: str):
    """The label a free-form answer names, or None when it names none (an invalid output)."""
    text = text.strip()
    if task.output == "json":
        try:
            obj = json.loads(text[text.index("{"): text.rindex("}") + 1])
            text = str(obj.get(task.label_column, "")) if isinstance(obj, dict) else ""
        except ValueError:
            return None
    first = text.splitlines()[0].strip().strip(".\"'") if text else ""
    if first in task.labels:
        return first
    folded = {lab.casefold(): lab for lab in task.labels}
    return folded.get(first.casefold())


@lru_cache(maxsize=4)
def _token_texts(tokenizer) -> list[str]:
    # decode each token after an anchor so a leading space survives (SentencePiece strips it at
    # the start of a sequence)
    anchor = tokenizer("a", add_special_tokens=False).input_ids[-1:]
    base = tokenizer.decode(anchor)
    texts = tokenizer.batch_decode([anchor + [i] for i in range(len(tokenizer))])
    return [t[len(base):] if t.startswith(base) else t for t in texts]


class EntityDecoder:
    """Greedy decoding of ``{"<entity>": ["a", "b"]}`` in exactly json.dumps' layout (the layout
    the model is trained on). A token is taken only if the text stays a prefix of such a document,
    so the output always parses; strings may not contain quotes, backslashes or control characters."""

    def __init__(self, model, tokenizer, task: TaskSpec, max_new_tokens: int = 96, max_entity_chars: int = 120):
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.kv = cache_keyword(model)
        self.fmt = PromptFormat.for_tokenizer(tokenizer)
        self.head = '{"' + task.entity + '": ['
        self.end_ids = tokenizer(self.fmt.end_text, add_special_tokens=False).input_ids
        self.max_new_tokens, self.max_entity_chars = max_new_tokens, max_entity_chars
        self.texts = _token_texts(tokenizer)
        self.special = set(tokenizer.all_special_ids)

    def _advance(self, state: tuple, text: str):
        """Consume ``text`` from ``state``; None if it leaves the grammar. States:
        ("head", i) matching the fixed head; ("open",) after "[" or ", "; ("str", n); ("after",)
        after a closing quote; ("sep", i) inside ', "'; ("close",) expecting "}"; ("done",)."""
        for ch in text:
            kind = state[0]
            if kind == "head":
                if ch != self.head[state[1]]:
                    return None
                state = ("head", state[1] + 1) if state[1] + 1 < len(self.head) else ("first",)
            elif kind == "first":  # right after "[": an empty list or a first string
                state = ("close",) if ch == "]" else ("str", 0) if ch == '"' else None
            elif kind == "str":
                if ch == '"':
                    state = ("after",) if state[1] > 0 else None
                elif ch == "\\" or ord(ch) < 32 or state[1] >= self.max_entity_chars:
                    return None
                else:
                    state = ("str", state[1] + 1)
            elif kind == "after":
                state = ("sep", 1) if ch == "," else ("close",) if ch == "]" else None
            elif kind == "sep":
                want = ', "'[state[1]]
                if ch != want:
                    return None
                state = ("sep", 2) if state[1] == 1 else ("str", 0)
            elif kind == "close":
                state = ("done",) if ch == "}" else None
            else:
                return None
            if state is None:
                return None
        return state

    def decode(self, prompt: list[int]) -> tuple[list[dict], str]:
        """Entities (name, confidence) and the JSON text for one prompt given as token ids."""
        import torch

        step_input = torch.tensor([prompt])
        state, text, past = ("head", 0), "", None
        entities: list[tuple[str, float]] = []
        cur, cur_lp = None, 0.0  # the entity being written and the log-probability of its tokens
        for _ in range(self.max_new_tokens):
            with torch.inference_mode():
                out = self.model(input_ids=step_input, use_cache=True, logits_to_keep=1, **{self.kv: past})
            past = cache_of(out)
            logp = torch.log_softmax(out.logits[0, -1].float(), -1)
            def allowed(tid: int) -> bool:
                return tid not in self.special and self._advance(state, self.texts[tid]) is not None

            # the most probable token the grammar allows: nearly always among the top few
            chosen = next((t for t in torch.topk(logp, min(256, logp.numel())).indices.tolist() if allowed(t)), None)
            if chosen is None:
                chosen = next((t for t in torch.argsort(logp, descending=True).tolist() if allowed(t)), None)
            if chosen is None:  # pragma: no cover - the grammar always allows some token
                break
            lp, piece = float(logp[chosen]), self.texts[chosen]
            # an entity's confidence is the product of the probabilities of every token that
            # carries part of it, its quotes included
            for ch in piece:
                prev, state = state, self._advance(state, ch)
                if state == ("str", 0) and prev[0] != "str":
                    cur, cur_lp = "", 0.0
                elif prev[0] == "str" and state[0] == "str":
                    cur += ch
                elif prev[0] == "str" and state == ("after",):
                    entities.append((cur, cur_lp + lp))
                    cur = None
            if cur is not None:
                cur_lp += lp
            text += piece
            step_input = torch.tensor([[chosen]])
            if state == ("done",):
                break
        if state != ("done",):  # out of budget: close the document so it still parses
            text = text if state[0] not in ("str",) else text + '"'
            text = _close(text, self.head)
        found = [{"name": name, "confidence": round(math.exp(lp), 6)} for name, lp in entities]
        return found, text


def _close(text: str, head: str) -> str:
    """Finish a truncated document of the fixed grammar."""
    try:
        json.loads(text)
        return text
    except ValueError:
        pass
    for tail in ("]}", '"]}', "}"):
        try:
            json.loads(text.rstrip(", ") + tail)
            return text.rstrip(", ") + tail
        except ValueError:
            continue
    return head + "]}"
