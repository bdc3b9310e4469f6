# Two commands from a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# serving needs the package alone; the test suite adds the dev extra (SDKs, browser driver,
# linters) on top of it
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed
# the suite on four processes (pytest-xdist), a file per process at a time: the tests wait
# on subprocesses and sockets far more than they compute, so they overlap well even on a
# busy 2-core machine (with two busy loops beside it: 6:51 on two processes, 5:51 on
# four). `make test JOBS=0` runs it in one process.
JOBS ?= 4

.PHONY: install run test check bench screenshots clean

$(SERVE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(SERVE_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP) $(SERVE_STAMP)

install: $(STAMP)

run: $(SERVE_STAMP)
	$(BIN)/lockgate serve --config policies/gateway.yaml

check: $(SERVE_STAMP)
	$(BIN)/lockgate check --config policies/gateway.yaml

# kubectl renders deploy/kubernetes and Debian's chromium drives the console's browser test
# (nothing can be downloaded here); where either cannot be installed, those tests say so and skip
test: $(STAMP)
	@command -v kubectl >/dev/null || (apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null) \
		|| echo "kubectl could not be installed: the kustomize tests will be skipped"
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the console's browser test will be skipped"
	$(BIN)/python -m pytest -q -n $(JOBS) --dist loadfile $(PYTEST_ARGS)

# the console's screenshots in README (bench/results/console/*.png), taken again on purpose;
# `make test` writes its own to the ignored tests/screenshots/
screenshots: $(STAMP)
	LOCKGATE_SCREENSHOTS=bench/results/console $(BIN)/python -m pytest -q tests/test_console.py

BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# make bench [PEERS=litellm,portkey] [DURATION=10] [GATEWAY_CORES=0] [BENCH_ARGS='--only disk --windows 3']
# (the method and how long it takes: README, "Performance")
bench: $(BENCH_STAMP)
	command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)
	command -v taskset >/dev/null || (apt-get update -qq && apt-get install -y -qq util-linux >/dev/null)
	case ',$(PEERS),' in *,portkey,*) command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null);; esac
	$(BIN)/python bench/run.py --duration $(or $(DURATION),10) --peers '$(PEERS)' $(if $(GATEWAY_CORES),--gateway-cores $(GATEWAY_CORES)) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .lockgate policies/.lockgate .pytest_cache .mypy_cache .ruff_cache tests/screenshots
