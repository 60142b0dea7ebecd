"""Toy data and tiny models built in-process (hidden size 16, 2 layers), so method tests run in
seconds without network or packaged weights (TRL's tiny-model approach)."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

WORDS = {
    "sports": ["goal", "match", "striker", "league", "coach", "stadium", "축구", "경기"],
    "business": ["market", "shares", "profit", "bank", "merger", "investor", "주가", "실적"],
    "weather": ["rain", "storm", "sunny", "forecast", "snow", "wind", "태풍", "날씨"],
}
NOISE = ["the", "a", "today", "news", "report", "city", "오늘", "뉴스", "people", "week"]
# quick settings for the generative methods on the tiny Gemma
QUICK = {"epochs": 1, "batch_size": 8, "learning_rate": 5e-3, "eval_rows": 8, "max_length": 128}
ORGS = ["Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "삼성전자"]


def _sentence(rng: random.Random, topics: list[str], n: int = 6) -> str:
    words = [rng.choice(WORDS[rng.choice(topics)]) for _ in range(n - 2)] + rng.sample(NOISE, 2)
    rng.shuffle(words)
    return " ".join(words)


def rows(kind: str, n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    labels = list(WORDS)
    out = []
    for i in range(n):
        lang = rng.choice(["en", "ko"])
        if kind == "single_label":
            lab = labels[i % 3]
            out.append({"title": _sentence(rng, [lab], 4), "body": _sentence(rng, [lab]), "label": lab, "lang": lang})
        elif kind == "multi_label":
            labs = sorted(rng.sample(labels, rng.choice([1, 1, 2])), key=labels.index)
            out.append({"title": _sentence(rng, labs, 4), "body": _sentence(rng, labs), "label": "|".join(labs), "lang": lang})
        elif kind == "ordinal":
            level = 1 + i % 5  # intensity: more "storm" words for higher levels
            words = ["storm"] * level + rng.sample(NOISE, 4)
            rng.shuffle(words)
            out.append({"title": "weather", "body": " ".join(words), "label": str(level), "lang": lang})
        else:
            ents = rng.sample(ORGS, rng.choice([0, 1, 2]))
            body = " and ".join(ents) + " " + _sentence(rng, ["business"]) if ents else _sentence(rng, ["sports"])
            out.append({"title": "news", "body": body, "label": json.dumps(ents, ensure_ascii=False), "lang": lang})
    return out


SPECS = {
    "single_label": "labels: [sports, business, weather]\n",
    "multi_label": "labels: [sports, business, weather]\n",
    "ordinal": "labels: [1, 2, 3, 4, 5]\nthreshold: 4\n",
    "extraction": "entity: company\nmin_confidence: 0.5\n",
}


def write_task(folder: Path, kind: str, n_train: int = 90, n_test: int = 30) -> Path:
    """Write train.csv, test.csv and task.yaml for ``kind`` into ``folder``; return the spec's path."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        data = rows(kind, n, seed)
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    spec = (f"name: toy-{kind}\nkind: {kind}\ntext: [title, body]\nlabel_column: label\n{SPECS[kind]}"
            "slices: [lang]\ndata: {train: train.csv, test: test.csv}\n")
    (folder / "task.yaml").write_text(spec, encoding="utf-8")
    return folder / "task.yaml"


def corpus() -> list[str]:
    rng = random.Random(0)
    texts = [" ".join(ws) for ws in WORDS.values()] + [" ".join(NOISE), " ".join(ORGS), "storm " * 5]
    texts += [_sentence(rng, list(WORDS)) for _ in range(200)]
    return texts


def tiny_bert(folder: Path) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
                                                       special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=128, pad_token_id=0)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def tiny_gemma(folder: Path, layers: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"]
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=500, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>")
    config = Gemma3TextConfig(vocab_size=tok.get_vocab_size(), hidden_size=16, intermediate_size=32, num_hidden_layers=layers,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=256,
                              sliding_window=64, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    import torch

    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def write_multitask(folder: Path, n_train: int = 48, n_test: int = 12) -> dict[str, Path]:
    """One data file per split whose rows serve three tasks at once (a topic, the topics with the
    main one first, the companies named), and a spec for each: a multi-task run's toy."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = list(WORDS)
    for split, n, seed in (("train", n_train, 3), ("test", n_test, 4)):
        rng = random.Random(seed)
        data = []
        for i in range(n):
            topics = [labels[i % 3]] + ([rng.choice([x for x in labels if x != labels[i % 3]])] if rng.random() < 0.4 else [])
            ents = rng.sample(ORGS, rng.choice([1, 2])) if "business" in topics else []
            body = (" and ".join(ents) + " " if ents else "") + _sentence(rng, topics)
            data.append({"title": _sentence(rng, topics[:1], 4), "body": body, "topic": topics[0], "topics": "|".join(topics),
                         "company": json.dumps(ents, ensure_ascii=False), "lang": rng.choice(["en", "ko"]),
                         "month": f"2025-0{1 + i % 2}"})
        with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    common = "text: [title, body]\nslices: [lang, month]\ndata: {train: train.csv, test: test.csv}\n"
    specs = {
        "topic": "name: topic\nkind: single_label\nlabel_column: topic\nlabels: [sports, business, weather]\n"
                 "output: json\nsubsets: {business: {label_in: [business]}}\n",
        "topics": "name: topics\nkind: multi_label\nlabel_column: topics\nlabels: [sports, business, weather]\n"
                  "subsets: {business: {label_in: [business]}}\n",
        "companies": "name: companies\nkind: extraction\nlabel_column: company\nentity: company\nmin_confidence: 0.5\n"
                     "normalize: [casefold, strip_suffixes]\nsubsets: {business: {column: topic, values: [business]}}\n",
    }
    out = {}
    for name, spec in specs.items():
        (folder / f"{name}.yaml").write_text(spec + common, encoding="utf-8")
        out[name] = folder / f"{name}.yaml"
    return out
