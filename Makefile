# Two commands on a fresh machine:
#   make demo   create .venv, install, run the main job
#   make test   create .venv, install, run the test suite
# torch is installed first, pinned to the CPU build this machine carries, so that no
# dependency pulls a multi-GB CUDA build; everything else is pinned by the constraints file
# (unpinned, pip's resolver backtracked for minutes over this stack).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-faults lint bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -c requirements/constraints.txt -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/unlearn pipeline demo --workspace workspace

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# The slower fault-injection scenarios (each kill point on its own, S3 down, rollback): ~12 min.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -m faults tests/pipelines/test_faults.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_digits.py

clean:
	rm -rf $(VENV) workspace .cache .pytest_cache
