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
# $CARGO_TARGET_DIR if set. The daemon logs to
# ./data/cowfs.log; its pid is in ./data/cowfs.pid.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")" && pwd)
PREFIX=${PREFIX:-/usr/local}
DATA=${DATA:-$PWD/data}

stop() {
  if [ -f "$DATA/cowfs.pid" ]; then
    kill -TERM "$(cat "$DATA/cowfs.pid")" 2>/dev/null || true
    for _ in $(seq 1 100); do mountpoint -q "$DATA/main" || break; sleep 0.1; done
    rm -f "$DATA/cowfs.pid"
  fi
  mountpoint -q "$DATA/main" && umount -l "$DATA/main"
  echo "cowfs stopped"
}
if [ "${1:-}" = "--stop" ]; then stop; exit 0; fi

[ -e /dev/fuse ] || { echo "error: /dev/fuse is missing (load the fuse module)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "error: mounting needs root (run with sudo)" >&2; exit 1; }

echo "building (release)…"
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin cowfs --bin cowfs-ctl
install -d "$PREFIX/bin"
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
install -m 0755 "$TARGET/release/cowfs" "$TARGET/release/cowfs-ctl" "$PREFIX/bin/"
echo "installed cowfs and cowfs-ctl in $PREFIX/bin"

mkdir -p "$DATA/main"
[ -e "$DATA/pool" ] || "$PREFIX/bin/cowfs" init "$DATA/pool"
if mountpoint -q "$DATA/main"; then
  echo "already mounted: $DATA/main"; exit 0
fi
RUST_LOG=${RUST_LOG:-info} nohup "$PREFIX/bin/cowfs" serve "$DATA/pool" \
  >>"$DATA/cowfs.log" 2>&1 &
echo $! >"$DATA/cowfs.pid"
for _ in $(seq 1 100); do [ -S "$DATA/pool.sock" ] && break; sleep 0.1; done
[ -S "$DATA/pool.sock" ] || { echo "daemon did not start; see $DATA/cowfs.log" >&2; exit 1; }
"$PREFIX/bin/cowfs-ctl" --socket "$DATA/pool.sock" --token-file "$DATA/pool.token" \
  mount main "$DATA/main" >/dev/null
mountpoint -q "$DATA/main" || { echo "mount failed; see $DATA/cowfs.log" >&2; exit 1; }
echo "branch main of $DATA/pool is mounted on $DATA/main"
echo "control: export COWFS_SOCKET=$DATA/pool.sock COWFS_TOKEN=\$(cat $DATA/pool.token)"
echo "stop:    ./install.sh --stop"
