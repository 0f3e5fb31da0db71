#!/usr/bin/env bash
# Build and install cowfs, then bring up a running mount on the embedded default:
# a pool file at ./data/pool served by `cowfs serve` (control socket
# ./data/pool.sock, admin token in ./data/pool.token) with branch `main` mounted on
# ./data/main.
#
#   ./install.sh            # install + mount (needs root for FUSE mounts)
#   ./install.sh --stop     # unmount and stop the daemon started here
#
# Binaries go to $PREFIX/bin (default /usr/local/bin); cargo builds them in
# $CARGO_TARGET_DIR if set. CONFIG=FILE starts the daemon with `--config FILE`
# (sanitize profiles, [control] settings; read at start, so --stop first to change
# it). The daemon logs to
# ./data/cowfs.log; its pid is in ./data/cowfs.pid.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/usr/local}
DATA=${DATA:-$PWD/data}
CONFIG=${CONFIG:-}

# The pid of the daemon started here, if it still runs. A pid file outlives a
# daemon killed with -9 (or a reboot), and its pid may be another program's by now.
daemon_pid() {
  local pid
  pid=$(cat "$DATA/cowfs.pid" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "cowfs serve $DATA/pool " || return 1
  echo "$pid"
}
# Is anything (even a dead FUSE mount, on which stat and mountpoint(1) can fail)
# mounted on $DATA/main?
main_mounted() { awk -v d="$DATA/main" '$2 == d { f = 1 } END { exit !f }' /proc/mounts; }

stop() {
  local pid
  if ! daemon_pid >/dev/null && ! main_mounted; then
    # Say where it looked: DATA defaults to ./data of the current directory.
    echo "no cowfs started with DATA=$DATA is running or mounted; nothing to stop"
    return
  fi
  if pid=$(daemon_pid); then
    kill -TERM "$pid"
    # Wait for the process, not for main's unmount: it unmounts every branch
    # mounted through it, then commits, then exits.
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "error: cowfs serve (pid $pid) is still running after 60 s; see $DATA/cowfs.log" >&2
      exit 1
    fi
  fi
  rm -f "$DATA/cowfs.pid"
  # Left by a daemon that was killed (-9): dead, nothing serves it.
  if main_mounted; then umount -l "$DATA/main"; fi
  echo "cowfs stopped"
}
if [ "${1:-}" = "--stop" ]; then stop; exit 0; fi

[ -e /dev/fuse ] || { echo "error: /dev/fuse is missing (load the fuse module)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: mounting needs root (run with sudo)" >&2; exit 1; }
if [ -n "$CONFIG" ]; then
  CONFIG=$(realpath -e "$CONFIG") || { echo "error: no config file $CONFIG" >&2; exit 1; }
fi

echo "building (release)…"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin cowfs --bin cowfs-ctl
install -d "$PREFIX/bin"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
install -m 0755 "$TARGET/release/cowfs" "$TARGET/release/cowfs-ctl" "$PREFIX/bin/"
echo "installed cowfs and cowfs-ctl in $PREFIX/bin"

mkdir -p "$DATA"
[ -e "$DATA/pool" ] || "$PREFIX/bin/cowfs" init "$DATA/pool"
ctl() { "$PREFIX/bin/cowfs-ctl" --socket "$DATA/pool.sock" --token-file "$DATA/pool.token" "$@"; }
if daemon_pid >/dev/null; then
  [ -z "$CONFIG" ] || echo "note: the daemon already runs; CONFIG applies when it starts (--stop first)" >&2
  if main_mounted; then echo "already mounted: $DATA/main"; exit 0; fi
else
  # The daemon detaches the dead mounts a killed one left (on $DATA/main too).
  RUST_LOG=${RUST_LOG:-info} nohup "$PREFIX/bin/cowfs" serve "$DATA/pool" \
    ${CONFIG:+--config "$CONFIG"} >>"$DATA/cowfs.log" 2>&1 &
  echo $! >"$DATA/cowfs.pid"
fi
# Wait for an answer, not for the socket file: a killed daemon leaves its socket.
for _ in $(seq 1 100); do ctl list >/dev/null 2>&1 && break; sleep 0.1; done
ctl list >/dev/null || { echo "daemon did not start; see $DATA/cowfs.log" >&2; exit 1; }
mkdir -p "$DATA/main"
ctl mount main "$DATA/main" >/dev/null
main_mounted || { echo "mount failed; see $DATA/cowfs.log" >&2; exit 1; }
echo "branch main of $DATA/pool is mounted on $DATA/main"
echo "control: export COWFS_SOCKET=$DATA/pool.sock COWFS_TOKEN=\$(cat $DATA/pool.token)"
# --stop finds the daemon through DATA: a DATA other than the default must be given again.
me=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
if [ "$DATA" = "$PWD/data" ]; then
  echo "stop:    $me --stop   (from $PWD)"
else
  echo "stop:    DATA=$DATA $me --stop"
fi
