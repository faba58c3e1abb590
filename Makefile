# Two entry points, each of which installs what it needs into .venv first:
#   make demo   builds a small synthetic COCO dataset and shards it into demo/out
#   make test   runs lint and the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	rm -rf demo
	$(BIN)/coco-beam synth --output demo/coco --images 300
	$(BIN)/coco-beam build --coco-root demo/coco --output demo/out

lint: $(VENV)/.installed
	$(BIN)/ruff check pipelines transforms schemas tests benchmarks

test: lint
	$(BIN)/python -m pytest

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_build.py

clean:
	rm -rf $(VENV) demo bench-data test-artifacts
