# Qwen3 from Scratch: `make book` runs every chapter, `make test` checks everything.
# Both set up the virtual environment they need from a clean clone.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]*.ipynb)) notebooks/index.ipynb
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

.PHONY: setup lab export book test test-lib test-notebooks check-export gpu-session clean

setup: $(STAMP)

# torch==2.13.0 in requirements.txt is a CPU build: no multi-GB CUDA download.
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

lab: setup
	$(BIN)/jupyter lab notebooks/

# Notebooks are the source: this regenerates qwen3_lib/ from their `#| export` cells.
export: setup
	$(BIN)/nbdev-export

# Execute every chapter in order, in place, writing stored outputs and figures/.
book: export
	cd notebooks && for nb in $(notdir $(NOTEBOOKS)); do \
	  echo "== $$nb"; ../$(BIN)/jupyter execute --inplace "$$nb" 2>&1 | grep -v -e 'without encryption' || exit 1; \
	done
	$(PY) benchmarks/update_readme.py

test: setup test-lib test-notebooks check-export

test-lib: setup
	$(PY) -m pytest -q tests

test-notebooks: setup
	$(PY) -m pytest -q $(NBVAL) $(NOTEBOOKS)

# The library must be exactly what the notebooks export: export into a scratch copy and compare.
check-export: setup
	@rm -rf .export-check && mkdir .export-check && cp -r notebooks pyproject.toml qwen3_lib .export-check/
	@cd .export-check && ../$(BIN)/nbdev-export
	@if diff -r -x __pycache__ qwen3_lib .export-check/qwen3_lib; then \
	  echo "qwen3_lib/ is in sync with notebooks/"; rm -rf .export-check; \
	else echo "qwen3_lib/ is out of sync with notebooks/: run 'make export' and commit"; rm -rf .export-check; exit 1; fi

# On a machine with a CUDA GPU. PY may point at any Python with CUDA torch and transformers
# (e.g. `make gpu-session PY=python3`). The JSON lands in figures/data/; `make book` (on any machine,
# GPU or not) then draws it into chapters 09b and 10b.
# It runs tests/test_cuda.py, the memory recording, the benchmark and a profile, with time limits and
# logs in gpu-results/ (STEPS="bench" etc. to run only some, STEPS="variants" for benchmarks/compare_variants.py;
# see benchmarks/gpu_session.sh and benchmarks/NOTES.md).
gpu-session:
	PY=$(PY) bash benchmarks/gpu_session.sh gpu-results
	for f in gpu_memory.json bench_gpu.json profile_gpu.json variants_gpu.json; do test ! -f gpu-results/$$f || cp gpu-results/$$f figures/data/; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
