//! `POOL.sanitize-state` across daemon restarts: a start deletes the clones whose
//! sanitizing never finished, and only those, whatever name a branch has now.
//! Needs root and /dev/fuse (the control server's mount table).

mod control_support;

use std::os::unix::fs::PermissionsExt;

use control_support::{test_dir, Daemon};
use cowfs::control::sanitizing::{state_path, SanitizeState};
use cowfs::fs::Owner;
use cowfs::pool::{Pool, PoolOptions};

fn names(d: &Daemon) -> Vec<String> {
    let mut n: Vec<String> = d.pool.list().into_iter().map(|b| b.name).collect();
    n.sort();
    n
}

/// A state file written by hand, as the daemon writes it (mode 0600).
fn write_state(d: &Daemon, json: &str) {
    let path = state_path(&d.pool_path);
    std::fs::write(&path, json).expect("write state");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// A state file of the first layout, whose `sanitizing` entries could name a clone
/// by name alone (left so when a write of the file failed while the daemon went
/// on), is upgraded, not refused. A name-only entry is the clone an earlier daemon
/// was creating only if that branch has no owner (sanitized clones get theirs
/// when ready; branches created through the daemon always have one): a user's
/// branch created later under that name is kept. It is settled once, when the
/// file is first read (here by `cowfs mount`'s check): a branch a program that
/// links the library creates afterwards under that name has no owner either,
/// and is kept.
#[test]
fn name_only_entries_of_the_first_layout_never_delete_a_later_branch() {
    let mut d = Daemon::start();
    let mut admin = d.admin_client();
    admin
        .branch_create("agent-1", "main", None)
        .expect("good branch");
    // Left by an earlier daemon that stopped while creating it: no owner yet.
    d.pool
        .branch_create("half", "main")
        .expect("unfinished clone");
    let gone = d.pool.branch_create("gone", "main").expect("clone");
    d.pool.branch_delete("gone").expect("delete");
    drop(admin);
    write_state(
        &d,
        &format!(
            r#"{{"version": 1,
                "sanitizing": [{{"name": "agent-1"}}, {{"name": "half"}}, {{"name": "later"}},
                               {{"name": "gone", "id": {gone}}}],
                "require": [{{"branch": 1, "profile": "pii"}}]}}"#
        ),
    );
    SanitizeState::open(&d.pool).expect("read as cowfs mount does");
    d.pool
        .branch_create("later", "main")
        .expect("a library user's branch");
    d.restart();
    assert_eq!(
        names(&d),
        ["agent-1", "later", "main"],
        "only the unfinished clone went"
    );
    let text = std::fs::read_to_string(state_path(&d.pool_path)).expect("state");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["version"], 2, "{text}");
    assert_eq!(v["sanitizing"], serde_json::json!([]), "{text}");
    assert_eq!(
        v["require"],
        serde_json::json!([{"branch": 1, "profile": "pii"}]),
        "requirements survive the upgrade: {text}"
    );
    d.restart();
    assert_eq!(names(&d), ["agent-1", "later", "main"]);
}

/// A daemon that dies right after recording a clone's id, before the commit that
/// creates the clone, must not leave an id the pool can hand out again: a program
/// that links the library and creates a branch before the next daemon start would
/// get it, and that start would delete the program's branch as the unfinished
/// clone.
#[test]
fn an_id_recorded_before_a_crash_is_never_given_to_another_branch() {
    let live = test_dir();
    let live_pool = live.path().join("pool");
    let crashed = test_dir();
    let crashed_pool = crashed.path().canonicalize().expect("tmp").join("pool");
    let opts = PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    };
    let pool = Pool::create(&live_pool, &opts).expect("create pool");
    // Nothing left to commit, as in a daemon whose commit timer ran: the id must
    // be committed all the same.
    pool.commit().expect("seal");
    let state = SanitizeState::open(&pool).expect("state");
    pool.branch_create_recorded("clone", "main", |id| {
        // What the daemon records, then what is on disk if it dies now.
        state.begin(id, "clone").expect("record");
        std::fs::copy(&live_pool, &crashed_pool).expect("copy pool");
        std::fs::copy(state_path(&live_pool), state_path(&crashed_pool)).expect("copy state");
        Ok(())
    })
    .expect("clone");
    // Closing commits; the copies above are what a crash would have left.
    drop(pool);

    let lib = Pool::open(&crashed_pool, &PoolOptions::default()).expect("open after crash");
    assert!(lib.info("clone").is_err(), "the clone was never committed");
    let mine = lib.branch_create("mine", "main").expect("library branch");
    let f = lib
        .mknod(mine, 1, b"data", libc::S_IFREG | 0o644, 0, Owner::default())
        .expect("mknod");
    lib.write_file(mine, f.ino, 0, b"keep me").expect("write");
    lib.commit().expect("commit");

    let d = Daemon::start_on(crashed, lib, None);
    let mine = d
        .pool
        .branch_id("mine")
        .expect("the library's branch survives");
    let f = d.pool.lookup(mine, 1, b"data").expect("with its file");
    assert_eq!(
        d.pool.read_file(mine, f.ino, 0, 64).expect("read"),
        b"keep me"
    );
    assert!(
        SanitizeState::open(&d.pool)
            .expect("state")
            .running()
            .is_empty(),
        "the stale record was settled"
    );
}
