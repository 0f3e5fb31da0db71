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
use cowfs::control::sanitize::run_hook;
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

fn mariadb_hook(
    cfg: &cowfs::control::sanitize::SanitizeConfig,
) -> &cowfs::control::sanitize::config::Hook {
    profile(cfg, "pii")
        .hooks
        .iter()
        .find(|h| h.name == "mariadb")
        .expect("the pii profile has the mariadb hook")
}

#[test]
fn mariadb_hook_leaves_no_original_value_in_the_data_directory() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-mariadb-")
        .tempdir()
        .unwrap();
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

    let cfg = example_config();
    let pool_key = b"pool-key-for-the-mariadb-hook-test";
    let key = hook_key_hex(pool_key).unwrap();
    let report = run_hook(mariadb_hook(&cfg), &base.join("clone"), "clone", &key)
        .unwrap_or_else(|e| panic!("{e}"));
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
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-mariadb-isl-")
        .tempdir()
        .unwrap();
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
    let cfg = example_config();
    let key = hook_key_hex(b"0123456789abcdef").unwrap();
    let e = run_hook(mariadb_hook(&cfg), &base.join("clone"), "clone", &key)
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
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-mariadb-opt-")
        .tempdir()
        .unwrap();
    let base = tmp.path();
    open_dir(base);
    open_dir(&base.join("parent"));
    let data = base.join("parent/mysql");
    install_db(&data, &base.join("run-install"));
    let ppl = people(4, 5);
    let server = Server::start(&data, &base.join("run-parent"));
    load_example_schema(&server, &example_inserts(&ppl));
    server.sql("ALTER TABLE app.users ADD SYSTEM VERSIONING; CREATE DATABASE `--dump-history`");
    server.stop();

    copy_clone(&data, &base.join("clone"));
    let cfg = example_config();
    let key = hook_key_hex(b"0123456789abcdef").unwrap();
    // (A failed hook's clone is deleted by the daemon: its files are not checked.)
    let e = run_hook(mariadb_hook(&cfg), &base.join("clone"), "clone", &key)
        .expect_err("the hook ran with a database named --dump-history");
    assert!(e.to_string().contains("starts with '-'"), "{e}");
}
