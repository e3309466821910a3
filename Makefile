# make figures : run every notebook in the quick profile, writing results/
# make test    : library tests + every notebook in the smoke profile
# make lab     : JupyterLab on the notebooks
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= quick
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))

.PHONY: figures test lab lint bench clean-venv

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(BIN)/activate

figures: $(BIN)/activate
	@if [ -z "$(NOTEBOOKS)" ]; then echo "no notebooks under notebooks/ yet: nothing to run"; fi
	@set -e; for nb in $(NOTEBOOKS); do \
		echo "== $$nb ($(PROFILE))"; \
		$(BIN)/papermill --kernel python3 --cwd notebooks $(if $(filter quick,$(PROFILE)),,-p PROFILE $(PROFILE)) $$nb $$nb; \
	done

test: $(BIN)/activate
	$(BIN)/python -m pytest -q

lint: $(BIN)/activate
	$(BIN)/ruff check spade_utils tests benchmarks

lab: $(BIN)/activate
	$(BIN)/jupyter lab notebooks

bench: $(BIN)/activate
	$(BIN)/python benchmarks/bench_trace.py

clean-venv:
	rm -rf $(VENV)
