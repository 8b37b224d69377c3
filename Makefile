# Perturb Studio. Two commands set up a fresh machine from nothing:
#   make demo   -> installs everything, then generates cells from a shipped model (no download)
#   make test   -> installs everything, then runs the whole test suite
PY      ?= python3.11
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
DATA    ?= $(or $(PERTURB_STUDIO_DATA),../shared/data)
export PERTURB_STUDIO_DATA := $(DATA)

.PHONY: setup demo app test lint bench models bundle bundle-test clean

$(STAMP): pyproject.toml constraints.txt
	bash build_scripts/install_system_deps.sh
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev,bundle,gui]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/perturb-studio models
	$(BIN)/perturb-studio generate --model kang-ifnb-pbmc --cell-type CD14+Mono \
	    --perturbation stimulated -n 2000 --seed 0 -o out/cd14_mono_ifnb.h5ad
	@echo "wrote out/cd14_mono_ifnb.h5ad"

app: $(STAMP)
	$(BIN)/perturb-studio

test: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q
	$(BIN)/lint-imports

lint: $(STAMP)
	$(BIN)/ruff check engine app tests build_scripts

bench: $(STAMP)
	$(BIN)/perturb-studio bench

models: $(STAMP)
	$(BIN)/python build_scripts/train_models.py

bundle: $(STAMP)
	$(BIN)/python build_scripts/build.py

bundle-test: $(STAMP)
	PERTURB_STUDIO_TEST_BUNDLE=1 QT_QPA_PLATFORM=offscreen $(BIN)/python -m pytest -q tests/bundle

clean:
	rm -rf build dist out
