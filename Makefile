# Two entry points for a fresh machine (Python 3.11 + pip): `make quickstart` and `make test`.
# `make test-browser` runs the serving page in headless Chromium (installs Debian's chromium when missing).
# torch is pinned first so that pip takes the local CPU wheel instead of a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-browser quickstart bench-prepare clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,serve]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
test-browser: $(STAMP)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium; }
	$(PY) -m pytest -q tests/test_browser.py

quickstart: $(STAMP)
	$(VENV)/bin/difformer quickstart

bench-prepare: $(STAMP)
	$(PY) bench/prepare_speed.py

clean:
	rm -rf $(VENV) build src/*.egg-info
