//! Ownership lives in the pool's catalog: a token's branches are recorded in the
//! commit that creates them, survive a daemon restart, follow renames, and end
//! with the token; creating and deleting branches leave `POOL.tokens` untouched.
//! A token file from before (owned branch ids in `owns`, tokens without ids) is
//! upgraded once at start without losing an owner.

mod control_support;

use control_support::*;
use cowfs::control::tokens::store_path;
use cowfs::pool::NO_OWNER;
use cowfs_ctl::proto::ErrorKind;
use serde_json::Value;

fn owner(d: &Daemon, name: &str) -> Option<String> {
    d.admin_client().info(name).expect("info").owner
}

fn owns(d: &Daemon, token: &str) -> Vec<String> {
    let list = d.admin_client().token_list().expect("token list");
    list.into_iter()
        .find(|t| t.name == token)
        .map(|t| t.owns)
        .unwrap_or_default()
}

#[test]
fn owners_are_committed_with_the_branch_and_the_token_file_is_left_alone() {
    let mut d = Daemon::start();
    let agent_s = d.token("agent", &["branch:main"]);
    let tokens_file = store_path(&d.pool_path);
    let before = std::fs::read(&tokens_file).unwrap();
    let mut agent = d.client(&agent_s);
    agent.branch_create("work", "main", None).unwrap();
    agent.snapshot_create("work-snap", "work").unwrap();
    agent.branch_create("scratch", "main", None).unwrap();
    agent.delete("scratch").unwrap();
    assert_eq!(
        std::fs::read(&tokens_file).unwrap(),
        before,
        "creating and deleting branches must not rewrite POOL.tokens"
    );
    // The catalog holds the owner: one token id for both, and none for main.
    let ids: Vec<u64> = d
        .pool
        .list()
        .iter()
        .filter(|b| b.name.starts_with("work"))
        .map(|b| b.owner)
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] != NO_OWNER && ids[0] == ids[1], "{ids:?}");
    assert_eq!(d.pool.info("main").unwrap().owner, NO_OWNER);
    assert_eq!(owner(&d, "work").as_deref(), Some("agent"));
    assert_eq!(owns(&d, "agent"), ["work", "work-snap"]);

    // A restart reads owners back from the catalog; ownership follows a rename.
    d.restart();
    let mut agent = d.client(&agent_s);
    agent.rename("work", "work-2").unwrap();
    assert_eq!(owner(&d, "work-2").as_deref(), Some("agent"));
    assert_eq!(owns(&d, "agent"), ["work-2", "work-snap"]);

    // A revoked token owns nothing, and the same name again is another token.
    d.admin_client().token_revoke("agent").unwrap();
    assert_eq!(owner(&d, "work-2"), None);
    let again_s = d.token("agent", &["read:main"]);
    let mut again = d.client(&again_s);
    assert_eq!(owner(&d, "work-2"), None);
    assert!(owns(&d, "agent").is_empty());
    assert_eq!(kind(again.delete("work-2")), ErrorKind::NotFound);
}

#[test]
fn a_token_file_from_before_owners_moved_is_upgraded() {
    let mut d = Daemon::start();
    let agent_s = d.token("agent", &["branch:main"]);
    d.client(&agent_s)
        .branch_create("work", "main", None)
        .unwrap();
    let work = d.pool.branch_id("work").unwrap();
    // Make it look like a pool and token file of the version before: no owner in
    // the catalog, the agent's branch in its `owns` list, no token ids.
    d.stop();
    d.pool.set_owners(&[(work, NO_OWNER)]).unwrap();
    let path = store_path(&d.pool_path);
    let mut file: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for t in file["tokens"].as_array_mut().unwrap() {
        let t = t.as_object_mut().unwrap();
        t.remove("id").expect("tokens have ids");
        let owned = if t["name"] == "agent" {
            vec![work]
        } else {
            vec![]
        };
        t.insert("owns".into(), owned.into());
    }
    std::fs::write(&path, serde_json::to_vec(&file).unwrap()).unwrap();
    assert_eq!(d.pool.info("work").unwrap().owner, NO_OWNER);

    d.restart();
    assert_eq!(owner(&d, "work").as_deref(), Some("agent"));
    assert_ne!(d.pool.info("work").unwrap().owner, NO_OWNER);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("owns") && text.contains("\"id\""), "{text}");
    // The same secret still works, and ownership still grants delete after
    // another restart.
    d.restart();
    let mut agent = d.client(&agent_s);
    assert_eq!(owner(&d, "work").as_deref(), Some("agent"));
    agent.delete("work").unwrap();
}
