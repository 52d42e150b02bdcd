# Two commands do everything: `make demo` and `make test`. Both build .venv first if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Pin torch to the CPU 2.13.0 wheel when this machine has it on disk; elsewhere pip picks the normal wheel.
TORCH_PIN := $(shell ls /opt/wheels/torch-2.13.0* >/dev/null 2>&1 && echo "torch==2.13.0")
PYTEST_ARGS ?=
# Two pytest workers (pytest-xdist): one holds the session's Ray and its shared runs, the other takes the tests
# that start their own Ray or none (tests/conftest.py makes the work units). TEST_WORKERS=0 runs one process.
TEST_WORKERS ?= 2

.PHONY: venv demo test bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -m pip install --quiet $(TORCH_PIN) -e ".[dev]" 2>&1 | grep -v '^WARNING: Location' || true
	$(PY) -c "import torch, ray, convfm; print('venv ready: torch', torch.__version__, 'ray', ray.__version__)"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/convfm demo

test: venv
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs models data .pytest_cache
