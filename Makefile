# One command each: `make test` (the default test suite), `make main` (the main job).
# Both create .venv and install the pinned versions from requirements/constraints.txt.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test test-slow lint format type check main copying lock bench clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements/constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c requirements/constraints.txt -e '.[dev,sweep]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
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

lock: $(STAMP)
	head -n 2 requirements/constraints.txt > requirements/constraints.txt.new
	$(PY) -m pip freeze --exclude-editable | sed -e 's/+cpu//' >> requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
