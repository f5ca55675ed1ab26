# `make train` and `make test` build .venv on first use (again only when pyproject.toml changes).
VENV   := .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-from-pyproject
ARGS   ?=

.PHONY: train test benchmark clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[dev,mnist]"
	touch $(STAMP)

train: $(STAMP)
	$(PYTHON) train.py $(ARGS)

# The numeric tests run again on torch's plainest kernels: another CPU's vector unit rounds like this.
FLOAT_TESTS := tests/test_objectives.py tests/test_pooling.py tests/test_network.py tests/test_soft_kernel.py tests/test_open_set.py

test: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m pytest -q $(ARGS)
	ATEN_CPU_CAPABILITY=default $(PYTHON) -m pytest -q $(FLOAT_TESTS)

benchmark: $(STAMP)
	$(PYTHON) benchmarks/throughput.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
