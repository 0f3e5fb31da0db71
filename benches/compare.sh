#!/usr/bin/env bash
# Compare cowfs with the native filesystem (and optionally fuse-overlayfs, a FUSE
# peer) in one run, on the same machine and the same host filesystem. The whole set
# of measurements is repeated REPS times; within a repetition the targets run in
# turn, and the order rotates from one repetition to the next (native,cowfs,peer;
# cowfs,peer,native; ...) so a slow phase of the host does not always hit the same
# target. Prints the median of each figure for every target and the ratio
# target/native of the medians, then the min..max of each figure over the repetitions.
#
#   benches/compare.sh                 # native vs cowfs
#   benches/compare.sh --peer          # also fuse-overlayfs
#   SIZE=512M RUNTIME=5 NFILES=2000 PGTIME=10 REPS=1 benches/compare.sh   # quick run
#   HALT_POLL_NS=200000 benches/compare.sh --peer   # with guest halt polling, see below
#
# Env: SIZE RUNTIME NFILES PGSCALE PGTIME as below; REPS repetitions (default 3; with
# an even count the median is the mean of the two middle values); PGPORT base port
# for the PostgreSQL servers (each target and repetition gets its own port above it).
#
# HALT_POLL_NS: in a KVM guest with the haltpoll cpuidle driver, how long an idle vCPU
# polls before it halts (/sys/module/haltpoll/parameters/guest_halt_poll_ns; the
# upstream default is 200000, some VM images set 0). Every FUSE request wakes the
# daemon and every reply wakes the caller; on a halted vCPU each wake-up is a VM exit
# and an IPI, which is most of a metadata round trip. When set, the value applies to
# every target of the run (native too) and the previous value is restored at exit.
# The header line prints the value in effect either way.
#
# Needs root (mounts, drop_caches), fio, python3, PostgreSQL 15 binaries; .ci/run and
# the README list how to install them. Wall-clock figures on a shared 2-core VM are
# noisy: compare ratios from one run, not absolute numbers across runs, and look at
# the spread table before trusting a difference.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
COWFS=${COWFS:-${CARGO_TARGET_DIR:-$ROOT/target}/release/cowfs}
WORK=${WORK:-$ROOT/target/bench-work}
SIZE=${SIZE:-2G}
RUNTIME=${RUNTIME:-20}
NFILES=${NFILES:-20000}
PGSCALE=${PGSCALE:-10}
PGTIME=${PGTIME:-30}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
REPS=${REPS:-3}
PGPORT=${PGPORT:-55400}
RESULTS=$WORK/results.tsv
HALT_POLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns
HALT_POLL_NS=${HALT_POLL_NS:-}
HALT_POLL_SAVED=
PEER=0
[ "${1:-}" = "--peer" ] && PEER=1
case $REPS in '' | *[!0-9]* | 0) echo "REPS must be a positive integer, not '$REPS'" >&2; exit 2 ;; esac
case $PGPORT in '' | *[!0-9]*) echo "PGPORT must be a number, not '$PGPORT'" >&2; exit 2 ;; esac
case $HALT_POLL_NS in *[!0-9]*) echo "HALT_POLL_NS must be a number of nanoseconds, not '$HALT_POLL_NS'" >&2; exit 2 ;; esac
if [ -n "$HALT_POLL_NS" ] && [ ! -w $HALT_POLL ]; then
  echo "HALT_POLL_NS is set but $HALT_POLL is not there (not a KVM guest with the haltpoll driver)" >&2
  exit 2
fi

# Stop a PostgreSQL server left running in data directory $1, if any.
pg_stop() {
  [ -f "$1/postmaster.pid" ] || return 0
  su postgres -c "$PGBIN/pg_ctl -D $1 stop -m immediate" >/dev/null 2>&1 || true
}

DAEMON_PID=
PEER_PID=
cleanup() {
  local -
  set +e
  for d in "$WORK"/*/pg; do pg_stop "$d"; done
  for m in "$WORK/cowfs" "$WORK/peer"; do
    mountpoint -q "$m" && umount -l "$m"
  done
  for p in "$DAEMON_PID" "$PEER_PID"; do
    [ -n "$p" ] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
  done
  DAEMON_PID='' PEER_PID=''
  # a peer daemon left over by an earlier run of this script on the same $WORK
  pkill -f "fuse-overlayfs.*lowerdir=$WORK/lower," 2>/dev/null
  [ -n "$HALT_POLL_SAVED" ] && echo "$HALT_POLL_SAVED" >$HALT_POLL
  return 0
}
trap cleanup EXIT
# a signal ends the script through exit, so the EXIT trap runs for Ctrl-C and kill too
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

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
  # Daemons run in a session of their own (setsid): a Ctrl-C in the terminal must not
  # reach them and pull a mount away under a PostgreSQL server; cleanup stops them in
  # order. setsid does not fork here (an async child is no group leader), so $! is the
  # daemon's pid.
  RUST_LOG=warn setsid "$COWFS" mount "$WORK/pool" main "$WORK/cowfs" 2>"$WORK/cowfs.log" &
  DAEMON_PID=$!
  wait_mount "$WORK/cowfs"
  TARGETS=(native cowfs)
  if [ $PEER = 1 ]; then
    mkdir -p "$WORK/lower" "$WORK/upper" "$WORK/ovlwork" "$WORK/peer"
    # in the foreground (-f) as our child, so cleanup can stop it by pid
    setsid fuse-overlayfs -f -o "lowerdir=$WORK/lower,upperdir=$WORK/upper,workdir=$WORK/ovlwork,allow_other" \
      "$WORK/peer" 2>"$WORK/peer.log" &
    PEER_PID=$!
    wait_mount "$WORK/peer"
    TARGETS+=(peer)
  fi
}

# fio_fig bw|iops DIR JOBARGS... -> prints MiB/s (bw) or IOPS; returns fio's status
# when fio fails (128 when a Ctrl-C stopped it)
fio_fig() {
  local metric=$1 dir=$2 out
  shift 2
  out=$(fio --name=bench --directory="$dir" --ioengine=psync --output-format=json "$@" 2>/dev/null) || return
  python3 -c '
import json, sys
j = json.loads(sys.stdin.read())["jobs"][0]
side = j["write"] if j["write"]["io_bytes"] > 0 else j["read"]
print(round(side["bw"] / 1024, 1) if sys.argv[1] == "bw" else round(side["iops"], 1))' "$metric" <<<"$out"
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

# pgbench_tps DIR PORT -> prints TPS; returns the first failing step's status (su
# exits with 130 when a Ctrl-C stopped the command it ran)
pgbench_tps() {
  local d=$1/pg port=$2 tps='' rc=0 stop_rc=0
  { mkdir -p "$d" && chown postgres:postgres "$d" && chmod 700 "$d"; } || return
  su postgres -c "$PGBIN/initdb -D $d -A trust" >/dev/null || return
  su postgres -c "$PGBIN/pg_ctl -D $d -l $WORK/logs/pg-$port.log -o '-p $port -k /tmp -c fsync=on -c synchronous_commit=on' -w start" >/dev/null || return
  su postgres -c "$PGBIN/pgbench -h /tmp -p $port -i -s $PGSCALE -q postgres" >/dev/null 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    tps=$(su postgres -c "$PGBIN/pgbench -h /tmp -p $port -c 4 -j 2 -T $PGTIME postgres" 2>/dev/null |
      awk '/^tps/ && !n {print int($3); n = 1}') || rc=$?
  fi
  su postgres -c "$PGBIN/pg_ctl -D $d stop -m fast" >/dev/null || stop_rc=$?
  [ "$rc" != 0 ] || rc=$stop_rc
  [ -z "$tps" ] || echo "$tps"
  return "$rc"
}

# Remove everything a previous run left in target directory $1, stopping its
# PostgreSQL server first if one is still up.
reset_target() {
  pg_stop "$1/pg"
  rm -rf "$1/seq.dat" "$1/rw.dat" "$1/small" "$1/pg"
}

# record REP TARGET FIGURE VALUE (an empty value is reported as '?')
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$RESULTS"; }

# measure REP TARGET FIGURE COMMAND...: run the command, record the figure it prints.
# fio and su catch Ctrl-C and exit with 128 / 130 instead of dying of it, and then
# bash neither runs the INT trap nor stops; a status of 128 or more is taken as that
# and ends the script (the EXIT trap cleans up). Any other failure records '?'.
measure() {
  local rep=$1 t=$2 f=$3 v rc=0
  shift 3
  v=$("$@") || rc=$?
  if [ "$rc" -ge 128 ]; then
    echo "$f on $t interrupted (status $rc)" >&2
    exit 130
  fi
  [ "$rc" = 0 ] || echo "warning: $f on $t failed (status $rc)" >&2
  record "$rep" "$t" "$f" "$v"
}

# run_target REP TARGET PORT: the whole measurement set on one target
run_target() {
  local rep=$1 t=$2 port=$3 dir=$WORK/$2 c s u
  reset_target "$dir"
  measure "$rep" "$t" seqwrite fio_fig bw "$dir" --rw=write --bs=1M --size="$SIZE" --filename=seq.dat --end_fsync=1
  drop_caches
  measure "$rep" "$t" seqread fio_fig bw "$dir" --rw=read --bs=1M --size="$SIZE" --filename=seq.dat
  drop_caches
  measure "$rep" "$t" randread fio_fig iops "$dir" --rw=randread --bs=4k --size="$SIZE" --filename=seq.dat --runtime="$RUNTIME" --time_based
  rm -f "$dir/seq.dat"
  measure "$rep" "$t" randwrite fio_fig iops "$dir" --rw=randwrite --bs=4k --size=512M --filename=rw.dat --fsync=32 --runtime="$RUNTIME" --time_based
  rm -f "$dir/rw.dat"
  read -r c s u < <(small_files "$dir") || true   # a failure shows as '?', like fio's
  record "$rep" "$t" create "$c"
  record "$rep" "$t" stat "$s"
  record "$rep" "$t" unlink "$u"
  measure "$rep" "$t" pgbench pgbench_tps "$dir" "$port"
  reset_target "$dir"
}

run_all() {
  local n=${#TARGETS[@]} r k t
  : >"$RESULTS"
  for ((r = 0; r < REPS; r++)); do
    for ((k = 0; k < n; k++)); do
      t=${TARGETS[$(((k + r) % n))]}
      echo "-- rep $((r + 1))/$REPS: $t" >&2
      # a port of its own per repetition and target: no clash with a server that
      # is slow to go away or with its socket file
      run_target "$((r + 1))" "$t" "$((PGPORT + 1 + r * n + k))"
    done
  done
}

# Table 1: median per target and target/native of the medians (same layout as a
# single run used to print). Table 2: min..max over the repetitions.
report() {
  python3 - "$RESULTS" "$REPS" "${TARGETS[@]}" <<'PY'
import sys
from collections import defaultdict

path, reps, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
figs = [("seqwrite", "MiB/s"), ("seqread", "MiB/s"), ("randread", "IOPS"),
        ("randwrite", "IOPS"), ("create", "files/s"), ("stat", "files/s"),
        ("unlink", "files/s"), ("pgbench", "TPS")]
vals = defaultdict(list)
with open(path) as fh:
    for line in fh:
        _, t, f, v = line.rstrip("\n").split("\t")
        if v:
            vals[t, f].append(v)

def decimals(xs):
    return max(len(x.split(".")[1]) if "." in x else 0 for x in xs)

def median(xs):
    ys = sorted(float(x) for x in xs)
    m = len(ys) // 2
    return ys[m] if len(ys) % 2 else (ys[m - 1] + ys[m]) / 2

def cell(t, f, fn):
    xs = vals.get((t, f))
    return f"{fn(xs):.{decimals(xs)}f}" if xs else "?"

print(f"{'figure':<10} {'unit':<8}" + "".join(f" {t:>10}" for t in targets)
      + "".join(f" {t + '/native':>10}" for t in targets[1:]))
for f, unit in figs:
    meds = {t: cell(t, f, median) for t in targets}
    row = f"{f:<10} {unit:<8}" + "".join(f" {meds[t]:>10}" for t in targets)
    for t in targets[1:]:
        n, c = meds["native"], meds[t]
        ok = n != "?" and c != "?" and float(n) != 0
        row += f" {f'{float(c) / float(n):.2f}' if ok else '?':>10}"
    print(row)

print(f"\nmedians of REPS={reps} runs; spread below")
print(f"\n{'figure':<10} {'unit':<8}" + "".join(f" {t + ' min..max':>21}" for t in targets))
for f, unit in figs:
    row = f"{f:<10} {unit:<8}"
    for t in targets:
        xs = vals.get((t, f), [])
        lo, hi = cell(t, f, lambda v: min(map(float, v))), cell(t, f, lambda v: max(map(float, v)))
        c = f"{lo}..{hi}" if xs else "?"
        if len(xs) < reps:
            c += f" (n={len(xs)})"
        row += f" {c:>21}"
    print(row)

# A ratio against a native figure that itself swung is not a property of cowfs: say so
# (README, Performance: ext4 without a journal slows creates after mass deletes).
swung = []
for f, _ in figs:
    xs = [float(x) for x in vals.get(("native", f), [])]
    if len(xs) > 1 and min(xs) > 0 and max(xs) / min(xs) >= 2:
        swung.append(f"{f} {max(xs) / min(xs):.1f}x")
if swung:
    print("\nnative varied 2x or more between repetitions: " + ", ".join(swung)
          + "; the ratios of these figures hold for this run's medians only")
PY
}

setup
if [ -n "$HALT_POLL_NS" ]; then
  HALT_POLL_SAVED=$(cat $HALT_POLL)
  echo "$HALT_POLL_NS" >$HALT_POLL
fi
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, host fs $(stat -f -c %T "$WORK"), size=$SIZE runtime=${RUNTIME}s files=$NFILES pgbench scale=$PGSCALE ${PGTIME}s reps=$REPS, guest_halt_poll_ns=$(cat $HALT_POLL 2>/dev/null || echo n/a)"
run_all
report
