# Two entry points for a fresh machine (Python 3.11 + pip): `make quickstart` and `make test`.
# torch is pinned first so that pip takes the local CPU wheel instead of a multi-GB CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test quickstart bench-prepare clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

quickstart: $(STAMP)
	$(VENV)/bin/difformer quickstart

bench-prepare: $(STAMP)
	$(PY) bench/prepare_speed.py

clean:
	rm -rf $(VENV) build src/*.egg-info
