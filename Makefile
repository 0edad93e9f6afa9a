# Two entry points (see README): `make reproduce` and `make test`. Each sets itself up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip -q --disable-pip-version-check
# In this repository's CI and development layout, MNIST lies in ../shared/data; elsewhere redblue
# looks in $$REDBLUE_DATA_DIR, then ~/.cache/redblue, and downloads (checksum-verified) if missing.
SHARED_DATA := $(wildcard $(CURDIR)/../shared/data/mnist)
ifneq ($(SHARED_DATA),)
export REDBLUE_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)
endif
PROFILE ?= quick
OUT ?= runs/reproduce-$(PROFILE)

.PHONY: setup setup-test reproduce test test-slow bench clean

setup: $(VENV)/.setup-done
setup-test: $(VENV)/.setup-test-done

$(VENV)/.setup-done: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	@# The CPU build of torch first, where one is reachable (a local wheel or a configured CPU
	@# index); otherwise pip takes torch from pyproject's normal version range.
	$(PIP) install "torch==2.13.0+cpu" 2>/dev/null || echo "setup: no CPU-only torch build reachable; using torch from PyPI"
	$(PIP) install -e .
	touch $@

$(VENV)/.setup-test-done: $(VENV)/.setup-done
	$(PIP) install -e ".[test,peers,ray]"
	@# torchattacks' metadata pins torchvision and an old requests, neither of which it imports for
	@# the attacks we compare against; installing its dependencies would replace the CPU torch.
	$(PIP) install --no-deps "torchattacks==3.5.1"
	touch $@

reproduce: setup
	$(BIN)/redblue reproduce --profile $(PROFILE) --out $(OUT)

test: setup-test
	$(BIN)/python -m pytest -q

test-slow: setup-test
	$(BIN)/python -m pytest -q -m slow

bench: setup-test
	$(BIN)/python benchmarks/train_epoch.py
	$(BIN)/python benchmarks/attacks.py

clean:
	rm -rf $(VENV) runs .pytest_cache
