# Two entry points, each of which installs what it needs into .venv first:
#   make demo   builds a small synthetic COCO dataset and shards it into demo/out
#   make test   runs lint and the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip "setuptools>=77"
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	rm -rf demo
	$(BIN)/coco-beam synth --output demo/coco --images 300
	$(BIN)/coco-beam build --coco-root demo/coco --output demo/out

lint: $(VENV)/.installed
	$(BIN)/ruff check __init__.py pipelines transforms schemas tests benchmarks deploy

# The report's test opens it in Debian's Chromium, installed here when missing.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; \
	else echo "no $(CHROMIUM) and no way to install it: the browser tests will be skipped"; fi

test: lint $(CHROMIUM)
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_build.py
	$(BIN)/python benchmarks/bench_tfrecord.py
	$(BIN)/python benchmarks/bench_rebuild.py

clean:
	rm -rf $(VENV) demo bench-data test-artifacts
