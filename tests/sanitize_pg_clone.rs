//! Sanitize a clone of a running PostgreSQL on cowfs (issue 5, check 2, engine
//! side): branch `main` is mounted and a PostgreSQL cluster runs at pg/ with users
//! (emails, names, phones, cards) and tables referencing users by email. The branch
//! is flushed and cloned while the server runs; the `pii` profile of
//! examples/cowfs.toml is applied to the clone: file rules through the pool API
//! (sanitize::run), then its PostgreSQL hook on a private mount of the clone
//! (sanitize::run_hooks, unmounted afterwards). Then a byte search of every file of
//! the clone's data directory, read through the engine, finds none of the original
//! values; the clone mounted and started returns the parent's join counts; the
//! parent server kept running, unchanged; fsck is clean and nothing stays mounted.
//!
//! Needs root (FUSE mounts, PostgreSQL as user postgres) and PostgreSQL 15 in
//! /usr/lib/postgresql/15/bin (`.ci/run` installs it).

#[path = "sanitize_support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use cowfs::control::sanitize::{self, run_hooks};
use cowfs::fuse::MountTable;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use support::pg::{join_counts, load_example_schema, pg_dir, Cluster};
use support::*;

const KEY: &[u8] = b"pool-key-for-the-pg-clone-test-01";

/// Unmounts everything, also when the test fails (declared before the servers, so
/// that they are killed first).
struct Unmount(Arc<MountTable>);

impl Drop for Unmount {
    fn drop(&mut self) {
        self.0.unmount_all();
    }
}

#[test]
fn sanitized_clone_of_a_running_cluster() {
    let _ = env_logger::builder().is_test(true).try_init();
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-clone-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let opts = PoolOptions {
        capacity_bytes: Some(4 << 30),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create(&base.join("pool"), &opts).unwrap());
    let mounts = MountTable::new(pool.clone());
    let _unmount = Unmount(mounts.clone());
    let mnt = base.join("main");
    std::fs::create_dir(&mnt).unwrap();
    mounts.mount("main", &mnt, false).unwrap();

    let ppl = people(200, 23);
    let originals = originals(&ppl);
    pg_dir(&mnt.join("pg"), 0o700);
    let parent = Cluster::new(&mnt.join("pg"), &base.join("sock-parent"), true);
    let parent_server = parent.start();
    load_example_schema(&parent, &ppl);
    let counts = join_counts(&parent);
    let rows_sql = "SELECT string_agg(email || phone || card || name, ',' ORDER BY id) FROM users";
    let parent_rows = parent.sql("app", rows_sql);

    // Clone while the parent runs, as `branch create --sanitize pii` does.
    // A syncfs right after PostgreSQL deleted files can report ENOENT once: the
    // kernel writes back pages of files already unlinked and freed (a FUSE-layer
    // issue, reported). The flush is complete when one syncfs succeeds.
    let synced = (0..3).any(|_| mounts.sync_branch("main").is_ok());
    assert!(synced, "syncfs of the parent's mount keeps failing");
    pool.branch_create("agent-1", "main").unwrap();
    let cfg = example_config();
    let pii = profile(&cfg, "pii");
    let report = sanitize::run(&pool, "agent-1", pii, KEY, &mut |_| {}).unwrap();
    assert!(
        report.values_replaced.is_empty(),
        "pg/ is left to the hook: {report:?}"
    );
    let scratch = base.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let hooks =
        run_hooks(&pool, &mounts, "agent-1", pii, KEY, &scratch).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(hooks.len(), 1, "the postgresql hook ran");
    assert_eq!(mounts.list().len(), 1, "the private mount is gone");
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "its mount point is removed"
    );

    // Every file of the clone's data directory, read through the engine.
    let clone_id = pool.branch_id("agent-1").unwrap();
    let clone_files = support::files(&pool, clone_id);
    let re = any_of(&originals);
    let mut left = Vec::new();
    for (path, data) in clone_files.iter().filter(|(p, _)| p.starts_with("pg/")) {
        for m in re.find_iter(data) {
            left.push((
                String::from_utf8_lossy(m.as_bytes()).into_owned(),
                path.clone(),
            ));
        }
    }
    assert!(
        left.is_empty(),
        "original values in the clone: {:?}",
        &left[..left.len().min(20)]
    );
    // ... while the parent's files hold them (the search sees them).
    let parent_files = support::files(&pool, pool.branch_id("main").unwrap());
    let seen = parent_files.values().filter(|d| re.is_match(d)).count();
    assert!(seen > 0, "the parent's files hold the original values");

    // The clone starts and keeps the relations.
    let cmnt = base.join("clone");
    std::fs::create_dir(&cmnt).unwrap();
    mounts.mount("agent-1", &cmnt, false).unwrap();
    {
        let clone = Cluster::new(&cmnt.join("pg"), &base.join("sock-clone"), false);
        let server = clone.start();
        assert_eq!(join_counts(&clone), counts);
        let emails = clone.sql("app", "SELECT email FROM users ORDER BY id");
        for e in emails.lines() {
            assert!(valid_email(e) && e.ends_with(".example"), "{e}");
        }
        server.stop();
    }
    mounts.unmount(&cmnt).unwrap();

    // The parent kept running, unchanged.
    assert_eq!(parent.sql("app", rows_sql), parent_rows);
    assert_eq!(join_counts(&parent), counts);
    parent_server.stop();
    mounts.unmount(&mnt).unwrap();
    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}
