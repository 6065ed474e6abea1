# The two set-up commands (README): `make run` and `make test`. Both create .venv themselves.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: run test test-fast lint bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch and torchvision first: pinned, and the largest download by far.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --disable-pip-version-check -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[dev]'
	touch $@

# The browser test (tests/browser/) drives Debian's Chromium through Playwright, never a downloaded browser.
# Installed here when missing (as root, as CI runs; otherwise with sudo); without it that test is skipped,
# and fails under CI=true.
CHROMIUM ?= /usr/bin/chromium
browser:
	@if [ -x $(CHROMIUM) ]; then echo "browser: $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	elif command -v sudo >/dev/null; then sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	else echo "browser: $(CHROMIUM) missing and no root to install it: the browser test will be skipped"; fi

run: $(VENV)/.runtime
	$(BIN)/deepfake-guard serve

test: $(VENV)/.dev browser
	$(BIN)/python -m pytest

test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest -m "not slow and not e2e"

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
