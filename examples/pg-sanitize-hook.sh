#!/usr/bin/env bash
# cowfs sanitize hook for a PostgreSQL cluster in the clone, at $COWFS_CLONE_DIR/pg.
#
# 1. Start a private server on the clone (no TCP, socket in a private directory,
#    no archiving, no autovacuum), after removing the parent's postmaster.pid.
# 2. In every database: roll back prepared transactions and drop replication slots
#    (both pin old row versions and WAL).
# 3. Run the site's SQL ($PG_SANITIZE_SQL) in $PG_SANITIZE_DB, with the setting
#    cowfs.key = $COWFS_HOOK_KEY for deterministic pseudonyms.
# 4. Leave no trace of the original values:
#    - statistics: DELETE FROM pg_statistic / pg_statistic_ext_data, then ANALYZE
#      (most_common_vals and histograms are rebuilt from the new values only);
#    - dead tuples, TOAST and indexes: VACUUM FULL in every database rewrites every
#      table (catalogs included) into new files and rebuilds its indexes; REINDEX
#      DATABASE rebuilds every index once more; the old files are unlinked;
#    - CHECKPOINT, clean shutdown, then pg_resetwal: every WAL segment, the ones
#      in use and the recycled ones, is deleted and replaced by one new, zero-filled
#      segment holding only a checkpoint record;
#    - server logs copied from the parent are deleted (log/, pg_log/ and the
#      configured log_directory when it is inside the clone), and so are the query
#      texts pg_stat_statements saved at the parent's last clean shutdown.
#
# Environment: COWFS_CLONE_DIR, COWFS_HOOK_KEY (from cowfs); PG_SANITIZE_SQL (path,
# relative to this script's directory if not absolute; default pg-sanitize.sql);
# PG_SANITIZE_DB (default postgres); PGBIN (default /usr/lib/postgresql/15/bin).
set -euo pipefail

: "${COWFS_CLONE_DIR:?run by cowfs: COWFS_CLONE_DIR is not set}"
: "${COWFS_HOOK_KEY:?run by cowfs: COWFS_HOOK_KEY is not set}"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
DATA="$COWFS_CLONE_DIR/pg"
DB=${PG_SANITIZE_DB:-postgres}
HERE=$(cd "$(dirname "$0")" && pwd)
SQL=${PG_SANITIZE_SQL:-pg-sanitize.sql}
case "$SQL" in /*) ;; *) SQL="$HERE/$SQL" ;; esac

[ -f "$DATA/PG_VERSION" ] || { echo "no PostgreSQL cluster at $DATA"; exit 1; }
[ -r "$SQL" ] || { echo "sanitize SQL $SQL is not readable"; exit 1; }
[ -x "$PGBIN/postgres" ] || { echo "no PostgreSQL server at $PGBIN"; exit 1; }

# pg_wal (initdb --waldir) and tablespaces (pg_tblspc/OID) may be symlinks out of
# the data directory: in the clone they still point at the parent's own WAL and
# tablespaces, so a server started here would write into them and pg_resetwal
# would delete the parent's WAL. Refuse unless they resolve inside the clone.
CLONE_REAL=$(realpath -e "$COWFS_CLONE_DIR")
for l in "$DATA/pg_wal" "$DATA"/pg_tblspc/*; do
  [ -L "$l" ] || continue
  t=$(realpath -m "$l")
  case "$t/" in
    "$CLONE_REAL"/*) ;;
    *) echo "$l points outside the clone ($t): it is the parent's, refusing"; exit 1 ;;
  esac
done

# Run PostgreSQL as the owner of the data directory.
OWNER=$(stat -c %U "$DATA")
if [ "$(id -u)" = 0 ] && [ "$OWNER" != root ]; then
  AS=(runuser -u "$OWNER" --)
else
  AS=()
fi

SOCK=$(mktemp -d /tmp/cowfs-pg-hook.XXXXXX)
chown "$OWNER" "$SOCK"
chmod 700 "$SOCK"
LOG="$SOCK/server.log"
PGPID=
# Our own access rules: only the data directory's owner, over the private socket.
echo "local all $OWNER peer" >"$SOCK/pg_hba.conf"
chown "$OWNER" "$SOCK/pg_hba.conf"

stop_server() {
  if [ -n "$PGPID" ] && kill -0 "$PGPID" 2>/dev/null; then
    "${AS[@]}" "$PGBIN/pg_ctl" -D "$DATA" stop -m "$1" -w -t 120 >/dev/null || true
    wait "$PGPID" 2>/dev/null || true
  fi
  PGPID=
}
cleanup() {
  local rc=$?
  stop_server immediate
  if [ "$rc" != 0 ] && [ -f "$LOG" ]; then
    echo "--- server log (tail) ---"
    tail -n 40 "$LOG"
  fi
  rm -rf "$SOCK"
}
trap cleanup EXIT

# The parent's lock file came along with the clone (its server may be running on
# the same machine) and so did its logs; a replica's signal files would keep the
# clone read-only.
rm -f "$DATA/postmaster.pid" "$DATA/standby.signal" "$DATA/recovery.signal"

# Delete the files under the log directory $1 (relative to the data directory or
# absolute) if it is in the clone; one outside is not the clone's (the parent's
# own, or the host's): leave it. One that holds the data directory (`.`) mixes
# logs with the cluster's files: refuse rather than publish its logs.
DATA_REAL=$(realpath -e "$DATA")
clean_logs() {
  local d=$1 t
  case "$d" in /*) ;; *) d="$DATA/$d" ;; esac
  [ -d "$d" ] || return 0
  t=$(realpath -e "$d")
  case "$t/" in
    "$CLONE_REAL"/*) ;;
    *) echo "log directory $d is outside the clone ($t): left alone"; return 0 ;;
  esac
  case "$DATA_REAL/" in
    "$t"/*) echo "log directory $d holds the data directory: its logs cannot be told from the cluster's files, refusing"; exit 1 ;;
  esac
  find "$t" -type f -delete
}
# The effective log_directory, as the server reads it (postgresql.conf, then
# postgresql.auto.conf, includes; last assignment wins).
LOGDIR=$("${AS[@]}" "$PGBIN/postgres" -D "$DATA" -C log_directory)
for d in log pg_log "$LOGDIR"; do
  clean_logs "$d"
done
# pg_stat_statements keeps query texts (utility statements with their literals)
# across a clean shutdown; the server here would load them from these files.
rm -f "$DATA/pg_stat/pg_stat_statements.stat" "$DATA/pg_stat_tmp/pgss_query_texts.stat"

# Started directly (not through pg_ctl, which detaches it into its own session),
# so that a timeout kill of the hook's process group stops the server too.
"${AS[@]}" "$PGBIN/postgres" -D "$DATA" \
  -c listen_addresses= -c unix_socket_directories="$SOCK" -c port=5432 \
  -c hba_file="$SOCK/pg_hba.conf" \
  -c archive_mode=off -c autovacuum=off -c logging_collector=off \
  -c log_statement=none -c hot_standby=off >"$LOG" 2>&1 &
PGPID=$!

for _ in $(seq 1 600); do
  if "$PGBIN/pg_isready" -q -h "$SOCK" -p 5432 -U "$OWNER" -d postgres; then break; fi
  kill -0 "$PGPID" 2>/dev/null || { echo "the server on the clone did not start"; exit 1; }
  sleep 0.5
done
"$PGBIN/pg_isready" -q -h "$SOCK" -p 5432 -U "$OWNER" -d postgres || { echo "the server on the clone is not ready"; exit 1; }

psql_as() {
  "${AS[@]}" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p 5432 -U "$OWNER" "$@"
}

mapfile -t DBS < <(psql_as -d postgres -At -c "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")

echo "preparing: prepared transactions and replication slots"
for d in "${DBS[@]}"; do
  psql_as -d "$d" -At <<'EOF'
DO $$
DECLARE g text;
BEGIN
  FOR g IN SELECT gid FROM pg_prepared_xacts WHERE database = current_database() LOOP
    EXECUTE format('ROLLBACK PREPARED %L', g);
  END LOOP;
END $$;
SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
 WHERE NOT active AND (database IS NULL OR database = current_database());
EOF
done

echo "rewriting personal data in $DB with $SQL"
PGOPTIONS="-c cowfs.key=$COWFS_HOOK_KEY" psql_as -d "$DB" <"$SQL"

echo "removing old row versions, index entries and statistics"
for d in "${DBS[@]}"; do
  psql_as -d "$d" <<'EOF'
DELETE FROM pg_statistic;
DELETE FROM pg_statistic_ext_data;
ANALYZE;
VACUUM FULL;
EOF
  psql_as -d "$d" -c "REINDEX DATABASE \"$d\""
done
psql_as -d postgres -c "CHECKPOINT"

echo "stopping the server and removing all WAL"
stop_server fast
"${AS[@]}" "$PGBIN/pg_resetwal" -D "$DATA" >/dev/null
echo "PostgreSQL cluster in the clone sanitized"
