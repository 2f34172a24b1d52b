# The one place to look for commands. `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install run run-reset test test-sqlite lint typecheck bench fuzz clean softhsm replicas-up replicas-down

# The service and the department client library (clients/python), which the tests use.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e clients/python
	@touch $(STAMP)

# The tests' npm packages, each locked in its folder: the OpenID provider of the single
# sign-on tests and axe-core for the accessibility tests. npm ci writes
# node_modules/.package-lock.json, so a folder is installed again only when its lock changes.
NODE_TEST_DEPS := tests/oidc/node_modules/.package-lock.json tests/a11y/node_modules/.package-lock.json
tests/%/node_modules/.package-lock.json: tests/%/package-lock.json
	npm ci --prefix tests/$* --no-audit --no-fund

install: $(STAMP)

# The demo government: migrate, load policies/, seed, serve on 127.0.0.1:8000, live
# through life events, print the report, keep serving (see README, "What you will see").
run: install
	$(BIN)/tellonce demo

# The same demo on a wiped store: new keys, clients, population and audit log.
run-reset: install
	$(BIN)/tellonce demo --reset

# ruff (its S rules are bandit's checks) and pip-audit against a reviewed baseline.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/audit_deps.py

typecheck: install
	$(BIN)/mypy

# Lint, types, then pytest on SQLite and on PostgreSQL side by side (see scripts/test.sh).
test: install $(NODE_TEST_DEPS)
	scripts/test.sh

# pytest on SQLite only (no lint, types or PostgreSQL pass): the quick loop while working.
test-sqlite: install $(NODE_TEST_DEPS)
	TELLONCE_TEST_DATABASE_URL= $(BIN)/pytest -q

# A SoftHSM2 token for TELLONCE_KEY_PROVIDER=pkcs11 (Debian's softhsm2, installed if
# missing): made once in .tellonce/softhsm with a random PIN in a 0600 file; prints the
# variables to export. The tests make their own tokens and do not need this.
SOFTHSM_DIR := $(CURDIR)/.tellonce/softhsm
softhsm:
	@command -v softhsm2-util >/dev/null || (apt-get update -qq && apt-get install -y -qq softhsm2)
	@mkdir -p $(SOFTHSM_DIR)/tokens && chmod 700 $(SOFTHSM_DIR)
	@test -f $(SOFTHSM_DIR)/softhsm2.conf || printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\n' $(SOFTHSM_DIR) > $(SOFTHSM_DIR)/softhsm2.conf
	@test -f $(SOFTHSM_DIR)/pin || (umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_hex(16))' > $(SOFTHSM_DIR)/pin)
	@SOFTHSM2_CONF=$(SOFTHSM_DIR)/softhsm2.conf softhsm2-util --show-slots | grep -q 'Label:.*tellonce' || \
		SOFTHSM2_CONF=$(SOFTHSM_DIR)/softhsm2.conf softhsm2-util --init-token --free --label tellonce \
		--so-pin "$$(cat $(SOFTHSM_DIR)/pin)-so" --pin "$$(cat $(SOFTHSM_DIR)/pin)" >/dev/null
	@echo "export SOFTHSM2_CONF=$(SOFTHSM_DIR)/softhsm2.conf TELLONCE_KEY_PROVIDER=pkcs11"
	@echo "export TELLONCE_PKCS11_MODULE=$$(ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so 2>/dev/null | head -1)"
	@echo "export TELLONCE_PKCS11_TOKEN_LABEL=tellonce TELLONCE_PKCS11_PIN_FILE=$(SOFTHSM_DIR)/pin"

bench: install
	$(BIN)/python -m bench

# Schemathesis against a live server on loopback; any 5xx fails (README, "Fuzzing the API").
fuzz: install
	$(BIN)/python -m pip install --quiet -e '.[fuzz]'
	scripts/fuzz.sh

# Three API replicas, a worker and HAProxy on this machine's PostgreSQL (README, "Replicas").
replicas-up: install
	scripts/replicas.sh up

replicas-down:
	scripts/replicas.sh down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
