#!/bin/bash
# Boots a real systemd (Debian 12) in systemd-nspawn and runs a command against it.
# Adapted from the workplace recipe shared/recipes/systemd-in-nspawn.sh, which was seen to work here.
#
# Usage: container.sh UNIT_FILE APP_DIR -- COMMAND...
#   UNIT_FILE is bound read-only to /etc/systemd/system/<its name>; APP_DIR to /opt/app;
#   the host's node binary to /usr/local/bin/node. COMMAND runs on the host with $IN set to a
#   prefix that runs a command inside the container.
# Env: ROOTFS_CACHE (default /var/cache/nspawn-bookworm-upgrader) keeps the root file system between runs.
#
# Never start systemd any other way on these machines (unshare/chroot, or outside a container): a
# systemd started in the host's root cgroup takes over every process on the machine. nspawn with
# --register=no --keep-unit inside a private cgroup is safe.
set -euo pipefail
UNIT=$(readlink -f "$1"); APP=$(readlink -f "$2"); shift 2; [ "${1:-}" = -- ] && shift
ROOT=${ROOTFS_CACHE:-/var/cache/nspawn-bookworm-upgrader}
NODE=$(readlink -f "$(command -v node)")
command -v systemd-nspawn >/dev/null && command -v mmdebstrap >/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q systemd-container mmdebstrap; }
if [ ! -x "$ROOT/lib/systemd/systemd" ]; then
  rm -rf "$ROOT"; mkdir -p "$(dirname "$ROOT")"
  # no mirror argument: mmdebstrap uses this machine's apt sources
  mmdebstrap -q --variant=minbase --include=systemd,systemd-sysv,dbus,procps,passwd \
    --dpkgopt='path-exclude=/usr/share/{doc,man,locale,info}/*' bookworm "$ROOT"
  ln -sf /dev/null "$ROOT/etc/systemd/system/getty@tty1.service"
fi
# A private cgroup per run (this host has a v1/v2 hybrid hierarchy), so nspawn's subgroups stay ours.
CG=nspawn-upgrader-$$
HIERARCHIES=()
for h in systemd unified; do
  if [ -d "/sys/fs/cgroup/$h" ]; then mkdir "/sys/fs/cgroup/$h/$CG"; echo $$ > "/sys/fs/cgroup/$h/$CG/cgroup.procs"; HIERARCHIES+=("$h"); fi
done
if [ ${#HIERARCHIES[@]} -eq 0 ]; then mkdir "/sys/fs/cgroup/$CG"; echo $$ > "/sys/fs/cgroup/$CG/cgroup.procs"; fi
NS=
LOG=
cleanup() {
  if [ -n "$NS" ] && kill -0 "$NS" 2>/dev/null; then kill -TERM "$NS"; wait "$NS" || true; fi
  if [ ${#HIERARCHIES[@]} -eq 0 ]; then
    echo $$ > /sys/fs/cgroup/cgroup.procs; find "/sys/fs/cgroup/$CG" -depth -type d -exec rmdir {} + 2>/dev/null || true
  fi
  for h in "${HIERARCHIES[@]}"; do echo $$ > "/sys/fs/cgroup/$h/cgroup.procs"
    find "/sys/fs/cgroup/$h/$CG" -depth -type d -exec rmdir {} + 2>/dev/null || true; done
  if [ -n "$LOG" ]; then rm -f "$LOG"; fi
}
trap cleanup EXIT
LOG=$(mktemp -t upgrader-nspawn-log.XXXXXX)
# --volatile=overlay keeps the cached root file system pristine
systemd-nspawn -q -D "$ROOT" --volatile=overlay -b -M "u$$" --register=no --keep-unit --console=pipe \
  --bind-ro="$NODE":/usr/local/bin/node --bind-ro="$APP":/opt/app \
  --bind-ro="$UNIT":"/etc/systemd/system/$(basename "$UNIT")" >"$LOG" 2>&1 </dev/null &
NS=$!
L=
for _ in $(seq 200); do L=$(pgrep -P $NS -x systemd || true); [ -n "$L" ] && break; sleep 0.05; done
[ -n "$L" ] || { cat "$LOG"; echo "systemd did not start in the container" >&2; exit 1; }
for _ in $(seq 200); do [ -S "/proc/$L/root/run/systemd/private" ] && break; sleep 0.05; done
export IN="nsenter -t $L -a"   # machinectl / systemd-run -M need systemd on the host: not available
timeout 30 $IN systemctl is-system-running --wait >/dev/null || $IN systemctl --failed --no-pager || true
"$@"
