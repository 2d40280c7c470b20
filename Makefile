# One command each: `make test` (the default test suite), `make main` (the main job).
# Both create .venv and install the pinned versions from requirements/constraints.txt.
# `make test` and `make docs` also install the `docs` extra (mkdocs), which `make main` does not need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test test-slow lint format type check main copying lock bench docs clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev,sweep]'
	touch $(STAMP)

# The docs site's packages: tests/test_docs.py builds the site with --strict, so `make test` needs them.
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[docs]'
	touch $(DOCS_STAMP)

install: $(STAMP)

test: $(STAMP) $(DOCS_STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

type: $(STAMP)
	$(VENV)/bin/mypy

check: lint type test

main: $(STAMP)
	$(PY) scripts/main.py

copying: $(STAMP)
	for model in rim lstm; do $(PY) scripts/train_copying.py --model $$model --output runs/copying/$$model; done

bench: $(STAMP)
	$(PY) bench/bench_rim.py
	$(PY) bench/bench_ppo.py

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lock: $(STAMP) $(DOCS_STAMP)
	head -n 2 requirements/constraints.txt > requirements/constraints.txt.new
	$(PY) -m pip freeze --exclude-editable | sed -e 's/+cpu//' >> requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
