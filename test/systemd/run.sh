#!/bin/bash
# Runs the systemd scenarios in a freshly booted container, with the shipped unit (binary path substituted).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
[ -f "$REPO/dist/upgrader.cjs" ] || { echo "build first: npm run build" >&2; exit 1; }
# Host-only settings must not leak into the container through nsenter.
unset NODE_EXTRA_CA_CERTS NODE_OPTIONS
WORK=$(mktemp -d -t upgrader-systemd-unit.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
sed 's#/usr/local/lib/upgrader/upgrader.cjs#/opt/app/dist/upgrader.cjs#' "$REPO/systemd/upgrader@.service" > "$WORK/upgrader@.service"
# Not exec: the trap must run once the container is gone.
"$HERE/container.sh" "$WORK/upgrader@.service" "$REPO" -- "$HERE/scenarios.sh"
