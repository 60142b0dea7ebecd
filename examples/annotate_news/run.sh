#!/usr/bin/env bash
# The annotation recipe at small scale: an LLM labels unlabelled news, a person reviews the rows it
# is least sure of, a small classifier learns from the labels, and it scores a larger file whose
# confident rows are kept. Run from anywhere:  bash examples/annotate_news/run.sh
# With a server instead of the local model, add to step 1:  --base-url http://127.0.0.1:8080/v1
# (and --model the server's model name); see the README's "Annotate" section.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/annotate-news}
TASK=examples/news_category/task.yaml
HERE=examples/annotate_news
mkdir -p "$OUT"

# 0. the unlabelled input: the bundled news articles without their category column
$BIN/python "$HERE/make_inputs.py" "$OUT"

# 1. annotate with Gemma 3 270M scored locally (every answer a valid label, a probability for each),
#    few-shot: one labelled example per category from the seed file
$BIN/classifine annotate $TASK --input "$OUT/unlabeled.csv" --out "$OUT/annotations" --model gemma-3-270m \
    --examples "$HERE/seed.csv" --shots 6 --choose diverse --overwrite

# 2. review: agreement with the human labels of those articles, and the review queue
$BIN/classifine review "$OUT/annotations" --gold examples/news_category/train.csv

# 3. a person fixes the first 30 rows of the queue (simulated here from the human labels) and merges them
$BIN/python "$HERE/simulate_review.py" "$OUT/annotations/review.csv" examples/news_category/train.csv "$OUT/reviewed.csv" 30
$BIN/classifine review "$OUT/annotations" --apply "$OUT/reviewed.csv" --gold examples/news_category/train.csv

# 4. a small classifier trained on the annotations (confident rows and every reviewed row); the
#    seed rows, labelled by people, are its validation data
$BIN/classifine train $TASK --method tfidf --train "$OUT/annotations" --min-confidence 0.3 \
    --validation "$HERE/seed.csv" --test examples/news_category/test.csv --out "$OUT/classifier" --overwrite

# 5. score a larger file (on a cluster: classifine predict-ray) and keep the confident rows
$BIN/classifine predict "$OUT/classifier" --input "$OUT/corpus.csv" --output "$OUT/scored.jsonl" --overwrite --quiet
$BIN/python "$HERE/keep.py" "$OUT/scored.jsonl" "$OUT/kept.jsonl" 0.5
