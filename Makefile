# Two commands from a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test check bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/lockgate serve --config policies/gateway.yaml

check: $(STAMP)
	$(BIN)/lockgate check --config policies/gateway.yaml

# kubectl renders deploy/kubernetes and Debian's chromium drives the console's browser test
# (nothing can be downloaded here); where either cannot be installed, those tests say so and skip
test: $(STAMP)
	@command -v kubectl >/dev/null || (apt-get update -qq && apt-get install -y -qq kubernetes-client >/dev/null) \
		|| echo "kubectl could not be installed: the kustomize tests will be skipped"
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "chromium could not be installed: the console's browser test will be skipped"
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

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
	rm -rf $(VENV) .lockgate policies/.lockgate .pytest_cache
