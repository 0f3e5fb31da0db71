#!/usr/bin/env bash
# Soak: a long mixed workload against a release build of `cowfs serve`, then checks.
#
#   sudo benches/soak.sh                # 20 minutes of workload
#   sudo benches/soak.sh --minutes 3    # a quick run
#
# One fresh pool in a temp dir, served by `cowfs serve` (control socket and admin
# token beside the pool, as install.sh does); branch `main` mounted via cowfs-ctl.
# In rounds of ROUND_SECS (60 s; 30 s for runs under 10 minutes), all at once:
#   - PostgreSQL 15 on `main` (initdb'd there, pgbench -i -s SCALE once), pgbench
#     -n -c 4 -j 2 for the whole round;
#   - file churn on branch `churn`: small files created, written, fsynced, renamed,
#     replaced, unlinked, scratch files that never persist, large files (4-16 MiB)
#     written whole and overwritten in place 4 KiB at a time; every file that must
#     persist (fsynced, directory fsynced) is checked against its checksum at the
#     end of every round and again after every daemon restart;
#   - branch cycles: `branch create` from main while pgbench runs, mount it, read
#     pg/PG_VERSION and pg/global/pg_control (pg_controldata checks its CRC),
#     unmount, delete; a snapshot (of main or churn, in turn) created and deleted,
#     every 5th one mounted and read first.
# Daemon restarts every few minutes over the first 60% of the run (so the last 40%
# is one long daemon lifetime, the one whose memory is judged), alternating:
#   - kill -9 of the daemon in the middle of a round (pgbench and churn running):
#     postgres killed, dead mounts lazily unmounted, `cowfs fsck --quick` must be
#     clean, daemon restarted, postgres must recover with every transaction it
#     acknowledged before the crash present and pg_amcheck clean, and every churn
#     file that was durable must be intact;
#   - SIGTERM at a round boundary after a clean postgres stop: the daemon must exit 0
#     with its mounts gone; fsck --quick clean; restart.
# The daemon's VmRSS is sampled every 10 s into rss.csv. Memory rule ("flat"): in the
# longest daemon lifetime, the mean of the last quarter of its samples is at most 15%
# (or 8 MiB, whichever is more) above the mean of its second quarter (the first
# quarter is warm-up: the node cache and page buffers filling).
# At the end: pg_amcheck, every branch/snapshot made by the cycles gone, postgres
# stopped, daemon SIGTERM'd (exit 0), full `cowfs fsck POOL` (reference counts, i.e.
# leaked blocks, plus checksums of every data block) must be clean. Exit 1 if any
# check failed. A summary block for the README is printed last.
#
# The pool has `cowfs init`'s default capacity (1 TiB, sparse) unless POOL_SIZE is set
# (e.g. 8G); the summary shows how far the pool file grew against the live data.
#
# Needs root, /dev/fuse, PostgreSQL 15 in $PGBIN, python3. Environment: SCALE (10),
# ROUND_SECS, CYCLE_PAUSE (0.5 s), POOL_SIZE, RUST_LOG (the daemon's; default its own),
# WORK (default: a new /tmp/cowfs-soak.XXXXXX), KEEP_POOL=1 keeps the pool file after
# a passing run (logs, rss.csv and, after a failure, the pool are kept in WORK).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
SCALE=${SCALE:-10}
POOL_SIZE=${POOL_SIZE:-}
CYCLE_PAUSE=${CYCLE_PAUSE:-0.5}
MINUTES=20
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=${2:?--minutes needs a number}; shift 2 ;;
    --minutes=*) MINUTES=${1#--minutes=}; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--minutes N]" >&2; exit 2 ;;
  esac
done
[[ $MINUTES =~ ^[1-9][0-9]*$ ]] || { echo "error: --minutes wants a positive integer" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "error: needs root (FUSE mounts, running postgres as postgres)" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "error: /dev/fuse is missing" >&2; exit 1; }
[ -x "$PGBIN/postgres" ] || { echo "error: PostgreSQL 15 not found in $PGBIN" >&2; exit 1; }
if [ -z "${ROUND_SECS:-}" ]; then
  if [ "$MINUTES" -lt 10 ]; then ROUND_SECS=30; else ROUND_SECS=60; fi
fi
NROUNDS=$(( (MINUTES * 60 + ROUND_SECS - 1) / ROUND_SECS ))
NRESTARTS=$(( MINUTES / 5 )); [ $NRESTARTS -lt 2 ] && NRESTARTS=2
# Restart i (1-based) happens in/after round round(i * 0.6 * NROUNDS / NRESTARTS);
# odd ones are kill -9 mid-round, even ones SIGTERM after the round.
declare -A RESTART_AT=()
for i in $(seq 1 $NRESTARTS); do
  k=$(( (i * 6 * NROUNDS + 5 * NRESTARTS) / (10 * NRESTARTS) ))
  [ $k -lt 1 ] && k=1
  if [ $((i % 2)) = 1 ]; then RESTART_AT[$k]=kill9; else RESTART_AT[$k]=term; fi
done

W=${WORK:-$(mktemp -d /tmp/cowfs-soak.XXXXXX)}
mkdir -p "$W/logs" "$W/bin" "$W/pgsock" "$W/main" "$W/churn" "$W/clone" "$W/snap"
chmod 755 "$W"; chmod 1777 "$W/pgsock" "$W/logs"
cd "$W"   # postgres tools run as postgres: a cwd it can enter
POOL=$W/pool SOCK=$W/pool.sock TOKEN=$W/pool.token CSV=$W/rss.csv
PGDATA=$W/main/pg
PORT=$(( 30000 + $$ % 20000 ))
export PGHOST=$W/pgsock PGPORT=$PORT PGDATABASE=postgres
MOUNTS=("$W/main" "$W/churn" "$W/clone" "$W/snap")

DAEMON_PID= PGPID= SAMPLER_PID= PGB_PID= CHURN_PID= LIFETIME=0 FINISHED=0
FAILS=()
START_TS=$(date +%s)

log() { echo "[$(date +%T) +$(( $(date +%s) - START_TS ))s] $*"; }
fail() { FAILS+=("$*"); log "CHECK FAILED: $*"; }
die() { FAILS+=("$*"); log "FATAL: $*"; exit 1; }
trap 'echo "soak.sh: line $LINENO: command failed: $BASH_COMMAND" >&2' ERR

ctl() { timeout 120 "$W/bin/cowfs-ctl" --socket "$SOCK" --token-file "$TOKEN" "$@"; }
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql "$@"; }
psql_q() { as_pg "$PGBIN/psql" -X -A -t -v ON_ERROR_STOP=1 -c "$1"; }
is_mounted() { awk -v d="$1" '$2 == d { f = 1 } END { exit !f }' /proc/mounts; }
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# wait_timeout PID SECS: wait for our child PID, at most SECS; sets WAIT_RC (124: still running).
wait_timeout() {
  local pid=$1 end=$(( $(date +%s) + $2 ))
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then WAIT_RC=124; return; fi
  WAIT_RC=0; wait "$pid" || WAIT_RC=$?
}

# ---- daemon ---------------------------------------------------------------------
start_daemon() {
  LIFETIME=$((LIFETIME + 1))
  # Own session: a Ctrl-C reaches the script (whose trap stops postgres first), not
  # the daemon. setsid execs (a background job is no group leader), so $! is cowfs.
  setsid "$W/bin/cowfs" serve "$POOL" --socket "$SOCK" \
    >>"$W/logs/cowfs.log" 2>&1 &
  DAEMON_PID=$!
  echo "$LIFETIME $DAEMON_PID" >"$W/daemon.tmp" && mv "$W/daemon.tmp" "$W/daemon"
  for _ in $(seq 1 300); do
    alive "$DAEMON_PID" || die "cowfs serve exited at start (see $W/logs/cowfs.log)"
    ctl list >/dev/null 2>&1 && break
    sleep 0.1
  done
  ctl list >/dev/null || die "cowfs serve does not answer on $SOCK"
  [ "$(cat /proc/$DAEMON_PID/comm)" = cowfs ] || die "pid $DAEMON_PID is not cowfs"
  log "daemon lifetime $LIFETIME: pid $DAEMON_PID"
}

mount_branches() {
  ctl mount main "$W/main" >/dev/null
  ctl mount churn "$W/churn" >/dev/null
  is_mounted "$W/main" && is_mounted "$W/churn" || die "main/churn not mounted"
}

umount_ours() {
  local m
  for m in "${MOUNTS[@]}"; do
    if is_mounted "$m"; then umount -l "$m" || true; fi
  done
}

# daemon_term: SIGTERM, it must exit 0 within 120 s and leave no mount behind.
daemon_term() {
  kill -TERM "$DAEMON_PID"
  wait_timeout "$DAEMON_PID" 120
  if [ "$WAIT_RC" = 124 ]; then
    fail "daemon did not exit within 120 s of SIGTERM"
    kill -9 "$DAEMON_PID"; wait "$DAEMON_PID" || true
  elif [ "$WAIT_RC" != 0 ]; then
    fail "daemon exited with $WAIT_RC after SIGTERM"
  fi
  DAEMON_PID=
  local m
  for m in "${MOUNTS[@]}"; do
    is_mounted "$m" && fail "$m still mounted after the daemon's SIGTERM exit"
  done
  umount_ours
}

daemon_kill9() {
  kill -9 "$DAEMON_PID"
  { wait "$DAEMON_PID"; } 2>/dev/null || true
  DAEMON_PID=
}

fsck_quick() {
  local rc=0
  RUST_LOG=warn "$W/bin/cowfs" fsck --quick "$POOL" >"$W/logs/fsck-quick-$LIFETIME.log" 2>&1 || rc=$?
  if [ $rc = 0 ]; then
    FSCK_QUICK_OK=$((FSCK_QUICK_OK + 1))
    log "fsck --quick: $(grep -m1 'tree nodes' "$W/logs/fsck-quick-$LIFETIME.log"): $(grep -v '^$' "$W/logs/fsck-quick-$LIFETIME.log" | tail -1)"
  else
    fail "fsck --quick after daemon lifetime $LIFETIME exited $rc: $(grep -m 3 -E 'CORRUPT|LEAK|problems|error' "$W/logs/fsck-quick-$LIFETIME.log" | tr '\n' ' ')"
  fi
}
FSCK_QUICK_OK=0

# ---- postgres -------------------------------------------------------------------
pg_start() {
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$W/logs/postgres.log" -w -t 600 start >/dev/null ||
    die "postgres did not start (see $W/logs/postgres.log)"
  PGPID=$(head -1 "$PGDATA/postmaster.pid")
}

pg_is_ours() { alive "$PGPID" && [ "$(cat /proc/"$PGPID"/comm 2>/dev/null)" = postgres ]; }

pg_stop_fast() {
  as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 300 stop >/dev/null || return 1
  PGPID=
}

# The postmaster and its children, by pid (the data directory may be on a dead mount).
pg_kill() {
  pg_is_ours || { PGPID=; return 0; }
  kill -STOP "$PGPID" 2>/dev/null || true
  local kids
  kids=$(pgrep -P "$PGPID" | tr '\n' ' ' || true)
  # shellcheck disable=SC2086
  kill -9 "$PGPID" $kids 2>/dev/null || true
  for _ in $(seq 1 100); do
    local left=0 p
    for p in $PGPID $kids; do kill -0 "$p" 2>/dev/null && left=1; done
    [ $left = 0 ] && break
    sleep 0.1
  done
  PGPID=
}

pg_amcheck_clean() {
  local out
  # Problems are reported on stdout (as in tests/postgres_branch.rs); notices go to stderr.
  out=$(as_pg "$PGBIN/pg_amcheck" --install-missing --heapallindexed --no-dependent-toast -d postgres \
    2>>"$W/logs/pg_amcheck.log") || { fail "pg_amcheck failed: $out"; return 0; }
  [ -z "$out" ] || fail "pg_amcheck reported: $out"
}

# ---- cleanup: always --------------------------------------------------------------
cleanup() {
  local rc=$?
  set +e
  trap - ERR
  if [ $FINISHED = 0 ]; then
    log "stopping (exit $rc): workers, postgres, mounts, daemon"
  fi
  alive "$SAMPLER_PID" && kill "$SAMPLER_PID" 2>/dev/null
  alive "$PGB_PID" && { kill -9 "$PGB_PID"; wait "$PGB_PID"; } 2>/dev/null
  alive "$CHURN_PID" && { kill -9 "$CHURN_PID"; wait "$CHURN_PID"; } 2>/dev/null
  if pg_is_ours; then
    if alive "$DAEMON_PID" && is_mounted "$W/main"; then
      timeout 120 setpriv --reuid=postgres --regid=postgres --init-groups \
        "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w -t 60 stop >/dev/null 2>&1
    fi
    pg_kill
  fi
  for m in "$W/clone" "$W/snap"; do is_mounted "$m" && umount -l "$m"; done
  if alive "$DAEMON_PID"; then
    kill -TERM "$DAEMON_PID"
    for _ in $(seq 1 300); do alive "$DAEMON_PID" || break; sleep 0.1; done
    alive "$DAEMON_PID" && kill -9 "$DAEMON_PID"
    wait "$DAEMON_PID" 2>/dev/null
  fi
  umount_ours
  for m in "${MOUNTS[@]}"; do is_mounted "$m" && echo "WARNING: $m is still mounted" >&2; done
  if [ $FINISHED = 0 ]; then
    echo "soak ABORTED after $(( $(date +%s) - START_TS )) s; work dir kept: $W" >&2
    for f in "${FAILS[@]}"; do echo "  - $f" >&2; done
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- the churn worker (one process per round) -------------------------------------
cat >"$W/churn.py" <<'PY'
"""File churn on a mounted branch. Files that must persist live in keep/ (small) and
big/ (large); a manifest outside the pool records their checksums, and before each
operation on them the old and new checksum ("pending"), so that after a crash either
state is accepted. Verifies at start (after a possible crash) and at the end.
Exit 0 ok, 1 verification failed, 2 I/O error during work (expected only when the
daemon is killed)."""
import hashlib, json, os, random, sys, time

root, manifest_path, seconds, seed, stats_path = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
rng = random.Random(seed)
KEEP, BIG, TMP = (os.path.join(root, d) for d in ("keep", "big", "tmp"))
MAX_SMALL, NBIG, NSUB = 2000, 3, 16
st = {"ops": 0, "fsyncs": 0, "bytes": 0, "creates": 0, "unlinks": 0, "renames": 0,
      "verified_files": 0, "verified_bytes": 0, "verifications": 0, "io_error": None}

def h(b): return hashlib.blake2b(b, digest_size=16).hexdigest()

try:
    with open(manifest_path) as f: man = json.load(f)
except FileNotFoundError:
    man = {"files": {}, "pending": {}, "seq": 0}

def save():
    tmp = manifest_path + ".tmp"
    with open(tmp, "w") as f: json.dump(man, f)
    os.replace(tmp, manifest_path)

def read(p):
    try:
        with open(os.path.join(root, p), "rb") as f: return f.read()
    except FileNotFoundError:
        return None

def verify(tolerant):
    errs = []
    files, pend = man["files"], man["pending"]
    if pend and not tolerant:
        errs.append(f"pending operations without a crash: {sorted(pend)[:5]}")
    for p in sorted(set(files) | set(pend)):
        b = read(p)
        got = None if b is None else h(b)
        ok = {files.get(p)} | set(pend.get(p, [])) if p in pend else {files.get(p)}
        if got not in ok:
            errs.append(f"{p}: checksum {got}, expected one of {sorted(map(str, ok))}")
        if b is not None:
            st["verified_files"] += 1; st["verified_bytes"] += len(b)
        if got is None: files.pop(p, None)
        else: files[p] = got
    for d in (KEEP, BIG):
        for dp, _, names in os.walk(d):
            for n in names:
                rel = os.path.relpath(os.path.join(dp, n), root)
                if rel not in files and rel not in pend:
                    errs.append(f"{rel}: present but deleted (or never made durable)")
    man["pending"] = {}
    st["verifications"] += 1
    return errs

def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try: os.fsync(fd)
    finally: os.close(fd)
    st["fsyncs"] += 1

def tmpname():
    man["seq"] += 1
    return os.path.join(TMP, f"t{seed}-{man['seq']}")

def write_new(path, data, sync=True):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(0, len(data), 1 << 20):
            os.write(fd, data[i:i + (1 << 20)])
        if sync:
            os.fsync(fd); st["fsyncs"] += 1
    finally:
        os.close(fd)
    st["bytes"] += len(data); st["creates"] += 1

def persist(rel, data):
    """Write data durably at rel (new or replacing): tmp file, fsync, rename, fsync dir."""
    man["pending"][rel] = [man["files"].get(rel), h(data)]
    t = tmpname()
    write_new(t, data)
    os.rename(t, os.path.join(root, rel)); st["renames"] += 1
    fsync_dir(os.path.dirname(os.path.join(root, rel)))
    man["files"][rel] = h(data); del man["pending"][rel]

def small_size():
    r = rng.random()
    return rng.randint(1, 16384) if r < 0.85 else rng.randint(16384, 262144)

def smalls(): return [p for p in man["files"] if p.startswith("keep/")]

def new_small_name():
    man["seq"] += 1
    return f"keep/d{rng.randrange(NSUB):02d}/f{seed}-{man['seq']}"

def op_create():
    persist(new_small_name(), os.urandom(small_size()))

def op_replace(s):
    persist(rng.choice(s), os.urandom(small_size()))

def op_unlink(s):
    p = rng.choice(s)
    man["pending"][p] = [man["files"][p], None]
    os.unlink(os.path.join(root, p)); st["unlinks"] += 1
    fsync_dir(os.path.dirname(os.path.join(root, p)))
    del man["files"][p]; del man["pending"][p]

def op_rename(s):
    p, q = rng.choice(s), new_small_name()
    v = man["files"][p]
    man["pending"][p] = [v, None]; man["pending"][q] = [None, v]
    os.rename(os.path.join(root, p), os.path.join(root, q)); st["renames"] += 1
    fsync_dir(os.path.dirname(os.path.join(root, q)))
    if os.path.dirname(p) != os.path.dirname(q):
        fsync_dir(os.path.dirname(os.path.join(root, p)))
    del man["files"][p]; man["files"][q] = v
    del man["pending"][p]; del man["pending"][q]

def op_scratch():
    """Files that never need to persist: create, write, some fsync, rename, read back, unlink."""
    names = []
    for _ in range(20):
        t, data = tmpname(), os.urandom(rng.randint(100, 8192))
        write_new(t, data, sync=rng.random() < 0.2)
        if rng.random() < 0.5:
            t2 = tmpname(); os.rename(t, t2); t = t2; st["renames"] += 1
        names.append((t, data))
    for t, data in rng.sample(names, 5):
        with open(t, "rb") as f:
            if f.read() != data:
                raise SystemExit(f"VERIFY: scratch file {t} reads back different data")
    for t, _ in names:
        os.unlink(t); st["unlinks"] += 1

bigdata = {}

def op_big_replace():
    rel = f"big/b{rng.randrange(NBIG)}"
    data = bytearray(os.urandom(rng.randint(4, 16) << 20))
    persist(rel, bytes(data))
    bigdata[rel] = data

def op_big_overwrite():
    rel = rng.choice(sorted(bigdata))
    data = bigdata[rel]
    off = rng.randrange(len(data) // 4096) * 4096
    chunk = os.urandom(4096)
    old = man["files"][rel]
    data[off:off + 4096] = chunk
    new = h(bytes(data))
    man["pending"][rel] = [old, new]
    fd = os.open(os.path.join(root, rel), os.O_WRONLY)
    try:
        os.pwrite(fd, chunk, off); os.fsync(fd); st["fsyncs"] += 1
    finally:
        os.close(fd)
    st["bytes"] += 4096
    man["files"][rel] = new; del man["pending"][rel]

def main():
    for d in [TMP, BIG] + [os.path.join(KEEP, f"d{i:02d}") for i in range(NSUB)]:
        os.makedirs(d, exist_ok=True)
    for n in os.listdir(TMP):
        os.unlink(os.path.join(TMP, n))
    errs = verify(tolerant=True)
    save()
    if errs:
        return errs
    for rel in list(man["files"]):
        if rel.startswith("big/"):
            bigdata[rel] = bytearray(read(rel))
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            s = smalls(); r = rng.random()
            if r < 0.25 or len(s) < 50: op_create() if len(s) < MAX_SMALL else op_replace(s)
            elif r < 0.45: op_replace(s)
            elif r < 0.63: op_unlink(s)
            elif r < 0.73: op_rename(s)
            elif r < 0.94: op_scratch()
            elif r < 0.985 and bigdata: op_big_overwrite()
            else: op_big_replace()
            st["ops"] += 1
    except OSError as e:
        st["io_error"] = str(e)
        return None
    finally:
        save()
    errs = verify(tolerant=False)
    save()
    return errs

errs = None
try:
    errs = main()
except SystemExit as e:
    errs = [str(e)]
st["persistent_files"] = len(man["files"])
st["verify_errors"] = errs or []
with open(stats_path, "a") as f: f.write(json.dumps(st) + "\n")
for e in (errs or [])[:20]: print("VERIFY:", e, file=sys.stderr)
print(json.dumps(st))
sys.exit(1 if errs else (2 if st["io_error"] else 0))
PY

# ---- branch cycles -----------------------------------------------------------------
CYCLES=0 SNAP_MOUNTS=0
cycle() {
  local n=$((CYCLES + 1)) out
  local b=soak-b$n s=soak-s$n
  ctl branch create "$b" --from main --mount "$W/clone" >/dev/null || die "cycle $n: branch create $b"
  [ "$(cat "$W/clone/pg/PG_VERSION")" = 15 ] || die "cycle $n: clone's pg/PG_VERSION is not 15"
  out=$("$PGBIN/pg_controldata" -D "$W/clone/pg" 2>&1) || die "cycle $n: pg_controldata on the clone: $out"
  if grep -qi 'crc' <<<"$out" || ! grep -q '^Database cluster state:' <<<"$out"; then
    die "cycle $n: clone's pg_control is damaged: $(grep -i -m2 'crc\|error' <<<"$out")"
  fi
  ctl unmount "$W/clone" >/dev/null || die "cycle $n: unmount clone"
  ctl delete "$b" >/dev/null || die "cycle $n: delete $b"
  local src=main; [ $((n % 2)) = 0 ] && src=churn
  ctl snapshot create "$s" --from "$src" >/dev/null || die "cycle $n: snapshot create $s"
  if [ $((n % 5)) = 0 ]; then
    ctl mount "$s" "$W/snap" >/dev/null || die "cycle $n: mount snapshot $s"
    if [ $src = main ]; then
      [ "$(cat "$W/snap/pg/PG_VERSION")" = 15 ] || die "cycle $n: snapshot's PG_VERSION"
    else
      ls -R "$W/snap/keep" >/dev/null || die "cycle $n: listing the churn snapshot"
    fi
    ctl unmount "$W/snap" >/dev/null || die "cycle $n: unmount snapshot"
    SNAP_MOUNTS=$((SNAP_MOUNTS + 1))
  fi
  ctl delete "$s" >/dev/null || die "cycle $n: delete $s"
  CYCLES=$n
}

# ---- setup -------------------------------------------------------------------------
log "soak: $MINUTES min = $NROUNDS rounds of ${ROUND_SECS}s; restarts: $(for k in $(printf '%s\n' "${!RESTART_AT[@]}" | sort -n); do printf '%s after/in round %s; ' "${RESTART_AT[$k]}" "$k"; done)work dir $W"
log "building (release)"
(cd "$ROOT" && cargo build --release -q --bin cowfs --bin cowfs-ctl)
# Private copies: others may rebuild target/release while the soak runs.
REL=${CARGO_TARGET_DIR:-$ROOT/target}/release
cp "$REL/cowfs" "$REL/cowfs-ctl" "$W/bin/"
"$W/bin/cowfs" init "$POOL" ${POOL_SIZE:+--size "$POOL_SIZE"} >/dev/null
start_daemon
ctl mount main "$W/main" >/dev/null
ctl branch create churn --from main --mount "$W/churn" >/dev/null
install -d -o postgres -g postgres -m 700 "$PGDATA"
log "initdb + pgbench -i -s $SCALE on main"
as_pg "$PGBIN/initdb" -D "$PGDATA" -A trust --data-checksums >"$W/logs/initdb.log" 2>&1 ||
  die "initdb failed (see $W/logs/initdb.log)"
cat >>"$PGDATA/postgresql.conf" <<EOF
port = $PORT
unix_socket_directories = '$W/pgsock'
listen_addresses = ''
fsync = on
synchronous_commit = on
full_page_writes = on
checkpoint_timeout = 2min
EOF
pg_start
t0=$(date +%s)
as_pg "$PGBIN/pgbench" -i -s "$SCALE" -q >"$W/logs/pgbench-init.log" 2>&1 || die "pgbench -i failed"
log "pgbench -i took $(( $(date +%s) - t0 )) s"

# RSS sampler: "unix time, seconds since start, daemon lifetime, pid, VmRSS KiB,
# RssAnon KiB" (from /proc/PID/status).
echo "unix_s,elapsed_s,lifetime,pid,rss_kib,anon_kib" >"$CSV"
(
  set +e
  while :; do
    read -r lt pid <"$W/daemon" 2>/dev/null
    read -r rss anon < <(awk '/^VmRSS:/ {r = $2} /^RssAnon:/ {a = $2} END {print r, a}' "/proc/$pid/status" 2>/dev/null)
    now=$(date +%s)
    [ -n "$rss" ] && echo "$now,$((now - START_TS)),$lt,$pid,$rss,$anon" >>"$CSV"
    sleep 10
  done
) &
SAMPLER_PID=$!

# churn_line LOG: the worker's stats (its last line, JSON) in words.
churn_line() {
  tail -1 "$1" | python3 -c '
import json, sys
try:
    s = json.loads(sys.stdin.read())
except ValueError:
    print("?"); sys.exit()
print("%d ops, %d fsyncs, %d durable files verified x%d%s" % (s["ops"], s["fsyncs"],
      s["persistent_files"], s["verifications"], " (I/O error: the crash)" if s["io_error"] else ""))'
}

# ---- rounds ------------------------------------------------------------------------
CHURN_BAD=0 PGB_TX=0 KILL9=0 TERMS=0 ROUNDS_DONE=0 CHURN_ROUNDS_OK=0
TPS_LIST=()
WORK_START=$(date +%s)

crash_and_recover() {
  local acked
  acked=$(psql_q "SELECT count(*) FROM pgbench_history")
  log "kill -9 of the daemon (pid $DAEMON_PID) mid-pgbench; $acked transactions acknowledged so far"
  daemon_kill9
  KILL9=$((KILL9 + 1))
  wait_timeout "$PGB_PID" 120; PGB_RC=$WAIT_RC; PGB_PID_DONE=$PGB_PID; PGB_PID=
  wait_timeout "$CHURN_PID" 120; CHURN_RC=$WAIT_RC; CHURN_PID=
  [ "$CHURN_RC" = 124 ] && die "churn worker hangs after the daemon was killed"
  [ "$PGB_RC" = 124 ] && die "pgbench hangs after the daemon was killed"
  [ "$CHURN_RC" = 1 ] && CHURN_BAD=$((CHURN_BAD + 1)) && fail "churn verification failed in the crash round (see $W/logs/churn-$r.log)"
  pg_kill
  umount_ours
  fsck_quick
  start_daemon
  mount_branches
  local t=$(date +%s)
  pg_start
  local after
  after=$(psql_q "SELECT count(*) FROM pgbench_history")
  log "postgres recovered in $(( $(date +%s) - t )) s: $after transactions (>= $acked acknowledged)"
  [ "$after" -ge "$acked" ] || fail "after kill -9: $after pgbench transactions, $acked were acknowledged"
  pg_amcheck_clean
  log "pg_amcheck clean after the crash"
  RECOVERIES="${RECOVERIES:-}$acked->$after "
}

clean_restart() {
  log "clean restart: postgres fast stop, SIGTERM to the daemon (pid $DAEMON_PID)"
  pg_stop_fast || die "postgres fast stop failed"
  daemon_term
  TERMS=$((TERMS + 1))
  fsck_quick
  start_daemon
  mount_branches
  pg_start
}

for r in $(seq 1 "$NROUNDS"); do
  kind=${RESTART_AT[$r]:-}
  rstart=$(date +%s)
  log "round $r/$NROUNDS${kind:+ ($kind)}"
  setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql \
    "$PGBIN/pgbench" -n -c 4 -j 2 -T "$ROUND_SECS" >"$W/logs/pgbench-$r.log" 2>&1 &
  PGB_PID=$!
  python3 "$W/churn.py" "$W/churn" "$W/manifest.json" "$ROUND_SECS" "$r" "$W/churn-stats.jsonl" \
    >"$W/logs/churn-$r.log" 2>&1 &
  CHURN_PID=$!
  crashed=0
  while alive "$PGB_PID" || alive "$CHURN_PID"; do
    if [ "$kind" = kill9 ] && [ $crashed = 0 ] && [ $(( $(date +%s) - rstart )) -ge $((ROUND_SECS / 2)) ]; then
      crash_and_recover
      crashed=1
      break
    fi
    [ $(( $(date +%s) - rstart )) -gt $((ROUND_SECS + 600)) ] && die "round $r: pgbench or churn still running 10 min after the round's end"
    cycle
    sleep "$CYCLE_PAUSE"
  done
  if [ $crashed = 0 ]; then
    wait_timeout "$PGB_PID" 60; PGB_RC=$WAIT_RC; PGB_PID_DONE=$PGB_PID; PGB_PID=
    wait_timeout "$CHURN_PID" 60; CHURN_RC=$WAIT_RC; CHURN_PID=
    [ "$PGB_RC" = 0 ] || fail "round $r: pgbench exited $PGB_RC (see $W/logs/pgbench-$r.log)"
    if [ "$CHURN_RC" = 0 ]; then CHURN_ROUNDS_OK=$((CHURN_ROUNDS_OK + 1)); else
      CHURN_BAD=$((CHURN_BAD + 1))
      fail "round $r: churn worker exited $CHURN_RC: $(grep -m3 -E 'VERIFY|Error' "$W/logs/churn-$r.log" | tr '\n' ' ')"
    fi
  fi
  tx=$(awk -F': ' '/^number of transactions actually processed/ {split($2, a, "/"); print a[1]+0}' "$W/logs/pgbench-$r.log")
  tps=$(awk '/^tps = / {print $3; exit}' "$W/logs/pgbench-$r.log")
  PGB_TX=$((PGB_TX + ${tx:-0}))
  [ -n "$tps" ] && [ $crashed = 0 ] && TPS_LIST+=("$tps")
  ROUNDS_DONE=$r
  log "round $r: pgbench ${tx:-?} tx (${tps:-?} TPS), churn $(churn_line "$W/logs/churn-$r.log"), $CYCLES branch cycles so far"
  if [ "$kind" = term ]; then clean_restart; fi
done
WORK_SECS=$(( $(date +%s) - WORK_START ))

# ---- final checks --------------------------------------------------------------------
log "final checks"
# One more churn pass with no work: every durable file checked once more.
python3 "$W/churn.py" "$W/churn" "$W/manifest.json" 0 0 "$W/churn-stats.jsonl" >"$W/logs/churn-final.log" 2>&1 ||
  { CHURN_BAD=$((CHURN_BAD + 1)); fail "final churn verification: $(grep -m3 VERIFY "$W/logs/churn-final.log" | tr '\n' ' ')"; }
HISTORY=$(psql_q "SELECT count(*) FROM pgbench_history")
pg_amcheck_clean
LEFT=$(ctl --json list | python3 -c 'import json,sys
j=json.load(sys.stdin)
items = j if isinstance(j, list) else next((v for v in j.values() if isinstance(v, list)), [])
print(" ".join(sorted(i.get("name", "?") for i in items if i.get("name") not in ("main", "churn"))))')
[ -z "$LEFT" ] || fail "branches left after the cycles: $LEFT"
pg_stop_fast || fail "final postgres fast stop failed"
kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=
daemon_term
POOL_ALLOC=$(du -h "$POOL" | cut -f1)iB
log "cowfs fsck $POOL (full: reference counts, tree, filesystem invariants, data checksums)"
FSCK_RC=0
RUST_LOG=warn "$W/bin/cowfs" fsck "$POOL" >"$W/logs/fsck-final.log" 2>&1 || FSCK_RC=$?
cat "$W/logs/fsck-final.log"
# fsck.rs: blocks whose space-map count exceeds their references are leaks, printed as
# "LEAK: N blocks counted but unreferenced" (exit 3); clean prints "clean" (exit 0).
LEAK_LINE=$(grep -m1 'blocks counted but unreferenced' "$W/logs/fsck-final.log" || true)
if [ $FSCK_RC = 0 ] && grep -qx clean "$W/logs/fsck-final.log"; then
  LEAKS="0 leaked blocks (no 'LEAK: N blocks counted but unreferenced' line; fsck exit 0, 'clean')"
else
  LEAKS=${LEAK_LINE:-"no leak line"}
  fail "cowfs fsck exited $FSCK_RC: $(grep -m5 -E 'CORRUPT|LEAK|problems|error' "$W/logs/fsck-final.log" | tr '\n' ' ')"
fi
log "$LEAKS"
FSCK_HEAD=$(grep -m1 'tree nodes' "$W/logs/fsck-final.log" || true)
LIVE_GIB=$(awk '/tree nodes/ {printf "%.2f", ($3 + $6) * 4096 / 2^30}' <<<"$FSCK_HEAD")

# ---- report -------------------------------------------------------------------------
RSS_REPORT=$(python3 - "$CSV" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
by = {}
for r in rows:
    by.setdefault(int(r["lifetime"]), []).append((int(r["elapsed_s"]), int(r["rss_kib"]) / 1024))
M = lambda x: f"{x:.0f}"
lines, verdict = [], "FAIL"
for lt, s in sorted(by.items()):
    v = [x for _, x in s]
    lines.append(f"  lifetime {lt}: {len(v)} samples over {s[-1][0] - s[0][0]} s, RSS min {M(min(v))} / max {M(max(v))} / last {M(v[-1])} MiB")
if by:
    lt, s = max(by.items(), key=lambda kv: kv[1][-1][0] - kv[1][0][0])
    v = [x for _, x in s]
    if len(v) >= 8:
        q = len(v) // 4
        q2, q4 = v[q:2 * q], v[len(v) - q:]
        m2, m4 = sum(q2) / len(q2), sum(q4) / len(q4)
        allowed = max(0.15 * m2, 8.0)
        flat = m4 - m2 <= allowed
        verdict = "flat" if flat else "GROWING"
        lines.append(f"  longest lifetime {lt}: 2nd-quarter mean {m2:.1f} MiB, last-quarter mean {m4:.1f} MiB "
                     f"({m4 - m2:+.1f} MiB, {100 * (m4 - m2) / m2:+.1f}%; allowed +{allowed:.1f}) -> {verdict}")
    else:
        verdict = "not judged"
        lines.append(f"  longest lifetime {lt}: only {len(v)} samples (< 8): not judged")
print(verdict)
print("\n".join(lines))
PY
)
RSS_VERDICT=$(head -1 <<<"$RSS_REPORT")
[ "$RSS_VERDICT" = GROWING ] && fail "daemon RSS grows (see the RSS lines)"
read -r CH_OPS CH_FSYNCS CH_GIB CH_VERIF CH_FILES <<<"$(python3 - "$W/churn-stats.jsonl" <<'PY'
import json, sys
s = [json.loads(l) for l in open(sys.argv[1])]
gib = sum(x["bytes"] for x in s) / 2**30
print(sum(x["ops"] for x in s), sum(x["fsyncs"] for x in s), f"{gib:.2f}",
      sum(x["verifications"] for x in s), s[-1]["persistent_files"])
PY
)"
TPS_MEAN=$(python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(f"{sum(v)/len(v):.0f}" if v else "?")' "${TPS_LIST[@]}")
TPS_RANGE=$(python3 -c 'import sys; v=[float(x) for x in sys.argv[1:]]; print(f"{min(v):.0f}-{max(v):.0f}" if v else "?")' "${TPS_LIST[@]}")
# Warnings and errors in the daemon's log (RUST_LOG, else its default filter), by message.
LOG_COUNTS=$(python3 - "$W/logs/cowfs.log" <<'PY'
import collections, re, sys
c = collections.Counter()
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"\[\S+ (WARN|ERROR) +(\S+)\] (.*)", line)
    if m:
        msg = re.sub(r"\d+", "N", m.group(3))[:70]
        c[(m.group(1), m.group(2), msg)] += 1
w = sum(n for k, n in c.items() if k[0] == "WARN")
e = sum(n for k, n in c.items() if k[0] == "ERROR")
top = "; ".join(f"{n} x {lvl} {tgt}: {msg}" for (lvl, tgt, msg), n in c.most_common(3))
print(f"{w} WARN, {e} ERROR lines" + (f" (most frequent: {top})" if c else ""))
PY
)
RESULT=PASS; [ ${#FAILS[@]} -gt 0 ] && RESULT=FAIL
FINISHED=1
umount_ours
[ "${KEEP_POOL:-0}" = 1 ] || [ $RESULT = FAIL ] || rm -f "$POOL"

cat <<EOF

==== soak summary ($RESULT) ====
command:   benches/soak.sh --minutes $MINUTES   ($(date +%F), release build)
machine:   $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB RAM, pool on $(findmnt -no FSTYPE -T "$W"), $(uname -r); load avg at end $(cut -d' ' -f1-3 /proc/loadavg)
duration:  ${WORK_SECS} s of workload in $ROUNDS_DONE rounds of ${ROUND_SECS} s; $(( $(date +%s) - START_TS )) s in all
pgbench:   scale $SCALE, 4 clients, -n, fsync on: $HISTORY transactions committed (pgbench_history rows; pgbench reported $PGB_TX), TPS per round mean $TPS_MEAN (range $TPS_RANGE)
churn:     $CH_OPS operations, $CH_FSYNCS fsyncs, $CH_GIB GiB written; $CH_FILES durable files at the end, all checked against their checksums $CH_VERIF times (end of each round, after each restart, at the end): $CHURN_BAD failed
branches:  $CYCLES cycles (branch create from main under pgbench + mount + read PG_VERSION/pg_control + unmount + delete; snapshot create + delete, $SNAP_MOUNTS snapshots mounted and read)
restarts:  $((KILL9 + TERMS)) ($KILL9 x kill -9 mid-pgbench, postgres recovered, acknowledged/after: ${RECOVERIES:-none}; $TERMS x SIGTERM, exit 0); fsck --quick clean after $FSCK_QUICK_OK of them
RSS:       $RSS_VERDICT (rule: last-quarter mean <= second-quarter mean + max(15%, 8 MiB), longest lifetime)
$(tail -n +2 <<<"$RSS_REPORT")
fsck:      $FSCK_HEAD; $LEAKS
pool file: $POOL_ALLOC allocated at the end (capacity ${POOL_SIZE:-default}), $LIVE_GIB GiB live (fsck's nodes + data blocks); logs and rss.csv in $W
daemon log: $LOG_COUNTS
EOF
if [ $RESULT = FAIL ]; then
  echo "FAILED checks:"
  for f in "${FAILS[@]}"; do echo "  - $f"; done
  exit 1
fi
