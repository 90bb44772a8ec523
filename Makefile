# Qwen3 from Scratch: `make book` runs every chapter, `make test` checks everything.
# Both set up the virtual environment they need from a clean clone.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
BIN   := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]*.ipynb)) $(sort $(wildcard notebooks/A[0-9]*.ipynb)) \
             $(wildcard notebooks/solutions.ipynb) notebooks/index.ipynb
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with notebooks/nbval_sanitize.cfg

.PHONY: setup lab export book site test test-lib test-notebooks check-export gpu-session clean

setup: $(STAMP)

# PyTorch: requirements.txt pins torch==$(TORCH_VERSION). Where pip finds a local CPU wheel of that version (this
# project's machines), it takes it. From PyPI on Linux, the same pin is the CUDA build: about 1 GB for torch plus
# about 3 GB of NVIDIA libraries, which a GPU machine wants. For the CPU-only build (about 200 MB) name PyTorch's
# CPU index:  make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# pip byte-compiles what it installs one file at a time (80 s of a 2-minute setup on two cores); compileall does the
# same on every core. The compiled files are needed: where PYTHONDONTWRITEBYTECODE is set, every kernel and test
# worker would otherwise compile PyTorch and Jupyter again on import. (A file compileall cannot parse is skipped.)
TORCH_VERSION := $(shell sed -n 's/^torch==//p' requirements.txt)
TORCH_INDEX ?=
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(if $(TORCH_INDEX),$(PY) -m pip install -q torch==$(TORCH_VERSION) --index-url $(TORCH_INDEX))
	$(PY) -m pip install -q --no-compile -r requirements.txt
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# JupyterLab on IP:PORT. As root (Docker, cloud VMs) it adds --allow-root; without a display it opens no browser
# and prints the URL to open (from another machine: ssh -L 8888:localhost:8888 you@host, then open that URL).
# Other options of `jupyter lab` go in LAB_ARGS, e.g. make lab IP=0.0.0.0 PORT=9000 LAB_ARGS="--ServerApp.token=..."
# It first marks the book's notebooks trusted (jupyter trust), so that JupyterLab shows their stored widgets and
# HTML outputs before any cell runs; an untrusted notebook shows a widget as its text repr until its cell is rerun.
IP   ?= localhost
PORT ?= 8888
LAB_ARGS ?=
LAB_FLAGS = --ip=$(IP) --port=$(PORT) $(if $(filter 0,$(shell id -u)),--allow-root) \
	$(if $(DISPLAY)$(WAYLAND_DISPLAY)$(filter Darwin,$(shell uname -s)),,--no-browser) $(LAB_ARGS)
lab: setup
	@$(BIN)/jupyter trust -y $(NOTEBOOKS) > /dev/null
	@echo "Starting JupyterLab: open the http://...?token=... URL it prints below, then notebooks/index.ipynb."
	$(BIN)/jupyter lab notebooks/ $(LAB_FLAGS)

# Notebooks are the source: this regenerates qwen3_lib/ from their `#| export` cells.
export: setup
	$(BIN)/nbdev-export

# Execute every chapter in order, in place, writing stored outputs and figures/.
# jupyter execute stores each widget's state in the notebook, and jupyter trust lets JupyterLab show it before any
# cell runs (the site draws it too). The cells' execution timestamps are dropped, so that a rerun changes only what
# it computed. Prints each chapter's time.
export DROP_TIMING := import json, sys; p = sys.argv[1]; nb = json.load(open(p));   [c.get("metadata", {}).pop("execution", None) for c in nb["cells"]];   open(p, "w").write(json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
book: export
	@cd notebooks && start=$$(date +%s) && for nb in $(notdir $(NOTEBOOKS)); do \
	  t0=$$(date +%s); \
	  ../$(BIN)/jupyter execute --inplace "$$nb" 2>&1 | grep -v -e 'without encryption' -e 'Executing' -e 'with kernel'; \
	  test $${PIPESTATUS[0]} -eq 0 || { echo "== $$nb FAILED"; exit 1; }; \
	  ../$(PY) -c "$$DROP_TIMING" "$$nb" && ../$(BIN)/jupyter trust -y "$$nb" > /dev/null; \
	  printf "== %-34s %4d s\n" "$$nb" $$(( $$(date +%s) - t0 )); \
	done && echo "== all chapters: $$(( $$(date +%s) - start )) s"
	$(PY) benchmarks/update_readme.py

# The book as static HTML pages in _site/ (from the stored outputs: run `make book` first for fresh ones).
site: setup
	$(PY) site/build.py --out _site

test: setup test-lib test-notebooks check-export

# Tests and notebooks run on JOBS workers (pytest-xdist), a test module or a notebook per worker at a time, so that
# each module's fixtures are built once and a notebook's cells run in order; each worker computes on one thread
# (two workers of two threads each on two cores were 20 % slower). JOBS=1 runs everything in one process.
JOBS ?= 2
XDIST = $(if $(filter-out 1,$(JOBS)),-n $(JOBS) --dist loadscope)
ONE_THREAD = $(if $(filter-out 1,$(JOBS)),OMP_NUM_THREADS=1)
test-lib: setup
	$(ONE_THREAD) $(PY) -m pytest -q $(XDIST) tests

# nbval re-runs every chapter in a scratch copy of notebooks/ and figures/: the chapters write figures (timings
# differ per run), and `make test` must leave the checkout as it found it. Figures are written by `make book` only.
# QWEN3_QUICK=1: chapters 12 and 13 train on their short schedule (outputs that depend on training are not compared).
test-notebooks: setup
	@rm -rf .nbval-run && mkdir .nbval-run && cp -r notebooks figures .nbval-run/ && ln -s ../tests .nbval-run/tests
	@cd .nbval-run && $(ONE_THREAD) QWEN3_QUICK=1 ../$(PY) -m pytest -q $(XDIST) $(NBVAL) $(NOTEBOOKS); \
	  status=$$?; cd .. && rm -rf .nbval-run; exit $$status

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
# It runs tests/test_cuda.py, the memory recording, the benchmark and compare_variants.py (the decode step's
# ways, timed and profiled), with time limits and logs in gpu-results/ (STEPS="bench" etc. to run only some;
# benchmarks/README.md says what each program measures and writes).
gpu-session:
	PY=$(PY) bash benchmarks/gpu_session.sh gpu-results
	for f in gpu_memory.json bench_gpu.json variants_gpu.json; do test ! -f gpu-results/$$f || cp gpu-results/$$f figures/data/; done

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache _site .nbval-run
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
