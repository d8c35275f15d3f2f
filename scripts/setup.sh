#!/usr/bin/env bash
# Installs what registry-mirror's tests need on Debian 12: Deno (from npm) and the real registry
# tooling (CNCF Distribution, skopeo, podman, containerd, dockerd). Safe to run again.
set -euo pipefail

DENO_VERSION=2.9.6
PACKAGES=(docker-registry skopeo podman containerd docker.io busybox-static openssl curl ca-certificates
  uidmap iptables runc conmon tar gzip nginx wrk chromium)

if ! command -v deno >/dev/null || [ "$(deno --version | head -1 | cut -d' ' -f2)" != "$DENO_VERSION" ]; then
  npm install -g "deno@$DENO_VERSION"
fi

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
deno --version | head -1
