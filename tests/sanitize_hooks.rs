//! Sanitize hooks on a private mount of the clone (sanitize::run_hooks with the
//! MountTable): a hook edits a file of the clone through `$COWFS_CLONE_DIR` and sees
//! `$COWFS_BRANCH`; a hook whose `when_exists` path is missing is skipped; a hook
//! that leaves a process behind in the mount still gets its mount removed; a hook
//! that exits 3 and one that times out return errors carrying the exit code or
//! timeout and the output. After every run the private mount and its directory
//! are gone, the parent is unchanged and fsck is clean.
//!
//! Needs root and /dev/fuse (FUSE mounts).

#[path = "sanitize_support/mod.rs"]
mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cowfs::control::sanitize::{run_hooks, SanitizeConfig, SanitizeError};
use cowfs::fuse::MountTable;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use support::*;

const KEY: &[u8] = b"pool-key-for-the-hook-test-0001";

const PROFILES: &str = r#"
[[profiles.edit.hooks]]
name = "edit"
command = ["/bin/sh", "-c", "test \"$COWFS_BRANCH\" = c && sed -i s/secret/public/ \"$COWFS_CLONE_DIR/data/people.txt\" && echo edited $GREETING"]
when_exists = "data/people.txt"
env = { GREETING = "hello" }

[[profiles.edit.hooks]]
name = "skipped"
command = "exit 7"
when_exists = "pg/PG_VERSION"

[[profiles.edit.hooks]]
name = "waits for its job"
command = "(sleep 0.1; echo job done) & wait $!; echo waited"

[[profiles.leaves.hooks]]
name = "leaves a process"
command = "sleep 30 & echo left"

[[profiles.fails.hooks]]
name = "boom"
command = "echo boom; exit 3"

[[profiles.slow.hooks]]
name = "slow"
command = "echo waiting; sleep 30"
timeout_secs = 1
"#;

struct Unmount(Arc<MountTable>);

impl Drop for Unmount {
    fn drop(&mut self) {
        self.0.unmount_all();
    }
}

#[test]
fn hooks_run_on_a_private_mount_of_the_clone() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-sanitize-hooks-")
        .tempdir()
        .unwrap();
    let base = tmp.path().canonicalize().unwrap();
    let opts = PoolOptions {
        capacity_bytes: Some(1 << 30),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create(&base.join("pool"), &opts).unwrap());
    let mounts = MountTable::new(pool.clone());
    let _unmount = Unmount(mounts.clone());
    let main = pool.branch_id("main").unwrap();
    put(&pool, main, "data/people.txt", b"the secret list\n");
    pool.branch_create("c", "main").unwrap();
    let c = pool.branch_id("c").unwrap();
    let scratch = base.join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let cfg = SanitizeConfig::parse(PROFILES, Path::new("/")).unwrap();
    let clean = |what: &str| {
        assert!(mounts.list().is_empty(), "{what}: a mount is left");
        assert_eq!(
            std::fs::read_dir(&scratch).unwrap().count(),
            0,
            "{what}: the mount point is left"
        );
    };

    let reports = run_hooks(&pool, &mounts, "c", profile(&cfg, "edit"), KEY, &scratch)
        .unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["edit", "waits for its job"]);
    assert_eq!(reports[0].output, "edited hello\n");
    assert_eq!(reports[1].output, "job done\nwaited\n");
    assert_eq!(
        support::files(&pool, c)["data/people.txt"],
        b"the public list\n"
    );
    assert_eq!(
        support::files(&pool, main)["data/people.txt"],
        b"the secret list\n"
    );
    clean("success");

    let e = run_hooks(&pool, &mounts, "c", profile(&cfg, "fails"), KEY, &scratch).unwrap_err();
    match &e {
        SanitizeError::HookFailed {
            hook,
            exit_code,
            output,
            ..
        } => {
            assert_eq!(hook, "boom");
            assert_eq!(*exit_code, Some(3));
            assert_eq!(output, "boom\n");
        }
        other => panic!("{other}"),
    }
    clean("failure");

    // A process still running when its hook exited would have been killed
    // midway through whatever it did to the clone.
    let e = run_hooks(&pool, &mounts, "c", profile(&cfg, "leaves"), KEY, &scratch).unwrap_err();
    match &e {
        SanitizeError::HookLeftProcesses {
            hook,
            processes,
            output,
        } => assert_eq!(
            (hook.as_str(), *processes, output.as_str()),
            ("leaves a process", 1, "left\n")
        ),
        other => panic!("{other}"),
    }
    clean("leftovers");

    let start = Instant::now();
    let e = run_hooks(&pool, &mounts, "c", profile(&cfg, "slow"), KEY, &scratch).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(15));
    match &e {
        SanitizeError::HookTimeout {
            hook,
            timeout_secs,
            output,
        } => {
            assert_eq!((hook.as_str(), *timeout_secs), ("slow", 1));
            assert_eq!(output, "waiting\n");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("timed out after 1 s"), "{e}");
    clean("timeout");

    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// `when_exists = "pg/PG_VERSION"` with pg/ a symlink in the clone (`pg -> data/pg15`):
/// the hook must not be skipped silently (the database would reach the clone
/// unsanitized); the run fails instead.
#[test]
fn when_exists_through_a_symlink_is_not_skipped() {
    let pool = Arc::new(mem_pool(256 << 20));
    let mounts = MountTable::new(pool.clone());
    let main = pool.branch_id("main").unwrap();
    put(&pool, main, "data/pg15/PG_VERSION", b"15\n");
    pool.symlink(
        main,
        cowfs::fs::ROOT_INO,
        b"pg",
        b"data/pg15",
        Default::default(),
    )
    .unwrap();
    pool.branch_create("c", "main").unwrap();
    let cfg = SanitizeConfig::parse(
        "[[profiles.p.hooks]]\nname = \"pg\"\ncommand = \"exit 7\"\nwhen_exists = \"pg/PG_VERSION\"\n",
        Path::new("/"),
    )
    .unwrap();
    let r = run_hooks(
        &pool,
        &mounts,
        "c",
        profile(&cfg, "p"),
        KEY,
        Path::new("/nonexistent"),
    );
    assert!(r.is_err(), "the hook was skipped: {r:?}");
    assert!(mounts.list().is_empty());
}
