# Two commands for a newcomer: `make demo` and `make test`. Both install what is
# missing first. Expensive things live in a cache outside the repository and are
# rebuilt only when their inputs change.
SHELL := /bin/bash
CACHE ?= $(HOME)/.cache/mariadb-kms
REQ_HASH := $(shell cat requirements.txt requirements-dev.txt | sha256sum | cut -c1-12)
VENV := $(CACHE)/venv-$(REQ_HASH)
PY := $(VENV)/bin/python
export MARIADB_KMS_CACHE := $(CACHE)
export PATH := $(VENV)/bin:$(PATH)

# pytest exits 5 when it collected nothing: count that as a failure.
PYTEST = bash -c 'pytest "$$@"; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc' pytest

.PHONY: venv deps test test-unit test-node lint demo demo-down bench bench-demo clean-cache reliability

$(VENV)/.ok: requirements.txt requirements-dev.txt
	@echo "==> creating Python environment in $(VENV)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	$(VENV)/bin/pip install -q -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither"; test $${PIPESTATUS[0]} -eq 0
	touch $@

venv: $(VENV)/.ok

# Debian packages the testbed needs on the machine running it.
deps: venv
	@bash rehearsal/install-host-deps.sh

lint: venv
	ruff check .
	mypy

test-unit: venv
	$(PYTEST) -m "not node and not rehearsal" tests/unit

test-node: deps
	$(PYTEST) -m node tests/node

test: deps lint
	$(PYTEST) tests

# Faults under load on a 3-node testbed cluster (tests/reliability; figures in docs/RELIABILITY.md).
reliability: deps
	$(PYTEST) -m reliability tests/reliability

# The whole deployment rehearsed on this machine (rehearsal/demo.py); NODES=5 for another node count.
# It leaves the cluster running; `make demo-down` removes it (also after a failed or interrupted run).
demo: deps
	$(PY) -m rehearsal demo $(if $(NODES),--nodes $(NODES))

demo-down: venv
	$(PY) -m rehearsal down

# Cold and warm `make demo` wall time (bench/demo_timing.py); COLD=0 measures warm runs only.
bench-demo: deps
	$(PY) bench/demo_timing.py $(if $(filter 0,$(COLD)),--warm-only)

clean-cache:
	rm -rf $(CACHE)
