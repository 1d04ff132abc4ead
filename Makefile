# snakeid: `make repro` builds everything, `make test` checks everything. `make help` lists targets.
VENV ?= .venv
PY := $(VENV)/bin/python
# Stage commands call `python` and `dvc`: run them from the project's virtualenv. pip installs
# without compiling (--no-compile: all of torch's bytecode at install took ~1 min), so each module
# is compiled on its first import and its bytecode kept for the next process, even where the
# environment sets PYTHONDONTWRITEBYTECODE: without it, every stage and test process compiled
# torch again (its import took 15-23 s instead of 7).
RUN := PATH="$(abspath $(VENV))/bin:$$PATH" PYTHONDONTWRITEBYTECODE=

.PHONY: help install install-test repro test lint format bench exps

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed ## create .venv with the pinned requirements and the package

install-test: $(VENV)/.installed-test ## install plus the test extras

repro: install ## install, then run the whole pipeline (dvc repro)
	$(RUN) dvc repro
	@if grep -q '"source": "demo-synthetic"' models/model_meta.json; then \
	  echo "Done. This model learned synthetic demo photos: it does not identify real snakes."; \
	  echo "Next: train it on real photos (README: 'Train on your own photos', 'Train on iNaturalist')."; \
	else \
	  echo "Done. Identify a snake: .venv/bin/snakeid predict PHOTO, or .venv/bin/snakeid serve"; \
	fi

test: install-test ## install with test extras, then run the whole test suite
	$(RUN) python -m pytest

lint: install-test ## ruff lint and format check, and the import layers (lint-imports)
	$(RUN) ruff check . && $(RUN) ruff format --check . && $(RUN) lint-imports

format: install-test ## apply ruff fixes and formatting
	$(RUN) ruff check --fix . && $(RUN) ruff format .

bench: install ## speed benchmark -> bench/results.json and bench/results.md (~20 min on 2 idle cores)
	$(RUN) python bench/speed.py --out bench/results.json

# The experiments table: test macro-F1, venomous → harmless and the final model's val macro-F1
# per experiment (name your experiments: `-n`); `dvc exp diff` shows their params.
EXPS_COLUMNS := Experiment|macro_f1$$|venomous_to_harmless_rate$$|finetune\.val_macro_f1$$
exps: install ## experiments at a glance: test macro-F1, venomous → harmless, val macro-F1
	@$(RUN) dvc exp show --md --drop '.*' --keep '$(EXPS_COLUMNS)'
