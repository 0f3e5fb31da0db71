//! One authenticated request: check names and permissions, then call the pool or
//! the mount table. Changing operations run one at a time (`Ctx::lock`), so a check
//! and the change it guards cannot interleave with another client's change; the
//! token itself is checked again once the lock is taken (`Ctx::lock_for`), so a
//! request that waited for a revoke of its token changes nothing.
//!
//! Sanitized clones: created (and recorded in `POOL.sanitize-state`) under the
//! lock, sanitized without it (other requests go on), then published or deleted
//! under the lock again. While sanitizing, a clone is invisible to tokens that are
//! not admin on it and refused (`sanitizing`) to everything else.
//!
//! A branch a token cannot see (`auth::sees`, or a clone being sanitized) gets
//! exactly the reply of a name no branch has (`not_found`), so that replies never
//! tell another agent's branch from a missing one.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cowfs_ctl::proto::{self, *};
use parking_lot::{Mutex, MutexGuard};
use serde::Serialize;
use serde_json::Value;

use super::auth::{forbidden, has, is_pool_admin, require, require_unprotected, sees};
use super::errors;
use super::mount_points;
use super::peer::Peer;
use super::quotas::QuotaStore;
use super::sanitize::{self, Profile, SanitizeConfig, SanitizeError};
use super::sanitizing::{SanitizeState, Saved};
use super::tokens::{Authenticated, TokenStore, TokenView};
use super::ControlError;
use crate::fuse::{Ended, MountTable, PinnedDir};
use crate::pool::admin::GroupMember as PoolMember;
use crate::pool::diff::PathChangeKind;
use crate::pool::quota::{QuotaLimits, QuotaStatus};
use crate::pool::{self as pool, BranchId, Pool, PoolError};

/// Progress events of one sanitize run are sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

pub struct Ctx {
    pub pool: Arc<Pool>,
    pub mounts: Arc<MountTable>,
    pub tokens: TokenStore,
    pub quotas: QuotaStore,
    /// Sanitize profiles of the `--config` file (none without one).
    pub profiles: SanitizeConfig,
    /// The pool's pseudonym key (`POOL.sanitize-key`).
    key: Vec<u8>,
    /// Clones being sanitized, required profiles (`POOL.sanitize-state`).
    pub state: SanitizeState,
    /// Where tokens without `admin:*` may mount (resolved).
    mount_roots: Vec<PathBuf>,
    /// Set when the daemon stops: running sanitizes end (hooks killed) and their
    /// clones are deleted.
    pub cancel: AtomicBool,
    lock: Mutex<()>,
}

type Res = Result<Value, ErrorReply>;

fn ok<T: Serialize>(v: T) -> Res {
    serde_json::to_value(v).map_err(|e| ErrorReply::new(ErrorKind::Internal, e.to_string()))
}

/// A name given to something new: created, or the new name of a rename.
fn name_ok(name: &str) -> Result<(), ErrorReply> {
    invalid_name(
        name,
        proto::check_name(name),
        "names are 1..=255 bytes of ASCII letters, digits, '-', '_' and '.'",
    )
}

/// A name that refers to an existing branch: looser, so that names given before
/// `name_ok`'s rule can still be renamed or deleted.
fn lookup_name_ok(name: &str) -> Result<(), ErrorReply> {
    invalid_name(
        name,
        proto::check_lookup_name(name),
        "names are 1..=255 bytes without '/', NUL or control characters",
    )
}

fn invalid_name(name: &str, check: Result<(), String>, rule: &str) -> Result<(), ErrorReply> {
    check.map_err(|why| {
        ErrorReply::new(
            ErrorKind::InvalidName,
            format!("invalid name '{}': {why} ({rule})", name.escape_debug()),
        )
        .target(name.escape_debug().to_string())
    })
}

/// The reply for a branch name that does not exist, and for one the token may not
/// see: the two must not differ in any field.
fn not_found(name: &str) -> ErrorReply {
    errors::pool(PoolError::BranchNotFound(name.to_string())).target(name)
}

/// A branch looked up for a permission check.
struct Target {
    name: String,
    id: BranchId,
    snapshot: bool,
    protected: bool,
}

impl Ctx {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pool: Arc<Pool>,
        mounts: Arc<MountTable>,
        tokens: TokenStore,
        quotas: QuotaStore,
        profiles: SanitizeConfig,
        key: Vec<u8>,
        state: SanitizeState,
        mount_roots: Vec<PathBuf>,
    ) -> Ctx {
        Ctx {
            pool,
            mounts,
            tokens,
            quotas,
            profiles,
            key,
            state,
            mount_roots,
            cancel: AtomicBool::new(false),
            lock: Mutex::new(()),
        }
    }

    /// At daemon start: delete every clone a previous daemon left in state
    /// `sanitizing` (it never finished, so it may hold personal data). A clone
    /// that cannot be deleted stays recorded, hence invisible and unusable.
    pub fn delete_unfinished(&self) -> Result<(), ControlError> {
        let io = |source| ControlError::Io {
            path: self.state.path().to_path_buf(),
            source,
        };
        let running = self.state.running();
        for r in &running {
            let found = self.pool.list().into_iter().find(|b| b.id == r.id);
            if let Some(b) = found {
                log::warn!(
                    "deleting '{}': its sanitizing never finished (the daemon stopped)",
                    b.name
                );
                if let Err(e) = self.pool.branch_delete(&b.name) {
                    log::error!("deleting unfinished sanitized clone '{}': {e}; it stays invisible and is retried at the next start", b.name);
                    continue;
                }
            }
            self.state.end(r.id).map_err(io)?;
        }
        if !running.is_empty() {
            if let Err(e) = self.pool.quota_recount_all() {
                log::warn!("recounting quotas: {e}");
            }
        }
        Ok(())
    }

    /// At daemon start: warn about descendants of a branch that requires a
    /// profile that do not require it (left by a build before requirements
    /// reached existing descendants): tokens allowed to branch from them get
    /// unsanitized clones until an admin runs `protect` again.
    pub fn warn_uncovered(&self) {
        let names: std::collections::HashMap<BranchId, String> = self
            .pool
            .list()
            .into_iter()
            .map(|b| (b.id, b.name))
            .collect();
        let name = |id| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
        for (ancestor, d, profile) in self.state.uncovered(&self.pool) {
            log::warn!(
                "'{}' descends from '{}', which requires the sanitize profile '{profile}', but does not require it: its clones are not sanitized; run `cowfs-ctl protect {} --require-sanitize {profile}` to cover it",
                name(d),
                name(ancestor),
                name(ancestor)
            );
        }
    }

    /// The token a connection authenticated as, if it still exists, with the
    /// branches it owns (the catalog records who created each).
    pub fn session(&self, who: &Authenticated) -> Option<TokenView> {
        let mut t = self.tokens.current(who)?;
        t.owns = self.pool.owned_by(t.id);
        Some(t)
    }

    /// May `token` see branch `id` at all? Only through a grant matching its name
    /// or ownership (`sees`); a clone being sanitized only with `admin` on it.
    fn visible(&self, token: &TokenView, name: &str, id: BranchId) -> bool {
        sees(token, name, id)
            && (!self.state.is_sanitizing(id) || has(token, Scope::Admin, name, id))
    }

    /// `visible` for a branch known by its name only (a mount's, a parent's).
    fn visible_name(&self, token: &TokenView, name: &str) -> bool {
        self.pool
            .branch_id(name)
            .is_ok_and(|id| self.visible(token, name, id))
    }

    /// May `token` see and read the branch named `name` (a mount's)?
    fn readable_name(&self, token: &TokenView, name: &str) -> bool {
        self.pool
            .branch_id(name)
            .is_ok_and(|id| has(token, Scope::Read, name, id) && self.visible(token, name, id))
    }

    /// Branch `name` as `token` may know it: one it cannot see is `not_found`,
    /// exactly like a missing one.
    fn lookup(&self, token: &TokenView, name: &str) -> Result<pool::BranchInfo, ErrorReply> {
        lookup_name_ok(name)?;
        match self.pool.info(name) {
            Ok(i) if self.visible(token, &i.name, i.id) => Ok(i),
            Ok(_) | Err(PoolError::BranchNotFound(_)) => Err(not_found(name)),
            Err(e) => Err(errors::pool(e)),
        }
    }

    /// A branch `token` names in a request; clones being sanitized are refused
    /// (only admins on them get this far, see `lookup`).
    fn target(&self, token: &TokenView, name: &str) -> Result<Target, ErrorReply> {
        let i = self.lookup(token, name)?;
        if self.state.is_sanitizing(i.id) {
            return Err(ErrorReply::new(
                ErrorKind::Sanitizing,
                format!("branch '{name}' is being sanitized; it can be used once every rule and hook succeeded (`cowfs-ctl info {name}` shows its state)"),
            )
            .target(name));
        }
        Ok(Target {
            name: i.name,
            id: i.id,
            snapshot: i.snapshot,
            protected: i.protected,
        })
    }

    /// `name`'s BranchInfo as `token` may see it (after a change this request
    /// made under the operation lock).
    fn info(&self, token: &TokenView, name: &str) -> Result<BranchInfo, ErrorReply> {
        let i = self.pool.info(name).map_err(errors::pool)?;
        Ok(self.describe(token, i))
    }

    /// The BranchInfo of `i`, read once and checked: `list` and `info` run without
    /// the operation lock, so reading a name again could describe whatever a
    /// rename put under it meanwhile (a branch the token may not see).
    fn describe(&self, token: &TokenView, i: pool::BranchInfo) -> BranchInfo {
        BranchInfo {
            id: i.id,
            kind: if i.snapshot {
                BranchKind::Snapshot
            } else {
                BranchKind::Branch
            },
            // A parent the token cannot see (another agent's branch) is not named.
            parent: i.parent.filter(|p| self.visible_name(token, p)),
            created_unix: i.created_unix,
            protected: i.protected,
            owner: self.tokens.name_of(i.owner),
            mounts: self.mount_list(Some(&i.name)),
            state: if self.state.is_sanitizing(i.id) {
                BranchState::Sanitizing
            } else {
                BranchState::Ready
            },
            require_sanitize: self.state.required(i.id),
            sanitized: None,
            name: i.name,
        }
    }

    fn mount_list(&self, branch: Option<&str>) -> Vec<proto::MountInfo> {
        self.mounts
            .list()
            .into_iter()
            .filter(|m| branch.is_none_or(|b| m.branch == b))
            .map(|m| proto::MountInfo {
                branch: m.branch,
                dir: m.dir.to_string_lossy().into_owned(),
                read_only: m.read_only,
            })
            .collect()
    }

    /// Flush a mounted branch (syncfs) and commit, so that a branch, snapshot or
    /// diff taken next holds every write completed before the request.
    fn sync(&self, name: &str) -> Result<(), ErrorReply> {
        if !self.mounts.is_mounted(name) {
            return Ok(());
        }
        if let Err(e) = self.mounts.sync_branch(name) {
            // syncfs writes back every inode even when one of them fails (e.g. a
            // file unlinked since it was written answers ENOENT once); a second
            // pass reports only what still fails.
            log::warn!("flushing branch '{name}': {e}; retrying once");
            self.mounts.sync_branch(name).map_err(errors::mount)?;
        }
        Ok(())
    }

    /// `sync` each of `names`, under the operation lock, for a request that
    /// does not otherwise hold it (`diff`): syncfs holds the mount's directory
    /// open, so an unmount running meanwhile found it busy and answered that
    /// files were open there.
    fn sync_locked(&self, names: &[&str]) -> Result<(), ErrorReply> {
        let _g = self.lock.lock();
        for name in names {
            self.sync(name)?;
        }
        Ok(())
    }

    fn refuse_mounted(&self, name: &str, what: &str) -> Result<(), ErrorReply> {
        if let Some(m) = self.mount_list(Some(name)).first() {
            return Err(ErrorReply::new(
                ErrorKind::Mounted,
                format!(
                    "branch '{name}' is mounted on {}; unmount it first (`cowfs-ctl unmount {}`), then {what} it",
                    m.dir, m.dir
                ),
            )
            .target(name));
        }
        Ok(())
    }

    /// Run one request for the token named `token`, sent by a process of user
    /// `caller` (`None`: the kernel did not say). A `branch_create` that
    /// sanitizes reports its progress to `progress`.
    pub fn handle(
        &self,
        token: &TokenView,
        caller: Option<&Peer>,
        req: Request,
        progress: &mut dyn FnMut(ProgressEvent),
    ) -> Res {
        match req {
            Request::Hello { .. } => Err(errors::bad_request(
                "hello is only valid as the first request of a connection",
            )),
            Request::List {} => {
                let mut out = Vec::new();
                for b in self.pool.list() {
                    if has(token, Scope::Read, &b.name, b.id) && self.visible(token, &b.name, b.id)
                    {
                        out.push(self.describe(token, b));
                    }
                }
                ok(BranchList { branches: out })
            }
            Request::Info { name } => {
                let i = self.lookup(token, &name)?;
                require(token, Scope::Read, &i.name, i.id)?;
                ok(self.describe(token, i))
            }
            Request::BranchCreate {
                name,
                from,
                mount,
                sanitize,
                progress: _,
            } => self.create(
                token, caller, &name, &from, false, mount, sanitize, progress,
            ),
            Request::SnapshotCreate { name, from } => {
                self.create(token, caller, &name, &from, true, None, None, progress)
            }
            Request::GroupCreate { members } => self.group(token, members),
            Request::Rename { old, new } => {
                name_ok(&new)?;
                let _g = self.lock_for(token)?;
                let t = self.target(token, &old)?;
                require(token, Scope::Delete, &t.name, t.id)?;
                require_unprotected(token, t.protected, "rename", &t.name, t.id)?;
                refuse_scope_gain(token, &t, &new)?;
                self.refuse_exposing(token, &t, &new)?;
                self.refuse_mounted(&old, "rename")?;
                self.pool.branch_rename(&old, &new).map_err(errors::pool)?;
                ok(self.info(token, &new)?)
            }
            Request::Delete { name } => {
                let _g = self.lock_for(token)?;
                let t = self.target(token, &name)?;
                require(token, Scope::Delete, &t.name, t.id)?;
                require_unprotected(token, t.protected, "delete", &t.name, t.id)?;
                self.refuse_mounted(&name, "delete")?;
                // Its children take its parent, and what a reset copied into
                // it (recorded first: a stop in between leaves more, not less).
                self.state
                    .pass_copied(t.id, &self.pool.children(t.id))
                    .map_err(|e| self.state_error(e))?;
                self.pool.branch_delete(&name).map_err(errors::pool)?;
                if let Err(e) = self.state.forget(t.id) {
                    log::warn!("{}: {e}", self.state.path().display());
                }
                if let Err(e) = self.quotas.set(t.id, QuotaLimits::default()) {
                    log::warn!("{}: {e}", self.quotas.path().display());
                }
                self.pool.quota_recount_all().map_err(errors::pool)?;
                ok(Done {})
            }
            Request::Mount {
                name,
                dir,
                read_only,
            } => {
                let _g = self.lock_for(token)?;
                let t = self.target(token, &name)?;
                self.mount(token, caller, &t, &dir, read_only)?;
                ok(self.info(token, &name)?)
            }
            Request::Unmount { dir } => {
                let _g = self.lock_for(token)?;
                let canonical = Path::new(&dir).canonicalize().ok();
                // A mount of a branch the token cannot read is no mount to it,
                // as `mounts` leaves it out: a refusal would tell where it is.
                let m = self
                    .mounts
                    .list()
                    .into_iter()
                    .find(|m| m.dir == Path::new(&dir) || Some(&m.dir) == canonical.as_ref())
                    .filter(|m| self.readable_name(token, &m.branch));
                let Some(m) = m else {
                    return Err(ErrorReply::new(
                        ErrorKind::NotMounted,
                        format!("{dir}: no cowfs branch is mounted there (see `cowfs-ctl list`)"),
                    )
                    .target(dir));
                };
                let t = self.target(token, &m.branch)?;
                may_mount(token, &t, m.read_only, "unmount a read-write mount of")?;
                self.mounts.unmount(&m.dir).map_err(errors::mount)?;
                ok(Done {})
            }
            Request::Mounts {} => {
                let mut out = Vec::new();
                for m in self.mount_list(None) {
                    if self.readable_name(token, &m.branch) {
                        out.push(m);
                    }
                }
                ok(MountList { mounts: out })
            }
            Request::Diff { a, b } => {
                // Both checked before anything is flushed: a refusal changes
                // nothing (a flush commits).
                let ta = self.target(token, &a)?;
                require(token, Scope::Read, &ta.name, ta.id)?;
                let tb = self.target(token, &b)?;
                require(token, Scope::Read, &tb.name, tb.id)?;
                self.sync_locked(&[&a, &b])?;
                // Without the operation lock (a diff may take long), a rename or
                // delete may change what the names hold after the checks: walk
                // only the branches checked, by id, or answer as for a deleted
                // one.
                let d = self
                    .pool
                    .diff_ids(&a, ta.id, &b, tb.id)
                    .map_err(errors::pool)?;
                // A long diff answers only a token that still exists.
                self.still_current(token)?;
                let entries = d
                    .entries
                    .into_iter()
                    .map(|c| DiffEntry {
                        path: String::from_utf8_lossy(&c.path).into_owned(),
                        change: match c.change {
                            PathChangeKind::Added => Change::Added,
                            PathChangeKind::Removed => Change::Removed,
                            PathChangeKind::Modified => Change::Modified,
                        },
                        file_type: file_type(c.file_type).into(),
                        ranges: c
                            .ranges
                            .into_iter()
                            .map(|(offset, len)| ByteRange { offset, len })
                            .collect(),
                        aspects: c.aspects.iter().map(|a| a.name().into()).collect(),
                    })
                    .collect();
                ok(DiffReply {
                    a,
                    b,
                    entries,
                    nodes_visited: d.nodes_visited,
                })
            }
            Request::Reset { branch, to } => {
                let _g = self.lock_for(token)?;
                let t = self.target(token, &branch)?;
                let src = self.target(token, &to)?;
                require(token, Scope::Write, &t.name, t.id)?;
                require(token, Scope::Read, &src.name, src.id)?;
                // A clone of a branch that requires sanitizing must not get its
                // content back unsanitized.
                self.refuse_required(token, &src, "reset a branch to")?;
                require_unprotected(token, t.protected, "reset", &t.name, t.id)?;
                if t.snapshot {
                    return Err(ErrorReply::new(
                        ErrorKind::ReadOnly,
                        format!(
                            "'{branch}' is a snapshot; snapshots never change (reset a branch)"
                        ),
                    )
                    .target(branch));
                }
                self.refuse_mounted(&branch, "reset")?;
                // A mounted `to` may hold writes its callers completed that are
                // still in its mount's page cache: flushed and committed first,
                // as for `branch_create`, or the branch would get whatever the
                // kernel happened to have written back.
                self.sync(&to)?;
                // The branch now holds `to`'s content unsanitized (only an admin
                // on `to` gets here if `to` requires a profile): it requires the
                // profile too, as a branch taken from `to` without sanitizing
                // would, or tokens that may branch from it would get unsanitized
                // clones. It is no sanitized clone anymore either, whatever it
                // was, and is recorded as a copy of `to` (and of its ancestors):
                // its catalog parent stays, and a requirement set later on
                // `to` must reach it like a snapshot taken of `to` now. Set
                // before the reset, so that the content is never without it;
                // put back if the reset fails.
                let saved = self.state.saved();
                let required = self.state.required(src.id);
                let mut from = vec![src.id];
                from.extend(self.pool.ancestors(src.id));
                self.state
                    .replaced(t.id, from, required.as_deref())
                    .map_err(|e| self.state_error(e))?;
                if let Err(e) = self.pool.reset_to(&branch, &to) {
                    self.restore(saved);
                    return Err(errors::pool(e));
                }
                ok(self.info(token, &branch)?)
            }
            Request::Protect {
                name,
                require_sanitize,
                force,
            } => self.protect(token, &name, Some(force), require_sanitize),
            Request::Unprotect { name } => self.protect(token, &name, None, None),
            Request::Usage {} => {
                let st = self.pool.statfs();
                let mut branches = Vec::new();
                for u in self.pool.usage().map_err(errors::pool)? {
                    // The id read with the name: looked up again by name, a
                    // rename since could put another branch's sizes under it.
                    let id = u.id;
                    if has(token, Scope::Read, &u.name, id) && self.visible(token, &u.name, id) {
                        branches.push(UsageEntry {
                            shared_bytes: u.referenced_bytes - u.exclusive_bytes,
                            name: u.name,
                            referenced_bytes: u.referenced_bytes,
                            exclusive_bytes: u.exclusive_bytes,
                        });
                    }
                }
                ok(UsageReply {
                    capacity_bytes: st.blocks * st.bsize as u64,
                    used_bytes: self.pool.used_blocks() * st.bsize as u64,
                    branches,
                })
            }
            Request::QuotaSet {
                name,
                max_bytes,
                reserve_bytes,
            } => {
                let _g = self.lock_for(token)?;
                let t = self.target(token, &name)?;
                require(token, Scope::Admin, &t.name, t.id)?;
                let limits = QuotaLimits {
                    max_bytes,
                    reserve_bytes,
                };
                if t.snapshot && !limits.is_none() {
                    return Err(errors::bad_request(format!(
                        "'{name}' is a snapshot; snapshots never grow (set quotas on branches)"
                    ))
                    .target(name));
                }
                let before = self
                    .pool
                    .quota_list()
                    .into_iter()
                    .find(|q| q.id == t.id)
                    .map(|q| q.limits)
                    .unwrap_or_default();
                let st = self.pool.quota_set(&name, limits).map_err(errors::pool)?;
                if let Err(e) = self.quotas.set(t.id, limits) {
                    if let Err(r) = self.pool.quota_set(&name, before) {
                        log::error!("restoring the quota of '{name}': {r}");
                    }
                    return Err(ErrorReply::new(
                        ErrorKind::Io,
                        format!("{}: {e}", self.quotas.path().display()),
                    ));
                }
                ok(quota_info(st))
            }
            Request::QuotaList {} => {
                let quotas = self
                    .pool
                    .quota_list()
                    .into_iter()
                    .filter(|q| {
                        has(token, Scope::Read, &q.name, q.id) && self.visible(token, &q.name, q.id)
                    })
                    .map(quota_info)
                    .collect();
                ok(proto::QuotaList { quotas })
            }
            Request::TokenCreate { name, scopes } => {
                self.pool_admin(token, "create tokens")?;
                let _g = self.lock_for(token)?;
                name_ok(&name)?;
                if scopes.is_empty() {
                    return Err(errors::bad_request(
                        "a token needs at least one scope (SCOPE:PATTERN, e.g. branch:prod)",
                    ));
                }
                let secret = self
                    .tokens
                    .create(&name, scopes.clone(), |id| {
                        !self.pool.owned_by(id).is_empty()
                    })
                    .map_err(errors::token)?;
                log::info!("token '{name}' created by '{}'", token.name);
                ok(TokenCreated {
                    name,
                    secret,
                    scopes,
                })
            }
            Request::TokenList {} => {
                self.pool_admin(token, "list tokens")?;
                let tokens = self
                    .tokens
                    .list()
                    .into_iter()
                    .map(|t| TokenInfo {
                        owns: self
                            .pool
                            .list()
                            .into_iter()
                            .filter(|b| b.owner == t.id)
                            .map(|b| b.name)
                            .collect(),
                        name: t.name,
                        scopes: t.scopes,
                        created_unix: t.created_unix,
                    })
                    .collect();
                ok(TokenList { tokens })
            }
            Request::TokenRevoke { name } => {
                self.pool_admin(token, "revoke tokens")?;
                let _g = self.lock_for(token)?;
                let admins_left = self
                    .tokens
                    .list()
                    .iter()
                    .filter(|t| t.name != name && is_pool_admin(t))
                    .count();
                if admins_left == 0 {
                    return Err(errors::bad_request(format!(
                        "'{name}' is the last token with admin:*; create another admin token before revoking it"
                    )));
                }
                let id = self.tokens.list().into_iter().find(|t| t.name == name);
                self.tokens.revoke(&name).map_err(errors::token)?;
                log::info!("token '{name}' revoked by '{}'", token.name);
                // The access it granted ends with it: a leaked token's mounts
                // would otherwise go on serving whoever holds them. Revoked
                // first, so that a mount that cannot be ended still leaves the
                // token unusable.
                let made: Vec<_> = self
                    .mounts
                    .list()
                    .into_iter()
                    .filter(|m| id.as_ref().is_some_and(|t| m.token == Some(t.id)))
                    .collect();
                ok(TokenRevoked {
                    unmounted: self.end_mounts(made, &format!("token '{name}' was revoked")),
                })
            }
        }
    }

    /// Is `token` still there (not revoked since its request started)? Checked
    /// when a change takes the operation lock (`lock_for`), and by requests that
    /// run long before they publish or answer. Under the operation lock, which
    /// `token_revoke` takes too, the answer holds until the lock is released.
    fn still_current(&self, token: &TokenView) -> Result<(), ErrorReply> {
        // Ids are never reused: a token created again under the name has another.
        match self.tokens.name_of(token.id) {
            Some(_) => Ok(()),
            None => Err(errors::revoked(&token.name)),
        }
    }

    /// The operation lock, for a change requested by `token`. The server checked
    /// the token when the request arrived, but the request may have waited here
    /// while a `token_revoke` of it held the lock: checked again under the lock,
    /// a revoked token changes nothing (see `still_current`).
    fn lock_for(&self, token: &TokenView) -> Result<MutexGuard<'_, ()>, ErrorReply> {
        let g = self.lock.lock();
        self.still_current(token)?;
        Ok(g)
    }

    fn pool_admin(&self, token: &TokenView, what: &str) -> Result<(), ErrorReply> {
        if is_pool_admin(token) {
            return Ok(());
        }
        let mut e = forbidden(token, Scope::Admin, "*");
        e.message = format!(
            "token '{}' may not {what}: that needs the admin:* scope",
            token.name
        );
        Err(e)
    }

    /// Refuse `what` from a branch that requires a sanitize profile unless `token`
    /// is admin on it.
    fn refuse_required(
        &self,
        token: &TokenView,
        src: &Target,
        what: &str,
    ) -> Result<(), ErrorReply> {
        let Some(p) = self.state.required(src.id) else {
            return Ok(());
        };
        if has(token, Scope::Admin, &src.name, src.id) {
            return Ok(());
        }
        let mut e = forbidden(token, Scope::Admin, &src.name);
        e.message = format!(
            "branch '{}' requires the sanitize profile '{p}': only an admin token may {what} it; create a branch of it instead (`cowfs-ctl branch create NAME --from {}`), which is sanitized",
            src.name, src.name
        );
        Err(e)
    }

    /// Grants follow names, so a rename hands the branch to every token whose
    /// grants match `new` (a third token's `read:shared-*` reads what
    /// `tmp-x` held once it is `shared-x`). A rename may only expose what
    /// the token could expose by copying the branch under that name: it needs
    /// `branch` on it, as `branch_create NEW --from OLD` would, and `admin` if
    /// it requires a sanitize profile (a non-admin's copy would be sanitized,
    /// the renamed branch is not). `delete` alone no longer suffices: a token
    /// allowed to delete another's branch is not thereby allowed to publish it.
    fn refuse_exposing(&self, token: &TokenView, t: &Target, new: &str) -> Result<(), ErrorReply> {
        if !has(token, Scope::Branch, &t.name, t.id) {
            let mut e = forbidden(token, Scope::Branch, &t.name);
            e.message = format!(
                "token '{}' lacks the 'branch' scope on '{}': renaming it to '{new}' shows its content to every token whose grants match '{new}', which needs what copying it there would (branch:{}, or admin)",
                token.name, t.name, t.name
            );
            return Err(e);
        }
        self.refuse_required(token, t, "rename")
    }

    #[allow(clippy::too_many_arguments)]
    fn create(
        &self,
        token: &TokenView,
        caller: Option<&Peer>,
        name: &str,
        from: &str,
        snapshot: bool,
        mount: Option<MountSpec>,
        sanitize: Option<String>,
        progress: &mut dyn FnMut(ProgressEvent),
    ) -> Res {
        name_ok(name)?;
        let g = self.lock_for(token)?;
        let src = self.target(token, from)?;
        require(token, Scope::Branch, &src.name, src.id)?;
        let src_required = self.state.required(src.id);
        let profile_name = match src_required.clone() {
            Some(req) if !has(token, Scope::Admin, &src.name, src.id) => {
                if snapshot {
                    self.refuse_required(token, &src, "take a snapshot of")?;
                }
                if sanitize.as_deref().is_some_and(|asked| asked != req) {
                    log::info!(
                        "branch '{name}' of '{from}': profile '{req}' required by '{from}' runs instead of the one asked for"
                    );
                }
                Some(req)
            }
            _ => sanitize,
        };
        if snapshot && profile_name.is_some() {
            return Err(errors::bad_request(
                "snapshots are read-only and cannot be sanitized; create a sanitized branch",
            ));
        }
        let profile = match &profile_name {
            Some(p) => Some(self.profiles.profile(p).map_err(|e| {
                ErrorReply::new(
                    ErrorKind::UnknownProfile,
                    format!("{e}; profiles are the [profiles.NAME] tables of the daemon's --config file"),
                )
                .target(p.clone())
            })?),
            None => None,
        };
        if let Some(m) = &mount {
            self.mount_point(token, caller, &m.dir)?;
        }
        self.sync(from)?;
        let Some(profile) = profile else {
            let id = if snapshot {
                self.pool.snapshot_create_owned(name, from, token.id)
            } else {
                self.pool.branch_create_owned(name, from, token.id)
            }
            .map_err(errors::pool)?;
            // Unsanitized data of a parent that requires a profile keeps the
            // requirement (only admins get here with such a parent).
            if let Err(e) = self.inherit_required(src.id, id) {
                self.drop_new(name);
                return Err(e);
            }
            self.mount_new(token, caller, name, mount)?;
            log::info!(
                "{} '{name}' created from '{from}' by token '{}'",
                if snapshot { "snapshot" } else { "branch" },
                token.name
            );
            return ok(self.info(token, name)?);
        };

        // Sanitized: the clone is recorded as `sanitizing`, by id, before the
        // commit that creates it, so that a daemon stopping at any point leaves
        // nothing a restart would keep. No owner until it is ready: a token owns
        // only what it may use.
        let mut recorded = None;
        let created = self.pool.branch_create_recorded(name, from, |id| {
            self.state.begin(id, name).map_err(|source| PoolError::Io {
                path: self.state.path().to_path_buf(),
                source,
            })?;
            recorded = Some(id);
            Ok(())
        });
        let id = match created {
            Ok(id) => id,
            Err(e) => {
                self.forget_recorded(recorded);
                return Err(errors::pool(e));
            }
        };
        drop(g);
        log::info!(
            "branch '{name}' created from '{from}' by token '{}'; sanitizing with profile '{}'",
            token.name,
            profile.name
        );
        // The hooks' output shows the parent's data (a failing hook often prints
        // the rows it choked on), and so do the paths in progress lines and
        // errors: only tokens that may read the parent get them.
        let reads_parent = has(token, Scope::Read, &src.name, src.id);
        let result = self.sanitize(name, profile, progress, reads_parent);
        let _g = self.lock.lock();
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                log::warn!("sanitizing '{name}' failed: {}", e.message);
                self.discard(name, id);
                return Err(e);
            }
        };
        // Revoked while sanitizing: the clone is not owned by, mounted for or
        // shown to a token that no longer exists.
        if let Err(e) = self.still_current(token) {
            log::info!(
                "token '{}' was revoked while '{name}' was sanitized; deleting it",
                token.name
            );
            self.discard(name, id);
            return Err(e);
        }
        // Owned before it leaves state `sanitizing`: a daemon stopping in between
        // deletes it at the next start.
        if let Err(e) = self.pool.set_owners(&[(id, token.id)]) {
            self.discard(name, id);
            return Err(errors::pool(e));
        }
        // Sanitized with another profile than the parent requires (only an
        // admin on the parent chooses): the clone still holds what the
        // required one removes, so it requires it too, as a copy taken
        // unsanitized does (`inherit_required`). One sanitized with the
        // required profile is free of it, as `require_lineage` counts it; a
        // requirement a `protect` gave the clone meanwhile stays.
        let missing = src_required.filter(|r| *r != profile.name);
        if let Some(required) = missing.filter(|_| self.state.required(id).is_none()) {
            if let Err(e) = self.set_required(id, Some(&required)) {
                self.discard(name, id);
                return Err(e);
            }
        }
        // Marked as sanitized with the profile: a requirement of it set later
        // on an ancestor does not reach the clone (`require_lineage`).
        if let Err(e) = self.state.finish(id, &profile.name) {
            self.discard(name, id);
            return Err(self.state_error(e));
        }
        self.mount_new(token, caller, name, mount)?;
        log::info!(
            "branch '{name}' sanitized with profile '{}' and ready",
            profile.name
        );
        let mut info = self.info(token, name)?;
        info.sanitized = Some(summary);
        ok(info)
    }

    /// Drop the entry of a sanitized clone whose creation failed after it was
    /// recorded. One left behind (the write failing too) is harmless: its id
    /// names no branch, and the next start drops it.
    fn forget_recorded(&self, recorded: Option<BranchId>) {
        if let Some(id) = recorded {
            if let Err(e) = self.state.end(id) {
                log::warn!("{}: {e}", self.state.path().display());
            }
        }
    }

    /// A child created unsanitized from `parent` requires the parent's profile
    /// too, so that what an admin copied does not become a way around it.
    fn inherit_required(&self, parent: BranchId, child: BranchId) -> Result<(), ErrorReply> {
        let Some(p) = self.state.required(parent) else {
            return Ok(());
        };
        self.set_required(child, Some(&p))
    }

    /// Drop a branch just created, after a later step of its creation failed,
    /// so that the failed request changes nothing: quotas are counted again, as
    /// after a delete (creating it made everything its parent held shared, which
    /// lowered the parent's figure; deleting it does not raise it by itself).
    fn drop_new(&self, name: &str) {
        if let Err(d) = self.pool.branch_delete(name) {
            log::error!("dropping branch '{name}' after a failed creation: {d}");
            return;
        }
        if let Err(e) = self.pool.quota_recount_all() {
            log::warn!("recounting quotas: {e}");
        }
    }

    /// Mount a branch just created as its request asked; all or nothing: a branch
    /// that could not be mounted is dropped again.
    fn mount_new(
        &self,
        token: &TokenView,
        caller: Option<&Peer>,
        name: &str,
        mount: Option<MountSpec>,
    ) -> Result<(), ErrorReply> {
        let Some(m) = mount else {
            return Ok(());
        };
        // Checked again: mounts may have changed while the clone was sanitized.
        let mounted = self
            .mount_point(token, caller, &m.dir)
            .and_then(|(dir, pinned)| {
                self.mounts
                    .mount_pinned(name, &dir, pinned, m.read_only, Some(token.id))
                    .map_err(errors::mount)
            });
        if let Err(e) = mounted {
            self.drop_new(name);
            return Err(e);
        }
        Ok(())
    }

    /// The directory `token`, used by `caller`, may mount on for `dir`, and
    /// that directory held open (see `mount_points`).
    fn mount_point(
        &self,
        token: &TokenView,
        caller: Option<&Peer>,
        dir: &str,
    ) -> Result<(PathBuf, PinnedDir), ErrorReply> {
        mount_points::check(
            dir,
            is_pool_admin(token),
            caller,
            &self.mount_roots,
            &self.mounts.list(),
            &|b| self.visible_name(token, b),
        )
    }

    /// Run the file rules, then the hooks, then commit. Progress goes to
    /// `progress` at most every `PROGRESS_EVERY` and at each phase.
    fn sanitize(
        &self,
        name: &str,
        profile: &Profile,
        progress: &mut dyn FnMut(ProgressEvent),
        reads_parent: bool,
    ) -> Result<SanitizeSummary, ErrorReply> {
        let start = Instant::now();
        let fail = |stage: &str, e: SanitizeError| {
            log::warn!("sanitizing '{name}' with profile '{}': {e}", profile.name);
            sanitize_failure(name, &profile.name, stage, e, reads_parent)
        };
        progress(ProgressEvent {
            phase: "files".into(),
            ..Default::default()
        });
        // The first file is shown at once, then one line per `PROGRESS_EVERY`.
        let mut last: Option<Instant> = None;
        let mut latest = ProgressEvent::default();
        let report = sanitize::run_cancellable(
            &self.pool,
            name,
            profile,
            &self.key,
            &mut |p| {
                latest = ProgressEvent {
                    phase: "files".into(),
                    files_scanned: p.files_scanned,
                    bytes_scanned: p.bytes_scanned,
                    // The path being scanned is the parent's (names not yet
                    // redacted): only for a token that may read the parent.
                    current: if reads_parent {
                        p.current
                    } else {
                        String::new()
                    },
                };
                if last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                    last = Some(Instant::now());
                    progress(latest.clone());
                }
            },
            &self.cancel,
        )
        .map_err(|e| fail("rules", e))?;
        let counts = |phase: &str, current: &str| ProgressEvent {
            phase: phase.into(),
            files_scanned: report.files_scanned,
            bytes_scanned: report.bytes_scanned,
            current: current.into(),
        };
        progress(counts("files", ""));
        let hooks = if profile.hooks.is_empty() {
            Vec::new()
        } else {
            progress(counts("hooks", ""));
            sanitize::run_hooks_cancellable(
                &self.pool,
                &self.mounts,
                name,
                profile,
                &self.key,
                &self.profiles.scratch_dir,
                &self.cancel,
            )
            .map_err(|e| fail("hook", e))?
        };
        progress(counts("commit", ""));
        self.pool.commit().map_err(|e| {
            let mut r = errors::pool(e);
            r.message = format!(
                "sanitizing '{name}' with profile '{}': the final commit failed, so the clone was deleted: {}",
                profile.name, r.message
            );
            r
        })?;
        Ok(SanitizeSummary {
            profile: profile.name.clone(),
            files_scanned: report.files_scanned,
            bytes_scanned: report.bytes_scanned,
            files_changed: report.files_changed,
            files_removed: report.files_removed,
            files_truncated: report.files_truncated,
            files_replaced: report.files_replaced,
            binary_files_skipped: report.binary_files_skipped,
            values_replaced: report.values_replaced,
            names_changed: report.names_changed,
            symlinks_changed: report.symlinks_changed,
            xattrs_changed: report.xattrs_changed,
            hooks: hooks
                .into_iter()
                .map(|h| HookSummary {
                    name: h.name,
                    duration_ms: h.duration.as_millis() as u64,
                })
                .collect(),
            duration_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Delete a clone whose sanitizing failed (its space is returned) and forget
    /// it. A clone that cannot be deleted now (files still open: a hook's process
    /// lingering) stays recorded as `sanitizing`, hence invisible; the next daemon
    /// start deletes it.
    fn discard(&self, name: &str, id: BranchId) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.pool.branch_delete(name) {
                Ok(()) | Err(PoolError::BranchNotFound(_)) => break,
                Err(PoolError::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => {
                    log::error!("deleting the failed clone '{name}': {e}; it stays invisible and the next daemon start deletes it");
                    return;
                }
            }
        }
        if let Err(e) = self.pool.quota_recount_all() {
            log::warn!("recounting quotas: {e}");
        }
        if let Err(e) = self.state.end(id) {
            log::error!("{}: {e}", self.state.path().display());
        }
        log::info!("clone '{name}' deleted");
    }

    fn group(&self, token: &TokenView, members: Vec<proto::GroupMember>) -> Res {
        if members.is_empty() {
            return Err(errors::bad_request("a group needs at least one member"));
        }
        let _g = self.lock_for(token)?;
        let mut parents = Vec::new();
        for m in &members {
            name_ok(&m.name)?;
            let src = self.target(token, &m.from)?;
            require(token, Scope::Branch, &src.name, src.id)?;
            // Groups are not sanitized: a parent that requires it is admin-only here.
            self.refuse_required(token, &src, "take a group member from")?;
            parents.push(src.id);
        }
        for m in &members {
            self.sync(&m.from)?;
        }
        let list: Vec<PoolMember> = members
            .iter()
            .map(|m| PoolMember {
                name: m.name.clone(),
                from: m.from.clone(),
                snapshot: m.snapshot,
            })
            .collect();
        let ids = self
            .pool
            .group_create(&list, token.id)
            .map_err(errors::pool)?;
        for (parent, id) in parents.iter().zip(&ids) {
            if let Err(e) = self.inherit_required(*parent, *id) {
                for m in &members {
                    self.drop_new(&m.name);
                }
                return Err(e);
            }
        }
        let mut out = Vec::new();
        for m in &members {
            out.push(self.info(token, &m.name)?);
        }
        ok(BranchList { branches: out })
    }

    fn mount(
        &self,
        token: &TokenView,
        caller: Option<&Peer>,
        t: &Target,
        dir: &str,
        read_only: bool,
    ) -> Result<(), ErrorReply> {
        let read_only = read_only || t.snapshot;
        may_mount(token, t, read_only, "mount read-write")?;
        let (dir, pinned) = self.mount_point(token, caller, dir)?;
        // Exactly the directory checked, held open since: resolved again, a
        // symlink swapped in since would move the mount out of the mount roots,
        // or a directory swapped in onto one its user may not write.
        self.mounts
            .mount_pinned(&t.name, &dir, pinned, read_only, Some(token.id))
            .map_err(errors::mount)
    }

    /// Protect (`force`: `Some`, with an optional required profile; without
    /// one, a requirement set before stays) or unprotect (`None`; it drops the
    /// requirement too). A requirement reaches the branch's descendants
    /// (`protect_on`); unprotect leaves theirs. All or nothing: a step that
    /// fails undoes the one before it.
    fn protect(
        &self,
        token: &TokenView,
        name: &str,
        force: Option<bool>,
        require_profile: Option<String>,
    ) -> Res {
        let _g = self.lock_for(token)?;
        let t = self.target(token, name)?;
        require(token, Scope::Admin, &t.name, t.id)?;
        if let Some(p) = &require_profile {
            self.profiles.profile(p).map_err(|e| {
                ErrorReply::new(
                    ErrorKind::UnknownProfile,
                    format!("{e}; profiles are the [profiles.NAME] tables of the daemon's --config file"),
                )
                .target(p.clone())
            })?;
        }
        // By name: renames take the operation lock held here, so `t.name` is
        // still branch `t.id`.
        if let Some(force) = force {
            self.end_unprotected_writers(&t, force)?;
            self.protect_on(&t, require_profile)?;
        } else {
            self.protect_off(&t)?;
        }
        ok(self.info(token, &t.name)?)
    }

    /// Protecting a branch takes read-write mounts from tokens without `admin`
    /// on it, and a mount made before must not outlive that: refused while
    /// one exists (naming them, so that the admin can tell its users; the
    /// service behind such a mount would otherwise lose its files at once),
    /// ended with `force`. Read-only mounts, and mounts made without a token
    /// (the library's), stay.
    fn end_unprotected_writers(&self, t: &Target, force: bool) -> Result<(), ErrorReply> {
        let tokens = self.tokens.list();
        let writers: Vec<_> = self
            .mounts
            .list()
            .into_iter()
            .filter(|m| m.branch == t.name && !m.read_only)
            .filter_map(|m| {
                // A token gone since (a revoke that could not end its mount)
                // is no admin either.
                let maker = tokens.iter().find(|k| Some(k.id) == m.token);
                match (m.token, maker) {
                    (None, _) => None,
                    (Some(_), Some(k)) if has(k, Scope::Admin, &t.name, t.id) => None,
                    (Some(_), Some(k)) => Some((m, format!("token '{}'", k.name))),
                    (Some(_), None) => Some((m, "a revoked token".to_string())),
                }
            })
            .collect();
        if writers.is_empty() {
            return Ok(());
        }
        let shown = writers
            .iter()
            .map(|(m, by)| format!("{} (by {by})", m.dir.display()))
            .collect::<Vec<_>>()
            .join(", ");
        if !force {
            return Err(ErrorReply::new(
                ErrorKind::Mounted,
                format!(
                    "branch '{}' is mounted read-write by tokens without admin on it: {shown}; protected, they could not mount it so: unmount those first, or protect with force (`cowfs-ctl protect {} --force`) to unmount them (files open there then fail)",
                    t.name, t.name
                ),
            )
            .target(t.name.clone()));
        }
        let ended = self.end_mounts(
            writers.into_iter().map(|(m, _)| m).collect(),
            &format!("branch '{}' was protected", t.name),
        );
        let failed: Vec<String> = ended
            .iter()
            .filter_map(|m| Some(format!("{}: {}", m.dir, m.error.as_deref()?)))
            .collect();
        if !failed.is_empty() {
            return Err(ErrorReply::new(
                ErrorKind::Io,
                format!(
                    "branch '{}' was not protected: its read-write mounts by tokens without admin on it could not all be ended: {}",
                    t.name,
                    failed.join("; ")
                ),
            )
            .target(t.name.clone()));
        }
        Ok(())
    }

    /// End every mount of `made` (`MountTable::end`), for the reason `why` (for
    /// the log); each with how it ended, or why it could not be.
    fn end_mounts(&self, made: Vec<crate::fuse::MountInfo>, why: &str) -> Vec<EndedMount> {
        made.into_iter()
            .map(|m| {
                let (how, error) = match self.mounts.end(&m.dir) {
                    Ok(Ended::Unmounted) => (MountEnd::Unmounted, None),
                    Ok(Ended::Detached) => (MountEnd::Detached, None),
                    Ok(Ended::Aborted) => (MountEnd::Aborted, None),
                    Err(e) => (MountEnd::Failed, Some(e.to_string())),
                };
                match &error {
                    None => log::info!("{why}: its mount on {} ended ({how:?})", m.dir.display()),
                    Some(e) => log::error!("{why}: its mount on {} stays: {e}", m.dir.display()),
                }
                EndedMount {
                    branch: m.branch,
                    dir: m.dir.to_string_lossy().into_owned(),
                    read_only: m.read_only,
                    how,
                    error,
                }
            })
            .collect()
    }

    /// The requirement is recorded on the branch and on every descendant that
    /// requires no profile yet (snapshots and branches taken of it, or of them,
    /// before it was set hold the same unsanitized data), in one write, before
    /// the flag: stopped in between, the branch requires the profile
    /// unprotected (as inherited requirements do), never protected without it.
    fn protect_on(&self, t: &Target, require_profile: Option<String>) -> Result<(), ErrorReply> {
        let saved = self.state.saved();
        let Some(required) = require_profile.or_else(|| self.state.required(t.id)) else {
            return self.pool.set_protected(&t.name, true).map_err(errors::pool);
        };
        self.state
            .require_lineage(&self.pool, t.id, &required)
            .map_err(|e| self.state_error(e))?;
        if let Err(e) = self.pool.set_protected(&t.name, true) {
            self.restore(saved);
            return Err(errors::pool(e));
        }
        Ok(())
    }

    /// Put back requirements a failed request changed (`SanitizeState::saved`).
    fn restore(&self, saved: Saved) {
        if let Err(e) = self.state.restore(saved) {
            log::error!("{}: {e}", self.state.path().display());
        }
    }

    /// An error writing `POOL.sanitize-state`, naming it.
    fn state_error(&self, e: std::io::Error) -> ErrorReply {
        ErrorReply::new(
            ErrorKind::Io,
            format!("{}: {e}", self.state.path().display()),
        )
    }

    /// The flag is cleared before the requirement: stopped in between, the
    /// branch still requires its profile. A requirement that cannot be dropped
    /// puts the flag back.
    fn protect_off(&self, t: &Target) -> Result<(), ErrorReply> {
        self.pool
            .set_protected(&t.name, false)
            .map_err(errors::pool)?;
        if let Err(e) = self.set_required(t.id, None) {
            if let Err(p) = self.pool.set_protected(&t.name, t.protected) {
                log::error!("protecting '{}' again: {p}", t.name);
            }
            return Err(e);
        }
        Ok(())
    }

    /// `SanitizeState::set_required`, with an `io` error naming the state file.
    fn set_required(&self, id: BranchId, profile: Option<&str>) -> Result<(), ErrorReply> {
        self.state
            .set_required(id, profile)
            .map_err(|e| self.state_error(e))
    }
}

/// What mounting `t` read-only (`read_only`) or read-write takes; unmounting
/// such a mount, whoever made it, takes the same: with `mount` alone a token
/// given `mount:prod` and `read:prod` to look at production could take
/// production's own read-write mount away (its service then writing into the
/// bare directory below). `what` is the refused action, for the message.
fn may_mount(token: &TokenView, t: &Target, read_only: bool, what: &str) -> Result<(), ErrorReply> {
    require(token, Scope::Mount, &t.name, t.id)?;
    if read_only {
        require(token, Scope::Read, &t.name, t.id)
    } else {
        require(token, Scope::Write, &t.name, t.id)?;
        require_unprotected(token, t.protected, what, &t.name, t.id)
    }
}

/// Grants follow names, so a rename could hand the token scopes it lacks on the
/// branch: `delete:tmp-*` plus `write:work-*` would make someone else's
/// `tmp-secret` readable and writable as `work-secret`. Refuse a rename that
/// gives `token` any scope on the branch it does not already have; it depends
/// only on the token's grants and the two names, never on what `new` holds.
fn refuse_scope_gain(token: &TokenView, t: &Target, new: &str) -> Result<(), ErrorReply> {
    let gained = Scope::ALL
        .into_iter()
        .find(|s| has(token, *s, new, t.id) && !has(token, *s, &t.name, t.id));
    let Some(scope) = gained else {
        return Ok(());
    };
    let mut e = forbidden(token, scope, &t.name);
    e.message = format!(
        "token '{}' lacks the '{scope}' scope on '{}', and renaming it to '{new}' would give it that; use a token with {scope}:{} (or admin), or another name",
        token.name, t.name, t.name
    );
    Err(e)
}

fn quota_info(q: QuotaStatus) -> QuotaInfo {
    QuotaInfo {
        name: q.name,
        max_bytes: q.limits.max_bytes,
        reserve_bytes: q.limits.reserve_bytes,
        used_bytes: q.used_bytes,
    }
}

fn file_type(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        _ => "other",
    }
}

/// A failed sanitize run as a `sanitize_failed` error naming the rule and file, or
/// the hook with its exit code (or timeout) and, if `reads_parent`, its output and
/// the file's path.
fn sanitize_failure(
    branch: &str,
    profile: &str,
    stage: &str,
    e: SanitizeError,
    reads_parent: bool,
) -> ErrorReply {
    let mut f = SanitizeFailure {
        profile: profile.to_string(),
        stage: stage.to_string(),
        ..Default::default()
    };
    match &e {
        SanitizeError::File { rule, path, .. } | SanitizeError::Name { rule, path, .. } => {
            f.stage = "rules".into();
            f.rule = (!rule.is_empty()).then(|| rule.clone());
            f.path = Some(path.clone());
        }
        SanitizeError::HookFailed {
            hook,
            exit_code,
            signal,
            output,
        } => {
            f.stage = "hook".into();
            f.hook = Some(hook.clone());
            f.exit_code = *exit_code;
            f.signal = *signal;
            f.output = Some(output.clone());
        }
        SanitizeError::HookTimeout { hook, output, .. } => {
            f.stage = "hook".into();
            f.hook = Some(hook.clone());
            f.timed_out = true;
            f.output = Some(output.clone());
        }
        SanitizeError::HookLeftProcesses {
            hook,
            processes,
            output,
        } => {
            f.stage = "hook".into();
            f.hook = Some(hook.clone());
            f.processes_left = Some(*processes);
            f.output = Some(output.clone());
        }
        // The exit status is the leftover's, not the hook's: only in the message.
        // An OOM kill's count and limit are in the message too.
        SanitizeError::HookLeftoverFailed { hook, output, .. }
        | SanitizeError::HookOutOfMemory { hook, output, .. } => {
            f.stage = "hook".into();
            f.hook = Some(hook.clone());
            f.output = Some(output.clone());
        }
        SanitizeError::HookSpawn { hook, .. }
        | SanitizeError::HookNamespace { hook, .. }
        | SanitizeError::HookMemoryLimit { hook, .. } => {
            f.stage = "hook".into();
            f.hook = Some(hook.clone());
        }
        SanitizeError::Mount { .. } | SanitizeError::Scratch { .. } => f.stage = "setup".into(),
        _ => {}
    }
    let why = if reads_parent {
        e.to_string()
    } else {
        f.output = None;
        f.path = None;
        e.without_output()
    };
    let mut r = ErrorReply::new(
        ErrorKind::SanitizeFailed,
        format!(
            "sanitizing '{branch}' with profile '{profile}' failed, so the clone was deleted: {why}"
        ),
    )
    .target(branch);
    r.sanitize = Some(Box::new(f));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fs::FsError;

    /// A rule's failure names the parent's path, whose names may hold the values
    /// the rules redact in the clone: only tokens that may read the parent see it,
    /// in `sanitize.path` and in the message.
    #[test]
    fn rule_failures_show_the_path_only_to_readers_of_the_parent() {
        const PATH: &str = "users/erin@corp.com/notes.txt";
        let errors = || {
            [
                SanitizeError::File {
                    rule: "rule 1 ('personal data')".into(),
                    path: PATH.into(),
                    what: "reading",
                    source: FsError::Posix(libc::EIO),
                },
                SanitizeError::Name {
                    rule: "rule 1 ('personal data')".into(),
                    path: PATH.into(),
                    what: "name",
                    why: "'x' is taken by another entry".into(),
                },
            ]
        };
        for (e, reader) in errors().into_iter().zip(errors()) {
            let hidden = sanitize_failure("a1", "pii", "files", e, false);
            assert!(!hidden.message.contains("erin"), "{}", hidden.message);
            assert!(hidden.message.contains("rule 1"), "{}", hidden.message);
            let f = hidden.sanitize.expect("details");
            assert_eq!((f.stage.as_str(), f.path), ("rules", None));

            let shown = sanitize_failure("a1", "pii", "files", reader, true);
            assert!(shown.message.contains(PATH), "{}", shown.message);
            assert_eq!(shown.sanitize.expect("details").path.as_deref(), Some(PATH));
        }
    }

    /// A process a hook left that failed right after it fails the hook's
    /// stage; its status is not the hook's, so it is in the message only, and
    /// the output only for readers of the parent.
    #[test]
    fn a_failed_leftover_is_a_hook_failure_without_the_hooks_status() {
        let e = SanitizeError::HookLeftoverFailed {
            hook: "h".into(),
            processes: 1,
            exit_code: Some(4),
            signal: None,
            output: "row of erin@corp.com".into(),
        };
        let r = sanitize_failure("a1", "pii", "hooks", e, false);
        assert!(
            r.message.contains(
                "hook 'h' exited but a process it left running failed right after it (exit code 4)"
            ),
            "{}",
            r.message
        );
        assert!(!r.message.contains("erin"), "{}", r.message);
        let f = r.sanitize.expect("details");
        assert_eq!(
            (f.stage.as_str(), f.hook.as_deref(), f.output),
            ("hook", Some("h"), None)
        );
        assert_eq!(
            (f.exit_code, f.signal, f.processes_left),
            (None, None, None)
        );
    }
}
