# raylora: `make demo` runs the whole pipeline on the embedded default; `make test` runs the suite.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch first, pinned: 2.13.0 is the CPU build here; an unpinned torch pulls GBs of CUDA.
TORCH := torch==2.13.0

.PHONY: install demo test test-fast test-all bench lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	# DeepSpeed compiles its CPU shared-memory collective on first use, about 30 s for each new environment:
	# here, rather than in the first training run (or the first test that starts DeepSpeed)
	DS_ACCELERATOR=cpu $(BIN)/python -c "from deepspeed.ops.op_builder.cpu.comm import ShareMemCommBuilder; ShareMemCommBuilder().load()"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/raylora run configs/demo.yaml

# The tiers select by the markers the fixtures a test uses set (tests/conftest.py FIXTURE_MARKERS).
# test: what CI runs, at most 15 minutes of pytest on 2 cores.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests -m "not slow"

# test-fast: no Ray Train run, no search, no study, no server: at most 3 minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest tests -m "not (ray_train or server or slow)"

# test-all: everything, every study and slow variant: the check before a release.
test-all: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/raylora bench all configs/demo.yaml

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf .raylora runs mlruns ray_results
