# Set-up and the two everyday commands. Everything installs into .venv, so a fresh
# clone needs only Python 3.10+ (3.11 on this project's machines).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The ephemeral Prefect API's telemetry races its own first migration; see histo_cli.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test setup swift clean

# pip compiles every installed file to bytecode, one at a time (81 s of its 175 s here);
# compileall does the same on every core (49 s), less the packages' own test folders
# (pandas', matplotlib's, ...: 96 of 349 MB of bytecode, none of it ever imported here;
# a quarter of the compile's CPU time). A few files that only newer Pythons can compile fail
# there, as they do, silently, in pip: hence `|| true`.
$(BIN)/histo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile -e '.[test]'
	$(BIN)/python -m compileall -qq -j 0 -x 'site-packages/(.*/)?tests?/' $(VENV)/lib || true
	@touch $@

setup: $(BIN)/histo

demo: setup
	$(BIN)/histo demo

# The storage tests run against OpenStack Swift (Debian packages) as well as moto; where
# apt is not available to us, those tests skip with their reason (and fail under CI=true).
# apt installs it while pip fills the venv: side by side, not one after the other.
test:
	@$(MAKE) --no-print-directory --jobs=2 --output-sync=target setup swift
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

swift:
	@bash scripts/swift-s3.sh install || echo "note: could not install OpenStack Swift; its tests will skip"

clean:
	rm -rf $(VENV) histo-demo histo-store histo-work
