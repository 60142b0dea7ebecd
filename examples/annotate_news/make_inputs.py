"""The example's inputs: the bundled articles without labels (to annotate) and a larger corpus to
score (every article of the bundled example, train and test, twice over with ids of its own)."""
import sys
from pathlib import Path

import pandas as pd

out = Path(sys.argv[1])
news = Path(__file__).resolve().parents[1] / "news_category"
train = pd.read_csv(news / "train.csv", dtype=str, keep_default_na=False)
train.drop(columns=["category"]).to_csv(out / "unlabeled.csv", index=False)
both = pd.concat([train, pd.read_csv(news / "test.csv", dtype=str, keep_default_na=False)])
corpus = pd.concat([both.assign(id=both["id"] + "-a"), both.assign(id=both["id"] + "-b")]).drop(columns=["category"])
corpus.to_csv(out / "corpus.csv", index=False)
print(f"{len(train)} unlabelled rows → {out / 'unlabeled.csv'}; {len(corpus)} rows to score → {out / 'corpus.csv'}")
