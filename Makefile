# Two commands for a new user: `make demo` (set up + main job) and `make test` (set up + test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
TORCH_VERSION ?= 2.13.0
# PyPI's Linux torch wheels are CUDA builds (GBs); for the CPU build pass
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (empty: your pip configuration decides).
TORCH_INDEX_URL ?=
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-extended test-slow test-gpu setup setup-dev lint clean

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# Install the tested torch first (pinned), from TORCH_INDEX_URL if set.
	$(PIP) install torch==$(TORCH_VERSION) $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	touch $@

$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.torch pyproject.toml
	$(PIP) install -e ".[dev,flower,datatrove]"
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed
setup-dev: $(VENV)/.installed-dev

demo: setup
	$(PY) scripts/pretrain.py --max_steps 600 --output_dir outputs/demo

# --timeout: a test that hangs fails after 15 minutes with its stack (pytest-timeout) instead of stalling the run.
# -n: pytest-xdist workers (one per core on the 2-core CI machine); --dist loadscope keeps each test module on one
# worker, so a module's expensive fixtures (a recipe run shared by its tests) are built once.
TEST_WORKERS ?= 2
test: setup-dev
	$(PY) -m pytest -m "not slow and not gpu and not extended" -q --timeout 900 -n $(TEST_WORKERS) --dist loadscope

# the variants `make test` leaves out to stay near its 20-minute budget on 2 cores (run before resolving an issue)
test-extended: setup-dev
	$(PY) -m pytest -m "extended and not slow and not gpu" -q --timeout 900 -n $(TEST_WORKERS) --dist loadscope

test-slow: setup-dev
	$(PY) -m pytest -m "slow" -q

test-gpu: setup-dev
	$(PY) -m pytest -m "gpu" -q

lint: setup-dev
	$(VENV)/bin/ruff check hf_ext scripts tests

clean:
	rm -rf $(VENV) outputs .pytest_cache
