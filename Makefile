# Two commands do all set-up: `make demo` and `make test`. Everything else here serves them.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := gcc runc containernetworking-plugins iproute2 busybox-static util-linux
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: test demo deps apt venv k8s containerd lint unit integration e2e bench proto clean-cluster image

test: deps k8s containerd ## install everything, build Kubernetes and containerd if needed, run every test suite
	$(BIN)/python -m pytest -v --durations=25 tests

demo: deps k8s ## a real local cluster with the driver and extender, on fake GPUs
	$(BIN)/topodra demo

deps: apt venv

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "Python 3.11+ is required"; exit 1; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

k8s: ## build the pinned Kubernetes binaries, etcd and helm (cached outside the repo)
	hack/build-k8s.sh
	hack/build-helm.sh

containerd: ## build the pinned containerd, ctr and runc shim for the real-node tests (cached outside the repo)
	hack/build-containerd.sh

image: deps ## the topodra image without a container engine (OCI tarball in ~/.cache/topodra/image, docs/image.md)
	$(BIN)/python -m topodra_cli.imagebuild build

lint: venv
	$(BIN)/ruff check . && $(BIN)/mypy --strict

unit: venv
	$(BIN)/python -m pytest tests/unit

integration: deps k8s
	$(BIN)/python -m pytest -m "cluster and not e2e" tests

e2e: deps k8s containerd
	$(BIN)/python -m pytest -m e2e tests

bench: deps k8s ## run every benchmark (20-30 min on 2 cores) and regenerate docs/benchmarks.md and its plots
	$(BIN)/topodra bench

proto: venv
	hack/gen-proto.sh

clean-cluster:
	-$(BIN)/topodra local-cluster down
