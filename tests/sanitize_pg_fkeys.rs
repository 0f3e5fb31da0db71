//! Sanitize, the example PostgreSQL hook's foreign-key check: the site SQL runs
//! in replica mode, where foreign keys are neither checked nor act (ON UPDATE
//! CASCADE, ON DELETE SET NULL), so after it the hook checks that it broke no
//! key.
//!
//! Needs root (runs PostgreSQL as user postgres) and PostgreSQL 15 in
//! /usr/lib/postgresql/15/bin (`.ci/run` installs it).

#[path = "sanitize_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cowfs::control::sanitize::SanitizeError;
use support::pg::{byte_search, copy_clone, run_sql_hook, Cluster};
use support::*;

/// A temporary directory the hook's user (postgres) may traverse.
fn base_dir(prefix: &str) -> tempfile::TempDir {
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// A stopped cluster at `base/parent/pg` set up by `sql` (in database postgres).
fn parent_cluster(base: &Path, sql: &str) -> Cluster {
    let parent = Cluster::new(&base.join("parent/pg"), &base.join("sock-parent"), true);
    let server = parent.start();
    parent.sql("postgres", sql);
    parent.sql("postgres", "CHECKPOINT");
    server.stop();
    parent
}

/// The site SQL runs in replica mode, where foreign keys' actions do not run
/// (their triggers fire in origin mode only): a site SQL that rewrites the
/// referenced emails and counts on ON UPDATE CASCADE for the rest left the
/// original emails in the referencing rows of a clone the hook called
/// sanitized. The hook checks every foreign key after the site SQL and fails
/// (the clone is deleted) when one no longer holds.
#[test]
fn pg_hook_fails_when_a_foreign_key_action_did_not_run() {
    let tmp = base_dir("cowfs-sanitize-pgfk-");
    let base = tmp.path();
    let ppl = people(20, 41);
    let originals: Vec<String> = ppl.iter().map(|p| p.email.clone()).collect();
    let rows: Vec<String> = ppl
        .iter()
        .enumerate()
        .map(|(i, p)| format!("({i}, '{}')", p.email))
        .collect();
    let parent = parent_cluster(
        base,
        &format!(
            "CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE);
             INSERT INTO users VALUES {};
             CREATE TABLE orders (id serial, user_email text
               REFERENCES users (email) ON UPDATE CASCADE ON DELETE SET NULL);
             INSERT INTO orders (user_email) SELECT email FROM users;",
            rows.join(",")
        ),
    );
    copy_clone(&parent.data, &base.join("clone"));
    let report = run_sql_hook(
        base,
        &base.join("clone"),
        "UPDATE users SET email = 'p' || md5(email) || '@example.invalid';\n",
    );
    match report {
        Err(SanitizeError::HookFailed { output, .. }) => {
            assert!(output.contains("orders_user_email_fkey"), "{output}")
        }
        r => panic!(
            "{r:?}: original values in the clone: {:?}",
            byte_search(&base.join("clone/pg"), &originals).len()
        ),
    }
}
