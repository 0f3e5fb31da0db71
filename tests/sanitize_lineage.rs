//! `protect --require-sanitize` covers the whole lineage of the branch, through
//! the daemon: snapshots and branches taken of prod *before* the requirement was
//! set (and those taken of them since) get every non-admin clone sanitized too,
//! also across a deleted middle branch; clones sanitized with the profile stay
//! free of it (their data holds none of what it removes); descendants taken
//! after still behave as before; unprotect leaves descendants' requirements.
//!
//! Review finding: the requirement reached only children created after it was
//! set, so a token allowed to branch from `prod-monday` got production's
//! personal data unsanitized.

mod control_support;
#[path = "sanitize_support/mod.rs"]
mod support;

use control_support::{kind, Daemon};
use cowfs_ctl::proto::{BranchInfo, ErrorKind};
use cowfs_ctl::{Client, ClientError};

/// Redacts emails everywhere: a rules-only profile needs no mount.
const CONFIG: &str = r#"
[[profiles.pii.rules]]
name = "personal data"
paths = ["**"]
action = "redact"
detectors = ["email"]
with = "pseudonym"
"#;

const EMAIL: &str = "erin.walsh@example.com";

fn allowed<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>) -> T {
    r.unwrap_or_else(|e| panic!("{what}: expected success, got {e}"))
}

/// `prod`, holding personal data, made by the admin.
fn prod(d: &Daemon, admin: &mut Client) {
    let p = allowed("prod", admin.branch_create("prod", "main", None));
    let row = format!("id,email\n1,{EMAIL}\n");
    support::put(&d.pool, p.id, "data/users.csv", row.as_bytes());
    d.pool.commit().expect("commit");
}

/// A non-admin token may read and branch `from` (not prod) and branches of
/// it as `name`: it must get a clone sanitized with `pii`, holding no email.
fn assert_sanitized_clone(d: &Daemon, from: &str, name: &str) -> BranchInfo {
    let secret = d.token(
        &format!("t-{name}"),
        &[&format!("branch:{from}"), &format!("read:{from}")],
    );
    let mut agent = d.client(&secret);
    let clone = allowed(name, agent.branch_create(name, from, None));
    let files = support::files(&d.pool, clone.id);
    let csv = files.get("data/users.csv").expect("users.csv");
    assert!(
        !String::from_utf8_lossy(csv).contains(EMAIL),
        "{name}, a clone of '{from}', holds prod's personal data"
    );
    assert_eq!(
        clone.sanitized.as_ref().map(|s| s.profile.as_str()),
        Some("pii")
    );
    assert_eq!(
        kind(agent.snapshot_create(&format!("{name}-snap"), from)),
        ErrorKind::Forbidden,
        "an unsanitized snapshot of '{from}'"
    );
    clone
}

fn required(admin: &mut Client, name: &str) -> Option<String> {
    allowed(name, admin.info(name)).require_sanitize
}

#[test]
fn snapshots_and_branches_made_before_the_requirement_are_covered() {
    let d = Daemon::start_with_config(Some(CONFIG));
    let mut admin = d.admin_client();
    prod(&d, &mut admin);
    allowed("prod-monday", admin.snapshot_create("prod-monday", "prod"));
    allowed("last-week", admin.branch_create("last-week", "prod", None));
    // Taken of an older copy, before the requirement too: two levels down.
    allowed("lw-snap", admin.snapshot_create("lw-snap", "last-week"));
    allowed("require pii", admin.protect_with("prod", Some("pii")));

    for name in ["prod-monday", "last-week", "lw-snap"] {
        assert_eq!(required(&mut admin, name).as_deref(), Some("pii"), "{name}");
    }
    assert_sanitized_clone(&d, "prod-monday", "a1");
    assert_sanitized_clone(&d, "last-week", "a2");
    assert_sanitized_clone(&d, "lw-snap", "a3");

    // Unprotect drops prod's requirement only: descendants keep theirs, as a
    // requirement inherited at creation always did.
    allowed("unprotect", admin.unprotect("prod"));
    assert_eq!(required(&mut admin, "prod"), None);
    assert_sanitized_clone(&d, "prod-monday", "a4");
}

/// prod -> mid -> leaf, `mid` deleted before the requirement is set: `leaf`'s
/// lineage still leads to prod (it took `mid`'s parent when `mid` went).
#[test]
fn a_chain_whose_middle_branch_was_deleted_is_covered() {
    let d = Daemon::start_with_config(Some(CONFIG));
    let mut admin = d.admin_client();
    prod(&d, &mut admin);
    allowed("mid", admin.branch_create("mid", "prod", None));
    allowed("leaf", admin.snapshot_create("leaf", "mid"));
    allowed("delete mid", admin.delete("mid"));
    assert_eq!(
        allowed("leaf", admin.info("leaf")).parent.as_deref(),
        Some("prod")
    );
    allowed("require pii", admin.protect_with("prod", Some("pii")));
    assert_eq!(required(&mut admin, "leaf").as_deref(), Some("pii"));
    assert_sanitized_clone(&d, "leaf", "a1");
}

/// Taken after the requirement: admin copies inherit it and agent clones are
/// sanitized, as before. Setting the requirement again does not reach a clone
/// sanitized with that profile: its owner may still snapshot it.
#[test]
fn descendants_made_after_the_requirement_behave_as_before() {
    let d = Daemon::start_with_config(Some(CONFIG));
    let mut admin = d.admin_client();
    prod(&d, &mut admin);
    allowed("require pii", admin.protect_with("prod", Some("pii")));
    let snap = allowed("snap", admin.snapshot_create("prod-snap", "prod"));
    assert_eq!(snap.require_sanitize.as_deref(), Some("pii"));
    assert_sanitized_clone(&d, "prod-snap", "a0");

    let secret = d.token("agent", &["branch:prod"]);
    let mut agent = d.client(&secret);
    let clone = allowed("a1", agent.branch_create("a1", "prod", None));
    assert!(clone.sanitized.is_some() && clone.require_sanitize.is_none());
    allowed("again", admin.protect_with("prod", Some("pii")));
    assert_eq!(required(&mut admin, "a1"), None);
    allowed("own snapshot", agent.snapshot_create("a1-snap", "a1"));
    let plain = allowed(
        "branch of own clone",
        agent.branch_create("a1-b", "a1", None),
    );
    assert!(plain.sanitized.is_none(), "sanitized twice");
}

/// A sanitized clone reset to unsanitized content is no sanitized clone
/// anymore: once its inherited requirement is dropped (unprotect), setting the
/// requirement on prod again reaches it like any other copy of prod's data.
#[test]
fn a_sanitized_clone_reset_to_prod_is_covered_again() {
    let d = Daemon::start_with_config(Some(CONFIG));
    let mut admin = d.admin_client();
    prod(&d, &mut admin);
    allowed("require pii", admin.protect_with("prod", Some("pii")));
    let secret = d.token("agent", &["branch:prod"]);
    allowed("a1", d.client(&secret).branch_create("a1", "prod", None));
    let reset = allowed("reset a1 to prod", admin.reset("a1", "prod"));
    assert_eq!(reset.require_sanitize.as_deref(), Some("pii"));
    allowed("unprotect a1", admin.unprotect("a1"));
    assert_eq!(required(&mut admin, "a1"), None);
    allowed("again", admin.protect_with("prod", Some("pii")));
    assert_eq!(required(&mut admin, "a1").as_deref(), Some("pii"));
}

/// A reset copies `to`'s data into a branch that was not taken from `to`:
/// that branch is a copy of prod's data all the same. Reset before the
/// requirement was set, it must be reached by it like a snapshot taken then;
/// under a clone sanitized with the profile, that clone's mark must not keep
/// it out (it holds prod's data, not the clone's); nor deleting such a branch
/// keep a snapshot taken of it since out.
///
/// Review finding: reset left the catalog parent as it was, so `mine` (taken
/// from main) and `a1-b` (taken from the sanitized `a1`) stayed outside prod's
/// lineage, and tokens allowed to branch them got prod's personal data.
#[test]
fn a_branch_reset_to_prod_before_the_requirement_is_covered() {
    let d = Daemon::start_with_config(Some(CONFIG));
    let mut admin = d.admin_client();
    prod(&d, &mut admin);
    let secret = d.token(
        "agent",
        &[
            "branch:prod",
            "read:prod",
            "branch:main",
            "admin:a1*",
            "admin:mine",
        ],
    );
    let mut agent = d.client(&secret);
    allowed("mine", agent.branch_create("mine", "main", None));
    allowed("reset mine", agent.reset("mine", "prod"));
    let a1 = allowed(
        "a1",
        agent.branch_create_with("a1", "prod", None, Some("pii"), None),
    );
    assert!(a1.sanitized.is_some());
    allowed("a1-b", agent.branch_create("a1-b", "a1", None));
    allowed("reset a1-b", agent.reset("a1-b", "prod"));
    // Deleted after a snapshot was taken of it: the snapshot holds prod's data.
    allowed("a1-d", agent.branch_create("a1-d", "a1", None));
    allowed("reset a1-d", agent.reset("a1-d", "prod"));
    allowed("a1-d-snap", agent.snapshot_create("a1-d-snap", "a1-d"));
    allowed("delete a1-d", agent.delete("a1-d"));
    allowed("require pii", admin.protect_with("prod", Some("pii")));
    assert_sanitized_clone(&d, "a1-b", "c1");
    assert_sanitized_clone(&d, "mine", "c2");
    assert_sanitized_clone(&d, "a1-d-snap", "c3");
    for name in ["mine", "a1-b"] {
        assert_eq!(required(&mut admin, name).as_deref(), Some("pii"), "{name}");
    }
    // The sanitized clone itself was not reset: it stays free of the requirement.
    assert_eq!(required(&mut admin, "a1"), None);
}

/// A second profile, which leaves emails as they are.
const LOGS: &str = r#"
[[profiles.logs.rules]]
name = "logs"
paths = ["**/*.log"]
action = "remove"
"#;

/// Review finding: an admin's copy of prod sanitized with a profile other
/// than the one prod requires did not inherit the requirement (an unsanitized
/// copy does, and `protect prod` run again would have given it), so a token
/// allowed to branch that copy got prod's personal data with only the other
/// profile's rules applied. A copy sanitized with the required profile itself
/// holds none of what it removes and stays free of it, as `require_lineage`
/// treats it.
#[test]
fn an_admin_copy_sanitized_with_another_profile_keeps_the_requirement() {
    let d = Daemon::start_with_config(Some(&format!("{CONFIG}{LOGS}")));
    let mut admin = d.admin_client();
    prod(&d, &mut admin);
    allowed("require pii", admin.protect_with("prod", Some("pii")));
    let staging = allowed(
        "staging",
        admin.branch_create_with("staging", "prod", None, Some("logs"), None),
    );
    assert_eq!(
        staging.sanitized.as_ref().map(|s| s.profile.as_str()),
        Some("logs")
    );
    assert_eq!(staging.require_sanitize.as_deref(), Some("pii"));
    assert_sanitized_clone(&d, "staging", "a1");

    let clean = allowed(
        "clean",
        admin.branch_create_with("clean", "prod", None, Some("pii"), None),
    );
    assert_eq!(clean.require_sanitize, None);
}
