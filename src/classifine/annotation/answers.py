"""From a chat server's answer to a label, a probability per label and a confidence.

How we score (the server gives what the OpenAI API gives: the answer's tokens, each with its
log-probability and the top-k alternatives at that position, k ≤ 20):

- single_label / ordinal: a label's answer text (``World``, or ``{"category": "World"}`` for JSON
  output) is followed along the generated tokens while they spell it; where the label leaves the
  generated path, the alternatives at that position that continue the label's text give its
  probability there. So the answered label's probability is exact (the product of its tokens'
  probabilities) and every other label gets the probability of the first token where it differs,
  which is what decides between labels in practice. A label none of whose continuations is among
  the top-k gets the smallest top-k probability, an upper bound. The scores are then normalised
  over the labels. We chose this over one request per label with ``echo`` (scoring every label's
  full text, as the local scorer does) because chat endpoints of vLLM, llama.cpp and hosted APIs
  do not echo prompt log-probabilities, and it costs one request per row, not one per label.
- multi_label: one yes/no question per label (the local scorer's questions); P(yes) from the
  first answer token's alternatives.
- extraction: the JSON answer is parsed; an entity's confidence is the product of the
  probabilities of the tokens that spell it, and the row's confidence is the answer's probability.

The answer itself decides the label: its first line is a label, or starts with one as a whole
word (``World médical``: small models answer and ramble on). Anything else is recorded as invalid
with its raw text, never mapped to the nearest label.
"""
from __future__ import annotations

import json
import math

import numpy as np

from ..core.task import TaskSpec
from ..generative.decoding import parse_answer
from ..generative.prompts import answer_text
from ..scoring.decision import decide


def _tokens(choice: dict) -> list[dict]:
    lp = choice.get("logprobs") or {}
    return lp.get("content") or []


def _logsumexp(values: list[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def label_logprob(target: str, content: list[dict]) -> float | None:
    """log P(target) along the generated tokens, as the module docstring says; None without log-probs."""
    if not content:
        return None
    total, done = 0.0, ""
    for step in content:
        rest = target[len(done):]
        if not rest:
            break
        token = step.get("token") or ""
        if token and rest.startswith(token):
            total += float(step.get("logprob", 0.0))
            done += token
            continue
        alts = step.get("top_logprobs") or []
        fits = [float(a["logprob"]) for a in alts if a.get("token") and
                (rest.startswith(a["token"]) or a["token"].startswith(rest))]
        if fits:
            return total + _logsumexp(fits)
        floor = min((float(a["logprob"]) for a in alts), default=float(step.get("logprob", 0.0)))
        return total + min(floor, float(step.get("logprob", 0.0)))
    return total


def leading_label(task: TaskSpec, raw: str) -> str | None:
    """The label the answer's first line starts with as a whole word (``World médical`` → World;
    ``Sportsmen`` → None), the longest when several do. Small models often answer the label and
    ramble on; the rest stays in ``raw`` for review."""
    line = raw.strip().splitlines()[0].strip() if raw.strip() else ""
    for fold in (str, str.casefold):
        hits = [lab for lab in task.label_names if fold(line).startswith(fold(lab))
                and (len(line) == len(lab) or not line[len(lab)].isalnum())]
        if hits:
            return max(hits, key=len)
    return None


def classify(task: TaskSpec, choice: dict) -> dict:
    """single_label / ordinal: label (None when invalid), probabilities, confidence, valid, raw."""
    raw = (choice.get("message") or {}).get("content") or ""
    label = parse_answer(task, raw) or (leading_label(task, raw) if task.output == "label" else None)
    content = _tokens(choice)
    # the answer may start with whitespace the model chose to emit; targets follow what it generated
    lead = raw[:len(raw) - len(raw.lstrip())]
    scores = [label_logprob(lead + answer_text(task, lab), content) for lab in task.label_names]
    if any(s is None for s in scores):  # a server without log-probabilities: the answer only
        probs = None if label is None else {lab: float(lab == label) for lab in task.label_names}
        return {"label": label, "probabilities": probs, "confidence": None, "valid": label is not None, "raw": raw}
    s = np.array(scores)
    p = np.exp(s - s.max())
    p /= p.sum()
    probs = {lab: round(float(x), 6) for lab, x in zip(task.label_names, p)}
    conf = probs[label] if label is not None else None
    return {"label": label, "probabilities": probs, "confidence": conf, "valid": label is not None, "raw": raw}


def yes_probability(choice: dict) -> tuple[float | None, bool, str]:
    """multi_label: (P(yes) among yes/no at the first answer token, the answer was yes or no, raw)."""
    raw = (choice.get("message") or {}).get("content") or ""
    word = raw.strip().split()[0].strip(".,!\"'").casefold() if raw.strip() else ""
    valid = word in ("yes", "no")
    content = _tokens(choice)
    if not content:
        return (None if not valid else float(word == "yes")), valid, raw
    # the first token that is not only whitespace carries the decision
    step = next((s for s in content if (s.get("token") or "").strip()), content[0])
    alts = (step.get("top_logprobs") or []) or [{"token": step.get("token", ""), "logprob": step.get("logprob", 0.0)}]
    mass = {"yes": [], "no": []}
    for a in alts:
        t = (a.get("token") or "").strip().casefold()
        for w in mass:
            if t and w.startswith(t) or t == w:
                mass[w].append(float(a["logprob"]))
    if not mass["yes"] and not mass["no"]:
        return None, valid, raw
    floor = min(float(a["logprob"]) for a in alts)
    ly = _logsumexp(mass["yes"]) if mass["yes"] else floor
    ln = _logsumexp(mass["no"]) if mass["no"] else floor
    return 1.0 / (1.0 + math.exp(ln - ly)), valid, raw


def choose_labels(task: TaskSpec, probs: dict[str, float]) -> tuple[list[str], float]:
    """Multi-label: the labels chosen as every run chooses them (``scoring.decision.decide``: the
    spec's threshold, else 0.5, then ``top_k``), and the row's confidence: the least certain of its
    yes/no decisions."""
    cut = float(task.threshold) if task.threshold is not None else 0.5
    decision = {"thresholds": {n: cut for n in task.label_names}, "top_k": task.top_k}
    row = np.array([[probs[n] for n in task.label_names]])
    return decide("multi_label", task.label_names, row, decision)[0], min(max(p, 1 - p) for p in probs.values())


def multi_label(task: TaskSpec, answers: list[tuple[float | None, bool, str]]) -> dict:
    """Combine the per-label yes/no answers of one row."""
    names = task.label_names
    valid = all(v for _, v, _ in answers)
    raw = json.dumps({n: r for n, (_, _, r) in zip(names, answers)}, ensure_ascii=False)
    if any(p is None for p, _, _ in answers):
        if not valid:
            return {"label": None, "probabilities": None, "confidence": None, "valid": False, "raw": raw}
        return {"label": [n for n, (p, _, _) in zip(names, answers) if p], "probabilities": None,
                "confidence": None, "valid": True, "raw": raw}
    probs = {n: round(float(p), 6) for n, (p, _, _) in zip(names, answers)}
    chosen, conf = choose_labels(task, probs)
    return {"label": chosen if valid else None, "probabilities": probs, "confidence": round(conf, 6),
            "valid": valid, "raw": raw}


def extraction(task: TaskSpec, choice: dict) -> dict:
    """extraction: entities with a confidence each (filtered at the spec's min_confidence)."""
    raw = (choice.get("message") or {}).get("content") or ""
    try:
        obj = json.loads(raw[raw.index("{"): raw.rindex("}") + 1])
        items = obj.get(task.entity) if isinstance(obj, dict) else None
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ValueError
    except ValueError:
        return {"label": None, "probabilities": None, "confidence": None, "valid": False, "raw": raw}
    content = _tokens(choice)
    spans, pos = [], 0
    for step in content:
        tok = step.get("token") or ""
        spans.append((pos, pos + len(tok), float(step.get("logprob", 0.0))))
        pos += len(tok)
    entities, seen = [], set()
    text = "".join(s.get("token") or "" for s in content) if content else raw
    for item in (x.strip() for x in items):
        if not item or item in seen:
            continue
        seen.add(item)
        conf = None
        at = text.find(json.dumps(item, ensure_ascii=False)[1:-1]) if content else -1
        if at >= 0:
            end = at + len(json.dumps(item, ensure_ascii=False)[1:-1])
            conf = round(math.exp(sum(lp for a, b, lp in spans if a < end and b > at)), 6)
        if conf is None or conf >= task.min_confidence:
            entities.append({"name": item, "confidence": conf})
    answer_conf = round(math.exp(sum(float(s.get("logprob", 0.0)) for s in content)), 6) if content else None
    return {"label": [e["name"] for e in entities], "entities": entities, "probabilities": None,
            "confidence": answer_conf, "valid": True, "raw": raw}
