# Set-up and the two everyday commands. Everything installs into .venv, so a fresh
# clone needs only Python 3.10+ (3.11 on this project's machines).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The ephemeral Prefect API's telemetry races its own first migration; see histo_cli.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test setup clean

$(BIN)/histo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

setup: $(BIN)/histo

demo: setup
	$(BIN)/histo demo

# The storage tests run against OpenStack Swift (Debian packages) as well as moto; where
# apt is not available to us, those tests skip with their reason (and fail under CI=true).
test: setup
	@bash scripts/swift-s3.sh install || echo "note: could not install OpenStack Swift; its tests will skip"
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) histo-demo histo-store histo-work
