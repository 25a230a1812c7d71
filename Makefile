# Two entry points: `make demo` and `make test`. Both create .venv and install everything first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# JIT-built DeepSpeed CPU ops are cached next to the environment, not in $HOME.
export TORCH_EXTENSIONS_DIR := $(CURDIR)/$(VENV)/torch_extensions
export DS_ACCELERATOR ?= cpu
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test validate servers screenshots mutation clean

install: $(STAMP)

# torch first (a plain `torch` requirement would pull a CUDA build), then DeepSpeed,
# whose sdist build imports torch, then the project itself, then DeepSpeed's CPU ops (about a
# minute, once: the first run that needs one would otherwise compile it while its ranks wait).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet --no-build-isolation deepspeed==0.19.8
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/python -m training.launch.build_ops
	touch $@

demo: $(STAMP)
	$(BIN)/mtl run configs/demo.yaml --summary .mtl/demo-summary.json

validate: $(STAMP)
	$(BIN)/mtl validate configs/demo.yaml

# two pytest processes, a test file at a time each (--dist loadfile, scheduled by tests/conftest.py: a
# module's shared runs and servers start once; the production-stack files go to one worker together and
# so share one stack); `pytest` alone runs the suite in one process
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The test suite's production servers, for a look around (README "Production mode"): PostgreSQL,
# S3 (moto), MLflow and Prefect servers, a process worker; URLs printed, Ctrl-C stops and deletes all.
servers: $(STAMP)
	$(BIN)/python tests/servers.py

# PNGs of the Prefect run form, a finished flow run and the MLflow run (tools/screenshots.py; needs
# chromium: apt-get install chromium), and of the retraining loop's gate and data report for the README
# (docs/images/). About 20 minutes on 2 busy cores; not part of `make test`.
screenshots: $(STAMP)
	$(BIN)/python tools/screenshots.py

# Not part of `make test` or CI: breaks the code on purpose, one mutant at a time, and checks the
# tests notice. First the curated smoke set (tools/mutation.py; 4 to 7 minutes on 2 CPU cores), then
# mutmut on a seeded sample per module with only the tests that reach each mutant
# (tools/mutation_sample.py; reports in .mtl/mutation/); niced, the machine stays usable.
mutation: $(STAMP)
	$(BIN)/python tools/mutation.py
	nice -n 10 $(BIN)/python tools/mutation_sample.py

clean:
	rm -rf $(VENV) .mtl
