//! Sanitize, the example MariaDB hook (examples/mariadb-sanitize-hook.sh) on a
//! real data directory (native filesystem): a server with a binary log holds
//! users (emails, names, phones, cards), orders and tickets referencing users by
//! email with ON UPDATE CASCADE, old row versions, an audit trigger, a view, a
//! procedure and an account; its data directory is copied as a "clone" and the
//! `mariadb` hook of examples/cowfs.toml runs on it through the hook runner.
//! Before the hook every original value is found by a byte search of the clone's
//! files (so the search can see them); after it, none is found in any file
//! (tables, undo and redo logs, binary log); the clone starts, its joins return
//! the parent's row counts, its values are valid pseudonyms (its emails exactly
//! the file rules' pseudonyms under the same pool key), the trigger, view,
//! procedure and account are there and the trigger did not fire during the run.
//! The parent is unchanged.
//!
//! Needs root (runs the server as user mysql) and mariadb-server (`.ci/run`
//! installs it).

#[path = "mariadb_support/mod.rs"]
mod mariadb_support;
#[path = "sanitize_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use cowfs::control::sanitize::pseudo::hook_key_hex;
use cowfs::control::sanitize::{run_hook, HookReport, SanitizeError};
use mariadb_support::{chown_mysql, install_db, join_counts, load_example_schema, Server};
use support::pg::byte_search;
use support::*;

/// A directory the server's user can reach (tempdir makes 0700 ones).
fn open_dir(p: &Path) {
    std::fs::create_dir_all(p).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `clone/mysql`: a copy of the stopped server's data directory `data`, as a
/// cowfs branch would hold it.
fn copy_clone(data: &Path, clone: &Path) {
    open_dir(clone);
    let st = Command::new("cp")
        .arg("-a")
        .arg(data)
        .arg(clone.join("mysql"))
        .status()
        .unwrap();
    assert!(st.success());
}

/// A scratch directory for one test, removed when it ends.
fn scratch(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// The `mariadb` hook of examples/cowfs.toml's `pii` profile, run on `clone` with
/// the hook key of `pool_key`.
fn run_example_hook(clone: &Path, pool_key: &[u8]) -> Result<HookReport, SanitizeError> {
    let cfg = example_config();
    let hook = profile(&cfg, "pii")
        .hooks
        .iter()
        .find(|h| h.name == "mariadb")
        .expect("the pii profile has the mariadb hook");
    run_hook(hook, clone, "clone", &hook_key_hex(pool_key).unwrap())
}

#[test]
fn mariadb_hook_leaves_no_original_value_in_the_data_directory() {
    let tmp = scratch("cowfs-sanitize-mariadb-");
    let base = tmp.path();
    open_dir(base);
    let ppl = people(200, 17);
    let originals = originals(&ppl);

    open_dir(&base.join("parent"));
    let data = base.join("parent/mysql");
    install_db(&data, &base.join("run-install"));
    let binlog = format!("--log-bin={}", data.join("binlog").display());
    let server = Server::start_with(&data, &base.join("run-parent"), &[&binlog, "--server-id=1"]);
    load_example_schema(&server, &example_inserts(&ppl));
    let counts = join_counts(&server);
    let parent_rows =
        server.sql("SELECT GROUP_CONCAT(email, phone, card, name ORDER BY id) FROM app.users");
    server.stop();

    copy_clone(&data, &base.join("clone"));
    let before = byte_search(&base.join("clone/mysql"), &originals);
    for v in &originals {
        assert!(
            before.iter().any(|(f, _)| f == v),
            "{v} is not in the data directory before the hook: the search cannot see it"
        );
    }
    for file in ["binlog.000001", "ib_logfile0"] {
        assert!(
            before.iter().any(|(_, p)| p.ends_with(file)),
            "{file} holds no original value before the hook: {:?}",
            before
                .iter()
                .map(|(_, p)| p)
                .collect::<std::collections::BTreeSet<_>>()
        );
    }

    let pool_key = b"pool-key-for-the-mariadb-hook-test";
    let report = run_example_hook(&base.join("clone"), pool_key).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("sanitized"), "{}", report.output);

    let after = byte_search(&base.join("clone"), &originals);
    assert!(
        after.is_empty(),
        "original values left in the clone: {:?}",
        &after[..after.len().min(20)]
    );
    let leftovers: Vec<_> = std::fs::read_dir(base.join("clone"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers,
        ["mysql"],
        "the hook left files beside the data directory"
    );

    let server = Server::start(&base.join("clone/mysql"), &base.join("run-clone"));
    assert_eq!(join_counts(&server), counts);
    let rows = server.sql("SELECT email, name, phone, card FROM app.users ORDER BY id");
    // The emails are the very pseudonyms the file rules give them.
    assert_example_pseudonyms(&rows, '\t', &ppl, pool_key);
    // The schema came along whole; the audit trigger did not fire during the run
    // (it would have copied every original email into audit), and fires now.
    assert_eq!(server.sql("SELECT COUNT(*) FROM app.audit"), "0");
    assert_eq!(
        server.sql(
            "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = 'app'"
        ),
        "users_audit"
    );
    assert_eq!(
        server.sql("SELECT COUNT(*) FROM app.big_orders"),
        server.sql("SELECT COUNT(*) FROM app.orders WHERE amount > 100")
    );
    assert_eq!(
        server.sql("CALL app.order_count(@n); SELECT @n"),
        (ppl.len() * 3).to_string()
    );
    assert!(server
        .sql("SHOW GRANTS FOR 'app'@'localhost'")
        .contains("`app`.*"));
    server.sql("UPDATE app.users SET name = 'x' WHERE id = 0");
    assert_eq!(server.sql("SELECT COUNT(*) FROM app.audit"), "1");
    assert_eq!(
        server
            .sql("CHECK TABLE app.users, app.orders, app.tickets EXTENDED")
            .matches("\tOK")
            .count(),
        3
    );
    server.stop();

    let server = Server::start(&data, &base.join("run-parent"));
    assert_eq!(
        server.sql("SELECT GROUP_CONCAT(email, phone, card, name ORDER BY id) FROM app.users"),
        parent_rows
    );
    server.stop();
}

/// A table whose file lives outside the data directory (InnoDB's DATA
/// DIRECTORY leaves an .isl file naming it): in a clone that path is still the
/// parent's own file, which a server started on the clone would write (here the
/// site SQL's UPDATE of users would rewrite the parent's rows). The hook refuses
/// such a clone, naming the file, before starting anything.
#[test]
fn mariadb_hook_refuses_a_table_file_outside_the_clone() {
    let tmp = scratch("cowfs-sanitize-mariadb-isl-");
    let base = tmp.path();
    open_dir(base);
    open_dir(&base.join("parent"));
    let data = base.join("parent/mysql");
    install_db(&data, &base.join("run-install"));
    let outside = base.join("tablespaces");
    open_dir(&outside);
    chown_mysql(&outside);
    let server = Server::start(&data, &base.join("run-parent"));
    server.sql(&format!(
        "CREATE DATABASE app;
         CREATE TABLE app.users (id INT PRIMARY KEY, email VARCHAR(200) UNIQUE NOT NULL,
                                 name TEXT, phone VARCHAR(40), card VARCHAR(40))
           ENGINE=InnoDB DATA DIRECTORY='{}';
         INSERT INTO app.users VALUES (1, 'ann@example.com', 'ANN LEE', '312-555-0100', '4111 1111 1111 1111')",
        outside.display()
    ));
    server.stop();
    let ibd = outside.join("app/users.ibd");
    let before = std::fs::read(&ibd).unwrap();

    copy_clone(&data, &base.join("clone"));
    let pool_key = b"0123456789abcdef";
    let e = run_example_hook(&base.join("clone"), pool_key)
        .expect_err("the hook ran on a clone whose table file is the parent's");
    assert!(
        e.to_string()
            .contains("users.isl: a table file outside the data directory"),
        "{e}"
    );
    assert!(
        std::fs::read(&ibd).unwrap() == before,
        "the parent's table file changed"
    );
    let server = Server::start(&data, &base.join("run-parent"));
    assert_eq!(server.sql("SELECT email FROM app.users"), "ann@example.com");
    server.stop();
}

/// The clone's database names reach mariadb-dump's command line: one named like
/// an option would be taken for it. `--dump-history` copied the history rows of
/// a system-versioned table, which hold the values the site SQL replaced (seen:
/// the original emails in the fresh data directory). The hook refuses such a
/// name.
#[test]
fn mariadb_hook_refuses_a_database_named_like_an_option() {
    let tmp = scratch("cowfs-sanitize-mariadb-opt-");
    let base = tmp.path();
    let ppl = people(4, 5);
    example_clone(
        base,
        &ppl,
        &[],
        "ALTER TABLE app.users ADD SYSTEM VERSIONING; CREATE DATABASE `--dump-history`",
    );
    let pool_key = b"0123456789abcdef";
    // (A failed hook's clone is deleted by the daemon: its files are not checked.)
    let e = run_example_hook(&base.join("clone"), pool_key)
        .expect_err("the hook ran with a database named --dump-history");
    assert!(e.to_string().contains("starts with '-'"), "{e}");
}

/// A stopped parent at `base/parent/mysql` with the example schema of `ppl`,
/// started with `extra` server options; copied to `base/clone/mysql`.
fn example_clone(base: &Path, ppl: &[Person], extra: &[&str], then: &str) {
    open_dir(base);
    open_dir(&base.join("parent"));
    let data = base.join("parent/mysql");
    install_db(&data, &base.join("run-install"));
    let server = Server::start_with(&data, &base.join("run-parent"), extra);
    load_example_schema(&server, &example_inserts(ppl));
    if !then.is_empty() {
        server.sql(then);
    }
    server.stop();
    copy_clone(&data, &base.join("clone"));
}

/// The clone's binary log index names the log the hook's server continues; its
/// first entry is checked to be `./NAME.000001`, but `*` in a shell pattern
/// matches `/` too: `./../stash/binlog.000001` (a directory of the clone the
/// server's user may write) made the server write its binary log (the site
/// SQL's statements and the `@cowfs_key` they set) into the clone beside the
/// data directory, where the fresh copy does not replace it. The hook refuses
/// an index entry that is not a plain file name in the data directory.
#[test]
fn mariadb_hook_refuses_a_binary_log_outside_the_data_directory() {
    let tmp = scratch("cowfs-sanitize-mariadb-binlog-");
    let base = tmp.path();
    let ppl = people(4, 7);
    let data = base.join("parent/mysql");
    let binlog = format!("--log-bin={}", data.join("binlog").display());
    example_clone(base, &ppl, &[&binlog, "--server-id=1"], "");
    let clone = base.join("clone");
    let stash = clone.join("stash");
    open_dir(&stash);
    chown_mysql(&stash);
    std::fs::rename(
        clone.join("mysql/binlog.000001"),
        stash.join("binlog.000001"),
    )
    .unwrap();
    std::fs::write(
        clone.join("mysql/binlog.index"),
        "./../stash/binlog.000001\n",
    )
    .unwrap();

    let pool_key = b"0123456789abcdef";
    let e = match run_example_hook(&clone, pool_key) {
        Err(e) => e,
        Ok(_) => panic!(
            "the hook ran with a binary log outside the data directory; it left {:?}",
            std::fs::read_dir(&stash)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        ),
    };
    assert!(
        e.to_string().contains("not a file of the data directory"),
        "{e}"
    );
}

/// A clone of a server holding a prepared XA transaction (an external
/// transaction manager had not yet committed it): the transaction survives the
/// restart with its row locks, and the site SQL's UPDATE of users waited for
/// them until the lock wait timeout failed the hook. The hook rolls such
/// transactions back (they were not committed when the branch was taken); the
/// row keeps its committed value, rewritten.
#[test]
fn mariadb_hook_rolls_back_prepared_xa_transactions() {
    let tmp = scratch("cowfs-sanitize-mariadb-xa-");
    let base = tmp.path();
    let ppl = people(4, 11);
    example_clone(
        base,
        &ppl,
        &[],
        "XA START 'cowfs-test'; UPDATE app.users SET name = 'pending' WHERE id = 1;
         XA END 'cowfs-test'; XA PREPARE 'cowfs-test'",
    );
    let clone = base.join("clone");

    let pool_key = b"0123456789abcdef";
    let report = run_example_hook(&clone, pool_key).unwrap_or_else(|e| panic!("{e}"));
    assert!(report.output.contains("rolled back"), "{}", report.output);
    let after = byte_search(&clone, &originals(&ppl));
    assert!(after.is_empty(), "original values left: {after:?}");

    let server = Server::start(&clone.join("mysql"), &base.join("run-clone"));
    assert_eq!(server.sql("XA RECOVER"), "");
    let rows = server.sql("SELECT email, name, phone, card FROM app.users ORDER BY id");
    assert_example_pseudonyms(&rows, '\t', &ppl, pool_key);
    server.stop();
}

/// Trigger names with a backslash or a newline: the client's batch output
/// escapes them (`\\`, `\n`), so the DROP TRIGGER statements the hook built from
/// it named triggers that do not exist and the hook failed. Both triggers are
/// dropped for the run (neither fires) and restored whole.
#[test]
fn mariadb_hook_drops_and_restores_triggers_with_odd_names() {
    let tmp = scratch("cowfs-sanitize-mariadb-trg-");
    let base = tmp.path();
    let ppl = people(4, 13);
    example_clone(
        base,
        &ppl,
        &[],
        "CREATE TRIGGER app.`audit\\x` BEFORE UPDATE ON app.users FOR EACH ROW
           INSERT INTO app.audit (old_email) VALUES (OLD.email);
         CREATE TRIGGER app.`audit\nline` AFTER UPDATE ON app.users FOR EACH ROW
           INSERT INTO app.audit (old_email) VALUES (OLD.email);",
    );
    let clone = base.join("clone");

    let pool_key = b"0123456789abcdef";
    run_example_hook(&clone, pool_key).unwrap_or_else(|e| panic!("{e}"));
    let after = byte_search(&clone, &originals(&ppl));
    assert!(after.is_empty(), "original values left: {after:?}");

    let server = Server::start(&clone.join("mysql"), &base.join("run-clone"));
    assert_eq!(server.sql("SELECT COUNT(*) FROM app.audit"), "0");
    assert_eq!(
        server.sql(
            "SELECT GROUP_CONCAT(HEX(trigger_name) ORDER BY trigger_name)
               FROM information_schema.triggers WHERE trigger_schema = 'app'"
        ),
        server.sql(
            "SELECT CONCAT_WS(',', HEX('audit\\nline'), HEX('audit\\\\x'), HEX('users_audit'))"
        )
    );
    server.stop();
}

/// A server with many databases (one per tenant): the hook looked for
/// MARIADB_SANITIZE_DB with `printf ... | grep -q` under `pipefail`; grep
/// stops at the first match, printf then dies of SIGPIPE once the names
/// outgrow the pipe's buffer (64 KiB), and the hook reported that the clone has
/// no database `app`. 1,100 names of 63 bytes are past that buffer.
#[test]
fn mariadb_hook_finds_its_database_among_many() {
    let tmp = scratch("cowfs-sanitize-mariadb-many-");
    let base = tmp.path();
    let ppl = people(4, 17);
    let tenants: String = (0..1100)
        .map(|i| format!("CREATE DATABASE tenant_{i:056};"))
        .collect();
    example_clone(base, &ppl, &[], &tenants);
    let clone = base.join("clone");

    let pool_key = b"0123456789abcdef";
    run_example_hook(&clone, pool_key).unwrap_or_else(|e| panic!("{e}"));
    let server = Server::start(&clone.join("mysql"), &base.join("run-clone"));
    assert_eq!(
        server.sql(
            "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name LIKE 'tenant\\_%'"
        ),
        "1100"
    );
    let rows = server.sql("SELECT email, name, phone, card FROM app.users ORDER BY id");
    assert_example_pseudonyms(&rows, '\t', &ppl, pool_key);
    server.stop();
}

/// The hook lists the clone's databases one per line: a database named
/// "x<newline>mysql" beside `x` read as `x` and `mysql`, and the dump of
/// the "clone's databases" then copied the whole `mysql` database, whose
/// `column_stats` (filled by ANALYZE ... PERSISTENT FOR ALL) hold the minimum,
/// maximum and histogram of every column: original emails and names in the
/// fresh data directory. The hook refuses a database name with a line break.
#[test]
fn mariadb_hook_refuses_a_database_name_with_a_line_break() {
    let tmp = scratch("cowfs-sanitize-mariadb-nl-");
    let base = tmp.path();
    let ppl = people(20, 19);
    example_clone(
        base,
        &ppl,
        &[],
        "ANALYZE TABLE app.users PERSISTENT FOR ALL; CREATE DATABASE x; CREATE DATABASE `x\nmysql`",
    );
    let clone = base.join("clone");

    let pool_key = b"0123456789abcdef";
    let e = match run_example_hook(&clone, pool_key) {
        Err(e) => e,
        Ok(_) => panic!(
            "the hook ran with a database named x<newline>mysql; original values it left: {:?}",
            byte_search(&clone, &originals(&ppl))
        ),
    };
    assert!(e.to_string().contains("line break"), "{e}");
}
