"""Which layer of a frozen model classifies best (the measurement behind ``embed``'s ``layer: auto``).

Embeds N training and M test texts of a dataset in ../shared/datasets once, pools (mean, L2) every
hidden state (the decoder's final norm applied, as a model cut to that depth outputs it), fits a
logistic regression per layer and prints test macro-F1 per layer, then TF-IDF on the whole training
set and log-linear blends of the two.

    python bench/layers.py ko_nsmc_sentiment text gemma-3-270m 3000 1500
"""
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from classifine.core.models import resolve  # noqa: E402
from transformers import AutoModel, AutoTokenizer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main(ds: str, textcols: str, model: str, ntr: int, nte: int) -> None:
    torch.set_num_threads(2)
    cols = textcols.split(",")
    tr = pd.read_csv(DATA / ds / "train.csv", dtype=str, keep_default_na=False).sample(frac=1, random_state=0)
    te = pd.read_csv(DATA / ds / "test.csv", dtype=str, keep_default_na=False).sample(frac=1, random_state=0)

    def texts(f):
        return [" \n".join(r[c] for c in cols) for _, r in f.iterrows()]

    xtr, ytr = texts(tr), tr.label.tolist()
    xte, yte = texts(te)[:nte], te.label.tolist()[:nte]
    path = resolve(model)
    tok = AutoTokenizer.from_pretrained(path)
    net = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    norm = getattr(net, "norm", None)

    def feats(T):
        out, order, t0 = None, np.argsort([len(t) for t in T]), time.time()
        for s in range(0, len(T), 32):
            idx = order[s:s + 32]
            b = tok([T[i] for i in idx], padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.inference_mode():
                hs = net(**b, output_hidden_states=True).hidden_states
                m = b.attention_mask.unsqueeze(-1).float()
                if out is None:
                    out = np.zeros((len(hs), len(T), hs[0].shape[-1]), np.float32)
                for layer, h in enumerate(hs):
                    if norm is not None and 0 < layer < len(hs) - 1:
                        h = norm(h)
                    out[layer, idx] = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
        print("docs/s", round(len(T) / (time.time() - t0), 1), flush=True)
        return out

    ftr, fte = feats(xtr[:ntr]), feats(xte)
    res = {}
    for layer in range(ftr.shape[0]):
        clf = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(ftr[layer], ytr[:ntr])
        res[layer] = f1_score(yte, clf.predict(fte[layer]), average="macro")
        print("layer", layer, round(100 * res[layer], 2), flush=True)
    vec = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), max_features=200000, sublinear_tf=True, dtype=np.float32)
    tf = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced").fit(vec.fit_transform(xtr), ytr)
    pt = tf.predict_proba(vec.transform(xte))
    print("tfidf (all training rows)", round(100 * f1_score(yte, tf.classes_[pt.argmax(1)], average="macro"), 2))
    for layer in (max(res, key=res.get), ftr.shape[0] - 1):
        pe = LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced").fit(ftr[layer], ytr[:ntr]).predict_proba(fte[layer])
        for w in (0.3, 0.5, 0.7):
            p = w * np.log(pt + 1e-9) + (1 - w) * np.log(pe + 1e-9)
            print("blend layer", layer, "weight on tfidf", w, round(100 * f1_score(yte, tf.classes_[p.argmax(1)], average="macro"), 2))
        for scale in (1.0, 4.0):  # one model on [TF-IDF | scaled embedding] (TF-IDF fitted on the same N rows)
            from scipy.sparse import csr_matrix, hstack

            both = LogisticRegression(C=10.0, max_iter=3000, class_weight="balanced").fit(
                hstack([vec.transform(xtr[:ntr]), csr_matrix(ftr[layer] * scale)]).tocsr(), ytr[:ntr])
            pred = both.predict(hstack([vec.transform(xte), csr_matrix(fte[layer] * scale)]).tocsr())
            print("concat layer", layer, "scale", scale, round(100 * f1_score(yte, pred, average="macro"), 2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
