# Two commands: `make test` and `make demo`. Both work on a fresh machine: they create
# .venv, install the project, and (as root) the Debian packages the tests run for real.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := prometheus prometheus-alertmanager

.PHONY: test demo venv system-deps bench-deps k8s lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	touch $(STAMP)

# Real Prometheus and kubectl are test dependencies, not mocks: install them when we can.
# Debian's kubernetes-client conflicts with a kubectl installed another way, so only when none is found.
system-deps:
	@missing=""; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	command -v prometheus-alertmanager >/dev/null || missing="$$missing prometheus-alertmanager"; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run as root, or install them)" >&2; \
	  fi; \
	fi

# Only bench/scale.py --db postgres needs PostgreSQL; Debian keeps its binaries off PATH.
bench-deps: venv system-deps
	@if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: postgresql"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null; \
	  else \
	    echo "missing Debian package: postgresql (run as root, or install it)" >&2; exit 1; \
	  fi; \
	fi

# kube-apiserver and kube-controller-manager v1.20.2 built from Debian's source package, once per
# machine (cache outside the clone, PHASEGATE_K8S_CACHE overrides it), plus etcd from Debian: the
# real control plane the conformance tests run beside the emulator. A no-op when cached.
k8s:
	@deployments/controlplane/build.sh

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Two workers on 2 cores. The tests wait on wall floors (Prometheus' 5 s target ticks, scrapes,
# approval pauses) more than they compute, so one is ~2.5x slower; but on a slower machine a
# third worker starves the Prometheus servers the tests start (scrapes time out, gates read
# no data), for 4 % less time (1536-1656 s at three, one run of two red; 1606 s at two).
# PYTEST_WORKERS=0 runs them in this process.
PYTEST_WORKERS ?= 2

test: venv system-deps k8s lint
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS)

# The seed's plan, rehearsed twice on loopback: "Token is not active" errors in the 10%
# canary roll the canary back; then a healthy run goes through every phase to 100%.
demo: venv system-deps
	$(VENV)/bin/phasegate validate deployments/plans/token-refresh-locking.yaml
	$(VENV)/bin/phasegate rehearse deployments/plans/token-refresh-locking.yaml --scenario token-not-active \
	  --report reports/demo-token-not-active.json; test $$? -eq 3
	$(VENV)/bin/phasegate rehearse deployments/plans/token-refresh-locking.yaml --scenario healthy \
	  --report reports/demo-healthy.json

clean:
	rm -rf $(VENV) .pytest_cache reports
