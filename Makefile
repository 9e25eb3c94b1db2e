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
BACKBONE ?= tiny

.PHONY: install test lint demo bench stress pacs-deps sample-data clean

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
	@bash scripts/demo.sh "$(PY)" "$(SAMPLE_DIR)" "$(HOST)" "$(PORT)" "$(BACKBONE)"

# Speed figures on this machine (run it idle: each compares against the bare backbone forward
# measured in the same run). Model forwards, server round trips, interaction, training and SAM.
bench: install
	$(PY) -m sonovlm.bench --threads 2
	$(PY) -m sonovlm.bench_server --threads 2
	$(PY) -m sonovlm.bench_interactive --threads 2
	$(PY) -m training.bench --threads 2

# Orthanc with its DICOMweb plugin (Debian packages) for the PACS integration tests; needs root.
pacs-deps:
	bash scripts/install_orthanc.sh

# Bounded load (8 clients, 2 minutes, loopback only) on a server the script starts on sample studies.
stress: install
	$(PY) scripts/stress.py --clients 8 --duration 120

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
