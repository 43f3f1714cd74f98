# Tandem: `make run` starts the stack on embedded defaults, `make test` runs every check.
# Both create .venv on first use (Python 3.11+ as $(PYTHON)) from the pinned constraints:
# `make run` with what running needs, `make test` adds the dev tools.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
RUN_INSTALLED := $(VENV)/.run-installed
INSTALLED := $(VENV)/.installed

.PHONY: run test lint types protos-lint unit integration e2e protos lock clean \
	bench-users bench-gateway bench-ai bench-abuse bench-offline calibrate-offline compose-e2e

# Two stamps: what running needs (the package and grpcurl for the README's first steps),
# and on top of it the dev extra that the checks need (pytest, ruff, mypy, buf…).
$(RUN_INSTALLED): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("Tandem needs Python 3.11+, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	@test -x $(PY) || { echo "make: creating $(VENV), once: installing what running needs takes about a minute"; $(PYTHON) -m venv $(VENV); }
	@start=$$(date +%s); \
		$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[run]' && \
		echo "make: $(VENV) has what running needs (took $$(( $$(date +%s) - start )) s)"
	@touch $@

$(INSTALLED): $(RUN_INSTALLED)
	@echo "make: adding the dev tools (tests, linters, type checker) to $(VENV); about a minute, once"
	@$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

run: $(RUN_INSTALLED)
	@$(PY) deploy/stack.py

test: lint types protos-lint
	$(PY) -m pytest

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(INSTALLED)
	$(BIN)/mypy

protos-lint: $(INSTALLED)
	cd protos && ../$(BIN)/buf lint

unit: $(INSTALLED)
	$(PY) -m pytest -m unit

integration: $(INSTALLED)
	$(PY) -m pytest -m integration

e2e: $(INSTALLED)
	$(PY) -m pytest -m e2e

# The image and the compose stack for real: podman, docker compose v2, base images made
# with debootstrap where no registry serves them, a journey through the running stack,
# then `down -v` (deploy/compose-e2e/run.sh says what it does to the host). As root, on
# Debian; ~4-5 minutes the first time, ~3 once the base images are cached (most of it
# the rebuild of what changed and the stack starting in its health order).
compose-e2e: $(INSTALLED)
	PY=$(abspath $(PY)) bash deploy/compose-e2e/run.sh

# Benchmarks: on demand, never part of `make test`; run them on an otherwise idle machine.
# The users benchmark creates (and drops) its own database on TEST_DATABASE_URL's server.
bench-users: $(INSTALLED)
	$(PY) bench/users_bench.py $(BENCH_ARGS)

# The gateway path (gateway -> users -> PostgreSQL) against a FastAPI + SQLAlchemy
# monolith, loaded by wrk (Debian package `wrk`); creates and drops its own database.
bench-gateway: $(INSTALLED)
	$(PY) bench/gateway_bench.py $(BENCH_ARGS)

bench-ai: $(INSTALLED)
	$(PY) bench/ai_bench.py $(BENCH_ARGS)

# The gateway's edge under a 200-way bad-login flood and 4,096 held connections
# (users service + gateway as real processes); creates and drops its own database.
bench-abuse: $(INSTALLED)
	$(PY) bench/abuse_bench.py $(BENCH_ARGS)

# Downloads the vaderSentiment sdist once (PyPI) for the human-rated corpora.
bench-offline: $(INSTALLED)
	$(PY) bench/offline_quality.py $(BENCH_ARGS)

calibrate-offline: $(INSTALLED)
	$(PY) bench/offline_calibrate.py

# Regenerate client/tandem_protos from the .proto files.
protos: $(INSTALLED)
	$(PY) protos/generate.py

# Re-pin every dependency after a change to pyproject.toml.
lock: $(INSTALLED)
	$(BIN)/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links -o constraints.txt pyproject.toml

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache data
