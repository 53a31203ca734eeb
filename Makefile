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

.PHONY: venv deps host-python host-deps test test-unit test-node test-fresh-host test-at-rest-full pytest lint demo demo-down testbed-down \
	bench bench-demo bench-tls bench-node-start bench-program docs clean-cache plan-diff deployer-policy \
	reliability demo-up demo-destroy demo-unprotect demo-protected scenarios

# Install order on a fresh host: check it, host packages (python3-venv among them), then the venv.
# tools/check-host.sh lists every problem it finds (OS, root, Python version, free disk, swap, address range).
host-python:
	@bash tools/check-host.sh python

$(VENV)/.ok: requirements.txt requirements-dev.txt | host-python
	@echo "==> creating Python environment in $(VENV)"
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip 2>&1 | grep -v "is ignored: it is neither" || true
	$(VENV)/bin/pip install -q -r requirements-dev.txt 2>&1 | grep -v "is ignored: it is neither"; test $${PIPESTATUS[0]} -eq 0
	touch $@

venv: $(VENV)/.ok

# Debian packages the testbed needs on the machine running it, installed before the venv is made.
host-deps:
	@bash tools/check-host.sh testbed
	@bash rehearsal/install-host-deps.sh

deps: host-deps
	@$(MAKE) --no-print-directory venv

lint: venv
	ruff check .
	mypy
	actionlint
	zizmor --offline --persona auditor .github/workflows
	@# Controls: both must report the workflow that is broken on purpose, or a clean result proves nothing.
	! actionlint .github/lint-controls/broken-workflow.yml > /dev/null
	! zizmor --offline .github/lint-controls/broken-workflow.yml > /dev/null 2>&1

test-unit: venv
	$(PYTEST) -m "not node and not rehearsal" tests/unit

test-node: deps
	$(PYTEST) -m "node and not fresh_host" tests/node

test: deps lint
	$(PYTEST) -m "not fresh_host and not reliability and not scenarios" tests

# The change plan a reviewer reads: which steps run on which node, who restarts (tools/plan_diff.py).
# make plan-diff BASE=origin/main HEAD_STACK=Pulumi.dev.yaml
plan-diff: venv
	$(PY) -m tools.plan_diff $(if $(BASE),--base $(BASE)) --head $(or $(HEAD_STACK),Pulumi.dev.yaml)

# The deployer's minimum IAM policy for a stack (tools/deployer_policy.py), to stdout or to OUT:
# make deployer-policy STACK=dev OUT=deployer-policy.json
deployer-policy: venv
	@$(PY) tools/deployer_policy.py --stack $(or $(STACK),dev) $(if $(OUT),> $(OUT))

# Any pytest selection inside the venv, e.g. make pytest ARGS="-m node tests/node/test_tls_in_transit.py".
pytest: venv
	$(PYTEST) $(ARGS)

# A clean Debian 12 rootfs (a copy of the testbed's cached one) takes the steps above from nothing:
# host packages, the venv, the environment checks and their errors (tests/node/test_fresh_host_install.py).
test-fresh-host: deps
	$(PYTEST) -m fresh_host tests/node/test_fresh_host_install.py

# Faults under load on a 3-node testbed cluster (tests/reliability; figures in docs/RELIABILITY.md).
reliability: deps
	$(PYTEST) -m reliability tests/reliability

# Nothing in plaintext at rest, at full size: the 200 MB transaction (make test runs it at 32 MB).
test-at-rest-full: deps
	MARIADB_KMS_ATREST_FULL=1 $(PYTEST) -m node tests/node/test_at_rest.py

# Every day-2 scenario under the bank-transfer load: tests/rehearsal/test_day2_scenarios.py on one demo
# cluster; adding and replacing EC2 nodes (tests/rehearsal/test_day2_replace.py) on another; then the login-key
# rotation and the retirement (tests/rehearsal/test_lifecycle_scenarios.py).
scenarios: deps
	$(PYTEST) -s tests/rehearsal/test_day2_scenarios.py tests/rehearsal/test_lifecycle_scenarios.py
	$(PYTEST) -s tests/rehearsal/test_day2_replace.py

# The whole deployment rehearsed on this machine (rehearsal/demo.py); NODES=5 for another node count.
# It leaves the cluster running; `make demo-down` removes it (also after a failed or interrupted run).
demo: deps
	$(PY) -m rehearsal demo $(if $(NODES),--nodes $(NODES))

demo-down: venv
	$(PY) -m rehearsal down

# A later `pulumi up` on the demo's cluster (rehearsal/up.py): CONFIG is a changed copy of
# Pulumi.rehearsal.yaml; PREVIEW=1 prints the engine's plan and runs nothing.
# SSH_KEY=FILE (0600): a new login key, as `pulumi config set --secret sshPrivateKey` (docs/runbooks/credentials.md).
demo-up: venv
	$(PY) -m rehearsal up --config $(CONFIG) $(if $(PREVIEW),--preview) $(if $(SSH_KEY),--ssh-private-key $(SSH_KEY)) $(if $(REPLACE),--replace $(REPLACE))

# `pulumi destroy` on the demo's stack: its protected resources refuse it; PREVIEW=1 prints the plan only.
demo-destroy: venv
	$(PY) -m rehearsal destroy $(if $(PREVIEW),--preview)

# `pulumi state unprotect` on the demo's stack, to retire it (docs/runbooks/retire.md): URN=... or ALL=1;
# demo-protected lists the protected URNs (`pulumi stack export` | jq). $(value URN): a URN holds '$', which
# make would expand.
demo-unprotect: venv
	$(PY) -m rehearsal state unprotect $(if $(ALL),--all) $(if $(value URN),'$(value URN)')

demo-protected: venv
	@$(PY) -m rehearsal state protected

# Removes a node-test testbed left behind (MARIADB_KMS_TESTBED_PREFIX, default mk).
testbed-down: venv
	$(PY) -m rehearsal.testbed down

# What encryption costs, side by side (docs/BENCHMARKS.md): PARTS=at-rest,in-transit,program (default: all),
# then PNG plots from the JSON they write to docs/benchmarks/ (each script's --help gives its own options).
# The in-transit part ends with a perf profile of each cluster (linux-perf, installed here).
# PARTS=encrypt-existing (background encryption of existing tables, bench/encrypt_existing.py) is not in the
# default: at the server's default rotation IOPS it runs for about an hour.
# ARGS go to each part run, so give them with one part: make bench PARTS=at-rest ARGS="--rounds 21 --json F".
PARTS ?= at-rest,in-transit,program
bench: deps
	$(if $(findstring at-rest,$(PARTS)),$(PY) -m bench.at_rest $(ARGS) &&) \
	$(if $(findstring in-transit,$(PARTS)),bash rehearsal/install-host-deps.sh linux-perf && \
	  $(PY) -m bench.in_transit --profile-seconds 20 $(ARGS) &&) \
	$(if $(findstring encrypt-existing,$(PARTS)),$(PY) -m bench.encrypt_existing $(ARGS) &&) \
	$(if $(findstring program,$(PARTS)),$(PY) -m bench.program_eval $(ARGS) &&) \
	$(PY) -m bench.plots

# Cold and warm `make demo` wall time (bench/demo_timing.py); COLD=0 measures warm runs only (ARGS="--runs 3").
bench-demo: deps
	$(PY) -m bench.demo_timing $(if $(filter 0,$(COLD)),--warm-only) $(ARGS)

# What TLS costs Galera replication, side by side (bench/tls_replication.py; ARGS="--repeats 5").
bench-tls: deps
	$(PY) -m bench.tls_replication $(ARGS)

# Testbed cold build, warm 3-node start, the unwrap's share of a start (bench/node_start.py; ARGS="--cold").
bench-node-start: deps
	$(PY) -m bench.node_start $(ARGS)

# The program under mocks for 3, 9 and 27 nodes: time, memory, user-data size (bench/program_scale.py).
bench-program: venv
	$(PY) -m bench.program_scale $(ARGS)

# The diagrams in docs/ from their .dot sources (graphviz); tests/unit/test_diagrams.py checks they are current.
docs: venv
	@bash rehearsal/install-host-deps.sh graphviz
	$(PY) tools/render_diagrams.py

clean-cache:
	rm -rf $(CACHE)
