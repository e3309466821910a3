# make figures : run every notebook in the quick profile, writing results/ and the committed notebooks
#                (PROFILE=paper likewise; PROFILE=smoke writes build/smoke/ and never touches the committed files)
#                SOURCE=paper: ResNet-50, ImageNet and the authors' checkpoint instead of the offline model and
#                photos (paths: IMAGENET_VAL, IMAGENET_TRAIN, CHECKPOINT, TRIGGER_DIR; see data/README.md);
#                (notebook 01, the toy, has one source); NB=04 runs one notebook. The paper's run:
#                make figures PROFILE=paper SOURCE=paper
# make test    : library tests + every notebook in the smoke profile
# make lab     : JupyterLab on the notebooks
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PROFILE ?= quick
SOURCE ?= offline
NB ?= [0-9]
NOTEBOOKS := $(sort $(wildcard notebooks/$(NB)*.ipynb))
# the paper source's paths, passed to the notebooks only when given (their defaults live in data/README.md)
PATH_PARAMS := $(foreach v,IMAGENET_VAL IMAGENET_TRAIN CHECKPOINT TRIGGER_DIR,$(if $($(v)),-p $(v) $(abspath $($(v)))))
# Headless runs: no widgets (they can hang nbclient, jupyter/nbclient#312) and a per-cell time limit in
# seconds, so a hung cell fails with its source named instead of stalling the run.
HEADLESS := SPADE_HEADLESS=1
CELL_TIMEOUT ?= $(if $(filter smoke,$(PROFILE)),300,$(if $(filter paper,$(PROFILE)),21600,1800))
ifeq ($(PROFILE),smoke)
NB_OUT := build/smoke/notebooks
RESULTS_ENV := SPADE_RESULTS_DIR=$(CURDIR)/build/smoke/results
else
NB_OUT := notebooks
RESULTS_ENV :=
endif

.PHONY: figures test lab lint bench clean-venv

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(BIN)/activate

figures: $(BIN)/activate
	@case "$(PROFILE)" in smoke|quick|paper) ;; *) echo "PROFILE must be smoke, quick or paper, got '$(PROFILE)'"; exit 2;; esac
	@case "$(SOURCE)" in offline|paper) ;; *) echo "SOURCE must be offline or paper, got '$(SOURCE)'"; exit 2;; esac
	@if [ -z "$(NOTEBOOKS)" ]; then echo "no notebook matches notebooks/$(NB)*.ipynb: nothing to run"; fi
	@mkdir -p $(NB_OUT)
	@set -e; for nb in $(NOTEBOOKS); do \
		src="$(if $(filter paper,$(SOURCE)),-p SOURCE paper $(PATH_PARAMS))"; \
		case "$$(basename $$nb)" in 01_*) src="";; esac; \
		echo "== $$nb ($(PROFILE)$${src:+, paper source}) -> $(NB_OUT)"; \
		$(HEADLESS) $(RESULTS_ENV) $(BIN)/papermill --kernel python3 --cwd notebooks --execution-timeout $(CELL_TIMEOUT) \
			$(if $(filter quick,$(PROFILE)),,-p PROFILE $(PROFILE)) $$src $$nb $(NB_OUT)/$$(basename $$nb); \
	done

test: lint
	$(HEADLESS) $(BIN)/python -m pytest -q

lint: $(BIN)/activate
	$(BIN)/ruff check spade_utils tests benchmarks notebooks/*.py exercises/*.py
	$(BIN)/ruff format --check spade_utils tests benchmarks notebooks/*.py exercises/*.py
	$(BIN)/mypy

lab: $(BIN)/activate
	$(BIN)/jupyter lab notebooks

bench: $(BIN)/activate
	$(BIN)/python benchmarks/bench_trace.py

clean-venv:
	rm -rf $(VENV)

# make backdoor-weights : retrain the offline backdoor (16+ min; reuses data/cache when present) and write the
#                         compact bundle shipped in spade_utils/backdoor/weights/ with its SHA256SUMS line
.PHONY: backdoor-weights
backdoor-weights: $(BIN)/activate
	$(BIN)/python -c "from spade_utils.backdoor.shipped import main; main()"

# make explore : notebook 06 as a web page (Voilà, code hidden) on http://localhost:$(PORT); PROFILE sets its sizes
# make study   : the human-study form (notebook 07's trials) as a web page, answers appended to
#                results/study/responses.csv; HOST=0.0.0.0 lets other machines (a class network) reach it
PORT ?= 8866
.PHONY: explore study
explore: $(BIN)/activate
	SPADE_PAGE_PROFILE=$(PROFILE) $(BIN)/voila notebooks/06_explorer.ipynb --no-browser --port=$(PORT) \
		--strip_sources=True --Voila.ip=127.0.0.1
HOST ?= 127.0.0.1
study: $(BIN)/activate
	SPADE_PAGE_PROFILE=$(PROFILE) $(BIN)/voila notebooks/07_human_study.ipynb --no-browser --port=$(PORT) \
		--strip_sources=True --Voila.ip=$(HOST)
