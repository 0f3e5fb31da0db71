#!/usr/bin/env bash
# Compare cowfs with the native filesystem (and optionally fuse-overlayfs, a FUSE
# peer) in one run, on the same machine and the same host filesystem. Prints each
# figure for every target and the ratio target/native.
#
#   benches/compare.sh                 # native vs cowfs
#   benches/compare.sh --peer          # also fuse-overlayfs
#   SIZE=512M RUNTIME=5 NFILES=2000 PGTIME=10 benches/compare.sh   # quick run
#
# Needs root (mounts, drop_caches), fio, python3, PostgreSQL 15 binaries; .ci/run and
# the README list how to install them. Wall-clock figures on a shared 2-core VM are
# noisy: compare ratios from one run, not absolute numbers across runs.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COWFS=${COWFS:-$ROOT/target/release/cowfs}
WORK=${WORK:-$ROOT/target/bench-work}
SIZE=${SIZE:-2G}
RUNTIME=${RUNTIME:-20}
NFILES=${NFILES:-20000}
PGSCALE=${PGSCALE:-10}
PGTIME=${PGTIME:-30}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PEER=0
[ "${1:-}" = "--peer" ] && PEER=1

DAEMON_PID=
cleanup() {
  set +e
  for d in "$WORK"/*/pg; do
    [ -f "$d/postmaster.pid" ] && su postgres -c "$PGBIN/pg_ctl -D $d stop -m immediate" >/dev/null 2>&1
  done
  for m in "$WORK/cowfs" "$WORK/peer"; do
    mountpoint -q "$m" && umount -l "$m"
  done
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
  pkill -f "fuse-overlayfs.*$WORK" 2>/dev/null
}
trap cleanup EXIT

wait_mount() {
  for _ in $(seq 1 100); do mountpoint -q "$1" && return 0; sleep 0.1; done
  echo "mount of $1 did not appear" >&2
  exit 1
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

setup() {
  (cd "$ROOT" && cargo build --release -q --bin cowfs)
  cleanup
  rm -rf "$WORK"
  mkdir -p "$WORK/native" "$WORK/cowfs" "$WORK/logs"
  chmod 1777 "$WORK/logs"
  "$COWFS" init "$WORK/pool" >/dev/null
  RUST_LOG=warn "$COWFS" mount "$WORK/pool" main "$WORK/cowfs" 2>"$WORK/cowfs.log" &
  DAEMON_PID=$!
  wait_mount "$WORK/cowfs"
  TARGETS=(native cowfs)
  if [ $PEER = 1 ]; then
    mkdir -p "$WORK/lower" "$WORK/upper" "$WORK/ovlwork" "$WORK/peer"
    fuse-overlayfs -o "lowerdir=$WORK/lower,upperdir=$WORK/upper,workdir=$WORK/ovlwork,allow_other" "$WORK/peer"
    wait_mount "$WORK/peer"
    TARGETS+=(peer)
  fi
}

# fio_fig DIR JOBARGS... -> prints MiB/s (bw) or IOPS depending on $METRIC
fio_fig() {
  local dir=$1; shift
  fio --name=bench --directory="$dir" --ioengine=psync --output-format=json "$@" 2>/dev/null |
    python3 -c '
import json, sys, os
j = json.load(sys.stdin)["jobs"][0]
m = os.environ["METRIC"]
side = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
print(round(side["bw"] / 1024, 1) if m == "bw" else round(side["iops"], 1))'
}

small_files() {
  python3 - "$1" "$NFILES" <<'PY'
import os, sys, time
d, n = os.path.join(sys.argv[1], "small"), int(sys.argv[2])
os.makedirs(d, exist_ok=True)
names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
t = time.perf_counter()
for p in names:
    fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, b"x" * 100); os.close(fd)
c = n / (time.perf_counter() - t)
os.sync()
t = time.perf_counter()
for p in names:
    os.stat(p)
s = n / (time.perf_counter() - t)
t = time.perf_counter()
for p in names:
    os.unlink(p)
u = n / (time.perf_counter() - t)
print(f"{c:.0f} {s:.0f} {u:.0f}")
PY
}

pgbench_tps() {
  local d=$1/pg port=$2
  mkdir -p "$d" && chown postgres:postgres "$d" && chmod 700 "$d"
  su postgres -c "$PGBIN/initdb -D $d -A trust" >/dev/null
  su postgres -c "$PGBIN/pg_ctl -D $d -l $WORK/logs/pg-$port.log -o '-p $port -k /tmp -c fsync=on -c synchronous_commit=on' -w start" >/dev/null
  su postgres -c "$PGBIN/pgbench -h /tmp -p $port -i -s $PGSCALE -q postgres" >/dev/null 2>&1
  su postgres -c "$PGBIN/pgbench -h /tmp -p $port -c 4 -j 2 -T $PGTIME postgres" 2>/dev/null |
    awk '/^tps/ {print int($3); exit}'
  su postgres -c "$PGBIN/pg_ctl -D $d stop -m fast" >/dev/null
}

declare -A R
run_all() {
  local port=55400
  for t in "${TARGETS[@]}"; do
    local dir=$WORK/$t
    [ "$t" = peer ] && dir=$WORK/peer
    echo "-- $t" >&2
    R[$t,seqwrite]=$(METRIC=bw fio_fig "$dir" --rw=write --bs=1M --size="$SIZE" --filename=seq.dat --end_fsync=1)
    drop_caches
    R[$t,seqread]=$(METRIC=bw fio_fig "$dir" --rw=read --bs=1M --size="$SIZE" --filename=seq.dat)
    drop_caches
    R[$t,randread]=$(METRIC=iops fio_fig "$dir" --rw=randread --bs=4k --size="$SIZE" --filename=seq.dat --runtime="$RUNTIME" --time_based)
    rm -f "$dir/seq.dat"
    R[$t,randwrite]=$(METRIC=iops fio_fig "$dir" --rw=randwrite --bs=4k --size=512M --filename=rw.dat --fsync=32 --runtime="$RUNTIME" --time_based)
    rm -f "$dir/rw.dat"
    read -r c s u < <(small_files "$dir")
    R[$t,create]=$c; R[$t,stat]=$s; R[$t,unlink]=$u
    port=$((port + 1))
    R[$t,pgbench]=$(pgbench_tps "$dir" $port)
    rm -rf "$dir/pg" "$dir/small"
  done
}

report() {
  local figs=(seqwrite seqread randread randwrite create stat unlink pgbench)
  local units=("MiB/s" "MiB/s" "IOPS" "IOPS" "files/s" "files/s" "files/s" "TPS")
  printf '%-10s %-8s' figure unit
  for t in "${TARGETS[@]}"; do printf ' %10s' "$t"; done
  for t in "${TARGETS[@]:1}"; do printf ' %10s' "$t/native"; done
  echo
  for i in "${!figs[@]}"; do
    local f=${figs[$i]}
    printf '%-10s %-8s' "$f" "${units[$i]}"
    for t in "${TARGETS[@]}"; do printf ' %10s' "${R[$t,$f]:-?}"; done
    for t in "${TARGETS[@]:1}"; do
      printf ' %10s' "$(python3 -c "n,c='${R[native,$f]:-0}','${R[$t,$f]:-0}'; print(f'{float(c)/float(n):.2f}' if float(n) else '?')")"
    done
    echo
  done
}

setup
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, host fs $(stat -f -c %T "$WORK"), size=$SIZE runtime=${RUNTIME}s files=$NFILES pgbench scale=$PGSCALE ${PGTIME}s"
run_all
report
