//! Sanitize, the example PostgreSQL hook's foreign-key check: the site SQL runs
//! in replica mode, where foreign keys are neither checked nor act (ON UPDATE
//! CASCADE, ON DELETE SET NULL), so after it the hook checks that it broke no
//! key. A key added NOT VALID may hold violating rows from before (PostgreSQL
//! checks only new writes to it): those are tolerated, new ones are not. MATCH
//! FULL keys are violated by a row with some, not all, key columns NULL.
//!
//! Needs root (runs PostgreSQL as user postgres) and PostgreSQL 15 in
//! /usr/lib/postgresql/15/bin (`.ci/run` installs it).

#[path = "sanitize_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use cowfs::control::sanitize::{HookReport, SanitizeError};
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

/// The hook's output when it failed; a panic when it did not.
fn failure_output(r: Result<HookReport, SanitizeError>) -> String {
    match r {
        Err(SanitizeError::HookFailed { output, .. }) => output,
        r => panic!("the hook did not fail: {r:?}"),
    }
}

/// Names of the schemas of database postgres in the sanitized clone `clone`
/// that are not PostgreSQL's own.
fn clone_schemas(base: &Path, clone: &Path) -> String {
    let c = Cluster::new(&clone.join("pg"), &base.join("sock-clone"), false);
    let server = c.start();
    let s = c.sql(
        "postgres",
        "SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace
          WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'",
    );
    server.stop();
    s
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

/// Users and orders referencing them by email through a key added NOT VALID,
/// with an order of a user that was deleted before the key was added (the
/// orphan); and a two-column MATCH FULL key added NOT VALID with a row that has
/// one of its columns NULL (a violation under MATCH FULL) from before.
const NOT_VALID_SCHEMA: &str = "
    CREATE TABLE users (id int PRIMARY KEY, email text UNIQUE, name text);
    INSERT INTO users SELECT i, 'user' || i || '@corp.test', 'Name ' || i
      FROM generate_series(1, 10) i;
    CREATE TABLE orders (id int PRIMARY KEY, user_email text);
    INSERT INTO orders SELECT i, 'user' || (i % 10 + 1) || '@corp.test'
      FROM generate_series(1, 30) i;
    INSERT INTO orders VALUES (99, 'gone@corp.test');
    ALTER TABLE orders ADD CONSTRAINT orders_user_fk
      FOREIGN KEY (user_email) REFERENCES users (email) NOT VALID;
    CREATE TABLE regions (country text, code int, PRIMARY KEY (country, code));
    INSERT INTO regions VALUES ('fr', 1), ('fr', 2);
    CREATE TABLE sites (id int, country text, code int);
    INSERT INTO sites VALUES (1, 'fr', 1), (2, 'fr', NULL);
    ALTER TABLE sites ADD CONSTRAINT sites_region_fk
      FOREIGN KEY (country, code) REFERENCES regions MATCH FULL NOT VALID;";

/// A NOT VALID key may hold violating rows from before it was added: PostgreSQL
/// checks only new writes to it. The hook's check failed every sanitize of such
/// a cluster, though the site SQL broke nothing. The violations that were there
/// before the site SQL are tolerated, and stay; the hook's own bookkeeping
/// leaves nothing in the clone.
#[test]
fn pg_hook_tolerates_what_a_not_valid_key_held_before() {
    let tmp = base_dir("cowfs-sanitize-pgnv-");
    let base = tmp.path();
    let parent = parent_cluster(base, NOT_VALID_SCHEMA);
    copy_clone(&parent.data, &base.join("clone"));
    // Rewrites every email that has a user, in both tables; the orphan's has
    // none and is left as it is.
    let report = run_sql_hook(
        base,
        &base.join("clone"),
        "UPDATE orders o SET user_email = 'p' || md5(o.user_email) || '@example.invalid'
           FROM users u WHERE u.email = o.user_email;
         UPDATE users SET email = 'p' || md5(email) || '@example.invalid',
                          name = 'Person ' || md5(name);
         UPDATE sites SET code = 2 WHERE id = 1;\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("sanitized"), "{}", report.output);

    let clone = Cluster::new(&base.join("clone/pg"), &base.join("sock-clone"), false);
    let server = clone.start();
    assert_eq!(
        clone.sql(
            "postgres",
            "SELECT (SELECT count(*) FROM orders o JOIN users u ON u.email = o.user_email),
                    (SELECT string_agg(user_email, ',') FROM orders WHERE id = 99),
                    (SELECT count(*) FROM sites WHERE code IS NULL)"
        ),
        "30|gone@corp.test|1"
    );
    server.stop();
    assert_eq!(clone_schemas(base, &base.join("clone")), "public");
}

/// Tolerating a NOT VALID key's old violations must not tolerate new ones: the
/// site SQL rewrites the referenced emails without the referencing ones (what
/// PostgreSQL refuses in origin mode, NOT VALID or not), and the hook fails
/// naming the key; the other NOT VALID key, whose old violation is still
/// there, is not named. The hook's schema is dropped anyway.
#[test]
fn pg_hook_fails_when_the_site_sql_breaks_a_not_valid_key() {
    let tmp = base_dir("cowfs-sanitize-pgnvb-");
    let base = tmp.path();
    let parent = parent_cluster(base, NOT_VALID_SCHEMA);
    copy_clone(&parent.data, &base.join("clone"));
    let output = failure_output(run_sql_hook(
        base,
        &base.join("clone"),
        "UPDATE users SET email = 'p' || md5(email) || '@example.invalid';\n",
    ));
    assert!(output.contains("orders_user_fk"), "{output}");
    assert!(!output.contains("sites_region_fk"), "{output}");
    assert_eq!(clone_schemas(base, &base.join("clone")), "public");
}

/// Keys over two columns: MATCH FULL (all NULL or none) and MATCH SIMPLE (any
/// NULL exempts the row), both validated.
const MATCH_SCHEMA: &str = "
    CREATE TABLE regions (country text, code int, PRIMARY KEY (country, code));
    INSERT INTO regions VALUES ('fr', 1), ('fr', 2);
    CREATE TABLE full_ref (id int, country text, code int,
      CONSTRAINT full_ref_fk FOREIGN KEY (country, code) REFERENCES regions MATCH FULL);
    INSERT INTO full_ref VALUES (1, 'fr', 1), (2, NULL, NULL);
    CREATE TABLE simple_ref (id int, country text, code int,
      CONSTRAINT simple_ref_fk FOREIGN KEY (country, code) REFERENCES regions);
    INSERT INTO simple_ref VALUES (1, 'fr', 1), (2, 'de', NULL);";

/// A row with some but not all of a MATCH FULL key's columns NULL violates it
/// (PostgreSQL refuses it in origin mode); the check took every row with a NULL
/// as exempt, as MATCH SIMPLE does, and let a site SQL that nulled one column
/// of such a key pass. Rows MATCH SIMPLE exempts, and all-NULL rows of a MATCH
/// FULL key, still pass.
#[test]
fn pg_hook_checks_match_full_keys_with_some_columns_null() {
    let tmp = base_dir("cowfs-sanitize-pgmf-");
    let base = tmp.path();
    let parent = parent_cluster(base, MATCH_SCHEMA);

    copy_clone(&parent.data, &base.join("clone-ok"));
    let report = run_sql_hook(
        base,
        &base.join("clone-ok"),
        "UPDATE full_ref SET country = NULL, code = NULL WHERE id = 1;
         UPDATE simple_ref SET country = 'xx' WHERE id = 2;
         UPDATE simple_ref SET code = NULL WHERE id = 1;\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("sanitized"), "{}", report.output);

    copy_clone(&parent.data, &base.join("clone-bad"));
    let output = failure_output(run_sql_hook(
        base,
        &base.join("clone-bad"),
        "UPDATE full_ref SET code = NULL WHERE id = 1;\n",
    ));
    assert!(output.contains("full_ref_fk"), "{output}");
    assert!(!output.contains("simple_ref_fk"), "{output}");
}

/// Orders referencing a partitioned table of users, whose rows are in two
/// partitions; and a partitioned table of visits referencing it too.
const PARTITIONED_SCHEMA: &str = "
    CREATE TABLE users (id int PRIMARY KEY, email text) PARTITION BY RANGE (id);
    CREATE TABLE users_low PARTITION OF users FOR VALUES FROM (0) TO (10);
    CREATE TABLE users_high PARTITION OF users FOR VALUES FROM (10) TO (20);
    INSERT INTO users VALUES (1, 'low@corp.test'), (15, 'high@corp.test');
    CREATE TABLE orders (id int, user_id int REFERENCES users);
    INSERT INTO orders VALUES (1, 1), (2, 15);
    CREATE TABLE visits (user_id int REFERENCES users) PARTITION BY RANGE (user_id);
    CREATE TABLE visits_low PARTITION OF visits FOR VALUES FROM (0) TO (10);
    CREATE TABLE visits_high PARTITION OF visits FOR VALUES FROM (10) TO (20);
    INSERT INTO visits VALUES (1), (15);";

/// A key that references a partitioned table has, besides its own row in
/// pg_constraint, one per partition of the referenced table, on the same
/// referencing table (PostgreSQL's bookkeeping for the actions): `orders`
/// referencing `users` has keys to `users_low` and to `users_high`. The check
/// took each for a key of its own, and an order of a user in `users_high`
/// violated the one to `users_low`: every sanitize of such a cluster failed,
/// though the site SQL broke nothing. A row whose user is gone from every
/// partition still fails the hook, naming the key.
#[test]
fn pg_hook_checks_a_key_to_a_partitioned_table_once() {
    let tmp = base_dir("cowfs-sanitize-pgpart-");
    let base = tmp.path();
    let parent = parent_cluster(base, PARTITIONED_SCHEMA);

    copy_clone(&parent.data, &base.join("clone-ok"));
    let report = run_sql_hook(
        base,
        &base.join("clone-ok"),
        "UPDATE users SET email = 'p' || md5(email) || '@example.invalid';\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("sanitized"), "{}", report.output);

    copy_clone(&parent.data, &base.join("clone-bad"));
    let output = failure_output(run_sql_hook(
        base,
        &base.join("clone-bad"),
        "DELETE FROM users WHERE id = 15;\n",
    ));
    assert!(
        output.contains("orders_user_id_fkey of public.orders")
            && output.contains("visits_user_id_fkey of public.visits_high"),
        "{output}"
    );
    assert!(!output.contains("visits_low"), "{output}");
    assert!(!output.contains("orders_user_id_fkey1"), "{output}");
}
