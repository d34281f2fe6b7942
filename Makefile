# vkprovider — every developer and CI entry point. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
SIM_BASES ?= 3
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: help setup lint test test-unit test-integration test-deps run clean

help: ## Show the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.stamp: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

setup: $(VENV)/.stamp ## Create the virtualenv in .venv with runtime and dev dependencies (idempotent)

lint: setup ## ruff, mypy --strict and the import-linter layer contracts
	$(VENV)/bin/ruff check vkprovider tests hack bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-unit: setup ## Pure unit tests (no cluster)
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup kcp metrics-server ## Integration tests against the real local control plane and the base simulator
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test: setup lint kcp test-deps java-build image chart-tools metrics-server ## Lint plus every test tier (unit, integration, e2e with real Koupleless bases, the image, the chart)
	$(PY) -m pytest tests $(PYTEST_ARGS)

test-deps: image-deps ## System packages the tests start (mosquitto; podman, debootstrap for the image), installed when missing
	@command -v mosquitto >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; }

run: setup kcp ## Start vkprovider; without KUBECONFIG it brings up the local control plane and simulated bases
	$(PY) hack/run.py --bases $(SIM_BASES)

clean: ## Remove local state (not the cached Kubernetes binaries)
	rm -rf .local/cluster .local/test-cluster .pytest_cache .mypy_cache .ruff_cache

-include mk/*.mk
