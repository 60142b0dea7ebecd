#!/usr/bin/env bash
# The CUDA paths in one run, under 10 minutes on one GPU, on the packaged Gemma 3 270M and the bundled
# example: head with 4-bit NF4 + LoRA, sft with QLoRA (+ merged weights), and `serve --backend vllm`
# answering requests like the torch backend. Run it where a CUDA GPU is available:
#     bash bench/gpu_check.sh            # installs bitsandbytes and vllm into the venv if missing
# It exits non-zero at the first failed check and prints one line per check.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu-check}
TASK=examples/news_category/task.yaml
CLI=("$PY" -m classifine.cli)

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
  || { echo "gpu_check: no CUDA GPU visible; nothing to check here"; exit 2; }
"$PY" -c "import bitsandbytes" 2>/dev/null || "$PY" -m pip install -q "bitsandbytes>=0.43"
"$PY" -c "import vllm" 2>/dev/null || "$PY" -m pip install -q "vllm>=0.8"
mkdir -p "$OUT"

echo "== head: 4-bit NF4 + LoRA"
"${CLI[@]}" train "$TASK" --method head --model gemma-3-270m --out "$OUT/head" --overwrite --quiet \
  --set load_in_4bit=true --set lora=true --set epochs=1 --set batch_size=16
"$PY" - "$OUT/head" <<'PY'
import json, sys
m = json.load(open(f"{sys.argv[1]}/metrics.json"))
assert m["n"] > 0 and 0 <= m["accuracy"] <= 1, m
print(f"head 4-bit: accuracy {m['accuracy']:.3f} on {m['n']} rows")
PY

echo "== sft: QLoRA, merged weights for vLLM"
"${CLI[@]}" train "$TASK" --method sft --model gemma-3-270m --out "$OUT/sft" --overwrite --quiet \
  --set load_in_4bit=true --set merge=true --set epochs=1 --set batch_size=16
test -f "$OUT/sft/model/merged/config.json"

echo "== serve --backend vllm vs the torch backend"
PORT=${PORT:-8765}
"${CLI[@]}" serve "$OUT/sft" --backend vllm --port "$PORT" --log-level warning > "$OUT/vllm.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { echo "vLLM server exited:"; tail -50 "$OUT/vllm.log"; exit 1; }
  sleep 2
done
"$PY" - "$OUT/sft" "$PORT" <<'PY'
import sys, httpx
import classifine
run, port = sys.argv[1], sys.argv[2]
records = [{"title": "Chipmaker shares jump", "body": "Record quarterly profit"},
           {"title": "반도체 수출 증가", "body": "수출이 늘었다."}]
served = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"inputs": records}, timeout=120).json()["outputs"]
local = classifine.load(run).predict(records)
for s, l in zip(served, local):
    assert s["label"] == l["label"], (s, l)
    worst = max(abs(s["probabilities"][k] - l["probabilities"][k]) for k in l["probabilities"])
    assert worst < 0.02, (s, l)  # bf16 merged weights in vLLM vs fp32 in torch
print("vLLM answers like the torch backend:", [s["label"] for s in served])
PY
echo "gpu_check: all CUDA paths passed"
