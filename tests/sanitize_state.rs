//! `POOL.sanitize-state` across daemon restarts: a start deletes the clones whose
//! sanitizing never finished, and only those, whatever name a branch has now.
//! Needs root and /dev/fuse (the control server's mount table).

mod control_support;

use std::os::unix::fs::PermissionsExt;

use control_support::Daemon;
use cowfs::control::sanitizing::state_path;

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
/// branch created later under that name is kept.
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
                "sanitizing": [{{"name": "agent-1"}}, {{"name": "half"}}, {{"name": "gone", "id": {gone}}}],
                "require": [{{"branch": 1, "profile": "pii"}}]}}"#
        ),
    );
    d.restart();
    assert_eq!(
        names(&d),
        ["agent-1", "main"],
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
    assert_eq!(names(&d), ["agent-1", "main"]);
}
