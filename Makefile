# SonoVLM developer commands. `make demo` and `make test` are the two set-up commands of the README.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sonovlm-installed
# torch comes first and alone: on a machine with the CPU wheel on disk this takes it, on a GPU box
# the CUDA build. Everything else comes from the exact lock with --no-deps.
TORCH_SPEC ?= torch==2.13.0
SAMPLE_DIR ?= sample_data
HOST ?= 127.0.0.1
PORT ?= 8000
# make demo serves the packaged demo model (simulated phantoms only, not for clinical use) on the
# sample studies; WEIGHTS= (empty) with BACKBONE=tiny serves random weights instead.
WEIGHTS ?= demo
BACKBONE ?=

.PHONY: install test lint demo demo-model demo-figure fresh-check bench stress pacs-deps sample-data clean

install: $(STAMP)

$(STAMP): requirements/lock.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q "$(TORCH_SPEC)"
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements/lock.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

lint: install
	$(VENV)/bin/ruff check lib training monailabel_app slicer_extension tests

test: install lint
	$(PY) -m pytest -q

$(SAMPLE_DIR)/cases.csv: | install
	$(VENV)/bin/sonovlm sample-data $(SAMPLE_DIR) --count 24 --seed 0

sample-data: $(SAMPLE_DIR)/cases.csv

demo: install sample-data
	@bash scripts/demo.sh "$(PY)" "$(SAMPLE_DIR)" "$(HOST)" "$(PORT)" "$(WEIGHTS)" "$(BACKBONE)"

# Retrain the packaged demo model (about 10 min on 2 cores); the recipe that made the shipped one.
demo-model: install
	$(PY) -m training demo-model lib/sonovlm/resources/demo_model/sonovlm-phantom-demo.safetensors

# README's picture: the demo model's contours through a server on held-out phantoms, and its Dice.
demo-figure: install
	$(PY) -m training demo-check --figure docs/demo_contours.png

# Before resolving any issue: clone HEAD into a new folder, install from the package index, smoke test.
fresh-check:
	bash scripts/fresh_check.sh

# Speed figures on this machine (run it idle: each compares against the bare backbone forward
# measured in the same run). Model forwards, server round trips, interaction, training and SAM.
bench: install
	$(PY) -m benchmarks.bench --threads 2
	$(PY) -m benchmarks.bench_server --threads 2
	$(PY) -m benchmarks.bench_interactive --threads 2
	$(PY) -m training.bench --threads 2
	$(PY) -m benchmarks.bench_precision --threads 2
	$(PY) -m benchmarks.bench_live --threads 2
	$(PY) -m benchmarks.bench_scoring --threads 2

# Orthanc with its DICOMweb plugin (Debian packages) for the PACS integration tests; needs root.
pacs-deps:
	bash scripts/install_orthanc.sh

# Bounded load (8 clients, 2 minutes, loopback only) on a server the script starts on sample studies.
stress: install
	$(PY) scripts/stress.py --clients 8 --duration 120

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
