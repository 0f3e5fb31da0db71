#!/usr/bin/env bash
# cowfs sanitize hook for a MariaDB (or MySQL-format) data directory in the
# clone, at $COWFS_CLONE_DIR/mysql.
#
# InnoDB keeps old values where SQL cannot reach them: an UPDATE leaves the
# previous row in the undo log, the redo log holds both for a while, freed pages
# and the doublewrite buffer keep them until overwritten, and the binary and
# relay logs keep every statement. So this hook does not publish the data
# directory it rewrote. It
# 1. starts a private server on the clone (no networking, no grant checks, no
#    replication, no event scheduler), after removing the parent's pid file;
#    with the clone's binary log if its data directory has one: a branch taken
#    while a transaction was committing holds it prepared in InnoDB, and crash
#    recovery settles it from the binary log (without it the server refuses to
#    start); then rolls back prepared XA transactions (not committed when the
#    branch was taken; their row locks would block the site SQL);
# 2. saves the triggers' definitions, then drops the triggers (an audit trigger
#    would copy the original values into another table);
# 3. runs the site's SQL ($MARIADB_SANITIZE_SQL) in $MARIADB_SANITIZE_DB with
#    @cowfs_key = $COWFS_HOOK_KEY for deterministic pseudonyms;
# 4. initializes a fresh data directory (mariadb-install-db), starts a second
#    private server on it and streams a logical dump of the sanitized databases
#    (tables, views, routines, events), the accounts and grants, and the time
#    zone tables into it, then the saved triggers;
# 5. stops both and replaces the clone's data directory with the fresh one.
# The fresh server never sees an original value, so its files hold none; the
# original data directory's files are gone from the clone (they stay the
# parent's). Not copied: the engine-independent statistics (mysql.column_stats,
# which hold column values: run ANALYZE TABLE ... PERSISTENT FOR ALL on the
# clone if you use them), the history rows of system-versioned tables (old
# values; their current rows are copied), plugins installed with INSTALL PLUGIN and loadable
# functions (mysql.plugin, mysql.func: install them again), binary and relay
# logs, replication settings, and other files in the data directory.
#
# The clone's content: it may come from a branch someone other than an admin
# wrote, so it is not trusted to be benign:
# - the servers read no option file (--no-defaults): options a clone could set
#   (init_file, plugin_load, secure_file_priv...) do not apply; give the
#   options the data directory needs (innodb_page_size, lower_case_table_names)
#   in $MARIADB_SERVER_OPTS;
# - tables whose files live outside the data directory (InnoDB's DATA
#   DIRECTORY, .isl files; MyISAM symlinks) would be the parent's files: such a
#   clone is refused;
# - names are quoted as identifiers wherever the hook builds a statement; a
#   database whose name starts with '-' (mariadb-dump would take it for an
#   option) or holds a line break (the list of databases is line-based) is
#   refused;
# - the binary log index must name files in the data directory ("./NAME.000001"
#   on every line), or the clone is refused: the server writes where it points.
# NOT covered: the site SQL runs with every privilege and evaluates the clone's
# own stored functions, views and generated columns where the schema uses them.
# Run this hook only on clones whose schema you trust.
#
# Environment: COWFS_CLONE_DIR, COWFS_HOOK_KEY (from cowfs);
# MARIADB_SANITIZE_SQL (path, relative to this script's directory if not
# absolute; default mariadb-sanitize.sql); MARIADB_SANITIZE_DB (required: the
# database the SQL runs in); MARIADB_DATADIR (relative to the clone; default
# mysql); MARIADB_SERVER_OPTS (extra server options, space-separated).
set -euo pipefail
shopt -s inherit_errexit

: "${COWFS_CLONE_DIR:?run by cowfs: COWFS_CLONE_DIR is not set}"
: "${COWFS_HOOK_KEY:?run by cowfs: COWFS_HOOK_KEY is not set}"
: "${MARIADB_SANITIZE_DB:?set MARIADB_SANITIZE_DB to the database the sanitize SQL runs in}"
DATA="$COWFS_CLONE_DIR/${MARIADB_DATADIR:-mysql}"
HERE=$(cd "$(dirname "$0")" && pwd)
SQL=${MARIADB_SANITIZE_SQL:-mariadb-sanitize.sql}
case "$SQL" in /*) ;; *) SQL="$HERE/$SQL" ;; esac
read -r -a EXTRA_OPTS <<<"${MARIADB_SERVER_OPTS:-}"

[ -d "$DATA/mysql" ] || { echo "no MariaDB data directory at $DATA"; exit 1; }
[ -r "$SQL" ] || { echo "sanitize SQL $SQL is not readable"; exit 1; }
command -v mariadbd >/dev/null || { echo "mariadbd is not installed"; exit 1; }
case "$COWFS_HOOK_KEY" in *[!0-9a-f]*) echo "COWFS_HOOK_KEY is not hex"; exit 1 ;; esac

# Files of the clone's tables must be the clone's: a symlink or an InnoDB link
# file (.isl) names a path outside the data directory, which in the clone is
# still the parent's own file. A server started here would write into it.
CLONE_REAL=$(realpath -e "$COWFS_CLONE_DIR")
DATA_REAL=$(realpath -e "$DATA")
case "$DATA_REAL/" in
  "$CLONE_REAL"/*) ;;
  *) echo "$DATA leads outside the clone ($DATA_REAL): refusing"; exit 1 ;;
esac
outside=$(find "$DATA_REAL" \( -type l -o -name '*.isl' \) -print -quit)
[ -z "$outside" ] || { echo "$outside: a table file outside the data directory (symlink or DATA DIRECTORY); in the clone it is the parent's, refusing"; exit 1; }

OWNER=$(stat -c %U "$DATA")
RUN=$(mktemp -d /tmp/cowfs-mariadb-hook.XXXXXX)
chown "$OWNER" "$RUN"
chmod 700 "$RUN"
# The fresh data directory, beside the clone's (same file system: a rename
# replaces it), in a directory only the server's user enters.
NEW_PARENT=$(mktemp -d "$COWFS_CLONE_DIR/.cowfs-mariadb.XXXXXX")
chown "$OWNER" "$NEW_PARENT"
NEW="$NEW_PARENT/data"
mkdir "$NEW"
chown "$OWNER" "$NEW"
chmod --reference="$DATA" "$NEW"

# Server pids by name (orig, fresh), for the cleanup.
declare -A PIDS=()
# stop_server NAME: a clean shutdown (SIGTERM), within 300 s, or a kill and a
# failure; fails too if the server exits with a status other than 0.
stop_server() {
  local pid=${PIDS[$1]:-} rc=0
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 1500); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "the $1 server did not stop in 300 s"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  unset "PIDS[$1]"
  [ "$rc" = 0 ] || echo "the $1 server exited with status $rc"
  return "$rc"
}
cleanup() {
  local rc=$? n
  for n in "${!PIDS[@]}"; do
    kill -KILL "${PIDS[$n]}" 2>/dev/null || true
    wait "${PIDS[$n]}" 2>/dev/null || true
  done
  if [ "$rc" != 0 ]; then
    for n in orig fresh; do
      [ -f "$RUN/$n.err" ] || continue
      echo "--- $n server log (tail) ---"
      tail -n 30 "$RUN/$n.err"
    done
  fi
  rm -rf "$RUN" "$NEW_PARENT"
}
trap cleanup EXIT

# start NAME DATADIR [OPTION...]: a private server, started directly (not through
# mysqld_safe), so that a timeout kill of the hook's process group stops it too.
start() {
  local name=$1 dir=$2
  shift 2
  mariadbd --no-defaults --user="$OWNER" --datadir="$dir" \
    --socket="$RUN/$name.sock" --pid-file="$RUN/$name.pid" --log-error="$RUN/$name.err" \
    --tmpdir="$RUN" --skip-networking --skip-grant-tables \
    --skip-slave-start --event-scheduler=DISABLED --secure-file-priv="$RUN" \
    --innodb-buffer-pool-size=128M "$@" "${EXTRA_OPTS[@]}" >/dev/null 2>&1 &
  PIDS[$name]=$!
  for _ in $(seq 1 600); do
    if [ -S "$RUN/$name.sock" ] && sql "$name" -e "SELECT 1" >/dev/null 2>&1; then return 0; fi
    kill -0 "${PIDS[$name]}" 2>/dev/null || { echo "the $name server did not start"; exit 1; }
    sleep 0.2
  done
  echo "the $name server did not answer in 120 s"
  exit 1
}
sql() { # NAME, then the client's arguments
  local n=$1
  shift
  mariadb --no-defaults --socket="$RUN/$n.sock" --batch --skip-column-names "$@"
}
dump() { # NAME, then mariadb-dump's arguments
  local n=$1
  shift
  mariadb-dump --no-defaults --socket="$RUN/$n.sock" --hex-blob "$@"
}

# The parent's pid file came along with the clone (its server may be running on
# this machine); so did its logs, binary logs and replication state, which the
# fresh data directory does not take.
rm -f "$DATA"/*.pid

# The clone's binary log, if its data directory has one: an index file (not a
# relay log's) whose entries name files beside it ("./NAME.000001"). Its writes
# go into the data directory that is thrown away, so every entry must be a
# plain file name there: the server reads the last one and rewrites its header
# (crash recovery), and writes its new logs beside --log-bin (a `*` in a shell
# pattern also matches `/`: "./../NAME.000001" put them in the clone, outside
# the data directory, with the site SQL's statements and @cowfs_key).
BINLOG=(--skip-log-bin)
for idx in "$DATA"/*.index; do
  [ -f "$idx" ] || continue
  case "${idx##*/}" in *relay*) continue ;; esac
  first=$(head -n 1 "$idx")
  case "$first" in
    ./*.[0-9][0-9][0-9][0-9][0-9][0-9]) ;;
    *) continue ;;
  esac
  name=${first#./}
  name=${name%.*}
  case "$name" in
    */*) echo "$idx: entry $first is not a file of the data directory: refusing"; exit 1 ;;
  esac
  while IFS= read -r entry || [ -n "$entry" ]; do
    case "$entry" in
      "./$name".[0-9][0-9][0-9][0-9][0-9][0-9]) ;;
      *) echo "$idx: entry $entry is not a file of the data directory: refusing"; exit 1 ;;
    esac
  done <"$idx"
  BINLOG=(--log-bin="$DATA/$name" --log-bin-index="$idx")
  echo "settling transactions with the clone's binary log $name"
  break
done

echo "starting a server on the clone"
start orig "$DATA" "${BINLOG[@]}"

# Prepared XA transactions (an external transaction manager had not committed
# them when the branch was taken) survive the restart with their row locks: the
# site SQL would wait for them until its lock wait timeout. They were not
# committed, so the clone does not commit them either. FORMAT='SQL' gives each
# XID as hex literals, ready for XA ROLLBACK.
sql orig -e "XA RECOVER FORMAT='SQL'" >"$RUN/xa"
xa=0
while IFS=$'\t' read -r _ _ _ xid; do
  sql orig -e "XA ROLLBACK $xid" </dev/null
  xa=$((xa + 1))
done <"$RUN/xa"
[ "$xa" = 0 ] || echo "rolled back $xa prepared XA transaction(s) of the clone"

# The clone's own databases, one per line. A name holding a line break would be
# read as two names (with `x` beside it, "x<newline>mysql" named the
# `mysql` database, whose dump holds the column statistics): refused.
lf=$(sql orig -e "SELECT COUNT(*) FROM information_schema.schemata WHERE LOCATE('\n', schema_name) > 0")
[ "$lf" = 0 ] || { echo "the clone has a database whose name holds a line break: refusing"; exit 1; }
sql orig -e "SELECT schema_name FROM information_schema.schemata
              WHERE schema_name NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')
              ORDER BY 1" --raw >"$RUN/databases" ||
  { echo "could not list the databases of the clone"; exit 1; }
mapfile -t DBS <"$RUN/databases"
# (Not `printf | grep -q`: under pipefail, grep's early exit kills printf with
# SIGPIPE once the names outgrow a pipe's buffer.)
found=
for d in "${DBS[@]}"; do
  [ "$d" != "$MARIADB_SANITIZE_DB" ] || found=1
  [ "$d" != cowfs_sanitize ] || { echo "the clone has a database cowfs_sanitize, the hook's own: refusing"; exit 1; }
  # mariadb-dump would take such a name for an option (--dump-history would copy
  # the old values of system-versioned tables).
  case "$d" in -*) echo "the clone has a database whose name starts with '-' ($d): refusing"; exit 1 ;; esac
done
[ -n "$found" ] || { echo "the clone has no database $MARIADB_SANITIZE_DB"; exit 1; }

echo "saving and dropping the triggers"
if [ "${#DBS[@]}" -gt 0 ]; then
  dump orig --no-data --no-create-info --skip-routines --skip-events --triggers \
    --databases "${DBS[@]}" >"$RUN/triggers.sql"
fi
sql orig -e "SELECT CONCAT('DROP TRIGGER \`', REPLACE(trigger_schema, '\`', '\`\`'), '\`.\`',
                            REPLACE(trigger_name, '\`', '\`\`'), '\`;')
               FROM information_schema.triggers
              WHERE trigger_schema NOT IN ('mysql', 'sys')" --raw >"$RUN/drop-triggers.sql"
sql orig <"$RUN/drop-triggers.sql"

echo "rewriting personal data in $MARIADB_SANITIZE_DB with $SQL"
sql orig -e "CREATE DATABASE cowfs_sanitize"
{
  echo "SET @cowfs_key = '$COWFS_HOOK_KEY';"
  cat "$SQL"
} | sql orig --database="$MARIADB_SANITIZE_DB"
sql orig -e "DROP DATABASE cowfs_sanitize"

echo "copying the sanitized databases into a fresh data directory"
mariadb-install-db --no-defaults --user="$OWNER" --datadir="$NEW" --tmpdir="$RUN" \
  --skip-test-db "${EXTRA_OPTS[@]}" >"$RUN/install.log" 2>&1 ||
  { cat "$RUN/install.log"; echo "mariadb-install-db failed"; exit 1; }
start fresh "$NEW" --skip-log-bin
# Accounts, grants and time zones as table contents (the servers run without
# grant checks, where CREATE USER is refused); mysql.column_stats and the other
# statistics are left out (column values).
dump orig mysql global_priv db tables_priv columns_priv procs_priv proxies_priv \
  roles_mapping servers time_zone time_zone_name time_zone_transition \
  time_zone_transition_type time_zone_leap_second >"$RUN/system.sql"
sql fresh --database=mysql <"$RUN/system.sql"
if [ "${#DBS[@]}" -gt 0 ]; then
  # Streamed: the dump may be bigger than this sandbox's /tmp.
  dump orig --routines --events --skip-triggers --databases "${DBS[@]}" | sql fresh
  sql fresh <"$RUN/triggers.sql"
fi

echo "stopping the servers and replacing the data directory"
# The server on the clone only has to be gone; the fresh one must have shut
# down cleanly (its files are what the clone publishes).
stop_server orig || true
stop_server fresh || { echo "the fresh copy was not shut down cleanly: refusing it"; exit 1; }
find "$DATA" -mindepth 1 -delete
find "$NEW" -mindepth 1 -maxdepth 1 -exec mv -t "$DATA" {} +
echo "MariaDB data directory in the clone sanitized"
