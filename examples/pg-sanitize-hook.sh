#!/usr/bin/env bash
# cowfs sanitize hook for a PostgreSQL cluster in the clone, at $COWFS_CLONE_DIR/pg.
#
# 1. Start a private server on the clone (no TCP, socket in a private directory,
#    no archiving, no autovacuum), after removing the parent's postmaster.pid.
# 2. In every database: roll back prepared transactions and drop replication slots
#    (both pin old row versions and WAL).
# 3. Run the site's SQL ($PG_SANITIZE_SQL) in $PG_SANITIZE_DB, with the setting
#    cowfs.key = $COWFS_HOOK_KEY for deterministic pseudonyms. No trigger, rule or
#    event trigger of the clone fires meanwhile: an audit trigger would copy the
#    original values into another table (see "The clone's content" below).
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
# The clone's content: it may come from a branch someone other than an admin
# wrote, so its configuration and schema are not trusted to be benign:
# - settings that load code or run commands (shared/session/local preload
#   libraries, dynamic_library_path, extension_destdir, jit, ssl's passphrase
#   command, archive/restore commands) and that name files outside the clone
#   (data_directory, external_pid_file) are overridden on the server's command
#   line (over postgresql.conf and postgresql.auto.conf) and, for the ones a role
#   or database may set (ALTER ROLE/DATABASE ... SET, which outrank the command
#   line), in every session's startup options too;
# - every session runs with session_replication_role = replica, so ordinary
#   triggers, rules and event triggers do not fire; the ones set to ENABLE ALWAYS
#   or ENABLE REPLICA (which fire in replica mode) are disabled for the run and
#   get their state back at its end, so the clone's schema is the parent's;
#   Foreign keys' actions do not run either: the site SQL must rewrite the
#   referencing columns itself, and the hook fails if a foreign key has a
#   violating row after it that it did not have before (original values left in
#   referencing rows); a NOT VALID key's violations from before are tolerated;
# - its names are names: a database is given to psql as a connection string
#   holding only dbname (db below), statements are built with format's %I, and
#   lists of names are NUL-separated or one value, so that quotes, spaces,
#   newlines or a name that reads as a connection string change nothing.
# NOT covered: the site SQL, ANALYZE, VACUUM FULL and REINDEX run as a superuser
# and evaluate the clone's own functions where its schema puts them (index
# expressions, CHECK constraints, domains, a type's operators, functions shadowing
# built-ins through a database's search_path): a clone written to attack the hook
# can still run code as the data directory's owner through them (on the host's
# files; not on the network: cowfs gives a hook a network namespace of its own
# unless its profile sets network = true). Run this hook only on clones whose
# schema you trust, or in a sandbox of its own.
#
# Environment: COWFS_CLONE_DIR, COWFS_HOOK_KEY (from cowfs); PG_SANITIZE_SQL (path,
# relative to this script's directory if not absolute; default pg-sanitize.sql);
# PG_SANITIZE_DB (default postgres); PGBIN (default /usr/lib/postgresql/15/bin).
set -euo pipefail
# A failing command inside $(...) stops it too, as it would outside (bash does
# not pass -e into command substitutions otherwise): the rest of it would run
# and its status be the last command's.
shopt -s inherit_errexit

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
# Settings the clone's postgresql.conf and postgresql.auto.conf may hold that
# would load code or run a command as $OWNER on this host, or make the server use
# files outside the clone; a -c on the command line overrides both files.
# (postgres --describe-config lists them all; the ones left out name files the
# server only reads, for features this private server does not use: TLS, GSSAPI,
# ident maps.)
SERVER_OPTS=(
  # The data directory: the config file may name another one, the parent's.
  -c data_directory="$DATA"
  # Libraries: loaded at start, at each session start, from a relative or
  # prefixed path (a library in the clone), or as the JIT provider.
  -c shared_preload_libraries= -c session_preload_libraries=
  -c local_preload_libraries= -c 'dynamic_library_path=$libdir'
  -c extension_destdir= -c jit=off -c jit_provider=llvmjit
  # Commands: archiving, archive recovery, TLS key passphrase.
  -c archive_mode=off -c archive_command= -c archive_library=
  -c restore_command= -c archive_cleanup_command= -c recovery_end_command=
  -c ssl=off -c ssl_passphrase_command=
  # Files written outside the data directory (the pid file: to our private
  # directory, as an empty name makes the server try to write "" and warn),
  # and connections out.
  -c external_pid_file="$SOCK/external.pid" -c logging_collector=off -c log_destination=stderr
  -c primary_conninfo= -c promote_trigger_file=
)
# ALTER ROLE/DATABASE ... SET outrank the command line, but not a session's
# startup options: the per-session ones among the above, again, for every
# session. search_path is empty (pg_catalog only) for the hook's own statements;
# the site SQL gets the database's own.
SESSION_OPTS="-c session_replication_role=replica -c session_preload_libraries= -c local_preload_libraries= -c dynamic_library_path=\$libdir -c extension_destdir= -c jit=off"

# The effective log_directory, as the server reads it (postgresql.conf, then
# postgresql.auto.conf, includes; last assignment wins).
LOGDIR=$("${AS[@]}" "$PGBIN/postgres" -D "$DATA" "${SERVER_OPTS[@]}" -C log_directory)
for d in log pg_log "$LOGDIR"; do
  clean_logs "$d"
done
# pg_stat_statements keeps query texts (utility statements with their literals)
# across a clean shutdown; the server here would load them from these files.
rm -f "$DATA/pg_stat/pg_stat_statements.stat" "$DATA/pg_stat_tmp/pgss_query_texts.stat"

# Started directly (not through pg_ctl, which detaches it into its own session),
# so that a timeout kill of the hook's process group stops the server too.
"${AS[@]}" "$PGBIN/postgres" -D "$DATA" "${SERVER_OPTS[@]}" \
  -c listen_addresses= -c unix_socket_directories="$SOCK" -c port=5432 \
  -c hba_file="$SOCK/pg_hba.conf" -c autovacuum=off \
  -c log_statement=none -c hot_standby=off >"$LOG" 2>&1 &
PGPID=$!

for _ in $(seq 1 600); do
  if "$PGBIN/pg_isready" -q -h "$SOCK" -p 5432 -U "$OWNER" -d postgres; then break; fi
  kill -0 "$PGPID" 2>/dev/null || { echo "the server on the clone did not start"; exit 1; }
  sleep 0.5
done
"$PGBIN/pg_isready" -q -h "$SOCK" -p 5432 -U "$OWNER" -d postgres || { echo "the server on the clone is not ready"; exit 1; }

# psql with startup options $SESSION_OPTS and $1; the rest are psql's arguments.
pg_session() {
  local opts=$1
  shift
  PGOPTIONS="$SESSION_OPTS $opts" \
    "${AS[@]}" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -p 5432 -U "$OWNER" "$@"
}
# The hook's own sessions: pg_catalog only on the search path, so that a
# database's search_path cannot put the clone's own pg_statistic or functions in
# front of the catalog's.
psql_as() {
  pg_session "-c search_path=" "$@"
}
# Database $1 for psql's -d, as a connection string naming it and nothing else:
# a name (the clone's own) that holds `=` or starts with postgresql:// is read
# as a connection string, whose host and port outrank -h and -p: a database
# named "host=/var/run/postgresql dbname=postgres" sent the hook's statements
# to another server of the host through its socket.
db() {
  local v=${1//\\/\\\\}
  v=${v//\'/\\\'}
  printf "dbname='%s'" "$v"
}

# NUL-separated: a name may hold a newline. Through a file, not a process
# substitution, whose exit status bash ignores: a failed listing gave an empty
# list, and the hook went on without preparing or scrubbing any database.
psql_as -d postgres -At -0 -c "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1" >"$SOCK/databases" ||
  { echo "could not list the databases of the clone (from its database postgres)"; exit 1; }
mapfile -d '' -t DBS <"$SOCK/databases"

echo "preparing: prepared transactions and replication slots"
for d in "${DBS[@]}"; do
  psql_as -d "$(db "$d")" -At <<'EOF'
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

# What fires in replica mode: triggers, rules and event triggers set to ENABLE
# ALWAYS (state A), and the ones set to ENABLE REPLICA (R), which fire *only*
# there. Rather than refuse such a clone (logical replication subscribers and
# audit setups have them), they are disabled for the run and get their state back
# at its end; if the hook fails the clone is deleted, so none is left disabled.
# Event triggers go first (the ALTER TABLEs are DDL they would fire on) and come
# back last. ONLY: a partition's trigger has its own state, listed on its own.
# Internal triggers too: the system's own (foreign keys) never are A or R, and a
# superuser can mark any trigger internal.
# $1: the new state, a SQL expression of the current one, s. Each row is one
# statement; `script` makes them one value, a name's newline and all.
replica_firing() {
  cat <<EOF
SELECT format('ALTER TABLE ONLY %s %s TRIGGER %I', tgrelid::regclass, $1, tgname)
  FROM pg_trigger CROSS JOIN LATERAL (SELECT tgenabled) x(s)
 WHERE s IN ('A', 'R')
UNION ALL
SELECT format('ALTER TABLE %s %s RULE %I', ev_class::regclass, $1, rulename)
  FROM pg_rewrite CROSS JOIN LATERAL (SELECT ev_enabled) x(s)
 WHERE s IN ('A', 'R') AND ev_type <> '1'
EOF
}
replica_firing_events() {
  echo "SELECT format('ALTER EVENT TRIGGER %I %s', evtname, $1)
          FROM pg_event_trigger CROSS JOIN LATERAL (SELECT evtenabled) x(s)
         WHERE s IN ('A', 'R')"
}
AS_BEFORE="CASE s WHEN 'A' THEN 'ENABLE ALWAYS' ELSE 'ENABLE REPLICA' END"
script() {
  echo "SELECT coalesce(string_agg(q || ';', E'\\n'), '') FROM ($(cat)) x(q)"
}
declare -A RESTORE
echo "disabling the triggers, rules and event triggers that fire in replica mode"
for d in "${DBS[@]}"; do
  # One listing per substitution, each checked: in one $({ a; b; }) a failing
  # a was hidden by b, and what a lists would have stayed disabled for good.
  triggers=$(replica_firing "$AS_BEFORE" | script | psql_as -d "$(db "$d")" -At) ||
    { echo "could not list the triggers and rules of database $d"; exit 1; }
  events=$(replica_firing_events "$AS_BEFORE" | script | psql_as -d "$(db "$d")" -At) ||
    { echo "could not list the event triggers of database $d"; exit 1; }
  RESTORE[$d]=$triggers$'\n'$events
  { replica_firing_events "'DISABLE'"; echo '\gexec'; replica_firing "'DISABLE'"; echo '\gexec'; } |
    psql_as -d "$(db "$d")" >/dev/null
done

# Foreign keys are neither checked nor act (ON UPDATE CASCADE, ON DELETE SET
# NULL, ...) in replica mode: a site SQL that counts on them to rewrite the
# referencing rows leaves the original values there. After it, no foreign key
# may have a violating row it did not have before; one that does fails the hook
# (the clone is deleted). A validated key had none. A key added NOT VALID may
# hold violations from before (PostgreSQL checks only the rows written since):
# their key values are recorded before the site SQL and tolerated after it,
# while any other violation is one the site SQL made, a write PostgreSQL would
# have refused. The record is a table in a schema of the hook's own,
# cowfs_sanitize_fk (the site SQL runs in another session, where temporary
# tables are not seen), dropped after the check whatever its outcome; if the
# site SQL fails, the hook fails and the clone with the schema is deleted.
# Each table's own constraint: a partitioned table's is checked on its
# partitions; a key to a partitioned table once, on the whole table (not again
# on each partition, view keys).
echo "recording the rows NOT VALID foreign keys already reject in $DB"
psql_as -d "$(db "$DB")" <<'EOF'
CREATE SCHEMA cowfs_sanitize_fk;
-- The key values, as text, of the rows of foreign key con's table that violate
-- it. MATCH SIMPLE exempts a row with any key column NULL; MATCH FULL only one
-- with all of them NULL, one with some NULL violates it. num_nonnulls counts
-- NULL columns as PostgreSQL's check does (ROW(...) IS NULL would look into a
-- composite column's fields).
CREATE FUNCTION cowfs_sanitize_fk.violations(con oid) RETURNS SETOF text
LANGUAGE plpgsql SET search_path = '' AS $f$
DECLARE
  r record;
BEGIN
  SELECT c.conrelid::regclass AS child, c.confrelid::regclass AS parent,
         c.confmatchtype = 'f' AS match_full, cardinality(c.conkey) AS n,
         (SELECT string_agg(format('c.%I', attname), ',' ORDER BY n)
            FROM unnest(c.conkey) WITH ORDINALITY k(a, n)
            JOIN pg_attribute ON attrelid = c.conrelid AND attnum = k.a) AS ccols,
         (SELECT string_agg(format('p.%I', attname), ',' ORDER BY n)
            FROM unnest(c.confkey) WITH ORDINALITY k(a, n)
            JOIN pg_attribute ON attrelid = c.confrelid AND attnum = k.a) AS pcols
    INTO STRICT r FROM pg_constraint c WHERE c.oid = con;
  RETURN QUERY EXECUTE format(
    'SELECT ROW(%1$s)::text FROM ONLY %2$s c
      WHERE CASE num_nonnulls(%1$s)
              WHEN 0 THEN false
              WHEN %4$s THEN NOT EXISTS (SELECT FROM %3$s p WHERE ROW(%5$s) = ROW(%1$s))
              ELSE %6$L
            END',
    r.ccols, r.child, r.parent, r.n, r.pcols, r.match_full);
END $f$;
-- The foreign keys to check, each once. A key referencing a partitioned table
-- has, besides its own row, one per partition of that table, on the same
-- referencing table (PostgreSQL's bookkeeping for the actions): checked as keys
-- of their own, every row referencing another partition violated them.
CREATE VIEW cowfs_sanitize_fk.keys AS
  SELECT c.oid, c.conname, c.conrelid, c.convalidated
    FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class t ON t.oid = c.conrelid
   WHERE c.contype = 'f' AND t.relkind <> 'p'
     AND NOT EXISTS (SELECT FROM pg_catalog.pg_constraint pc
                      WHERE pc.oid = c.conparentid AND pc.conrelid = c.conrelid);
CREATE TABLE cowfs_sanitize_fk.before (con oid NOT NULL, k text NOT NULL);
INSERT INTO cowfs_sanitize_fk.before
  SELECT c.oid, v.k
    FROM cowfs_sanitize_fk.keys c
   CROSS JOIN LATERAL cowfs_sanitize_fk.violations(c.oid) v(k)
   WHERE NOT c.convalidated;
EOF

echo "rewriting personal data in $DB with $SQL"
pg_session "-c cowfs.key=$COWFS_HOOK_KEY" -d "$(db "$DB")" <"$SQL"

echo "checking the foreign keys in $DB"
fk_held=true
psql_as -d "$(db "$DB")" <<'EOF' || fk_held=false
DO $$
DECLARE
  bad text;
BEGIN
  SELECT string_agg(format('%I of %s', c.conname, c.conrelid::regclass), ', '
                    ORDER BY c.conname)
    INTO bad
    FROM cowfs_sanitize_fk.keys c
   WHERE EXISTS (SELECT FROM cowfs_sanitize_fk.violations(c.oid) v(k)
                  WHERE c.convalidated
                     OR NOT EXISTS (SELECT FROM cowfs_sanitize_fk.before b
                                     WHERE b.con = c.oid AND b.k = v.k));
  IF bad IS NOT NULL THEN
    RAISE EXCEPTION 'the site SQL left rows violating foreign key(s) % that did not before (ON UPDATE/ON DELETE actions do not run in replica mode: rewrite the referencing columns too)', bad;
  END IF;
END $$;
EOF
psql_as -d "$(db "$DB")" -c "SET client_min_messages = warning" -c "DROP SCHEMA cowfs_sanitize_fk CASCADE"
[ "$fk_held" = true ] || exit 1

echo "removing old row versions, index entries and statistics"
for d in "${DBS[@]}"; do
  psql_as -d "$(db "$d")" <<'EOF'
DELETE FROM pg_statistic;
DELETE FROM pg_statistic_ext_data;
ANALYZE;
VACUUM FULL;
SELECT format('REINDEX DATABASE %I', current_database()) \gexec
EOF
done
echo "enabling again what fires in replica mode"
for d in "${DBS[@]}"; do
  [ -z "${RESTORE[$d]}" ] || psql_as -d "$(db "$d")" <<<"${RESTORE[$d]}"
done
psql_as -d postgres -c "CHECKPOINT"

echo "stopping the server and removing all WAL"
stop_server fast
"${AS[@]}" "$PGBIN/pg_resetwal" -D "$DATA" >/dev/null
echo "PostgreSQL cluster in the clone sanitized"
