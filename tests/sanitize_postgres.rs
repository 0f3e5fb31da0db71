//! Sanitize, the example PostgreSQL hook on a real data directory (native
//! filesystem): a cluster with users (emails, names, phones, cards), orders and
//! tickets referencing users by email, dead tuples and statistics; its data
//! directory is copied as a "clone" and the `postgresql` hook of
//! examples/cowfs.toml runs on it through the hook runner. Before the hook every
//! original value is found by a byte search of the clone's files (so the search can
//! see them); after it, none is found in any file (heap, indexes, statistics, WAL);
//! the clone starts, its joins return the parent's row counts, and its values are
//! valid pseudonyms; its emails are exactly the pseudonyms the file rules give the
//! same emails under the same pool key. The parent is unchanged.
//!
//! Needs root (runs PostgreSQL as user postgres) and PostgreSQL 15 in
//! /usr/lib/postgresql/15/bin (`.ci/run` installs it).

#[path = "sanitize_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use cowfs::control::sanitize::pseudo::hook_key_hex;
use cowfs::control::sanitize::{run_hook, SanitizeError};
use support::pg::{
    append, byte_search, copy_clone, join_counts, load_example_schema, pg_dir, run_noop_hook,
    run_sql_hook, run_sql_hook_in, Cluster,
};
use support::*;

#[test]
fn pg_hook_leaves_no_original_value_in_the_data_directory() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-pg-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = tmp.path();
    let ppl = people(200, 11);
    let originals = originals(&ppl);

    let parent = Cluster::new(&base.join("parent/pg"), &base.join("sock-parent"), true);
    let server = parent.start();
    load_example_schema(&parent, &ppl);
    let counts = join_counts(&parent);
    let parent_rows = parent.sql(
        "app",
        "SELECT string_agg(email || phone || card || name, ',' ORDER BY id) FROM users",
    );
    server.stop();

    // The clone: a copy of the stopped cluster, as a cowfs branch would hold it.
    std::fs::create_dir(base.join("clone")).unwrap();
    std::fs::set_permissions(base.join("clone"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(base.join("parent/pg"))
        .arg(base.join("clone/pg"))
        .status()
        .unwrap();
    assert!(st.success());
    let before = byte_search(&base.join("clone/pg"), &originals);
    for v in &originals {
        assert!(
            before.iter().any(|(f, _)| f == v),
            "{v} is not in the data directory before the hook: the search cannot see it"
        );
    }
    assert!(
        before
            .iter()
            .any(|(_, p)| p.to_string_lossy().contains("pg_wal")),
        "the WAL holds original values before the hook"
    );

    let cfg = example_config();
    let hook = profile(&cfg, "pii")
        .hooks
        .iter()
        .find(|h| h.name == "postgresql")
        .expect("the pii profile has the postgresql hook");
    let pool_key = b"pool-key-for-the-pg-hook-test";
    let key = hook_key_hex(pool_key).unwrap();
    let report =
        run_hook(hook, &base.join("clone"), "clone", &key).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("sanitized"), "{}", report.output);

    let after = byte_search(&base.join("clone/pg"), &originals);
    assert!(
        after.is_empty(),
        "original values left in the clone's data directory: {:?}",
        &after[..after.len().min(20)]
    );

    let clone = Cluster::new(&base.join("clone/pg"), &base.join("sock-clone"), false);
    let server = clone.start();
    assert_eq!(join_counts(&clone), counts);
    let rows = clone.sql(
        "app",
        "SELECT email, name, phone, card FROM users ORDER BY id",
    );
    // The emails are the very pseudonyms the file rules give them.
    assert_example_pseudonyms(&rows, '|', &ppl, pool_key);
    server.stop();

    let server = parent.start();
    assert_eq!(
        parent.sql(
            "app",
            "SELECT string_agg(email || phone || card || name, ',' ORDER BY id) FROM users"
        ),
        parent_rows
    );
    assert_eq!(join_counts(&parent), counts);
    server.stop();
}

/// `initdb --waldir` (and every tablespace) leaves a symlink in the data directory
/// to a directory outside it: in a clone it still points at the parent's own WAL.
/// The hook must refuse such a clone rather than start a server writing into the
/// parent's WAL and `pg_resetwal` deleting it.
#[test]
fn pg_hook_refuses_a_wal_directory_outside_the_clone() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-pgwal-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = tmp.path();
    let parent = Cluster::new(&base.join("parent/pg"), &base.join("sock-parent"), true);
    // What initdb --waldir=parent-wal makes: pg_wal a symlink to an absolute path.
    let wal = base.join("parent-wal");
    std::fs::rename(parent.data.join("pg_wal"), &wal).unwrap();
    std::os::unix::fs::symlink(&wal, parent.data.join("pg_wal")).unwrap();
    let server = parent.start();
    parent.sql("postgres", "CREATE TABLE t AS SELECT 1 AS x");
    server.stop();
    let listing = |d: &std::path::Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let names_before = listing(&wal);

    copy_clone(&parent.data, &base.join("clone"));
    let r = run_noop_hook(base, &base.join("clone"));
    assert_eq!(
        listing(&wal),
        names_before,
        "the parent's WAL directory changed"
    );
    let e = r.expect_err("the hook ran on a clone whose pg_wal is the parent's");
    assert!(e.to_string().contains("outside the clone"), "{e}");
    // The parent still starts.
    parent.start().stop();
}

/// A `log_directory` other than log/ and pg_log/ kept the parent's server logs
/// (the statements and values they logged) in the sanitized clone. The hook
/// takes the effective setting as PostgreSQL reads it (postgresql.auto.conf over
/// postgresql.conf, last assignment, quoted, with a comment) and empties it when
/// it is in the clone; one outside the clone is left alone, and one that holds
/// the data directory makes the hook refuse.
#[test]
fn pg_hook_cleans_the_configured_log_directory() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-pglog-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = tmp.path();
    let parent = Cluster::new(&base.join("parent/pg"), &base.join("sock-parent"), true);
    let logged =
        "ERROR:  duplicate key value violates unique constraint: (email)=(ann@example.com)\n";
    let log_files = |dir: &Path| {
        pg_dir(&dir.join("2024"), 0o700);
        let files = [
            dir.join("postgresql-2024-05-01_000000.log"),
            dir.join("2024/postgresql-2024-05-02_000000.csv"),
        ];
        for f in &files {
            std::fs::write(f, logged).unwrap();
        }
        files
    };

    // In the clone: deleted.
    let clone = base.join("clone-in");
    copy_clone(&parent.data, &clone);
    let data = clone.join("pg");
    append(
        &data.join("postgresql.conf"),
        "log_directory = 'conf_logs'\n",
    );
    append(
        &data.join("postgresql.auto.conf"),
        "log_directory = 'old_logs'\nlog_directory = 'audit logs'   # kept for the auditors\n",
    );
    let files = log_files(&data.join("audit logs"));
    let report = run_noop_hook(base, &clone).unwrap_or_else(|e| panic!("{e}"));
    for f in &files {
        assert!(
            !f.exists(),
            "{} is still in the clone\n{}",
            f.display(),
            report.output
        );
    }

    // Outside the clone: left alone. In the directory the hook's sandbox
    // shows it (`run_sql_hook`), so that the hook sees it to leave it alone.
    let outside = base.join("sql/host-logs");
    let files = log_files(&outside);
    let clone = base.join("clone-out");
    copy_clone(&parent.data, &clone);
    append(
        &clone.join("pg/postgresql.auto.conf"),
        &format!("log_directory = '{}'\n", outside.display()),
    );
    let report = run_noop_hook(base, &clone).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("left alone"), "{}", report.output);
    for f in &files {
        assert_eq!(
            std::fs::read_to_string(f).unwrap(),
            logged,
            "{}",
            f.display()
        );
    }

    // The data directory itself: its logs cannot be told apart, the hook refuses.
    let clone = base.join("clone-dot");
    copy_clone(&parent.data, &clone);
    append(
        &clone.join("pg/postgresql.auto.conf"),
        "log_directory = '.'\n",
    );
    let e = run_noop_hook(base, &clone).expect_err("the hook accepted log_directory = '.'");
    assert!(e.to_string().contains("holds the data directory"), "{e}");
    assert!(
        clone.join("pg/PG_VERSION").exists(),
        "the hook deleted the cluster's files"
    );
}

/// Production databases keep audit trails: a trigger or a rule copies the OLD row
/// into another table on every UPDATE, and an event trigger can copy a table on
/// any DDL (the site SQL's CREATE FUNCTION). Fired by the site SQL's rewrite,
/// they would publish the original values in the clone. The hook runs the site
/// SQL with `session_replication_role = replica` (no ordinary trigger, rule or
/// event trigger fires) and disables the ones set to `ENABLE ALWAYS` or `ENABLE
/// REPLICA` (which fire in replica mode) for the run, restoring them afterwards:
/// the clone keeps its schema as it was, and none of them ran. The site SQL here
/// does not set the replication role itself.
#[test]
fn pg_hook_fires_no_trigger_or_rule_of_the_clone() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-pgtrig-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = tmp.path();
    let ppl = people(20, 31);
    let originals: Vec<String> = ppl
        .iter()
        .flat_map(|p| [p.email.clone(), p.name.clone()])
        .collect();
    let parent = Cluster::new(&base.join("parent/pg"), &base.join("sock-parent"), true);
    let server = parent.start();
    let rows: Vec<String> = ppl
        .iter()
        .enumerate()
        .map(|(i, p)| format!("({i}, '{}', '{}')", p.email, p.name))
        .collect();
    parent.sql(
        "postgres",
        &format!(
            "CREATE TABLE users (id int PRIMARY KEY, email text, name text);
             INSERT INTO users VALUES {};
             CREATE TABLE audit_log (who text, v text);
             CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO public.audit_log VALUES (TG_NAME, OLD.email); RETURN NEW; END $$;
             CREATE TRIGGER audit_origin AFTER UPDATE ON users
               FOR EACH ROW EXECUTE FUNCTION audit();
             CREATE TRIGGER audit_always AFTER UPDATE ON users
               FOR EACH ROW EXECUTE FUNCTION audit();
             ALTER TABLE users ENABLE ALWAYS TRIGGER audit_always;
             CREATE TRIGGER audit_replica AFTER UPDATE ON users
               FOR EACH ROW EXECUTE FUNCTION audit();
             ALTER TABLE users ENABLE REPLICA TRIGGER audit_replica;
             CREATE TRIGGER audit_hidden AFTER UPDATE ON users
               FOR EACH ROW EXECUTE FUNCTION audit();
             ALTER TABLE users ENABLE ALWAYS TRIGGER audit_hidden;
             -- A superuser may mark it internal, as the system's own triggers
             -- (foreign keys) are.
             UPDATE pg_trigger SET tgisinternal = true WHERE tgname = 'audit_hidden';
             CREATE RULE keep_origin AS ON UPDATE TO users
               DO ALSO INSERT INTO audit_log VALUES ('keep_origin', OLD.name);
             CREATE RULE keep_always AS ON UPDATE TO users
               DO ALSO INSERT INTO audit_log VALUES ('keep_always', OLD.name);
             ALTER TABLE users ENABLE ALWAYS RULE keep_always;
             CREATE RULE keep_replica AS ON UPDATE TO users
               DO ALSO INSERT INTO audit_log VALUES ('keep_replica', OLD.name);
             ALTER TABLE users ENABLE REPLICA RULE keep_replica;
             CREATE FUNCTION snap() RETURNS event_trigger LANGUAGE plpgsql AS
               $$ BEGIN INSERT INTO public.audit_log SELECT TG_TAG, email || ' ' || name FROM public.users; END $$;
             CREATE EVENT TRIGGER snap_origin ON ddl_command_start EXECUTE FUNCTION snap();
             CREATE EVENT TRIGGER snap_always ON ddl_command_end EXECUTE FUNCTION snap();
             ALTER EVENT TRIGGER snap_always ENABLE ALWAYS;
             CREATE EVENT TRIGGER snap_replica ON ddl_command_end EXECUTE FUNCTION snap();
             ALTER EVENT TRIGGER snap_replica ENABLE REPLICA;
             CHECKPOINT;",
            rows.join(",")
        ),
    );
    let states = |c: &Cluster| {
        c.sql(
            "postgres",
            "SELECT string_agg(n || '=' || e, ' ' ORDER BY n) FROM (
               SELECT tgname::text, tgenabled::text FROM pg_trigger
                 WHERE NOT tgisinternal OR tgname = 'audit_hidden'
               UNION ALL SELECT rulename::text, ev_enabled::text FROM pg_rewrite
                 WHERE ev_class = 'users'::regclass
               UNION ALL SELECT evtname::text, evtenabled::text FROM pg_event_trigger) s(n, e)",
        )
    };
    let parent_states = states(&parent);
    assert_eq!(
        parent_states,
        "audit_always=A audit_hidden=A audit_origin=O audit_replica=R keep_always=A \
         keep_origin=O keep_replica=R snap_always=A snap_origin=O snap_replica=R"
    );
    server.stop();

    copy_clone(&parent.data, &base.join("clone"));
    assert!(
        !byte_search(&base.join("clone/pg"), &originals).is_empty(),
        "the search cannot see the original values"
    );
    // A site's rewrite, as written without knowing of the audit trail.
    let report = run_sql_hook(
        base,
        &base.join("clone"),
        "CREATE FUNCTION pg_temp.p(v text) RETURNS text LANGUAGE sql AS $$ SELECT 'p' || md5(v) $$;
         UPDATE users SET email = pg_temp.p(email) || '@example.invalid', name = pg_temp.p(name);\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let after = byte_search(&base.join("clone/pg"), &originals);
    assert!(
        after.is_empty(),
        "original values left in the clone: {:?}\n{}",
        &after[..after.len().min(10)],
        report.output
    );
    let clone = Cluster::new(&base.join("clone/pg"), &base.join("sock-clone"), false);
    let server = clone.start();
    assert_eq!(clone.sql("postgres", "SELECT count(*) FROM audit_log"), "0");
    assert_eq!(
        clone.sql(
            "postgres",
            "SELECT count(*) FROM users WHERE email LIKE '%@example.invalid'"
        ),
        ppl.len().to_string()
    );
    assert_eq!(states(&clone), parent_states, "the clone's schema changed");
    server.stop();
}

/// The clone's configuration is the clone writer's: a `postgresql.conf` or
/// `postgresql.auto.conf` (or `ALTER ROLE`/`ALTER DATABASE ... SET`) that loads a
/// library or runs a command would run it as the data directory's owner on the
/// host, and `data_directory` or `external_pid_file` would point the server at
/// files outside the clone. The hook overrides every such setting: a clone that
/// names libraries that do not exist (the server would refuse to start, or every
/// session to open, if it tried to load them) is sanitized anyway, and one that
/// names the parent's data directory leaves the parent untouched.
#[test]
fn pg_hook_ignores_the_clones_code_and_path_settings() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-pgconf-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = tmp.path();
    let parent = Cluster::new(&base.join("parent/pg"), &base.join("sock-parent"), true);
    parent.start().stop();

    // Paths: the server must run on the clone's directory, and write nothing
    // outside it.
    let clone = base.join("clone-paths");
    copy_clone(&parent.data, &clone);
    // A file the server's user may replace: the server would write its pid there
    // at start and unlink it at exit.
    pg_dir(&base.join("host-files"), 0o700);
    let pid_file = base.join("host-files/pid-from-clone");
    std::fs::write(&pid_file, "not the server's\n").unwrap();
    append(
        &clone.join("pg/postgresql.conf"),
        &format!(
            "data_directory = '{}'\nexternal_pid_file = '{}'\n",
            parent.data.display(),
            pid_file.display()
        ),
    );
    let control = || std::fs::read(parent.data.join("global/pg_control")).unwrap();
    let control_before = control();
    let report = run_noop_hook(base, &clone).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("sanitized"), "{}", report.output);
    assert!(
        control() == control_before,
        "the hook ran a server on the parent's data directory\n{}",
        report.output
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).ok().as_deref(),
        Some("not the server's\n"),
        "the server used the clone's external_pid_file"
    );

    // Libraries: preloaded by the server, by every session of a role, by every
    // session in a database.
    let server = parent.start();
    // One session: the next one would already fail to start.
    parent.sql(
        "postgres",
        "ALTER DATABASE postgres SET local_preload_libraries = 'nonexistent_local_lib_from_clone';
         ALTER ROLE postgres SET session_preload_libraries = 'nonexistent_session_lib_from_clone'",
    );
    server.stop();
    let clone = base.join("clone-libs");
    copy_clone(&parent.data, &clone);
    append(
        &clone.join("pg/postgresql.auto.conf"),
        "shared_preload_libraries = 'nonexistent_lib_from_clone'\n",
    );
    let report = run_noop_hook(base, &clone).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("sanitized"), "{}", report.output);
}

/// Names in the clone are the clone writer's: the hook must take each one as a
/// name. A database named like a libpq connection string (psql reads a `-d`
/// holding `=` as one, whose `host` outranks `-h`) made the hook connect to
/// another server on the host through its Unix socket, where it rolled back
/// prepared transactions, dropped replication slots and ran VACUUM FULL; names
/// with quotes broke REINDEX, and a newline in a trigger's name or a
/// database's broke the lists the hook reads them from.
#[test]
fn pg_hook_takes_the_clones_names_as_names() {
    // Short: a database name holds the other server's socket path (63 bytes
    // at most).
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-pgn-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = tmp.path();
    // Another cluster of the host, with a replication slot.
    let other = Cluster::new(&base.join("o/pg"), &base.join("o/s"), true);
    let other_server = other.start();
    other.sql(
        "postgres",
        "SELECT pg_create_physical_replication_slot('other_slot')",
    );
    let redirect = format!("host={} dbname=postgres", other.sock.display());
    assert!(redirect.len() < 64, "{redirect}");

    let parent = Cluster::new(&base.join("p/pg"), &base.join("p/s"), true);
    let server = parent.start();
    let odd = "we\"ird 'db'\nname";
    for db in [redirect.as_str(), odd] {
        let quoted = db.replace('"', "\"\"");
        parent.sql("postgres", &format!("CREATE DATABASE \"{quoted}\""));
    }
    let tables = "CREATE TABLE \"t\"\"q\" (v text);
         CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         CREATE TRIGGER \"a\nb \"\"c\"\"\" AFTER UPDATE ON \"t\"\"q\" FOR EACH ROW EXECUTE FUNCTION f();
         ALTER TABLE \"t\"\"q\" ENABLE ALWAYS TRIGGER \"a\nb \"\"c\"\"\";
         CREATE TRIGGER \"r;\nx\" AFTER UPDATE ON \"t\"\"q\" FOR EACH ROW EXECUTE FUNCTION f();
         ALTER TABLE \"t\"\"q\" ENABLE REPLICA TRIGGER \"r;\nx\";";
    // The odd database is reached through a connection string: psql takes
    // the name from -d only as one.
    let odd_conn = format!(
        "dbname='{}'",
        odd.replace('\\', "\\\\").replace('\'', "\\'")
    );
    parent.sql(&odd_conn, tables);
    let states = |c: &Cluster| {
        c.sql(
            &odd_conn,
            "SELECT string_agg(quote_ident(tgname) || '=' || tgenabled::text, ' ' ORDER BY tgname)
               FROM pg_trigger WHERE NOT tgisinternal",
        )
    };
    let parent_states = states(&parent);
    assert_eq!(parent_states, "\"a\nb \"\"c\"\"\"=A \"r;\nx\"=R");
    server.stop();

    copy_clone(&parent.data, &base.join("clone"));
    let report = run_noop_hook(base, &base.join("clone"));
    assert_eq!(
        other.sql(
            "postgres",
            "SELECT string_agg(slot_name, ',') FROM pg_replication_slots"
        ),
        "other_slot",
        "the hook dropped a replication slot of another server"
    );
    other_server.stop();
    let report = report.unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("sanitized"), "{}", report.output);
    let clone = Cluster::new(&base.join("clone/pg"), &base.join("c/s"), false);
    let server = clone.start();
    assert_eq!(
        states(&clone),
        parent_states,
        "the clone's triggers changed"
    );
    server.stop();
}

/// The hook reads the list of databases from psql through a process
/// substitution, whose exit status bash does not check: when the listing
/// failed, the list was empty and the hook went on to run the site SQL and
/// skipped preparing, scrubbing and vacuuming every database, relying on a
/// later step to fail. A cluster whose database `postgres` (where the hook
/// lists the others) was dropped makes the listing fail: the hook must stop
/// there, saying so, before the site SQL.
#[test]
fn pg_hook_fails_at_once_when_the_databases_cannot_be_listed() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-pglist-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = tmp.path();
    let parent = Cluster::new(&base.join("parent/pg"), &base.join("sock-parent"), true);
    let server = parent.start();
    parent.sql("postgres", "CREATE DATABASE app");
    parent.sql("app", "DROP DATABASE postgres");
    parent.sql("app", "CHECKPOINT");
    server.stop();
    copy_clone(&parent.data, &base.join("clone"));
    let r = run_sql_hook_in(base, &base.join("clone"), "app", "\\echo site SQL ran\n");
    match r {
        Err(SanitizeError::HookFailed { output, .. }) => {
            assert!(output.contains("could not list the databases"), "{output}");
            assert!(!output.contains("site SQL ran"), "{output}");
        }
        r => panic!("the hook did not fail: {r:?}"),
    }
}
