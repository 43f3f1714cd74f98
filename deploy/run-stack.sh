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

"$PY" -m users_service 2>&1 | sed -u 's/^/users | /' &
pids+=($!)
"$PY" -m ai_service 2>&1 | sed -u 's/^/ai    | /' &
pids+=($!)

echo "users gRPC: ${USERS_ADDR:-127.0.0.1:50051}   ai gRPC: ${AI_ADDR:-127.0.0.1:50052}"
echo "try: .venv/bin/grpcurl -plaintext ${USERS_ADDR:-127.0.0.1:50051} list"
wait -n "${pids[@]}" || true
stop
