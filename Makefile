# Two set-up commands: `make demo` (train + evaluate on MovieLens-100k beside most-popular and SASRec,
# about 2 minutes on 2 cores) and `make test`.
# Each creates .venv and installs what it needs (torch pinned to the CPU wheel 2.13.0).
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q "torch==2.13.0" -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/gensid train configs/ml100k.yaml --run-dir runs/ml100k --sasrec-minutes 0.5

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

test: lint
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest

clean:
	rm -rf runs .pytest_cache
