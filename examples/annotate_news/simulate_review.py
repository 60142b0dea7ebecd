"""Stands in for a person: fills 'reviewed_label' of the first N rows of the review queue with the
human label of the same article (matched by title and body)."""
import sys

import pandas as pd

queue_path, gold_path, out_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
queue = pd.read_csv(queue_path, dtype=str, keep_default_na=False)
gold = pd.read_csv(gold_path, dtype=str, keep_default_na=False)
truth = {(t, b): c for t, b, c in zip(gold["title"], gold["body"], gold["category"])}
queue = queue.head(n).copy()
queue["reviewed_label"] = [truth.get((t, b), "") for t, b in zip(queue["title"], queue["body"])]
queue[["row", "reviewed_label"]].to_csv(out_path, index=False)
print(f"reviewed {len(queue)} rows → {out_path}")
