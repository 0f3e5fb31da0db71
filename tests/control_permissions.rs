//! The permission matrix: for each token kind (admin, agent, read-only, a token with
//! only `delete:*`) and each operation on its own branch, a protected parent and
//! another agent's branch: allowed or refused exactly as specified; every refusal
//! names the missing scope and leaves the pool and the tokens unchanged.
//!
//! Mount permissions are checked with a mount point that does not exist: a call
//! that passes the permission check then fails with `not_a_directory`, a refused
//! one with `forbidden`, so no FUSE mount is needed here.

mod control_support;

use control_support::*;
use cowfs_ctl::proto::{ErrorKind, GroupMember, Scope};
use cowfs_ctl::{Client, ClientError};

/// What must not change when a request is refused.
#[derive(Debug, PartialEq)]
struct State {
    generation: u64,
    branches: Vec<(u64, String, bool)>,
    tokens: Vec<String>,
}

fn state(d: &Daemon) -> State {
    State {
        generation: d.pool.generation(),
        branches: d
            .pool
            .list()
            .into_iter()
            .map(|b| {
                let p = d.pool.is_protected(&b.name).expect("protected flag");
                (b.id, b.name, p)
            })
            .collect(),
        tokens: d
            .admin_client()
            .token_list()
            .expect("token list")
            .into_iter()
            .map(|t| format!("{}:{:?}", t.name, t.owns))
            .collect(),
    }
}

/// Expect a refusal of `kind` naming `scope`, and no change at all.
fn refused<T: std::fmt::Debug>(
    d: &Daemon,
    what: &str,
    kind: ErrorKind,
    scope: Scope,
    f: impl FnOnce() -> Result<T, ClientError>,
) {
    let before = state(d);
    match f() {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.kind, kind, "{what}: {e}");
            assert_eq!(e.scope, Some(scope), "{what}: {e}");
            assert!(e.message.contains(scope.as_str()), "{what}: {e}");
        }
        other => panic!("{what}: expected {kind:?}, got {other:?}"),
    }
    assert_eq!(state(d), before, "{what}: a refusal changed the pool");
}

fn allowed<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: expected success, got {e}"))
}

/// A mount that passes the permission checks fails on the missing directory.
fn mount_allowed(c: &mut Client, name: &str, ro: bool) {
    assert_eq!(
        kind(c.mount(name, "/nonexistent/cowfs-mnt", ro)),
        ErrorKind::NotADirectory,
        "mount {name} ro={ro} should pass the permission checks"
    );
}

const NOWHERE: &str = "/nonexistent/cowfs-mnt";

#[test]
fn permission_matrix() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    allowed("prod", admin.branch_create("prod", "main", None));
    allowed("protect prod", admin.protect("prod"));
    let agent_s = d.token("agent", &["branch:prod", "read:prod"]);
    let other_s = d.token("other-agent", &["branch:prod"]);
    let reader_s = d.token("reader", &["read:*"]);
    let deleter_s = d.token("deleter", &["delete:*", "write:*", "mount:*"]);
    let mut agent = d.client(&agent_s);
    let mut other = d.client(&other_s);
    let mut reader = d.client(&reader_s);
    let mut deleter = d.client(&deleter_s);

    // Setup: each agent branches from the protected parent and owns the result.
    let a1 = allowed(
        "agent branches prod",
        agent.branch_create("a1", "prod", None),
    );
    assert_eq!(a1.owner.as_deref(), Some("agent"));
    let b1 = allowed(
        "other branches prod",
        other.branch_create("b1", "prod", None),
    );
    assert_eq!(b1.owner.as_deref(), Some("other-agent"));

    // ---- agent on its own branch: full rights ----
    allowed("info own", agent.info("a1"));
    allowed("snapshot own", agent.snapshot_create("a1-snap", "a1"));
    allowed("branch own", agent.branch_create("a1-child", "a1", None));
    allowed("rename own", agent.rename("a1-child", "a1-kid"));
    allowed("delete own", agent.delete("a1-kid"));
    allowed("reset own", agent.reset("a1", "a1-snap"));
    allowed("diff own", agent.diff("a1", "a1-snap"));
    mount_allowed(&mut agent, "a1", false);
    mount_allowed(&mut agent, "a1", true);
    allowed(
        "group from own and prod",
        agent.group_create(vec![
            GroupMember {
                name: "g1".into(),
                from: "a1".into(),
                snapshot: false,
            },
            GroupMember {
                name: "g2".into(),
                from: "prod".into(),
                snapshot: true,
            },
        ]),
    );
    let names: Vec<String> = allowed("list", agent.list())
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["prod", "a1", "a1-snap", "g1", "g2"]);

    // ---- agent on the protected parent: read and branch only ----
    allowed("info prod", agent.info("prod"));
    allowed("diff prod", agent.diff("prod", "a1"));
    refused(
        &d,
        "agent mounts prod rw",
        ErrorKind::Forbidden,
        Scope::Mount,
        || agent.mount("prod", NOWHERE, false),
    );
    refused(
        &d,
        "agent mounts prod ro",
        ErrorKind::Forbidden,
        Scope::Mount,
        || agent.mount("prod", NOWHERE, true),
    );
    refused(
        &d,
        "agent resets prod",
        ErrorKind::Forbidden,
        Scope::Write,
        || agent.reset("prod", "a1-snap"),
    );
    refused(
        &d,
        "agent deletes prod",
        ErrorKind::Forbidden,
        Scope::Delete,
        || agent.delete("prod"),
    );
    refused(
        &d,
        "agent renames prod",
        ErrorKind::Forbidden,
        Scope::Delete,
        || agent.rename("prod", "mine"),
    );
    refused(
        &d,
        "agent unprotects prod",
        ErrorKind::Forbidden,
        Scope::Admin,
        || agent.unprotect("prod"),
    );
    refused(
        &d,
        "agent protects own",
        ErrorKind::Forbidden,
        Scope::Admin,
        || agent.protect("a1"),
    );

    // ---- agent on another agent's branch: nothing ----
    refused(
        &d,
        "agent reads b1",
        ErrorKind::Forbidden,
        Scope::Read,
        || agent.info("b1"),
    );
    refused(
        &d,
        "agent diffs b1",
        ErrorKind::Forbidden,
        Scope::Read,
        || agent.diff("a1", "b1"),
    );
    refused(
        &d,
        "agent branches b1",
        ErrorKind::Forbidden,
        Scope::Branch,
        || agent.branch_create("steal", "b1", None),
    );
    refused(
        &d,
        "agent snapshots b1",
        ErrorKind::Forbidden,
        Scope::Branch,
        || agent.snapshot_create("steal", "b1"),
    );
    refused(
        &d,
        "agent group with b1",
        ErrorKind::Forbidden,
        Scope::Branch,
        || {
            agent.group_create(vec![
                GroupMember {
                    name: "ok".into(),
                    from: "a1".into(),
                    snapshot: false,
                },
                GroupMember {
                    name: "steal".into(),
                    from: "b1".into(),
                    snapshot: false,
                },
            ])
        },
    );
    refused(
        &d,
        "agent deletes b1",
        ErrorKind::Forbidden,
        Scope::Delete,
        || agent.delete("b1"),
    );
    refused(
        &d,
        "agent renames b1",
        ErrorKind::Forbidden,
        Scope::Delete,
        || agent.rename("b1", "x"),
    );
    refused(
        &d,
        "agent mounts b1",
        ErrorKind::Forbidden,
        Scope::Mount,
        || agent.mount("b1", NOWHERE, true),
    );
    refused(
        &d,
        "agent resets b1",
        ErrorKind::Forbidden,
        Scope::Write,
        || agent.reset("b1", "a1-snap"),
    );
    refused(
        &d,
        "agent resets own to b1",
        ErrorKind::Forbidden,
        Scope::Read,
        || agent.reset("a1", "b1"),
    );
    refused(
        &d,
        "agent lists tokens",
        ErrorKind::Forbidden,
        Scope::Admin,
        || agent.token_list(),
    );
    refused(
        &d,
        "agent creates a token",
        ErrorKind::Forbidden,
        Scope::Admin,
        || agent.token_create("mine", vec!["admin:*".parse().expect("grant")]),
    );
    refused(
        &d,
        "agent revokes a token",
        ErrorKind::Forbidden,
        Scope::Admin,
        || agent.token_revoke("other-agent"),
    );
    let usage = allowed("agent usage", agent.usage());
    assert!(usage.branches.iter().all(|u| u.name != "b1"));

    // ---- read-only token: sees everything, changes nothing ----
    assert_eq!(
        allowed("reader list", reader.list()).len(),
        d.pool.list().len()
    );
    allowed("reader info b1", reader.info("b1"));
    allowed("reader diff", reader.diff("a1", "b1"));
    refused(
        &d,
        "reader branches",
        ErrorKind::Forbidden,
        Scope::Branch,
        || reader.branch_create("r", "prod", None),
    );
    refused(
        &d,
        "reader mounts",
        ErrorKind::Forbidden,
        Scope::Mount,
        || reader.mount("a1", NOWHERE, true),
    );
    refused(
        &d,
        "reader deletes",
        ErrorKind::Forbidden,
        Scope::Delete,
        || reader.delete("a1"),
    );
    refused(
        &d,
        "reader resets",
        ErrorKind::Forbidden,
        Scope::Write,
        || reader.reset("a1", "a1-snap"),
    );

    // ---- write/delete/mount everywhere, but not admin: protection holds ----
    refused(
        &d,
        "deleter deletes prod",
        ErrorKind::Protected,
        Scope::Admin,
        || deleter.delete("prod"),
    );
    refused(
        &d,
        "deleter renames prod",
        ErrorKind::Protected,
        Scope::Admin,
        || deleter.rename("prod", "p"),
    );
    refused(
        &d,
        "deleter resets prod",
        ErrorKind::Protected,
        Scope::Admin,
        || deleter.reset("prod", "a1-snap"),
    );
    refused(
        &d,
        "deleter mounts prod rw",
        ErrorKind::Protected,
        Scope::Admin,
        || deleter.mount("prod", NOWHERE, false),
    );
    mount_allowed(&mut deleter, "prod", true);
    allowed("deleter deletes b1", deleter.delete("b1"));

    // ---- admin: everything, protected or not ----
    mount_allowed(&mut admin, "prod", false);
    allowed("admin renames prod", admin.rename("prod", "prod2"));
    allowed("admin renames back", admin.rename("prod2", "prod"));
    allowed("admin resets prod", admin.reset("prod", "a1-snap"));
    allowed("admin unprotects", admin.unprotect("prod"));
    allowed("admin deletes prod", admin.delete("prod"));
    assert!(
        d.pool.branch_id("a1").is_ok(),
        "deleting a parent keeps children"
    );

    // ---- revocation takes effect on a live connection ----
    allowed("revoke", admin.token_revoke("agent"));
    assert_eq!(kind(agent.list()), ErrorKind::Unauthenticated);
    assert_eq!(
        kind(admin.token_revoke("admin")),
        ErrorKind::BadRequest,
        "the last admin:* token cannot be revoked"
    );
    // A new token under a revoked one's name does not revive connections opened
    // with the old secret, whatever it may do.
    allowed("revoke other", admin.token_revoke("other-agent"));
    let _ = d.token("other-agent", &["admin:*"]);
    assert_eq!(kind(other.list()), ErrorKind::Unauthenticated);
    assert_eq!(kind(other.token_list()), ErrorKind::Unauthenticated);
}
