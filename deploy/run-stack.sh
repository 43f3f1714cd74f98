#!/usr/bin/env bash
# Runs the services on embedded defaults (SQLite under ./data, offline analyzer):
# applies both migrations, then serves until Ctrl-C, which stops everything gracefully.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

"$PY" -m users_service migrate
"$PY" -m ai_service migrate

pids=()
stop() {
  trap - INT TERM
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
}
trap stop INT TERM

# Process substitution, not a pipe: $! must be the service itself, not sed.
"$PY" -m users_service > >(sed -u 's/^/users | /') 2>&1 &
pids+=($!)
"$PY" -m ai_service > >(sed -u 's/^/ai    | /') 2>&1 &
pids+=($!)

echo "users gRPC: ${USERS_ADDR:-127.0.0.1:50051}   ai gRPC: ${AI_ADDR:-127.0.0.1:50052}"
echo "try: .venv/bin/grpcurl -plaintext ${USERS_ADDR:-127.0.0.1:50051} list"
wait -n "${pids[@]}" || true
stop
