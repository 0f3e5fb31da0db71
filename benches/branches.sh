#!/usr/bin/env bash
# Control-plane figures through the daemon (issue 6), with a release build:
#
#  1. `cowfs-ctl branch create` end to end (CLI process start to exit, so it includes
#     the daemon's syncfs + commit of the parent): branch `main` served by
#     `cowfs serve`, mounted and busy (a writer appends 4 KiB + fsync in a loop the
#     whole time), CREATES timed creations (after WARMUP untimed ones) with main
#     holding SMALL_MIB (100 MiB), then BIG_MIB (8 GiB), then (after part 2, the big
#     files removed) SMALL_MIB again, so that drift in the machine's speed shows;
#     each new branch is deleted right after its creation (the delete is not
#     timed), so every size sees the same branch count. Before each size is
#     measured the host's write-back of the pool file is waited for (Dirty +
#     Writeback < 32 MiB). Median, p90, and the ratio big / small (small: before
#     and after pooled; big / small-before is printed too).
#  2. NBRANCH (1,000) branches of main (BIG_MIB of data, writer still running), all
#     kept: the create time of each, median of the first 100 vs the last 100; then
#     NMOUNT (50) of them mounted at once with `cowfs-ctl mount`, a 100 MiB file read
#     in each; the daemon's VmRSS/VmHWM after the creations and after the mounts;
#     then all unmounted and the branches deleted (delete times too).
#  3. The daemon's VmRSS sampled every second for the whole run (rss.csv, with the
#     phase); max per phase.
# At the end the daemon gets SIGTERM (must exit 0) and `cowfs fsck POOL` (full: every
# data block's checksum) must be clean.
#
#   sudo benches/branches.sh            # full: 8 GiB, 1,000 branches, 50 mounts
#   sudo benches/branches.sh --small    # quick: 1 GiB, 100 branches, 10 mounts
#
# Environment: SMALL_MIB (100), BIG_MIB (8192 / 1024 small), CREATES (50), WARMUP (5),
# NBRANCH (1000 / 100), NMOUNT (50 / 10), WRITER_PAUSE (0: seconds between the
# writer's fsyncs), WORK_BASE (/var/tmp; must be on a disk, not tmpfs), KEEP_LOGS=DIR
# (copy times, rss.csv and the daemon log there before the temp dir is removed),
# PREALLOCATE=1 (a pool of 2 x BIG_MIB + 4 GiB made with `cowfs init --preallocate`:
# see below).
# The pool file needs about 2 x BIG_MIB + 2 GiB of free space on WORK_BASE (the
# allocator reuses freed blocks after 2x the blocks in use; 2 x BIG_MIB + 5 GiB with
# PREALLOCATE=1); with less, BIG_MIB is reduced to what fits and the report says so.
# A sparse pool file makes every fsync into space the pool never used before also
# write the host filesystem's allocation metadata, more of it the larger the file
# has grown; the writer's fsyncs and the branch creation's commit pay it, so on a
# sparse pool the big-parent figure also measures the host. PREALLOCATE=1 takes
# that out (benches/RESULTS.md: `--preallocate`).
#
# Exit: 0 all checks and targets met; 1 error or a failed check (daemon exit, fsck);
# 3 the run completed but a performance target was missed (the table says which).
# Needs root, /dev/fuse, fio, python3. Figures on a shared 2-core VM are noisy.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SMALL=0
while [ $# -gt 0 ]; do
  case $1 in
    --small) SMALL=1; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--small]" >&2; exit 2 ;;
  esac
done
if [ $SMALL = 1 ]; then
  BIG_MIB=${BIG_MIB:-1024} NBRANCH=${NBRANCH:-100} NMOUNT=${NMOUNT:-10}
else
  BIG_MIB=${BIG_MIB:-8192} NBRANCH=${NBRANCH:-1000} NMOUNT=${NMOUNT:-50}
fi
SMALL_MIB=${SMALL_MIB:-100}
CREATES=${CREATES:-50}
WARMUP=${WARMUP:-5}
WRITER_PAUSE=${WRITER_PAUSE:-0}
WORK_BASE=${WORK_BASE:-/var/tmp}
# Targets (issue 6).
T_CREATE_MS=10 T_RATIO=1.2 T_NRATIO=1.2 T_RSS_BRANCHES_MIB=512 T_RSS_DATA_MIB=256

[ "$(id -u)" = 0 ] || { echo "error: needs root (FUSE mounts)" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "error: /dev/fuse is missing" >&2; exit 1; }
command -v fio >/dev/null || { echo "error: fio is not installed" >&2; exit 1; }
[ "$NMOUNT" -le "$NBRANCH" ] || { echo "error: NMOUNT > NBRANCH" >&2; exit 2; }

W=
DAEMON_PID= SAMPLER_PID= WRITER_PID=
START_TS=$(date +%s)
log() { echo "[$(date +%T) +$(( $(date +%s) - START_TS ))s] $*" >&2; }
die() { log "FATAL: $*"; exit 1; }

# Every mount under $W (the only mounts this script makes), deepest first.
our_mounts() {
  [ -n "$W" ] || return 0
  awk -v p="$W/" 'index($2, p) == 1 { print $2 }' /proc/mounts | sort -r
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$WRITER_PID" ] && kill -9 "$WRITER_PID" 2>/dev/null && wait "$WRITER_PID" 2>/dev/null
  local m
  for m in $(our_mounts); do umount -l "$m" 2>/dev/null || log "umount -l $m failed"; done
  if [ -n "$DAEMON_PID" ] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill -TERM "$DAEMON_PID"
    for _ in $(seq 1 150); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$DAEMON_PID" 2>/dev/null && { log "daemon ignored SIGTERM; SIGKILL"; kill -9 "$DAEMON_PID"; }
    wait "$DAEMON_PID" 2>/dev/null
  fi
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null && wait "$SAMPLER_PID" 2>/dev/null
  for m in $(our_mounts); do umount -l "$m" 2>/dev/null; done
  if [ -n "$W" ] && [ -d "$W" ]; then
    if [ -n "${KEEP_LOGS:-}" ]; then
      mkdir -p "$KEEP_LOGS" && cp "$W"/*.txt "$W"/*.csv "$W"/*.log "$KEEP_LOGS"/ 2>/dev/null
      log "logs copied to $KEEP_LOGS"
    fi
    if [ $rc != 0 ] && [ $rc != 3 ] && [ -f "$W/cowfs.log" ]; then
      echo "--- last lines of the daemon log ---" >&2; tail -20 "$W/cowfs.log" >&2
    fi
    if [ -n "$(our_mounts)" ]; then
      log "mounts remain under $W; not removing it"
    else
      rm -rf "$W"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'log "line $LINENO: command failed: $BASH_COMMAND"' ERR

log "building (release)"
(cd "$ROOT" && cargo build --release -q --bin cowfs --bin cowfs-ctl)

# ---- space --------------------------------------------------------------------
NOTE=
avail_mib=$(( $(df -P -k "$WORK_BASE" | awk 'NR == 2 { print $4 }') / 1024 ))
PREALLOCATE=${PREALLOCATE:-0}
case $PREALLOCATE in 0|1) ;; *) die "PREALLOCATE must be 0 or 1, not '$PREALLOCATE'" ;; esac
extra_mib=$(( PREALLOCATE == 1 ? 5120 : 2048 ))
need_mib=$(( 2 * BIG_MIB + extra_mib ))
if [ "$avail_mib" -lt "$need_mib" ]; then
  fit=$(( (avail_mib - extra_mib) / 2 / 1024 * 1024 ))
  [ "$fit" -ge 1024 ] || die "$WORK_BASE has $avail_mib MiB free; need at least $(( 2048 + extra_mib )) MiB"
  NOTE="only $avail_mib MiB free on $WORK_BASE: big parent reduced from $BIG_MIB to $fit MiB"
  log "$NOTE"
  BIG_MIB=$fit
fi
[ "$(stat -f -c %T "$WORK_BASE")" != tmpfs ] || die "$WORK_BASE is tmpfs; set WORK_BASE to a disk"

W=$(mktemp -d "$WORK_BASE/cowfs-branches.XXXXXX")
chmod 755 "$W"
mkdir -p "$W/bin" "$W/main" "$W/m"
# Own copies: other builds may replace target/release while this runs.
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
cp "$REL/cowfs" "$REL/cowfs-ctl" "$W/bin/"
COWFS=$W/bin/cowfs CTL=$W/bin/cowfs-ctl
POOL=$W/pool SOCK=$W/pool.sock
ctl() { timeout 120 "$CTL" --socket "$SOCK" --token-file "$W/pool.token" "$@"; }
phase() { echo "$1" >"$W/phase.tmp" && mv "$W/phase.tmp" "$W/phase"; log "phase: $1"; }

# ---- helpers (python) -------------------------------------------------------------
cat >"$W/h.py" <<'PY'
import os, subprocess, sys, time, signal

def pct(v, p):
    s = sorted(v)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))  # nearest rank
    return s[k]

def med(v):
    s = sorted(v); n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2

cmd = sys.argv[1]
if cmd == "writer":
    # Append 4 KiB + fsync in a loop; the file restarts at 16 MiB. The count of
    # fsyncs so far goes to COUNT every 0.2 s.
    path, count, pause = sys.argv[2], sys.argv[3], float(sys.argv[4])
    stop = False
    def on_term(*_):
        global stop
        stop = True
    signal.signal(signal.SIGTERM, on_term)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    buf = b"w" * 4095 + b"\n"
    n, last = 0, time.monotonic()
    while not stop:
        os.write(fd, buf); os.fsync(fd); n += 1
        if n % 4096 == 0:
            os.ftruncate(fd, 0)
        if pause:
            time.sleep(pause)
        now = time.monotonic()
        if now - last >= 0.2:
            with open(count + ".tmp", "w") as f: f.write(f"{n}\n")
            os.rename(count + ".tmp", count); last = now
    with open(count, "w") as f: f.write(f"{n}\n")
elif cmd == "create":
    # create CTL_PREFIX... : python h.py create OUT FIRST N WARMUP delete|keep -- ctl argv
    out, first, n, warm, mode = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
    ctl = sys.argv[sys.argv.index("--") + 1:]
    prefix = os.environ.get("PREFIX", "b")
    with open(out, "w") as f:
        for i in range(first, first + warm + n):
            name = f"{prefix}{i:04d}"
            t = time.perf_counter()
            r = subprocess.run(ctl + ["branch", "create", name, "--from", "main"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            dt = (time.perf_counter() - t) * 1e3
            if r.returncode:
                sys.exit(f"branch create {name}: exit {r.returncode}: {r.stderr.decode().strip()}")
            if i >= first + warm:
                f.write(f"{dt:.3f}\n")
            if mode == "delete":
                r = subprocess.run(ctl + ["delete", name], stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE)
                if r.returncode:
                    sys.exit(f"delete {name}: exit {r.returncode}: {r.stderr.decode().strip()}")
elif cmd == "delete":
    out, first, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    ctl = sys.argv[sys.argv.index("--") + 1:]
    prefix = os.environ.get("PREFIX", "b")
    with open(out, "w") as f:
        for i in range(first, first + n):
            name = f"{prefix}{i:04d}"
            t = time.perf_counter()
            r = subprocess.run(ctl + ["delete", name], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
            dt = (time.perf_counter() - t) * 1e3
            if r.returncode:
                sys.exit(f"delete {name}: exit {r.returncode}: {r.stderr.decode().strip()}")
            f.write(f"{dt:.3f}\n")
elif cmd == "stats":
    # stats FILE [FROM TO] -> "median p90 n"
    v = [float(x) for x in open(sys.argv[2])]
    if len(sys.argv) > 3:
        v = v[int(sys.argv[3]):int(sys.argv[4])]
    print(f"{med(v):.2f} {pct(v, 90):.2f} {len(v)}")
elif cmd == "div":
    print(f"{float(sys.argv[2]) / float(sys.argv[3]):.2f}")
elif cmd == "le":
    sys.exit(0 if float(sys.argv[2]) <= float(sys.argv[3]) else 1)
PY
py() { python3 "$W/h.py" "$@"; }

# ---- daemon, sampler, writer --------------------------------------------------------
rss_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
mib() { echo $(( ($1 + 512) / 1024 )); }

if [ "$PREALLOCATE" = 1 ]; then
  POOL_MIB=$(( 2 * BIG_MIB + 4096 ))
  log "init: a pool of $POOL_MIB MiB, preallocated"
  "$COWFS" init "$POOL" --size "${POOL_MIB}M" --preallocate >/dev/null 2>"$W/init.log"
  POOL_KIND="preallocated, $POOL_MIB MiB (cowfs init --preallocate)"
else
  "$COWFS" init "$POOL" >/dev/null 2>"$W/init.log"
  POOL_KIND="sparse file (cowfs init)"
fi
echo init >"$W/phase"
# Own session: a Ctrl-C reaches this script (whose trap stops the daemon), not the
# daemon. setsid execs (a background job is no group leader), so $! is cowfs.
RUST_LOG=${RUST_LOG:-warn} setsid "$COWFS" serve "$POOL" --socket "$SOCK" >>"$W/cowfs.log" 2>&1 &
DAEMON_PID=$!
for _ in $(seq 1 300); do
  kill -0 "$DAEMON_PID" 2>/dev/null || die "cowfs serve exited at start: $(tail -3 "$W/cowfs.log")"
  ctl list >/dev/null 2>&1 && break
  sleep 0.1
done
ctl list >/dev/null || die "cowfs serve does not answer on $SOCK"
[ "$(cat "/proc/$DAEMON_PID/comm")" = cowfs ] || die "pid $DAEMON_PID is not cowfs"

(
  trap 'exit 0' TERM
  echo "unix_s,phase,vmrss_kib" >"$W/rss.csv"
  while kill -0 "$DAEMON_PID" 2>/dev/null; do
    r=$(rss_kib "$DAEMON_PID" VmRSS 2>/dev/null || true)
    [ -n "$r" ] && echo "$(date +%s),$(cat "$W/phase"),$r" >>"$W/rss.csv"
    sleep 1
  done
) &
SAMPLER_PID=$!

ctl mount main "$W/main" >/dev/null
mountpoint -q "$W/main" || die "main is not mounted"

fill() { # fill NAME MIB: one file on main, 1 MiB writes, fsync at the end
  fio --name=fill --directory="$W/main" --filename="$1" --rw=write --bs=1M --size="$2M" \
    --ioengine=psync --end_fsync=1 --output-format=terse >/dev/null
}

log "pool $POOL (free on $WORK_BASE: $avail_mib MiB), daemon pid $DAEMON_PID, load $(cut -d' ' -f1-3 /proc/loadavg)"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# settle: wait (at most 180 s) until the host has written back what we wrote
# (Dirty + Writeback in /proc/meminfo under 32 MiB): a create measured while the
# kernel still flushes gigabytes of the pool file measures that flush.
settle() {
  local t0=$SECONDS d
  sync
  while :; do
    d=$(awk '/^(Dirty|Writeback):/ { s += $2 } END { print int(s / 1024) }' /proc/meminfo)
    [ "$d" -lt 32 ] || [ $((SECONDS - t0)) -ge 180 ] && break
    sleep 1
  done
  sleep 3
  log "settled in $((SECONDS - t0)) s (dirty + writeback: $d MiB)"
}

phase fill-small
fill seed.dat "$SMALL_MIB"
settle

python3 "$W/h.py" writer "$W/main/busy.log" "$W/writer.count" "$WRITER_PAUSE" &
WRITER_PID=$!
sleep 2
writer_n() { cat "$W/writer.count" 2>/dev/null || echo 0; }

# ---- 1. create with the small and the big parent --------------------------------------
declare -A R
measure_create() { # measure_create LABEL
  local w0 t0 w1 t1
  w0=$(writer_n) t0=$(date +%s%N)
  PREFIX=c$1- py create "$W/create-$1.txt" 0 "$CREATES" "$WARMUP" delete -- \
    "$CTL" --socket "$SOCK" --token-file "$W/pool.token"
  w1=$(writer_n) t1=$(date +%s%N)
  read -r R[$1,med] R[$1,p90] R[$1,n] < <(py stats "$W/create-$1.txt")
  R[$1,wrate]=$(( (w1 - w0) * 1000000000 / (t1 - t0) ))
  log "create with $1 parent: median ${R[$1,med]} ms, p90 ${R[$1,p90]} ms (writer ${R[$1,wrate]} fsync/s)"
}
phase create-small
measure_create small

phase fill-big
t0=$(date +%s%N)
left=$(( BIG_MIB - SMALL_MIB )) i=0
while [ $left -gt 0 ]; do
  n=$(( left > 1024 ? 1024 : left ))
  fill "data-$i.dat" "$n"
  left=$(( left - n )) i=$(( i + 1 ))
done
FILL_S=$(( ($(date +%s%N) - t0) / 1000000 ))
FILL_RATE=$(( (BIG_MIB - SMALL_MIB) * 1000 / (FILL_S > 0 ? FILL_S : 1) ))
log "filled main to $BIG_MIB MiB in $((FILL_S / 1000)) s ($FILL_RATE MiB/s, writer running)"
DU_MAIN=$(du -sm "$W/main" | cut -f1)
settle

phase create-big
measure_create big

# ---- 2. NBRANCH branches of main -----------------------------------------------------
phase create-many
py create "$W/create-many.txt" 0 "$NBRANCH" 0 keep -- "$CTL" --socket "$SOCK" --token-file "$W/pool.token"
K=$(( NBRANCH >= 1000 ? 100 : NBRANCH / 10 ))
read -r FIRST_MED FIRST_P90 _ < <(py stats "$W/create-many.txt" 0 "$K")
read -r LAST_MED LAST_P90 _ < <(py stats "$W/create-many.txt" $((NBRANCH - K)) "$NBRANCH")
read -r ALL_MED ALL_P90 _ < <(py stats "$W/create-many.txt")
NRATIO=$(py div "$LAST_MED" "$FIRST_MED")
sleep 2
RSS_MANY=$(rss_kib "$DAEMON_PID" VmRSS) HWM_MANY=$(rss_kib "$DAEMON_PID" VmHWM)
log "$NBRANCH branches: first $K median $FIRST_MED ms, last $K median $LAST_MED ms; RSS $(mib "$RSS_MANY") MiB, HWM $(mib "$HWM_MANY") MiB"

phase mount-many
step=$(( NBRANCH / NMOUNT ))
MOUNTED=()
t0=$(date +%s%N)
for j in $(seq 0 $((NMOUNT - 1))); do
  b=$(printf 'b%04d' $((j * step)))
  mkdir -p "$W/m/$b"
  ctl mount "$b" "$W/m/$b" >/dev/null
  MOUNTED+=("$b")
done
MOUNT_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
t0=$(date +%s%N)
for b in "${MOUNTED[@]}"; do
  cmp "$W/m/$b/seed.dat" "$W/main/seed.dat" || die "branch $b: seed.dat does not read back as main's"
done
READ_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
sleep 2
RSS_MOUNT=$(rss_kib "$DAEMON_PID" VmRSS) HWM_MOUNT=$(rss_kib "$DAEMON_PID" VmHWM)
log "$NMOUNT mounts in $MOUNT_MS ms, $SMALL_MIB MiB compared in each in $READ_MS ms; RSS $(mib "$RSS_MOUNT") MiB, HWM $(mib "$HWM_MOUNT") MiB"

phase unmount-delete
t0=$(date +%s%N)
for b in "${MOUNTED[@]}"; do ctl unmount "$W/m/$b" >/dev/null; done
UNMOUNT_MS=$(( ($(date +%s%N) - t0) / 1000000 ))
for b in "${MOUNTED[@]}"; do mountpoint -q "$W/m/$b" && die "$W/m/$b still mounted"; done
sleep 2
RSS_UNMOUNT=$(rss_kib "$DAEMON_PID" VmRSS)
py delete "$W/delete-many.txt" 0 "$NBRANCH" -- "$CTL" --socket "$SOCK" --token-file "$W/pool.token"
read -r DFIRST_MED _ _ < <(py stats "$W/delete-many.txt" 0 "$K")
read -r DLAST_MED _ _ < <(py stats "$W/delete-many.txt" $((NBRANCH - K)) "$NBRANCH")
sleep 2
RSS_DELETED=$(rss_kib "$DAEMON_PID" VmRSS)
NLEFT=$(ctl --json list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
[ "$NLEFT" = 1 ] || die "$NLEFT branches left after the deletes (want only main)"

# ---- 1 again: the small parent, after (brackets the big one in time) -----------------
phase create-small-after
rm -f "$W"/main/data-*.dat
settle
measure_create small-after
DU_AFTER=$(du -sm "$W/main" | cut -f1)
cat "$W/create-small.txt" "$W/create-small-after.txt" >"$W/create-small-both.txt"
read -r R[both,med] R[both,p90] _ < <(py stats "$W/create-small-both.txt")
RATIO=$(py div "${R[big,med]}" "${R[both,med]}")
RATIO_BEFORE=$(py div "${R[big,med]}" "${R[small,med]}")

# ---- stop, fsck -------------------------------------------------------------------
phase stop
WRITES=$(writer_n)
kill "$WRITER_PID"; wait "$WRITER_PID" || die "writer failed"
WRITER_PID=
WRITES=$(writer_n)
HWM_END=$(rss_kib "$DAEMON_PID" VmHWM)
POOL_MIB=$(( $(stat -c %s "$POOL") / 1048576 ))
POOL_DISK_MIB=$(du -m "$POOL" | cut -f1)
ctl unmount "$W/main" >/dev/null
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
kill -TERM "$DAEMON_PID"
rc=0
for _ in $(seq 1 600); do kill -0 "$DAEMON_PID" 2>/dev/null || break; sleep 0.2; done
kill -0 "$DAEMON_PID" 2>/dev/null && die "daemon did not exit within 120 s of SIGTERM"
wait "$DAEMON_PID" || rc=$?
DAEMON_PID=
[ $rc = 0 ] || die "daemon exited $rc after SIGTERM"
wait "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=
[ -z "$(our_mounts)" ] || die "mounts left after the daemon exited: $(our_mounts | tr '\n' ' ')"
log "fsck (full)"
rc=0
t0=$(date +%s)
RUST_LOG=warn "$COWFS" fsck "$POOL" >"$W/fsck.log" 2>&1 || rc=$?
FSCK_S=$(( $(date +%s) - t0 ))
[ $rc = 0 ] || { cat "$W/fsck.log" >&2; die "fsck exited $rc"; }
FSCK_LINE=$(grep -v '^$' "$W/fsck.log" | tail -1)

# ---- report -------------------------------------------------------------------------
# Max VmRSS (MiB) per phase and overall, from the 1 s samples.
read_phase_max() {
  awk -F, -v p="$1" 'NR > 1 && (p == "" || $2 == p) && $3 + 0 >= m { m = $3; n++ }
    END { if (n) print int((m + 512) / 1024); else print "-" }' "$W/rss.csv"
}
verdict() { # verdict VALUE LIMIT -> "ok" / "MISSED"
  if py le "$1" "$2"; then echo ok; else echo MISSED; fi
}
v1=$(verdict "${R[small,med]}" $T_CREATE_MS)
v1b=$(verdict "${R[small-after,med]}" $T_CREATE_MS)
v2=$(verdict "${R[big,med]}" $T_CREATE_MS)
v3=$(verdict "$RATIO" $T_RATIO)
v4=$(verdict "$NRATIO" $T_NRATIO)
v5=$(verdict "$(mib "$HWM_MANY")" $T_RSS_BRANCHES_MIB)
v6=$(verdict "$(mib "$HWM_MOUNT")" $T_RSS_BRANCHES_MIB)
DATA_MAX=0
for p in fill-big create-big create-many; do
  m=$(read_phase_max $p); [ "$m" != - ] && [ "$m" -gt "$DATA_MAX" ] && DATA_MAX=$m
done
v7=$(verdict "$DATA_MAX" $T_RSS_DATA_MIB)
MISSED=()
for v in "$v1" "$v1b" "$v2" "$v3" "$v4" "$v5" "$v6" "$v7"; do [ "$v" = ok ] || MISSED+=(x); done

GI="$BIG_MIB MiB"; [ $((BIG_MIB % 1024)) = 0 ] && GI="$((BIG_MIB / 1024)) GiB"
REV=${COWFS_REV:-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')}
if git -C "$ROOT" status --porcelain -- cowfs cowfs-ctl Cargo.lock 2>/dev/null | grep -q .; then
  REV="$REV + uncommitted changes"
fi
cat <<EOF

== cowfs control plane: benches/branches.sh$([ $SMALL = 1 ] && echo ' --small') ==
machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, host fs $(stat -f -c %T "$WORK_BASE") ($WORK_BASE); load avg at start $LOAD_START, at end $LOAD_END
date: $(date -u '+%Y-%m-%d %H:%M UTC'); run took $(( $(date +%s) - START_TS )) s; cowfs $REV
pool: $POOL_KIND
${NOTE:+NOTE: $NOTE
}parent 'main' busy the whole time: a writer appending 4 KiB + fsync in a loop (pause ${WRITER_PAUSE} s), $WRITES fsyncs in all
main holds: $SMALL_MIB MiB, then $BIG_MIB MiB (du of the mount: $DU_MAIN MiB; filled at $FILL_RATE MiB/s)

1. cowfs-ctl branch create, end to end (process start to exit; $CREATES timed after $WARMUP warm-up; each branch deleted after, untimed)
| parent data | median ms | p90 ms | writer fsync/s | target |
| --- | ---: | ---: | ---: | --- |
| $SMALL_MIB MiB (before filling) | ${R[small,med]} | ${R[small,p90]} | ${R[small,wrate]} | median < $T_CREATE_MS ms: $v1 |
| $GI | ${R[big,med]} | ${R[big,p90]} | ${R[big,wrate]} | median < $T_CREATE_MS ms: $v2 |
| $SMALL_MIB MiB (after, big files removed; du $DU_AFTER MiB) | ${R[small-after,med]} | ${R[small-after,p90]} | ${R[small-after,wrate]} | median < $T_CREATE_MS ms: $v1b |
| ratio big / small (small: before and after, pooled: median ${R[both,med]}) | $RATIO | | | <= $T_RATIO: $v3 |
| ratio big / small before only | $RATIO_BEFORE | | | |

2. $NBRANCH branches of main ($GI), all kept, then $NMOUNT mounted at once
| figure | value | target |
| --- | ---: | --- |
| create median, first $K | $FIRST_MED ms (p90 $FIRST_P90) | |
| create median, last $K | $LAST_MED ms (p90 $LAST_P90) | |
| ratio last / first | $NRATIO | <= $T_NRATIO: $v4 |
| create median, all $NBRANCH | $ALL_MED ms (p90 $ALL_P90) | |
| daemon VmRSS / VmHWM after $NBRANCH creates | $(mib "$RSS_MANY") / $(mib "$HWM_MANY") MiB | < $T_RSS_BRANCHES_MIB MiB: $v5 |
| mount $NMOUNT branches (cowfs-ctl mount, in turn) | $MOUNT_MS ms in all | |
| read + compare $SMALL_MIB MiB in each of the $NMOUNT | $READ_MS ms in all | |
| daemon VmRSS / VmHWM with $NMOUNT mounted, files read | $(mib "$RSS_MOUNT") / $(mib "$HWM_MOUNT") MiB | < $T_RSS_BRANCHES_MIB MiB: $v6 |
| unmount the $NMOUNT | $UNMOUNT_MS ms in all; VmRSS after: $(mib "$RSS_UNMOUNT") MiB | |
| delete median, first / last $K | $DFIRST_MED / $DLAST_MED ms | |
| daemon VmRSS after deleting all $NBRANCH | $(mib "$RSS_DELETED") MiB | |

3. daemon VmRSS, sampled every second (max per phase, MiB)
| phase | max VmRSS |
| --- | ---: |
EOF
for p in fill-small create-small fill-big create-big create-many mount-many unmount-delete create-small-after; do
  echo "| $p | $(read_phase_max $p) |"
done
cat <<EOF
| whole run (VmHWM at the end: $(mib "$HWM_END")) | $(read_phase_max "") |
| data-heavy phases (fill-big, create-big, create-many) | $DATA_MAX (< $T_RSS_DATA_MIB: $v7) |

pool file: $POOL_MIB MiB apparent, $POOL_DISK_MIB MiB on disk; daemon SIGTERM: exit 0
fsck (full, ${FSCK_S} s): $FSCK_LINE
EOF
if [ ${#MISSED[@]} -gt 0 ]; then
  echo "targets missed: ${#MISSED[@]} (see MISSED above)"
  exit 3
fi
echo "all targets met"
