# The front door. `make demo` runs a search, `make test` runs the tests; both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= lineage,controller,trainer,lm,dev
PROTOS := $(wildcard proto/evo/v1/*.proto)

.PHONY: install proto proto-check test lint format demo bench images deploy undeploy clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

# Regenerate the Python code for the gRPC contracts (committed; CI fails if stale).
proto: $(VENV)/.installed
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto \
		--pyi_out=proto $(PROTOS)

proto-check: $(VENV)/.installed
	$(BIN)/python -m pytest -q tests/test_proto_fresh.py

lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

demo: $(VENV)/.installed
	@echo "make demo: not yet - the controller (issue 5) will make it run a real search."
	@echo "Today you can serve and query the lineage store: $(BIN)/evo serve lineage"
	@exit 1

bench: $(VENV)/.installed
	$(BIN)/python -m bench.lineage_queries

images:
	@echo "make images: not yet - arrives with the deployment issue (issue 6)." && exit 1

deploy undeploy:
	@echo "make $@: not yet - arrives with the deployment issue (issue 6)." && exit 1

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
