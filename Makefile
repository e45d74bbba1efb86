# drivedistill — two commands: `make run` (the study on the embedded default world) and `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SDL_VIDEODRIVER ?= offscreen
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export PYGAME_HIDE_SUPPORT_PROMPT ?= 1

.PHONY: install run smoke test lint typecheck clean nuscenes-env nuscenes-splits

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; install Python 3.11 or run 'make PY=python3 ...'"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt -e ".[vlm,dev]"
	@# pip byte-compiles ~20k files on one core (2 of the 3.4 install minutes here); compileall uses
	@# every core. Skipped: torch's test helpers, one of which is Python-3.12-only syntax.
	$(BIN)/python -m compileall -q -j 0 -x 'torch/testing/_internal/' \
		"$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/drivedistill run --preset default --out runs/default --jobs 2

smoke: $(STAMP)
	$(BIN)/drivedistill run --preset smoke --out runs/smoke

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	$(BIN)/python -m pytest -q tests

# nuscenes-devkit pins numpy < 2: it lives in its own environment, never in $(VENV) (docs/nuscenes.md).
# It writes the official scene splits the `nuscenes` source reads, and tests/test_nuscenes.py cross-checks
# the adapter against it when the environment exists.
NUSCENES_VENV ?= .venv-nuscenes
NUSCENES_ROOT ?=
$(NUSCENES_VENV)/.installed:
	test -x $(NUSCENES_VENV)/bin/python || $(PY) -m venv $(NUSCENES_VENV)
	@# opencv-python-headless >= 4.12 needs numpy >= 2, which the devkit forbids: without the cap pip downloads
	@# and rejects 4.13 and 4.12 first (11 min instead of 2.3 min from an empty pip cache here, docs/LOG.md)
	$(NUSCENES_VENV)/bin/python -m pip install --quiet "nuscenes-devkit==1.2.0" "opencv-python-headless<4.12"
	touch $@

nuscenes-env: $(NUSCENES_VENV)/.installed

nuscenes-splits: nuscenes-env
	@test -n "$(NUSCENES_ROOT)" || { echo "error: pass NUSCENES_ROOT=DIR (the directory holding v1.0-*/)"; exit 2; }
	$(NUSCENES_VENV)/bin/python -c "import json, sys; from nuscenes.utils.splits import create_splits_scenes; \
		json.dump(create_splits_scenes(), open(sys.argv[1] + '/drivedistill_splits.json', 'w'))" "$(NUSCENES_ROOT)"
	@echo "wrote $(NUSCENES_ROOT)/drivedistill_splits.json"

clean:
	rm -rf $(VENV) $(NUSCENES_VENV) runs .pytest_cache .mypy_cache .ruff_cache
