# The one place to look for commands. `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run serve test test-sqlite test-postgres lint typecheck bench clean

# The service and the department client library (clients/python), which the tests use.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e clients/python
	@touch $(STAMP)

install: $(STAMP)

# The demo government: migrate, load policies/, seed, serve on 127.0.0.1:8000, live
# through life events, print the report, keep serving (see README, "What you will see").
run: install
	$(BIN)/tellonce demo

# ruff (its S rules are bandit's checks) and pip-audit against a reviewed baseline.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/audit_deps.py

typecheck: install
	$(BIN)/mypy

# Lint, types, then pytest on SQLite and on PostgreSQL (see scripts/test.sh).
test: install
	scripts/test.sh

test-sqlite: install
	TELLONCE_TEST_DATABASE_URL= $(BIN)/pytest -q

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
