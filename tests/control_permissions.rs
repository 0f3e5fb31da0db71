//! The permission matrix: for each token kind (admin, agent, read-only, a token with
//! only `delete:*`) and each operation on its own branch, a protected parent and
//! another agent's branch: allowed or refused exactly as specified; every refusal
//! names the missing scope (or, for a branch the token may not see, answers as
//! for a missing one) and leaves the pool and the tokens unchanged.
//!
//! Mount permissions are checked with a mount point that does not exist: a call
//! that passes the permission check then fails with `not_a_directory`, a refused
//! one with `forbidden`, so the matrix needs no FUSE mount (only `unmount` of a
//! hidden branch's mount does, in its own test).

mod control_support;

use control_support::*;
use cowfs_ctl::proto::{ErrorKind, ErrorReply, GroupMember, MountEnd, Scope};
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

/// Expect the reply for a branch that does not exist (`not_found` naming
/// `name`, no scope), and no change: the token may not see the branch.
fn hidden<T: std::fmt::Debug>(
    d: &Daemon,
    what: &str,
    name: &str,
    f: impl FnOnce() -> Result<T, ClientError>,
) {
    let before = state(d);
    match f() {
        Err(ClientError::Server(e)) => assert_eq!(
            (e.kind, e.scope, e.target.as_deref()),
            (ErrorKind::NotFound, None, Some(name)),
            "{what}: {e}"
        ),
        other => panic!("{what}: expected not_found, got {other:?}"),
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

    // ---- agent on another agent's branch: nothing, not even its existence ----
    hidden(&d, "agent reads b1", "b1", || agent.info("b1"));
    hidden(&d, "agent diffs b1", "b1", || agent.diff("a1", "b1"));
    hidden(&d, "agent branches b1", "b1", || {
        agent.branch_create("steal", "b1", None)
    });
    hidden(&d, "agent snapshots b1", "b1", || {
        agent.snapshot_create("steal", "b1")
    });
    hidden(&d, "agent group with b1", "b1", || {
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
    });
    hidden(&d, "agent deletes b1", "b1", || agent.delete("b1"));
    hidden(&d, "agent renames b1", "b1", || agent.rename("b1", "x"));
    hidden(&d, "agent mounts b1", "b1", || {
        agent.mount("b1", NOWHERE, true)
    });
    hidden(&d, "agent resets b1", "b1", || agent.reset("b1", "a1-snap"));
    hidden(&d, "agent resets own to b1", "b1", || {
        agent.reset("a1", "b1")
    });
    hidden(&d, "agent protects b1", "b1", || agent.protect("b1"));
    hidden(&d, "agent sets b1's quota", "b1", || {
        agent.quota_set("b1", Some(1 << 20), 0)
    });
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

/// The daemon's error reply to a request, `None` if it succeeded.
fn reply<T>(r: Result<T, ClientError>) -> Option<ErrorReply> {
    match r {
        Ok(_) => None,
        Err(ClientError::Server(e)) => Some(e),
        Err(e) => panic!("not a daemon reply: {e}"),
    }
}

/// What `c` (owner of branch `mine` and snapshot `mine-snap`) gets for each
/// operation on branch `name`, and for `unmount` of `mnt`.
fn replies(c: &mut Client, name: &str, mnt: &str) -> Vec<(&'static str, Option<ErrorReply>)> {
    vec![
        ("info", reply(c.info(name))),
        ("delete", reply(c.delete(name))),
        ("rename", reply(c.rename(name, "renamed"))),
        ("reset", reply(c.reset(name, "mine-snap"))),
        ("reset to", reply(c.reset("mine", name))),
        ("mount", reply(c.mount(name, NOWHERE, true))),
        ("unmount", reply(c.unmount(mnt))),
        ("diff a", reply(c.diff(name, "mine"))),
        ("diff b", reply(c.diff("mine", name))),
        ("snapshot", reply(c.snapshot_create("snap", name))),
        ("branch", reply(c.branch_create("child", name, None))),
        (
            "group",
            reply(c.group_create(vec![GroupMember {
                name: "member".into(),
                from: name.into(),
                snapshot: false,
            }])),
        ),
        ("quota", reply(c.quota_set(name, Some(1 << 20), 0))),
        ("protect", reply(c.protect(name))),
        ("unprotect", reply(c.unprotect(name))),
    ]
}

/// Review finding: `agent3` (`branch:prod` only) got `forbidden` for another
/// agent's branch but `not_found` for a missing one. Now every reply about a
/// branch it may not see equals, in every field, the reply for the same name once
/// the branch is gone, and the reply for a name that never existed.
#[test]
fn hidden_branches_answer_like_missing_ones() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    allowed("prod", admin.branch_create("prod", "main", None));
    let agent1_s = d.token("agent1", &["branch:prod"]);
    let agent3_s = d.token("agent3", &["branch:prod"]);
    let mut agent1 = d.client(&agent1_s);
    let mut agent3 = d.client(&agent3_s);
    allowed("a1", agent1.branch_create("a1", "prod", None));
    allowed("mine", agent3.branch_create("mine", "prod", None));
    allowed("mine-snap", agent3.snapshot_create("mine-snap", "mine"));
    let mnt = d.dir("a1");
    let mnt = mnt.to_str().expect("utf-8");
    allowed("agent1 mounts a1", agent1.mount("a1", mnt, false));
    // Nor is a1 named where it shows indirectly: in a refusal to mount inside
    // its mount, or as the parent of a branch the token may read.
    let inside = std::path::Path::new(mnt).join("sub");
    std::fs::create_dir(&inside).expect("mkdir in a1");
    let e = reply(agent3.mount("mine", inside.to_str().expect("utf-8"), false))
        .expect("mount inside a1 refused");
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    assert!(!e.message.contains("'a1'"), "{e}");
    allowed("child of a1", admin.branch_create("a1-child", "a1", None));
    let viewer_s = d.token("viewer", &["read:a1-child"]);
    let child = allowed("viewer info", d.client(&viewer_s).info("a1-child"));
    assert_eq!(child.parent, None, "a hidden parent is named");
    assert_eq!(
        admin
            .info("a1-child")
            .expect("admin info")
            .parent
            .as_deref(),
        Some("a1")
    );

    let before = state(&d);
    let hidden = replies(&mut agent3, "a1", mnt);
    let never = replies(&mut agent3, "nosuch", mnt);
    assert_eq!(state(&d), before, "a refusal changed the pool");
    allowed("unmount a1", admin.unmount(mnt));
    allowed("delete a1", admin.delete("a1"));
    let gone = replies(&mut agent3, "a1", mnt);

    for ((op, h), ((_, g), (_, n))) in hidden.iter().zip(gone.iter().zip(&never)) {
        let h = h
            .as_ref()
            .unwrap_or_else(|| panic!("{op}: a hidden branch was served"));
        let expected = if *op == "unmount" {
            ErrorKind::NotMounted
        } else {
            ErrorKind::NotFound
        };
        assert_eq!(h.kind, expected, "{op}: {h}");
        let g = g.as_ref().expect("refused once gone");
        assert_eq!(
            (h.kind, &h.message, &h.target, h.scope),
            (g.kind, &g.message, &g.target, g.scope),
            "{op}: hidden and deleted branch differ"
        );
        let n = n.as_ref().expect("refused when missing");
        let renamed = |s: &str| s.replace("nosuch", "a1");
        assert_eq!(
            (h.kind, h.message.clone(), h.target.clone(), h.scope),
            (
                n.kind,
                renamed(&n.message),
                n.target.as_deref().map(renamed),
                n.scope
            ),
            "{op}: hidden and never existing branch differ"
        );
    }
}

/// A name taken by a branch the token may not see cannot be used (one namespace
/// per pool), and the refusal is the one for a name taken by its own branch: it
/// tells only that the name is taken, which creating it would tell anyway.
#[test]
fn names_of_hidden_branches_are_taken_like_any_other() {
    let d = Daemon::start();
    let agent1_s = d.token("agent1", &["branch:main"]);
    let agent3_s = d.token("agent3", &["branch:main"]);
    let mut agent1 = d.client(&agent1_s);
    let mut agent3 = d.client(&agent3_s);
    allowed("a1", agent1.branch_create("a1", "main", None));
    allowed("mine", agent3.branch_create("mine", "main", None));
    allowed("mine-snap", agent3.snapshot_create("mine-snap", "mine"));
    let before = state(&d);
    let taken = |c: &mut Client, name: &str| {
        vec![
            reply(c.branch_create(name, "main", None)),
            reply(c.snapshot_create(name, "main")),
            reply(c.rename("mine-snap", name)),
            reply(c.group_create(vec![GroupMember {
                name: name.into(),
                from: "main".into(),
                snapshot: false,
            }])),
        ]
    };
    let hidden = taken(&mut agent3, "a1");
    let own = taken(&mut agent3, "mine");
    assert_eq!(state(&d), before, "a refusal changed the pool");
    for (h, o) in hidden.iter().zip(&own) {
        let h = h.as_ref().expect("a hidden branch's name was reused");
        let o = o.as_ref().expect("an own branch's name was reused");
        assert_eq!(h.kind, ErrorKind::Exists, "{h}");
        let renamed = |s: &str| s.replace("mine", "a1");
        assert_eq!(
            (h.kind, h.message.clone(), h.target.clone(), h.scope),
            (
                o.kind,
                renamed(&o.message),
                o.target.as_deref().map(renamed),
                o.scope
            ),
        );
    }
}

/// Review finding: `rename` needed `delete` on the old name only, so a token
/// could move a branch it may delete (but not read) onto a name its other grants
/// cover and so gain them: with `delete:tmp-*` and `write:work-*`, another
/// token's `tmp-secret` became a readable and writable `work-secret`. A rename
/// now gives the token no scope it lacks on the branch under its old name.
#[test]
fn rename_gives_the_token_no_scope_it_lacks() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    allowed(
        "tmp-secret",
        admin.branch_create("tmp-secret", "main", None),
    );
    let janitor_s = d.token("janitor", &["delete:tmp-*", "write:work-*", "mount:work-*"]);
    let mut janitor = d.client(&janitor_s);
    refused(
        &d,
        "janitor reads tmp-secret",
        ErrorKind::Forbidden,
        Scope::Read,
        || janitor.info("tmp-secret"),
    );
    refused(
        &d,
        "janitor renames tmp-secret into write:work-*",
        ErrorKind::Forbidden,
        Scope::Read,
        || janitor.rename("tmp-secret", "work-secret"),
    );
    assert_eq!(
        kind(janitor.info("work-secret")),
        ErrorKind::NotFound,
        "the branch must not have moved"
    );
    // Renames that give the token nothing need `branch` too (see
    // `rename_exposes_no_more_than_a_copy_would`); with it they work: within
    // the pattern, and away from it (the token loses the branch, as deleting
    // it would). Own branches go anywhere: ownership follows them (see the
    // matrix).
    let janitor_s = d.token("janitor2", &["delete:tmp-*", "branch:tmp-*"]);
    let mut janitor = d.client(&janitor_s);
    allowed("within tmp-*", janitor.rename("tmp-secret", "tmp-old"));
    allowed("away from tmp-*", janitor.rename("tmp-old", "archived"));
    assert_eq!(kind(janitor.info("archived")), ErrorKind::NotFound);
    allowed("admin still sees it", admin.info("archived"));
}

/// Review finding (README Limits): a token with `delete:tmp-*` alone could
/// rename another's `tmp-x` to a name a third token may read (`read:shared-*`),
/// publishing a branch it could not read itself. A rename now needs what a copy
/// under the new name needs: `branch` on the branch, and `admin` if it requires
/// a sanitize profile (a non-admin copy would be sanitized). Three tokens: the
/// admin's branches, the janitor renaming, the reader of the new name.
#[test]
fn rename_exposes_no_more_than_a_copy_would() {
    let d = Daemon::start_with_config(Some(RULES_ONLY));
    let mut admin = d.admin_client();
    allowed("tmp-x", admin.branch_create("tmp-x", "main", None));
    allowed("prod", admin.branch_create("prod", "main", None));
    allowed("require pii", admin.protect_with("prod", Some("pii")));
    // The admin's unsanitized copy of prod requires pii too, unprotected.
    allowed("tmp-pii", admin.branch_create("tmp-pii", "prod", None));
    let janitor_s = d.token("janitor", &["delete:tmp-*"]);
    let copier_s = d.token("copier", &["delete:tmp-*", "branch:tmp-*"]);
    let reader_s = d.token("reader", &["read:shared-*"]);
    let (mut janitor, mut copier, mut reader) = (
        d.client(&janitor_s),
        d.client(&copier_s),
        d.client(&reader_s),
    );

    refused(
        &d,
        "janitor publishes tmp-x as shared-x",
        ErrorKind::Forbidden,
        Scope::Branch,
        || janitor.rename("tmp-x", "shared-x"),
    );
    assert_eq!(kind(reader.info("shared-x")), ErrorKind::NotFound);
    allowed("janitor still deletes tmp-x", janitor.delete("tmp-x"));

    refused(
        &d,
        "copier publishes tmp-pii unsanitized",
        ErrorKind::Forbidden,
        Scope::Admin,
        || copier.rename("tmp-pii", "shared-pii"),
    );
    assert_eq!(kind(reader.info("shared-pii")), ErrorKind::NotFound);

    // What a token may copy under the name it may rename there: the reader
    // then sees it, as it would see the copy.
    allowed("tmp-y", admin.branch_create("tmp-y", "main", None));
    allowed("copier renames tmp-y", copier.rename("tmp-y", "shared-y"));
    allowed("reader reads shared-y", reader.info("shared-y"));
    allowed(
        "admin renames tmp-pii",
        admin.rename("tmp-pii", "shared-pii"),
    );
}

/// A profile of rules only: sanitizing it needs no mount.
const RULES_ONLY: &str = r#"
[[profiles.pii.rules]]
name = "env files"
paths = ["**/.env"]
action = "remove"
"#;

/// Review finding: a branch reset to one that requires a sanitize profile got its
/// unsanitized content but not the requirement (only `branch_create`,
/// `snapshot_create` and `group_create` passed it on), so tokens allowed to branch
/// from the reset branch got unsanitized clones of the protected data. A reset
/// (admin-only on such a `to`) now passes the requirement on like they do.
#[test]
fn reset_to_a_branch_that_requires_sanitizing_passes_the_requirement_on() {
    let d = Daemon::start_with_config(Some(RULES_ONLY));
    let mut admin = d.admin_client();
    allowed("prod", admin.branch_create("prod", "main", None));
    allowed("require pii", admin.protect_with("prod", Some("pii")));
    allowed("staging", admin.branch_create("staging", "main", None));
    let ops_s = d.token("ops", &["admin:prod", "write:staging"]);
    let agent_s = d.token("agent", &["branch:staging"]);
    let mut agent = d.client(&agent_s);
    let plain = allowed(
        "clone of staging",
        agent.branch_create("a0", "staging", None),
    );
    assert!(plain.sanitized.is_none(), "staging requires nothing yet");

    let reset = allowed(
        "ops resets staging to prod",
        d.client(&ops_s).reset("staging", "prod"),
    );
    assert_eq!(reset.require_sanitize.as_deref(), Some("pii"));
    let clone = allowed(
        "clone of the reset staging",
        agent.branch_create("a1", "staging", None),
    );
    assert_eq!(
        clone.sanitized.as_ref().map(|s| s.profile.as_str()),
        Some("pii"),
        "a clone of prod's content went unsanitized"
    );
    assert_eq!(
        kind(agent.snapshot_create("a-snap", "staging")),
        ErrorKind::Forbidden,
        "an unsanitized snapshot of prod's content"
    );
}

/// Review finding: `diff` checked `read` on each name, then diffed whatever the
/// names held by then, without the operation lock: a token that may rename a
/// branch it cannot read (`delete` and `branch` on both names give it no
/// `read`, so the rename is allowed) swapped it under an own branch's name between the check
/// and the walk, and got the unreadable branch's paths. The diff now walks the
/// branches the checks saw (by id), or fails as for a deleted branch.
#[test]
fn diff_walks_the_branches_it_checked() {
    use cowfs::fs::Owner;
    use std::sync::atomic::{AtomicBool, Ordering};
    let d = Daemon::start();
    let mut admin = d.admin_client();
    allowed("tmp-x", admin.branch_create("tmp-x", "main", None));
    let x = d.pool.branch_id("tmp-x").expect("tmp-x");
    d.pool
        .mknod(
            x,
            1,
            b"secret.txt",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("mknod");
    d.pool.commit().expect("commit");
    let s = d.token(
        "janitor",
        &[
            "delete:tmp-*",
            "delete:mine*",
            "branch:tmp-*",
            "branch:mine*",
            "branch:main",
        ],
    );
    let mut c = d.client(&s);
    allowed("base", c.branch_create("base", "main", None));
    // A mounted side is flushed (syncfs) between the checks and the walk.
    let mnt = d.dir("base");
    allowed(
        "mount base",
        c.mount("base", mnt.to_str().expect("utf-8"), false),
    );
    allowed("mine", c.branch_create("mine", "main", None));
    // A refusal flushes nothing either (the mounted side was flushed, and so
    // the pool committed, before the other side was checked).
    refused(&d, "diff tmp-x", ErrorKind::Forbidden, Scope::Read, || {
        c.diff("base", "tmp-x")
    });
    let stop = AtomicBool::new(false);
    let leaked = std::thread::scope(|sc| {
        sc.spawn(|| {
            let mut c = d.client(&s);
            while !stop.load(Ordering::SeqCst) {
                // "mine" is the own branch, then the unreadable one, then back.
                allowed("away", c.rename("mine", "mine-own"));
                allowed("x in", c.rename("tmp-x", "mine"));
                allowed("x out", c.rename("mine", "tmp-x"));
                allowed("back", c.rename("mine-own", "mine"));
            }
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut leaked = false;
        while std::time::Instant::now() < deadline && !leaked {
            if let Ok(r) = c.diff("mine", "base") {
                leaked = r.entries.iter().any(|e| e.path.contains("secret"));
            }
        }
        stop.store(true, Ordering::SeqCst);
        leaked
    });
    assert!(
        !leaked,
        "diff showed the paths of a branch the token may not read"
    );
}

/// Review finding: `protect` set the pool's flag first and wrote the required
/// profile to `POOL.sanitize-state` after, so a failing state write left half an
/// operation behind an error: `protect --require-sanitize` protected the branch
/// without the requirement, and `unprotect` cleared the flag but kept it. Now a
/// failure changes neither (a directory in place of the state file makes every
/// state write fail).
#[test]
fn protect_and_unprotect_change_nothing_when_the_state_write_fails() {
    let d = Daemon::start_with_config(Some(RULES_ONLY));
    let mut admin = d.admin_client();
    allowed("prod", admin.branch_create("prod", "main", None));
    let state = cowfs::control::sanitizing::state_path(&d.pool_path);
    let mut saved = state.clone().into_os_string();
    saved.push(".saved");
    // The file is replaced by renaming a new one over it, which fails on a
    // directory; the daemon reads it only at start.
    let block_state_writes = || {
        if state.exists() {
            std::fs::rename(&state, &saved).expect("set the state file aside");
        }
        std::fs::create_dir(&state).expect("mkdir in place of the state file");
    };
    let unblock_state_writes = || {
        std::fs::remove_dir(&state).expect("rmdir the state file's place");
        if std::path::Path::new(&saved).exists() {
            std::fs::rename(&saved, &state).expect("put the state file back");
        }
    };
    let shown = |admin: &mut Client| {
        let i = allowed("info prod", admin.info("prod"));
        (i.protected, i.require_sanitize)
    };

    block_state_writes();
    assert_eq!(kind(admin.protect_with("prod", Some("pii"))), ErrorKind::Io);
    assert_eq!(
        shown(&mut admin),
        (false, None),
        "a failed protect changed prod"
    );
    unblock_state_writes();

    allowed("require pii", admin.protect_with("prod", Some("pii")));
    block_state_writes();
    assert_eq!(kind(admin.unprotect("prod")), ErrorKind::Io);
    assert_eq!(
        shown(&mut admin),
        (true, Some("pii".to_string())),
        "a failed unprotect changed prod"
    );
    unblock_state_writes();
    allowed("unprotect", admin.unprotect("prod"));
    assert_eq!(shown(&mut admin), (false, None));
}

/// Review finding: `unmount` needed only `mount` on the branch, so a token
/// given `mount:prod` and `read:prod` to mount production read-only could
/// unmount production's own read-write mount (the service using it then
/// writes into the bare directory below), and one with `write` but not
/// `admin` could unmount a protected branch's read-write mount it could never
/// have made. Unmounting now needs what making that mount needs: `read` for a
/// read-only one, `write` and (on a protected branch) `admin` for a
/// read-write one. And a token that may not read the branch (`branch:prod`
/// alone) learnt from the refusal where it is mounted; it now gets the reply
/// for a directory where nothing is mounted, as `mounts` leaves it out.
#[test]
fn unmount_needs_what_the_mount_needed() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    allowed("prod", admin.branch_create("prod", "main", None));
    allowed("protect prod", admin.protect("prod"));
    allowed("shared", admin.branch_create("shared", "main", None));
    let prod_dir = d.dir("prod");
    let prod_mnt = prod_dir.to_str().expect("utf-8");
    let shared_dir = d.dir("shared");
    let shared_mnt = shared_dir.to_str().expect("utf-8");
    allowed("admin mounts prod", admin.mount("prod", prod_mnt, false));
    allowed(
        "admin mounts shared",
        admin.mount("shared", shared_mnt, false),
    );
    let viewer_s = d.token(
        "viewer",
        &["mount:prod", "read:prod", "mount:shared", "read:shared"],
    );
    let writer_s = d.token("writer", &["mount:prod", "write:prod"]);
    let mut viewer = d.client(&viewer_s);
    let mut writer = d.client(&writer_s);

    refused(
        &d,
        "viewer unmounts prod's read-write mount",
        ErrorKind::Forbidden,
        Scope::Write,
        || viewer.unmount(prod_mnt),
    );
    refused(
        &d,
        "viewer unmounts shared's read-write mount",
        ErrorKind::Forbidden,
        Scope::Write,
        || viewer.unmount(shared_mnt),
    );
    refused(
        &d,
        "writer unmounts protected prod's read-write mount",
        ErrorKind::Protected,
        Scope::Admin,
        || writer.unmount(prod_mnt),
    );
    assert!(is_mountpoint(&prod_dir) && is_mountpoint(&shared_dir));
    // A token that may not read prod is not told where it is mounted (it is
    // not in its `mounts` either): the reply for a directory with no mount.
    let brancher_s = d.token("brancher", &["branch:prod"]);
    let mut brancher = d.client(&brancher_s);
    let empty = d.dir("empty");
    let shown = reply(brancher.unmount(prod_mnt)).expect("refused");
    let none = reply(brancher.unmount(empty.to_str().expect("utf-8"))).expect("refused");
    assert_eq!(
        (shown.kind, shown.message, shown.target, shown.scope),
        (
            none.kind,
            none.message
                .replace(empty.to_str().expect("utf-8"), prod_mnt),
            none.target
                .map(|t| t.replace(empty.to_str().expect("utf-8"), prod_mnt)),
            none.scope
        ),
        "a mount of a branch the token may not read is told apart from none"
    );
    assert!(is_mountpoint(&prod_dir));

    // What a token may mount it may unmount, whoever mounted it.
    allowed("admin unmounts prod", admin.unmount(prod_mnt));
    allowed("admin mounts prod ro", admin.mount("prod", prod_mnt, true));
    allowed("viewer unmounts it", viewer.unmount(prod_mnt));
    allowed("unprotect prod", admin.unprotect("prod"));
    allowed("admin mounts prod", admin.mount("prod", prod_mnt, false));
    allowed("writer unmounts unprotected prod", writer.unmount(prod_mnt));
    assert!(!is_mountpoint(&prod_dir));
}

/// A write through `f` (or its write-back, with the page cache) fails as on a
/// mount whose connection was cut: ENOTCONN, or ECONNABORTED for a request the
/// abort ended.
fn cut_off(f: &mut std::fs::File, what: &str) {
    use std::io::Write;
    let e = f
        .write_all(b"after")
        .and_then(|()| f.sync_all())
        .expect_err(what);
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOTCONN | libc::ECONNABORTED)),
        "{what}: {e}"
    );
}

/// Review finding (README Limits): `token_revoke` left the mounts made with the
/// token in place, so whoever held a leaked token kept its read-write mount. The
/// revoke now ends every mount made with it and lists them: one with a file
/// open is detached and that file fails from then on (ENOTCONN), an idle one is
/// unmounted; another token's mount and the admin's stay, and what was written
/// before the revoke is kept.
#[test]
fn revoking_a_token_ends_its_mounts() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    allowed("work", admin.branch_create("work", "main", None));
    allowed("snap", admin.snapshot_create("snap", "main"));
    allowed("other", admin.branch_create("other", "main", None));
    let agent_s = d.token(
        "agent",
        &["mount:work", "write:work", "mount:snap", "read:snap"],
    );
    let peer_s = d.token("peer", &["mount:snap", "read:snap"]);
    let mut agent = d.client(&agent_s);
    let mut peer = d.client(&peer_s);
    let (work, snap, peer_snap, other) = (
        d.dir("work"),
        d.dir("snap"),
        d.dir("peer-snap"),
        d.dir("other"),
    );
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    allowed("agent mounts work", agent.mount("work", &s(&work), false));
    allowed("agent mounts snap", agent.mount("snap", &s(&snap), true));
    allowed("peer mounts snap", peer.mount("snap", &s(&peer_snap), true));
    allowed(
        "admin mounts other",
        admin.mount("other", &s(&other), false),
    );
    let mut held = std::fs::File::create(work.join("kept")).expect("create on work");
    std::io::Write::write_all(&mut held, b"before").expect("write before");

    let mut ended = allowed("revoke agent", admin.token_revoke("agent"));
    ended.sort_by(|a, b| a.dir.cmp(&b.dir));
    let got: Vec<_> = ended
        .iter()
        .map(|m| {
            (
                m.branch.as_str(),
                m.dir.clone(),
                m.read_only,
                m.how,
                m.error.clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("snap", s(&snap), true, MountEnd::Unmounted, None),
            ("work", s(&work), false, MountEnd::Detached, None),
        ]
    );
    assert!(!is_mountpoint(&work) && !is_mountpoint(&snap));
    cut_off(&mut held, "a write on the revoked token's mount");
    drop(held);
    assert!(is_mountpoint(&peer_snap) && is_mountpoint(&other));
    let listed: Vec<String> = admin
        .mounts()
        .expect("mounts")
        .into_iter()
        .map(|m| m.dir)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");

    // The branch is free again, with what was written before the revoke.
    allowed("admin mounts work", admin.mount("work", &s(&work), false));
    assert_eq!(std::fs::read(work.join("kept")).expect("read"), b"before");
    // A token with no mounts is revoked with an empty list.
    d.token("idle", &["read:*"]);
    assert!(allowed("revoke idle", admin.token_revoke("idle")).is_empty());
}

/// Review finding (README Limits): `protect` left read-write mounts made before
/// it by tokens without admin on the branch, which may not make them once it is
/// protected. It is now refused (`mounted`, naming the mount and its token, the
/// branch left unprotected and mounted) unless forced, which ends them (an open
/// file fails from then on). An admin's own read-write mount does not stop it.
#[test]
fn protect_ends_read_write_mounts_it_forbids_only_when_forced() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    allowed("svc", admin.branch_create("svc", "main", None));
    allowed("own", admin.branch_create("own", "main", None));
    let writer_s = d.token("writer", &["mount:svc", "write:svc"]);
    let mut writer = d.client(&writer_s);
    let (svc, own) = (d.dir("svc"), d.dir("own"));
    let s = |p: &std::path::Path| p.to_str().expect("utf-8").to_string();
    allowed("writer mounts svc", writer.mount("svc", &s(&svc), false));
    allowed("admin mounts own", admin.mount("own", &s(&own), false));
    let mut held = std::fs::File::create(svc.join("f")).expect("create on svc");

    let e = reply(admin.protect("svc")).expect("protect refused");
    assert_eq!(e.kind, ErrorKind::Mounted, "{e:?}");
    assert!(
        e.message.contains(&s(&svc))
            && e.message.contains("'writer'")
            && e.message.contains("--force"),
        "{}",
        e.message
    );
    assert!(!d.pool.is_protected("svc").expect("flag"));
    assert!(is_mountpoint(&svc));
    std::io::Write::write_all(&mut held, b"still mine").expect("still writable");

    let info = allowed("forced protect", admin.protect_forcing("svc", None, true));
    assert!(info.protected && info.mounts.is_empty(), "{info:?}");
    assert!(!is_mountpoint(&svc));
    cut_off(&mut held, "a write on the mount protect ended");
    drop(held);
    refused(
        &d,
        "writer mounts protected svc again",
        ErrorKind::Protected,
        Scope::Admin,
        || writer.mount("svc", &s(&svc), false),
    );

    let info = allowed("protect with the admin's own mount", admin.protect("own"));
    assert!(info.protected && info.mounts.len() == 1, "{info:?}");
    assert!(is_mountpoint(&own));
}
