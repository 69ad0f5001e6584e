#!/usr/bin/env bash
# Build the docker sandbox image locally (no registry needed): a Debian bookworm minbase root with
# python3 (python3-minimal + the full standard library), made by debootstrap from the Debian mirror and loaded with `docker import`.
#
#   scripts/build_sandbox_image.sh [IMAGE]      # default turngym/sandbox:py; about 35-60 s, ~230 MB
#
# Needs root, debootstrap and a running docker engine (see .ci/setup-system.sh).
set -euo pipefail
IMAGE="${1:-turngym/sandbox:py}"
SUITE="${DEBIAN_SUITE:-bookworm}"
# The Debian mirror apt already uses on this machine (first "URIs:" / "deb" entry), unless DEBIAN_MIRROR is set.
apt_mirror() {
  { grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}'
    grep -hE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'
  } | grep -v -- '-security' | head -n 1
}
MIRROR="${DEBIAN_MIRROR:-$(apt_mirror)}"
[ -n "$MIRROR" ] || { echo "[build_sandbox_image] no Debian mirror found in /etc/apt; set DEBIAN_MIRROR"; exit 1; }
WORK="$(mktemp -d /tmp/turngym-rootfs.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
echo "[build_sandbox_image] debootstrap $SUITE from $MIRROR into $WORK"
debootstrap --variant=minbase --include=python3-minimal,python3 "$SUITE" "$WORK/root" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
  tail -n 30 "$WORK/debootstrap.log"; exit 1; }
# Trim what the sandbox never needs.
rm -rf "$WORK/root/var/cache/apt/archives/"*.deb "$WORK/root/var/lib/apt/lists/"* "$WORK/root/usr/share/doc" \
  "$WORK/root/usr/share/man" "$WORK/root/usr/share/locale"
tar -C "$WORK/root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV PYTHONDONTWRITEBYTECODE=1' \
  --change 'WORKDIR /tmp' \
  --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "[build_sandbox_image] built $IMAGE: $(docker image inspect "$IMAGE" --format '{{.Size}}') bytes"
