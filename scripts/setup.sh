#!/usr/bin/env bash
# Installs what registry-mirror's tests need on Debian 12: Deno (from npm), the real registry
# tooling (CNCF Distribution, skopeo, podman, containerd, dockerd) and Ceph's RGW (a real S3, run by
# scripts/rgw.sh). Safe to run again: it installs only what is missing. `--tools` skips Deno
# (`deno task test` runs it so, from a Deno already running, e.g. `npx -y deno@2.9.6 task test`).
set -euo pipefail

DENO_VERSION=2.9.6
PACKAGES=(docker-registry skopeo podman containerd docker.io busybox-static openssl curl ca-certificates
  uidmap iptables runc conmon tar gzip nginx wrk chromium ceph-mon ceph-osd radosgw ceph-common)

if [ "${1:-}" != "--tools" ]; then
  if ! command -v deno >/dev/null || [ "$(deno --version | head -1 | cut -d' ' -f2)" != "$DENO_VERSION" ]; then
    npm install -g "deno@$DENO_VERSION"
  fi
  deno --version | head -1
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null; then
      echo "setup.sh: missing Debian packages, and neither root nor sudo to install them:" >&2
      echo "  apt-get install ${missing[*]}" >&2
      exit 1
    fi
    SUDO=sudo
  fi
  echo "setup.sh: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
