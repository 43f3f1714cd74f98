#!/usr/bin/env bash
# base-images.sh PYTHON_IMAGE POSTGRES_IMAGE
#
# Makes the two base images `make compose-e2e` needs where no registry serves the
# official ones, from Debian 12 (bookworm) packages alone, with debootstrap and the
# host's own Debian mirror (read from its apt sources at run time):
#
#   PYTHON_IMAGE    stands in for python:3.11-slim-bookworm, the Dockerfile's base:
#                   Debian's python3 (3.11), venv, pip, `python` and CA certificates.
#   POSTGRES_IMAGE  stands in for the official postgres image: Debian's postgresql-15
#                   and postgres-entrypoint.sh beside this file, which honours the
#                   official image's variables and init scripts.
#
# An image that exists and was made by this same recipe (its label holds a hash of
# this file and the entrypoint) is kept: repeated runs cost nothing here. Run as root.
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON_IMAGE="$1"
POSTGRES_IMAGE="$2"
SUITE=bookworm
RECIPE_LABEL=org.tandem.compose-e2e.recipe
RECIPE="$(cat "${BASH_SOURCE[0]}" "$HERE/postgres-entrypoint.sh" | sha256sum | cut -c1-16)"
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

say() { echo "base-images: $*"; }

current() {
  local image="$1" label
  label="$(podman image inspect --format "{{ index .Labels \"$RECIPE_LABEL\" }}" "$image" 2>/dev/null)" || return 1
  [ "$label" = "$RECIPE" ]
}

need=()
current "$PYTHON_IMAGE" || need+=(python)
current "$POSTGRES_IMAGE" || need+=(postgres)
if [ ${#need[@]} -eq 0 ]; then
  say "$PYTHON_IMAGE and $POSTGRES_IMAGE are cached (recipe $RECIPE)"
  exit 0
fi

# The host's Debian mirror and apt sources: the first URIs of its deb822 sources, or
# the first `deb` line of the classic format.
SOURCES=""
for candidate in /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list.d/*.sources; do
  if [ -f "$candidate" ] && grep -q '^URIs:' "$candidate"; then
    SOURCES="$candidate"
    break
  fi
done
if [ -n "$SOURCES" ]; then
  MIRROR="$(awk '/^URIs:/ {print $2; exit}' "$SOURCES")"
else
  MIRROR="$(awk '$1 == "deb" && $2 !~ /^\[/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
fi
if [ -z "${MIRROR:-}" ]; then
  say "no Debian mirror in the host's apt sources" >&2
  exit 1
fi
# A snapshot mirror's Release files are past their Valid-Until; apt inside the rootfs
# then needs the host's setting for it (debootstrap itself does not check it).
VALID_UNTIL="$(apt-config dump Acquire::Check-Valid-Until | awk -F'"' 'NR == 1 {print $2}')"
APT_OPTIONS=(-o "Acquire::Check-Valid-Until=${VALID_UNTIL:-true}" -o Dpkg::Use-Pty=0)

WORK="$(mktemp -d /var/tmp/tandem-compose-e2e-rootfs.XXXXXX)"
MOUNTED=()
cleanup() {
  local mount
  for mount in "${MOUNTED[@]}"; do
    umount -l "$mount" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

say "debootstrap $SUITE (minbase) from $MIRROR"
started=$SECONDS
debootstrap --variant=minbase "$SUITE" "$WORK/base" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORK/debootstrap.log" >&2
  exit 1
}
say "debootstrap took $((SECONDS - started)) s"

# Packages into a copy of the base rootfs, as in a Dockerfile's RUN apt-get install:
# the host's sources (updates and security too), no services started, no caches kept.
install_into() {
  local rootfs="$1"
  shift
  cp -a "$WORK/base" "$rootfs"
  if [ -n "$SOURCES" ]; then
    rm -f "$rootfs/etc/apt/sources.list"
    cp "$SOURCES" "$rootfs/etc/apt/sources.list.d/debian.sources"
  fi
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
  mount -t proc proc "$rootfs/proc"
  MOUNTED+=("$rootfs/proc")
  local log
  log="$WORK/$(basename "$rootfs").log"
  if ! chroot "$rootfs" /usr/bin/env -i PATH="$PATH_ENV" DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
    /bin/bash -euo pipefail -c "$1" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    say "installing into $(basename "$rootfs") failed" >&2
    exit 1
  fi
  umount "$rootfs/proc"
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  : >"$rootfs/etc/resolv.conf"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
    "$rootfs"/var/log/apt/* "$rootfs"/var/log/dpkg.log "$rootfs"/tmp/* "$rootfs"/root/.cache \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
}

apt_get="apt-get ${APT_OPTIONS[*]} -qq -y"

import_rootfs() {
  local rootfs="$1" image="$2"
  shift 2
  local changes=(--change "ENV PATH=$PATH_ENV" --change "ENV LANG=C.UTF-8" --change "LABEL $RECIPE_LABEL=$RECIPE")
  local change
  for change in "$@"; do
    changes+=(--change "$change")
  done
  local old
  old="$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)"
  if ! tar --numeric-owner -C "$rootfs" -c . | podman import "${changes[@]}" - "$image" >"$WORK/import.log" 2>&1; then
    cat "$WORK/import.log" >&2
    exit 1
  fi
  # The image it replaces (an older recipe), if nothing else uses it.
  if [ -n "$old" ] && [ "$old" != "$(podman image inspect --format '{{.Id}}' "$image")" ]; then
    podman rmi "$old" >/dev/null 2>&1 || true
  fi
  say "made $image ($(du -sh "$rootfs" | cut -f1) unpacked): $(tail -n 1 "$WORK/$(basename "$rootfs").log")"
}

for what in "${need[@]}"; do
  started=$SECONDS
  case "$what" in
    python)
      # The Dockerfile runs `python` (python-is-python3) and `python -m venv`; the
      # explicit PATH keeps /usr/sbin (useradd) once the Dockerfile prepends its venv.
      install_into "$WORK/python" "
        $apt_get update
        $apt_get install --no-install-recommends python3 python3-venv python3-pip python-is-python3 ca-certificates >/dev/null
        $apt_get clean
        python --version >&2"
      import_rootfs "$WORK/python" "$PYTHON_IMAGE" 'CMD ["python3"]'
      ;;
    postgres)
      # As the official image: no cluster made by the package (the entrypoint makes
      # one in PGDATA), every interface in the sample configuration initdb copies,
      # SIGINT (fast shutdown) to stop.
      install_into "$WORK/postgres" "
        $apt_get update
        $apt_get install --no-install-recommends postgresql-common >/dev/null
        sed -ri 's/#(create_main_cluster) .*\$/\\1 = false/' /etc/postgresql-common/createcluster.conf
        $apt_get install --no-install-recommends postgresql-15 >/dev/null
        $apt_get clean
        sed -ri \"s!^#?(listen_addresses)\\s*=\\s*\\S+.*!\\1 = '*'!\" /usr/share/postgresql/15/postgresql.conf.sample
        grep -qF \"listen_addresses = '*'\" /usr/share/postgresql/15/postgresql.conf.sample
        install -d -o postgres -g postgres -m 2775 /var/run/postgresql /docker-entrypoint-initdb.d
        /usr/lib/postgresql/15/bin/postgres --version >&2"
      install -m 0755 "$HERE/postgres-entrypoint.sh" "$WORK/postgres/usr/local/bin/docker-entrypoint.sh"
      import_rootfs "$WORK/postgres" "$POSTGRES_IMAGE" \
        "ENV PATH=/usr/lib/postgresql/15/bin:$PATH_ENV" \
        "ENV PGDATA=/var/lib/postgresql/data" \
        'ENTRYPOINT ["docker-entrypoint.sh"]' \
        'CMD ["postgres"]' \
        'STOPSIGNAL SIGINT' \
        'EXPOSE 5432'
      ;;
  esac
  say "$what took $((SECONDS - started)) s"
done
