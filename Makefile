# Every target that needs Python installs first, so each is one command on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install test demo bench lint format airflow clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

test: install
	$(BIN)/pytest -q

demo: install
	$(BIN)/trailguard demo

airflow: install
	VENV=$(VENV) scripts/airflow-standalone.sh

bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/detect.py
	$(BIN)/python bench/replay.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf var .pytest_cache
