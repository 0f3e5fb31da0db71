#!/usr/bin/env bash
# What agents' control operations cost production: PostgreSQL 15 runs pgbench (TPC-B
# like, SCALE 50, 4 clients, fsync on) on branch `main`, served by `cowfs serve` from a
# release build, twice for SECS seconds: alone, then while a loop of `cowfs-ctl branch
# create` (from main, flushing it), `diff main CLONE`, `usage` and `delete CLONE` runs
# beside it as fast as it can. Prints TPS and per-transaction latency (p50, p99,
# p99.9, max, from pgbench's log) of both runs, the number of control rounds and the
# median time of each control command. At
# the end the daemon gets SIGTERM (must exit 0) and `cowfs fsck` must be clean.
#
#   sudo benches/control_impact.sh
#
# Environment: SECS (30), SCALE (50), WORK_BASE (/var/tmp; on a disk, not tmpfs),
# PGBIN (/usr/lib/postgresql/15/bin). Needs root, /dev/fuse, PostgreSQL 15 (server and
# pgbench) and its `postgres` user. Figures on a shared 2-core VM are noisy: compare
# the two runs of one invocation.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
case ${1:-} in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "usage: $0" >&2; exit 2 ;;
esac
SECS=${SECS:-30} SCALE=${SCALE:-50}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
[ -x "$PGBIN/postgres" ] || { echo "no PostgreSQL server at $PGBIN" >&2; exit 1; }
command -v pgbench >/dev/null || { echo "pgbench is not installed" >&2; exit 1; }

cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml" --bin cowfs --bin cowfs-ctl
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
W=$(mktemp -d "${WORK_BASE:-/var/tmp}/cowfs-impact.XXXXXX")
PID= LOOP=
cleanup() {
  [ -n "$LOOP" ] && kill "$LOOP" 2>/dev/null && wait "$LOOP" 2>/dev/null
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/main/pg" stop -m immediate >/dev/null 2>&1 || true
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill "$PID"; wait "$PID" || true; fi
  umount -l "$W/main" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT

mkdir -p "$W/main" "$W/run"
RUST_LOG=warn "$BIN/cowfs" init "$W/pool" >/dev/null
RUST_LOG=warn "$BIN/cowfs" serve "$W/pool" 2>"$W/run/daemon.log" &
PID=$!
export COWFS_SOCKET=$W/pool.sock
ctl() { "$BIN/cowfs-ctl" --token-file "$W/pool.token" "$@"; }
for _ in $(seq 100); do ctl list >/dev/null 2>&1 && break; sleep 0.1; done
ctl mount main "$W/main" >/dev/null

# The cluster and pgbench's logs: the data directory on the branch, the socket and
# logs in a directory of the postgres user outside it.
mkdir "$W/main/pg"
chown postgres "$W/main/pg" "$W/run"
chmod 700 "$W/main/pg"
chmod 755 "$W"
runuser -u postgres -- "$PGBIN/initdb" -D "$W/main/pg" -A trust >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/main/pg" -l "$W/run/pg.log" -w start \
  -o "-c listen_addresses= -c unix_socket_directories=$W/run -c shared_buffers=128MB" >/dev/null
runuser -u postgres -- pgbench -h "$W/run" -i -s "$SCALE" -q postgres >/dev/null 2>&1

# One run of pgbench: "tps p50 p99 p99.9 max" (latencies in ms).
bench() {
  local tag=$1
  (cd "$W/run" && runuser -u postgres -- pgbench -h "$W/run" -c 4 -j 2 -T "$SECS" \
    -l --log-prefix="$W/run/lat-$tag" postgres >"$W/run/pgbench-$tag.out" 2>&1)
  local tps
  tps=$(awk '/^tps = / {print $3}' "$W/run/pgbench-$tag.out")
  cat "$W/run/lat-$tag".* | awk '{print $3}' | sort -n | awk -v tps="$tps" '
    {a[NR] = $1}
    END {printf "%.0f %.1f %.1f %.1f %.1f\n", tps, a[int(NR*0.5)]/1000,
         a[int(NR*0.99)]/1000, a[int(NR*0.999)]/1000, a[NR]/1000}'
}

quiet=$(bench quiet)
read -r q_tps q50 q99 q999 qmax <<<"$quiet"
# Run a control command, recording "NAME MILLISECONDS" (CLI start to exit).
timed() {
  local name=$1 t0 t1
  shift
  t0=$(date +%s%N)
  "$@" >/dev/null
  t1=$(date +%s%N)
  echo "$name $(((t1 - t0) / 1000000))" >>"$W/run/ops"
}
(
  i=0
  while :; do
    i=$((i + 1))
    timed create ctl branch create "c$i" --from main
    timed diff ctl diff main "c$i"
    timed usage ctl usage
    timed delete ctl delete "c$i"
    echo "$i" >"$W/run/rounds"
  done
) 2>"$W/run/loop.err" &
LOOP=$!
busy=$(bench busy)
read -r b_tps b50 b99 b999 bmax <<<"$busy"
# The loop runs until killed: one that ended by itself failed.
kill -0 "$LOOP" 2>/dev/null || { cat "$W/run/loop.err" >&2; echo "the control loop failed" >&2; exit 1; }
kill "$LOOP"; wait "$LOOP" 2>/dev/null || true
LOOP=
rounds=$(cat "$W/run/rounds" 2>/dev/null || echo 0)

printf '%-44s %8s %8s %8s %8s %8s\n' "pgbench on main, ${SECS} s" TPS "p50 ms" "p99 ms" "p99.9 ms" "max ms"
printf '%-44s %8s %8s %8s %8s %8s\n' "alone" "$q_tps" "$q50" "$q99" "$q999" "$qmax"
printf '%-44s %8s %8s %8s %8s %8s\n' "beside $rounds create+diff+usage+delete rounds" "$b_tps" "$b50" "$b99" "$b999" "$bmax"
echo "control commands during the busy run, median ms (CLI start to exit):"
for op in create diff usage delete; do
  awk -v op="$op" '$1 == op {print $2}' "$W/run/ops" | sort -n |
    awk -v op="$op" '{a[NR] = $1} END {if (NR) printf "  %-7s %4d ms (%d runs)\n", op, a[int((NR + 1) / 2)], NR}'
done

runuser -u postgres -- "$PGBIN/pg_ctl" -D "$W/main/pg" stop -m fast >/dev/null
ctl unmount "$W/main" >/dev/null
kill "$PID"
rc=0
wait "$PID" || rc=$?
PID=
[ "$rc" = 0 ] || { echo "daemon exited with $rc" >&2; exit 1; }
"$BIN/cowfs" fsck "$W/pool" >"$W/run/fsck.out" 2>&1 || { cat "$W/run/fsck.out" >&2; echo "fsck failed" >&2; exit 1; }
echo "daemon exit 0, fsck clean"
