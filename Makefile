# Two entry points (see README): `make reproduce` and `make test`. Each sets itself up first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip -q --disable-pip-version-check
# In this repository's CI and development layout, MNIST lies in ../shared/data, and make points
# REDBLUE_DATA_DIR there for its own commands only. Elsewhere redblue looks in $$REDBLUE_DATA_DIR,
# then ~/.cache/redblue (or only in --data-dir when given); `redblue data fetch mnist` downloads,
# checksum-verified, and a verb that loads data downloads what is missing only with consent:
# --download, REDBLUE_DOWNLOAD=1, or a yes on a terminal (never silently in CI).
SHARED_DATA := $(wildcard $(CURDIR)/../shared/data/mnist)
ifneq ($(SHARED_DATA),)
export REDBLUE_DATA_DIR ?= $(abspath $(CURDIR)/../shared/data)
endif
PROFILE ?= quick
OUT ?= runs/reproduce-$(PROFILE)

.PHONY: setup setup-test reproduce test test-slow bench clean

setup: $(VENV)/.setup-done
setup-test: $(VENV)/.setup-test-done
	@# The report test opens report.html in headless Chromium: Debian's package, installed when missing
	@# (CI runs as root on a clean Debian machine; about 20 s and 113 MB of packages). REDBLUE_CHROMIUM
	@# may name another Chromium binary instead.
	@test -n "$$REDBLUE_CHROMIUM" || command -v chromium >/dev/null || command -v chromium-browser >/dev/null || \
		(apt-get update && apt-get install -y --no-install-recommends chromium) || \
		(echo "setup-test: could not install Chromium; install Debian's chromium package or set REDBLUE_CHROMIUM" >&2; exit 1)

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

# Without ../shared's copy, running the main command is the consent to download MNIST (checksum-verified).
reproduce: setup
	$(BIN)/redblue reproduce --profile $(PROFILE) --out $(OUT)$(if $(SHARED_DATA),, --download)

test: setup-test
	$(BIN)/python -m pytest -q

# The slow suite, then the property-based suites again under Hypothesis's long profile (random, 300 examples).
test-slow: setup-test
	$(BIN)/python -m pytest -q -m slow
	HYPOTHESIS_PROFILE=slow $(BIN)/python -m pytest -q tests/test_props_attacks.py tests/test_data_fuzz.py tests/test_evaluate_plan_fuzz.py

bench: setup-test
	$(BIN)/python benchmarks/train_epoch.py
	$(BIN)/python benchmarks/attacks.py

clean:
	rm -rf $(VENV) runs .pytest_cache
