"""Two real runs on a shared dataset, compared the way a model card shows them.

Trains two tfidf runs on ../shared/datasets/ko_nsmc_sentiment (word 1-2-grams as the "base", the
default character 1-4-grams as the candidate), evaluates both on the same test file, and writes
the comparison table, the leaderboard and the candidate's model card:

    .venv/bin/python bench/compare_demo.py            # → runs/compare-demo/{comparison.md,leaderboard.md,...}

The dataset has `date` but no year; the script derives `year` into a scratch copy under the output
folder (never into the repository) so the report can slice by it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

import classifine
from classifine.evaluation.card import write_card
from classifine.evaluation.compare import compare, leaderboard, to_markdown
from classifine.core.runs import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT.parent / "shared" / "datasets" / "ko_nsmc_sentiment"
SPEC = ROOT / "bench" / "tasks" / "ko_nsmc_sentiment_by_year.yaml"
RUNS = {"tfidf-word": {"analyzer": "word", "ngram_min": 1, "ngram_max": 2},
        "tfidf-char": {}}  # the method's defaults: char_wb 1-4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "runs" / "compare-demo"))
    ap.add_argument("--sample", type=int, default=0, help="use only this many training rows (0: all)")
    args = ap.parse_args()
    if not DATASET.is_dir():
        sys.exit(f"{DATASET} not found: this demo needs ../shared/datasets beside the checkout")
    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        frame = pd.read_csv(DATASET / f"{split}.csv", dtype=str, keep_default_na=False)
        if split == "train" and args.sample:
            frame = frame.sample(n=min(args.sample, len(frame)), random_state=13)
        frame["year"] = frame["date"].str[:4]
        frame.to_csv(data / f"{split}.csv", index=False)
    dirs = []
    for name, settings in RUNS.items():
        run = classifine.train(SPEC, method="tfidf", out=out / name, train=data / "train.csv", test=data / "test.csv",
                               config=settings, overwrite=True, progress=False)
        dirs.append(run.dir)
        print(f"trained {name} in {run.config['train_seconds']:.1f} s", file=sys.stderr)
    table = to_markdown(compare(dirs))
    atomic_write_text(out / "comparison.md", table)
    atomic_write_text(out / "leaderboard.md", to_markdown(leaderboard(dirs)))
    card = write_card(dirs[1], base=dirs[0], license="other", languages=["ko"])
    print(table)
    print(f"written: {out / 'comparison.md'}, {out / 'leaderboard.md'}, {card}, {dirs[1] / 'report.html'}", file=sys.stderr)


if __name__ == "__main__":
    main()
