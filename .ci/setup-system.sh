#!/usr/bin/env bash
# System packages and services the sandbox tests need: bubblewrap, a Docker engine and the local
# `turngym/sandbox:py` image; Chromium + chromedriver for the viewer's browser test; gcc + make to build
# jericho (textworld's Z-machine interpreter, an sdist) when `make test` installs the dev extra. Idempotent,
# non-interactive, run as root (CI and `make test` call it).
#
#   sudo .ci/setup-system.sh            # install, start dockerd, build the image if missing
#
# Nothing here reaches beyond the Debian mirror: the engine runs without the default bridge
# (`--bridge=none`, no iptables rules), containers use `network_mode="none"`, and the image is
# built locally with debootstrap (there is no registry to pull from).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
IMAGE="${TURNGYM_SANDBOX_IMAGE:-turngym/sandbox:py}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/turngym-dockerd.log}"

log() { echo "[setup-system] $*"; }

if [ "$(id -u)" -ne 0 ]; then
  log "not root: skipping system setup (bubblewrap/docker tests will skip with a reason)."
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
need=()
command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap)
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v chromium >/dev/null 2>&1 || need+=(chromium)              # the viewer's browser test
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)  # (Selenium drives it)
command -v make >/dev/null 2>&1 || need+=(make)                      # textworld's jericho dependency is an sdist
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)              # that compiles its Z-machine interpreter
if [ "${#need[@]}" -gt 0 ]; then
  log "installing: ${need[*]}"
  apt-get update -q || log "apt-get update reported errors (an unreachable extra source?); trying the install anyway"
  apt-get install -y -q --no-install-recommends "${need[@]}" ca-certificates
else
  log "bubblewrap, docker.io, debootstrap and chromium already installed"
fi

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if engine_up; then
  log "docker engine already running"
else
  # Up to three starts, two minutes each: on a busy machine containerd can miss dockerd's own start timeout.
  for attempt in 1 2 3; do
    log "starting dockerd, attempt $attempt (log: $DOCKERD_LOG)"
    pkill -x dockerd 2>/dev/null || true
    pkill -x containerd 2>/dev/null || true
    sleep 1
    # a stale pid file whose pid now belongs to another process makes dockerd wait for a containerd that
    # is not there
    rm -f /var/run/docker/containerd/containerd.pid /var/run/docker.pid
    nohup dockerd --bridge=none --iptables=false --ip6tables=false >"$DOCKERD_LOG" 2>&1 &
    dpid=$!
    for _ in $(seq 1 240); do
      engine_up && break
      kill -0 "$dpid" 2>/dev/null || break  # dockerd exited: try again
      sleep 0.5
    done
    engine_up && break
  done
  if ! engine_up; then
    log "dockerd did not come up; last lines of $DOCKERD_LOG:"
    tail -n 20 "$DOCKERD_LOG" || true
    log "docker tests will skip with this reason"
    exit 0
  fi
  log "docker engine ready"
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "image $IMAGE present"
else
  log "building $IMAGE"
  rc=0
  "$ROOT/scripts/build_sandbox_image.sh" "$IMAGE" || rc=$?
  if [ "$rc" -ne 0 ]; then
    log "building $IMAGE failed (exit $rc; the reason is printed above); the docker tests would skip without it"
    exit "$rc"
  fi
fi
log "done"
