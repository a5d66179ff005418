# The README's two commands: `make run` (the main job) and `make test` (the test suite).
# Both create .venv when missing and install, once, exactly what requirements.lock pins: torch first (the pinned
# CPU build), then every other package with its hashes and no resolution, then this package without its
# dependencies, then `pip check`. They re-install only when pyproject.toml or requirements.lock changed, and stop
# with the command that fixes it when the lock is out of date with pyproject.toml.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
TORCH  := torch==2.13.0
# Where the CPU build of torch comes from. Empty: pip's configured indexes (this workplace keeps the CPU wheel on
# disk). Elsewhere: make TORCH_INDEX=https://download.pytorch.org/whl/cpu ...
TORCH_INDEX ?=
CORES  ?= 2
export MALLOC_MMAP_THRESHOLD_ := 4000000000
export MALLOC_TRIM_THRESHOLD_ := 8000000000
export MALLOC_TOP_PAD_        := 1000000000

.PHONY: run test install lock check-lock clean-results

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml $(LOCK) | $(BIN)/python
	@scripts/env/check_lock.sh
	$(BIN)/python -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null \
	  || $(BIN)/python -m pip install --quiet $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $(STAMP)

# Regenerate the lock after changing dependencies in pyproject.toml (then `make test`, and commit both files).
lock: | $(BIN)/python
	$(BIN)/python -m pip install --quiet "$$(grep -E '^uv==' $(LOCK) | cut -d' ' -f1 || echo uv)"
	scripts/env/lock.sh
	envs/lock.sh stamp   # the GPU env locks record the CPU lock they start from

check-lock:
	@scripts/env/check_lock.sh

run: $(STAMP)
	@scripts/env/check_lock.sh
	$(BIN)/snakemake --cores $(CORES)

test: $(STAMP)
	@scripts/env/check_lock.sh
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean-results:
	rm -rf results/testbed results/smoke .snakemake
