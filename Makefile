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
# Two pytest-xdist workers (one torch thread each): most tests wait on processes, servers and
# disk, and one thread per worker does ~1.4x the work of one process with two threads on 2 cores.
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2

.PHONY: venv demo test test-long test-faults test-extended lint bench clean image stack demo-containers test-containers

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
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The long tier (.ci/run runs it after `make test`): whole deletion requests end to end (the demo's
# two, the server path's) and the GPU benchmark's smoke run, a file per worker; then the
# fault-injection scenarios.
test-long: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "long and not faults and not extended"
	$(MAKE) test-faults

# The fault-injection scenarios (MLflow or S3 stopped mid-run, two run-pending at once on
# PostgreSQL, rollback, kills after publishing or while committing), each on its
# own workspace, so spread over the workers test by test. The SIGKILL-at-every-step sweep is in
# `make test`.
test-faults: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist load -m "faults and not extended" tests/pipelines/test_faults.py

# The extended tier, outside .ci/run (which must end within 90 minutes on 2 cores): the trained
# text-to-image model's tests (its request end to end, and killed mid-unlearning) and the longest
# model-quality checks (two successive class erasures). Run it before a release, or where cores
# are plenty (21 tests, 15.6 min on 2 cores with the base model cached, the text-to-image model's training included).
test-extended: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "extended and not containers"

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_digits.py

# The project image with podman, offline (infra/image/build.sh; installs podman when root):
# localhost/unlearn:<version>-cpu, recorded in .cache/image/image.json. TORCH_INDEX=<PyTorch CUDA
# index> makes the CUDA variant where that index is reachable.
image:
	bash infra/image/build.sh

# What a cluster provides, on 127.0.0.1: S3 (moto), mlflow server, git daemon, PostgreSQL; seeded
# from ./workspace-containers (made if absent). `source .stack/env` to use it from a shell.
stack: $(STAMP)
	$(BIN)/unlearn stack up --dir .stack --workspace workspace-containers

# The demo's two deletion requests with every step in its own container from the image.
demo-containers: $(STAMP) image stack
	. .stack/env && $(BIN)/unlearn pipeline demo --runner container

# The image, the stack and one request through containers (also part of .ci/run).
test-containers: $(STAMP)
	$(BIN)/python -m pytest -m containers tests/infra/test_image.py tests/pipelines/test_containers.py

clean:
	-test -d .stack && $(BIN)/unlearn stack down --dir .stack --purge
	rm -rf $(VENV) workspace workspace-containers .cache .pytest_cache
