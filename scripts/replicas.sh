#!/usr/bin/env bash
# scripts/replicas.sh up|down: tellonce as it is deployed, on this machine. N API replicas
# (`tellonce serve --no-worker`), one `tellonce worker` and HAProxy in front, all on
# 127.0.0.1 and one PostgreSQL. Needs haproxy (apt-get install haproxy).
#
#   scripts/replicas.sh up      # prints the URL; pids and logs in .tellonce/replicas/
#   scripts/replicas.sh down    # stops everything it started
#
# Environment (every TELLONCE_* setting reaches the processes unchanged):
#   TELLONCE_DATABASE_URL   PostgreSQL; default the local database `tellonce` (made if absent)
#   TELLONCE_REPLICAS       how many API replicas (default 3)
#   TELLONCE_REPLICAS_PORT  HAProxy's port (default 8000)
#   TELLONCE_REPLICA_PORTS  the replicas' ports, space-separated (default 8001, 8002, ...)
#   TELLONCE_REPLICAS_DIR   pids, logs and the HAProxy backend file (default .tellonce/replicas)
#   TELLONCE_PUBLIC_URL     the token issuer: HAProxy's URL unless set
#   PYTHON                  the interpreter with tellonce installed (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

state=${TELLONCE_REPLICAS_DIR:-$root/.tellonce/replicas}
count=${TELLONCE_REPLICAS:-3}
front=${TELLONCE_REPLICAS_PORT:-8000}
read -r -a ports <<<"${TELLONCE_REPLICA_PORTS:-$(seq -s ' ' $((front + 1)) $((front + count)))}"
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || python=python3
default_url=postgresql+asyncpg://postgres@127.0.0.1:5432/tellonce
export TELLONCE_DATABASE_URL=${TELLONCE_DATABASE_URL:-$default_url}
export TELLONCE_PUBLIC_URL=${TELLONCE_PUBLIC_URL:-http://127.0.0.1:$front}

tellonce=("$python" -m service.cli)

# The processes this script started, by their pid files, in the order they stop.
pid_files() {
  local file
  for file in "$state/haproxy.pid" "$state"/api-*.pid "$state/worker.pid"; do
    [ -f "$file" ] && echo "$file"
  done
  return 0
}

running() { kill -0 "$(cat "$1")" 2>/dev/null; }

# Poll URL until it answers 200 or the deadline passes.
await_ready() {
  local url=$1 deadline=$((SECONDS + 60))
  until curl -fs -o /dev/null --max-time 2 "$url" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then
      echo "replicas.sh: $url not ready after 60 s; logs in $state" >&2
      return 1
    fi
    sleep 0.2
  done
}

# Run a command in the background, its output in NAME.log and its pid in NAME.pid (the
# command's own pid: a background simple command is exec'd in the forked child).
start() {
  local name=$1
  shift
  "$@" >"$state/$name.log" 2>&1 &
  echo $! >"$state/$name.pid"
}

up() {
  command -v haproxy >/dev/null || { echo "replicas.sh: haproxy is not installed (apt-get install haproxy)" >&2; exit 1; }
  case $TELLONCE_DATABASE_URL in
    postgresql*) ;;
    *) echo "replicas.sh: replicas share one PostgreSQL; TELLONCE_DATABASE_URL is not one" >&2; exit 1 ;;
  esac
  if [ "${#ports[@]}" -ne "$count" ]; then
    echo "replicas.sh: TELLONCE_REPLICA_PORTS names ${#ports[@]} ports for $count replicas" >&2
    exit 1
  fi
  mkdir -p "$state"
  local file
  for file in $(pid_files); do
    if running "$file"; then
      echo "replicas.sh: already up ($file); run 'scripts/replicas.sh down' first" >&2
      exit 1
    fi
    rm -f "$file"
  done
  if [ "$TELLONCE_DATABASE_URL" = "$default_url" ] &&
    ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = 'tellonce'" | grep -q 1; then
    createdb -h 127.0.0.1 -U postgres tellonce
  fi

  # Once, before any replica starts: every replica must find the same keys and schema.
  "${tellonce[@]}" init --new-root-key >"$state/init.log"
  "${tellonce[@]}" policies apply "${TELLONCE_POLICIES_DIR:-policies}" --reason "scripts/replicas.sh up" >>"$state/init.log"

  local n backend="$state/backend.cfg"
  {
    echo "# Written by scripts/replicas.sh up: the replicas on this machine."
    echo "backend replicas"
    echo "    balance roundrobin"
  } >"$backend"
  for n in $(seq 1 "$count"); do
    start "api-$n" "${tellonce[@]}" serve --no-worker --host 127.0.0.1 --port "${ports[$((n - 1))]}"
    echo "    server api$n 127.0.0.1:${ports[$((n - 1))]} check" >>"$backend"
  done
  start worker "${tellonce[@]}" worker
  export TELLONCE_HAPROXY_BIND=127.0.0.1:$front
  haproxy -c -q -f deploy/haproxy/haproxy.cfg -f "$backend"

  # HAProxy only once every replica is ready: it counts a server up from its start, but
  # one whose first checks fail (still starting) is out of the rotation until two pass.
  for n in $(seq 1 "$count"); do
    await_ready "http://127.0.0.1:${ports[$((n - 1))]}/readyz"
  done
  start haproxy haproxy -db -f deploy/haproxy/haproxy.cfg -f "$backend"
  await_ready "http://127.0.0.1:$front/readyz"
  echo "tellonce: $count replicas and a worker behind HAProxy at http://127.0.0.1:$front (pids and logs in $state)"
}

down() {
  local file pid pids=() deadline=$((SECONDS + 15))
  # HAProxy first, so no request reaches a replica that is stopping; then all at once.
  for file in $(pid_files); do
    if running "$file"; then
      pid=$(cat "$file")
      kill -TERM "$pid"
      pids+=("$pid")
      [ "$file" = "$state/haproxy.pid" ] && while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    fi
  done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  done
  for file in $(pid_files); do rm -f "$file"; done
  echo "tellonce replicas: stopped"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *)
    echo "usage: scripts/replicas.sh up|down" >&2
    exit 2
    ;;
esac
