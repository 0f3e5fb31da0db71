//! Permission rules: what a token may do to a branch.
//!
//! - `admin` on a pattern allows everything on matching branches, protected or not;
//!   token management and (un)protect need `admin`.
//! - `write` implies `read`.
//! - A token owns the branches and snapshots it created: on those it has read,
//!   mount, write, branch and delete (not admin).
//! - Anything else needs a grant whose scope is the one asked and whose pattern
//!   matches the branch name.
//! - A token sees a branch (may learn that it exists) only through a grant of
//!   any scope matching its name, or by owning it.

use cowfs_ctl::proto::{ErrorKind, ErrorReply, Scope};

use super::tokens::TokenView;
use crate::pool::BranchId;

/// Does `t` have `scope` on branch `name` (id `id`)?
pub fn has(t: &TokenView, scope: Scope, name: &str, id: BranchId) -> bool {
    if t.scopes
        .iter()
        .any(|g| g.scope == Scope::Admin && g.matches(name))
    {
        return true;
    }
    if scope == Scope::Admin {
        return false;
    }
    if t.owns.contains(&id) {
        return true;
    }
    t.scopes.iter().any(|g| {
        g.matches(name) && (g.scope == scope || (scope == Scope::Read && g.scope == Scope::Write))
    })
}

/// May `t` learn that branch `name` (id `id`) exists? Other agents' branches
/// must look exactly like missing ones, so only a grant matching the name (any
/// scope: `branch:prod` tells that prod exists) or ownership shows a branch.
pub fn sees(t: &TokenView, name: &str, id: BranchId) -> bool {
    t.owns.contains(&id) || t.scopes.iter().any(|g| g.matches(name))
}

/// `admin:*`: may manage tokens.
pub fn is_pool_admin(t: &TokenView) -> bool {
    t.scopes
        .iter()
        .any(|g| g.scope == Scope::Admin && g.pattern == "*")
}

/// Refuse unless `t` has `scope` on the branch.
pub fn require(t: &TokenView, scope: Scope, name: &str, id: BranchId) -> Result<(), ErrorReply> {
    if has(t, scope, name, id) {
        Ok(())
    } else {
        Err(forbidden(t, scope, name))
    }
}

pub fn forbidden(t: &TokenView, scope: Scope, target: &str) -> ErrorReply {
    ErrorReply {
        kind: ErrorKind::Forbidden,
        message: format!(
            "token '{}' lacks the '{scope}' scope on '{target}'; use a token with {scope}:{target} (or admin)",
            t.name
        ),
        scope: Some(scope),
        target: Some(target.to_string()),
        sanitize: None,
    }
}

/// Refuse a change to a protected branch unless `t` is admin on it.
pub fn require_unprotected(
    t: &TokenView,
    protected: bool,
    what: &str,
    name: &str,
    id: BranchId,
) -> Result<(), ErrorReply> {
    if !protected || has(t, Scope::Admin, name, id) {
        return Ok(());
    }
    Err(ErrorReply {
        kind: ErrorKind::Protected,
        message: format!(
            "branch '{name}' is protected: only an admin token may {what} it (an admin can run `cowfs-ctl unprotect {name}`)"
        ),
        scope: Some(Scope::Admin),
        target: Some(name.to_string()),
        sanitize: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(scopes: &[&str], owns: &[BranchId]) -> TokenView {
        TokenView {
            name: "t".into(),
            id: 1,
            scopes: scopes.iter().map(|s| s.parse().unwrap()).collect(),
            created_unix: 0,
            owns: owns.to_vec(),
        }
    }

    #[test]
    fn rules() {
        let agent = token(&["branch:prod", "read:prod"], &[5]);
        assert!(has(&agent, Scope::Branch, "prod", 1));
        assert!(has(&agent, Scope::Read, "prod", 1));
        assert!(!has(&agent, Scope::Write, "prod", 1));
        assert!(!has(&agent, Scope::Delete, "prod", 1));
        assert!(!has(&agent, Scope::Mount, "prod", 1));
        for s in [
            Scope::Read,
            Scope::Write,
            Scope::Mount,
            Scope::Delete,
            Scope::Branch,
        ] {
            assert!(has(&agent, s, "mine", 5));
            assert!(!has(&agent, s, "other", 6));
        }
        assert!(!has(&agent, Scope::Admin, "mine", 5));
        let w = token(&["write:dev-*"], &[]);
        assert!(has(&w, Scope::Read, "dev-1", 2));
        assert!(!has(&w, Scope::Read, "prod", 1));
        let admin = token(&["admin:*"], &[]);
        assert!(has(&admin, Scope::Delete, "prod", 1) && is_pool_admin(&admin));
        assert!(!is_pool_admin(&token(&["admin:prod"], &[])));
        let e = require(&agent, Scope::Write, "prod", 1).unwrap_err();
        assert_eq!(
            (e.kind, e.scope),
            (ErrorKind::Forbidden, Some(Scope::Write))
        );
        assert!(require_unprotected(&agent, true, "delete", "mine", 5).is_err());
        assert!(sees(&agent, "prod", 1) && sees(&agent, "renamed", 5));
        assert!(!sees(&agent, "other", 6));
        assert!(sees(&w, "dev-1", 2) && !sees(&w, "prod", 1));
        assert!(require_unprotected(&admin, true, "delete", "prod", 1).is_ok());
    }
}
