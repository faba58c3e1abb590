# Two entry points, each of which installs what it needs into .venv first:
#   make demo   builds a small synthetic COCO dataset and shards it into demo/out
#               (the runtime dependencies only)
#   make test   runs lint and the test suite (the runtime dependencies and the test extras:
#               TensorFlow, datasets, Playwright..., about a gigabyte more)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

# One stamp per install, so that the demo never waits for the test extras.
RUNTIME := $(VENV)/.installed-runtime
TEST := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

# setuptools 77 or newer reads pyproject's SPDX license string (wheels are built in the venv).
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77"

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(RUNTIME)

demo: $(RUNTIME)
	rm -rf demo
	$(BIN)/coco-beam synth --output demo/coco --images 300
	$(BIN)/coco-beam build --coco-root demo/coco --output demo/out

lint: $(TEST)
	$(BIN)/ruff check __init__.py pipelines transforms schemas tests benchmarks deploy

# The report's test opens it in Debian's Chromium, installed here when missing.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	else echo "no $(CHROMIUM) and no way to install it: the browser tests will be skipped"; fi

test: $(TEST) lint $(CHROMIUM)
	$(BIN)/python -m pytest

# The benchmarks need only the runtime dependencies (Model Garden, for bench_tfrecord.py, gets
# a virtual environment of its own).
bench: $(RUNTIME)
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_tfrecord.py
	$(BIN)/python benchmarks/bench_rebuild.py
	$(BIN)/python benchmarks/bench_floor.py

clean:
	rm -rf $(VENV) demo bench-data test-artifacts
