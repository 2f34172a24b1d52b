#!/usr/bin/env bash
# make test: lint, mypy strict, then pytest on SQLite and on PostgreSQL.
#
# PostgreSQL: TELLONCE_TEST_DATABASE_URL if set; otherwise a fresh database is made on
# 127.0.0.1:5432 (user postgres, or PGUSER) and dropped afterwards. Outside CI an
# unreachable PostgreSQL is reported and that pass skipped; in CI (CI=true) it fails.
#
# The two passes run side by side (TELLONCE_TEST_PASSES=serial runs one after the other):
# each has its own database, temporary folder and loopback ports, and much of a pass is
# spent waiting on the servers, browsers and PostgreSQL it starts, which the other pass
# uses the cores for. The SQLite pass prints as it goes; the
# PostgreSQL pass's output is kept in a file and printed when it ends. Either failing
# fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin

echo "== lint"
"$BIN/ruff" check .
"$BIN/ruff" format --check .
"$BIN/python" scripts/audit_deps.py
echo "== mypy (strict)"
"$BIN/mypy"

created=""
pg_url="${TELLONCE_TEST_DATABASE_URL:-}"
scratch=$(mktemp -d "${TMPDIR:-/tmp}/tellonce-make-test.XXXXXX")
pg_pid=""
cleanup() {
  if [ -n "$pg_pid" ]; then
    kill "$pg_pid" 2>/dev/null || true
    wait "$pg_pid" 2>/dev/null || true
  fi
  if [ -n "$created" ]; then
    "$BIN/python" scripts/pgdb.py drop "$created" || true
  fi
  rm -rf "$scratch"
}
trap cleanup EXIT

if [ -z "$pg_url" ]; then
  if pg_url=$("$BIN/python" scripts/pgdb.py create); then
    created="$pg_url"
  else
    if [ "${CI:-}" = "true" ]; then
      echo "PostgreSQL is not reachable and CI requires the PostgreSQL pass" >&2
      exit 1
    fi
    echo "!! PostgreSQL not reachable on 127.0.0.1:5432: PostgreSQL pass skipped (CI would fail)" >&2
    pg_url=""
  fi
fi

postgres_pass() {
  TELLONCE_TEST_DATABASE_URL="$pg_url" "$BIN/pytest" -q -p no:cacheprovider \
    --basetemp="$scratch/postgres" "$@"
}
sqlite_pass() {
  TELLONCE_TEST_DATABASE_URL= "$BIN/pytest" -q -p no:cacheprovider --basetemp="$scratch/sqlite" "$@"
}

if [ -z "$pg_url" ]; then
  echo "== pytest on SQLite"
  sqlite_pass
  exit 0
fi

if [ "${TELLONCE_TEST_PASSES:-parallel}" = "serial" ]; then
  echo "== pytest on SQLite"
  sqlite_pass
  echo "== pytest on PostgreSQL"
  postgres_pass
  exit 0
fi

echo "== pytest on PostgreSQL, started beside the SQLite pass (its output follows that pass)"
postgres_pass >"$scratch/postgres.log" 2>&1 &
pg_pid=$!
echo "== pytest on SQLite"
sqlite_status=0
sqlite_pass || sqlite_status=$?
pg_status=0
wait "$pg_pid" || pg_status=$?
pg_pid=""
echo "== pytest on PostgreSQL"
cat "$scratch/postgres.log"
echo "== SQLite pass exit $sqlite_status, PostgreSQL pass exit $pg_status"
[ "$sqlite_status" -eq 0 ] && [ "$pg_status" -eq 0 ]
