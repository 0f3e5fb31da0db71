//! One authenticated request: check names and permissions, then call the pool or
//! the mount table. Changing operations run one at a time (`Ctx::lock`), so a check
//! and the change it guards cannot interleave with another client's change.

use std::path::Path;
use std::sync::Arc;

use cowfs_ctl::proto::{self, *};
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::Value;

use super::auth::{forbidden, has, is_pool_admin, require, require_unprotected};
use super::errors;
use super::quotas::QuotaStore;
use super::tokens::{TokenStore, TokenView};
use crate::fuse::MountTable;
use crate::pool::admin::GroupMember as PoolMember;
use crate::pool::diff::PathChangeKind;
use crate::pool::quota::{QuotaLimits, QuotaStatus};
use crate::pool::{BranchId, Pool};

pub struct Ctx {
    pub pool: Arc<Pool>,
    pub mounts: Arc<MountTable>,
    pub tokens: TokenStore,
    pub quotas: QuotaStore,
    lock: Mutex<()>,
}

type Res = Result<Value, ErrorReply>;

fn ok<T: Serialize>(v: T) -> Res {
    serde_json::to_value(v).map_err(|e| ErrorReply::new(ErrorKind::Internal, e.to_string()))
}

fn name_ok(name: &str) -> Result<(), ErrorReply> {
    proto::check_name(name).map_err(|why| {
        ErrorReply::new(
            ErrorKind::InvalidName,
            format!(
                "invalid name '{}': {why} (names are 1..=255 bytes without '/', NUL or control characters)",
                name.escape_debug()
            ),
        )
        .target(name.escape_debug().to_string())
    })
}

/// A branch looked up for a permission check.
struct Target {
    name: String,
    id: BranchId,
    snapshot: bool,
    protected: bool,
}

impl Ctx {
    pub fn new(
        pool: Arc<Pool>,
        mounts: Arc<MountTable>,
        tokens: TokenStore,
        quotas: QuotaStore,
    ) -> Ctx {
        Ctx {
            pool,
            mounts,
            tokens,
            quotas,
            lock: Mutex::new(()),
        }
    }

    fn target(&self, name: &str) -> Result<Target, ErrorReply> {
        name_ok(name)?;
        let i = self.pool.info(name).map_err(errors::pool)?;
        let protected = self.pool.is_protected(name).map_err(errors::pool)?;
        Ok(Target {
            name: i.name,
            id: i.id,
            snapshot: i.snapshot,
            protected,
        })
    }

    fn info(&self, name: &str) -> Result<BranchInfo, ErrorReply> {
        let i = self.pool.info(name).map_err(errors::pool)?;
        let protected = self.pool.is_protected(name).map_err(errors::pool)?;
        Ok(BranchInfo {
            id: i.id,
            kind: if i.snapshot {
                BranchKind::Snapshot
            } else {
                BranchKind::Branch
            },
            parent: i.parent,
            created_unix: i.created_unix,
            protected,
            owner: self.tokens.owner_of(i.id),
            mounts: self.mount_list(Some(&i.name)),
            name: i.name,
        })
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

    /// Run one request for the token named `token`.
    pub fn handle(&self, token: &TokenView, req: Request) -> Res {
        match req {
            Request::Hello { .. } => Err(errors::bad_request(
                "hello is only valid as the first request of a connection",
            )),
            Request::List {} => {
                let mut out = Vec::new();
                for b in self.pool.list() {
                    if has(token, Scope::Read, &b.name, b.id) {
                        out.push(self.info(&b.name)?);
                    }
                }
                ok(BranchList { branches: out })
            }
            Request::Info { name } => {
                let t = self.target(&name)?;
                require(token, Scope::Read, &t.name, t.id)?;
                ok(self.info(&name)?)
            }
            Request::BranchCreate { name, from, mount } => {
                self.create(token, &name, &from, false, mount)
            }
            Request::SnapshotCreate { name, from } => self.create(token, &name, &from, true, None),
            Request::GroupCreate { members } => self.group(token, members),
            Request::Rename { old, new } => {
                name_ok(&new)?;
                let _g = self.lock.lock();
                let t = self.target(&old)?;
                require(token, Scope::Delete, &t.name, t.id)?;
                require_unprotected(token, t.protected, "rename", &t.name, t.id)?;
                self.refuse_mounted(&old, "rename")?;
                self.pool.branch_rename(&old, &new).map_err(errors::pool)?;
                ok(self.info(&new)?)
            }
            Request::Delete { name } => {
                let _g = self.lock.lock();
                let t = self.target(&name)?;
                require(token, Scope::Delete, &t.name, t.id)?;
                require_unprotected(token, t.protected, "delete", &t.name, t.id)?;
                self.refuse_mounted(&name, "delete")?;
                self.pool.branch_delete(&name).map_err(errors::pool)?;
                if let Err(e) = self.quotas.set(t.id, QuotaLimits::default()) {
                    log::warn!("{}: {e}", self.quotas.path().display());
                }
                self.pool.quota_recount_all().map_err(errors::pool)?;
                self.tokens.forget_branch(t.id).map_err(errors::token)?;
                ok(Done {})
            }
            Request::Mount {
                name,
                dir,
                read_only,
            } => {
                let _g = self.lock.lock();
                let t = self.target(&name)?;
                self.mount(token, &t, &dir, read_only)?;
                ok(self.info(&name)?)
            }
            Request::Unmount { dir } => {
                let _g = self.lock.lock();
                let canonical = Path::new(&dir).canonicalize().ok();
                let m = self
                    .mounts
                    .list()
                    .into_iter()
                    .find(|m| m.dir == Path::new(&dir) || Some(&m.dir) == canonical.as_ref());
                let Some(m) = m else {
                    return Err(ErrorReply::new(
                        ErrorKind::NotMounted,
                        format!("{dir}: no cowfs branch is mounted there (see `cowfs-ctl list`)"),
                    )
                    .target(dir));
                };
                let t = self.target(&m.branch)?;
                require(token, Scope::Mount, &t.name, t.id)?;
                self.mounts.unmount(&m.dir).map_err(errors::mount)?;
                ok(Done {})
            }
            Request::Mounts {} => {
                let mut out = Vec::new();
                for m in self.mount_list(None) {
                    if let Ok(id) = self.pool.branch_id(&m.branch) {
                        if has(token, Scope::Read, &m.branch, id) {
                            out.push(m);
                        }
                    }
                }
                ok(MountList { mounts: out })
            }
            Request::Diff { a, b } => {
                for n in [&a, &b] {
                    let t = self.target(n)?;
                    require(token, Scope::Read, &t.name, t.id)?;
                    self.sync(n)?;
                }
                let d = self.pool.diff(&a, &b).map_err(errors::pool)?;
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
                let _g = self.lock.lock();
                let t = self.target(&branch)?;
                let src = self.target(&to)?;
                require(token, Scope::Write, &t.name, t.id)?;
                require(token, Scope::Read, &src.name, src.id)?;
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
                self.pool.reset_to(&branch, &to).map_err(errors::pool)?;
                ok(self.info(&branch)?)
            }
            Request::Protect { name } => self.protect(token, &name, true),
            Request::Unprotect { name } => self.protect(token, &name, false),
            Request::Usage {} => {
                let st = self.pool.statfs();
                let mut branches = Vec::new();
                for u in self.pool.usage().map_err(errors::pool)? {
                    let Ok(id) = self.pool.branch_id(&u.name) else {
                        continue;
                    };
                    if has(token, Scope::Read, &u.name, id) {
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
                let _g = self.lock.lock();
                let t = self.target(&name)?;
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
                    .filter(|q| has(token, Scope::Read, &q.name, q.id))
                    .map(quota_info)
                    .collect();
                ok(proto::QuotaList { quotas })
            }
            Request::TokenCreate { name, scopes } => {
                self.pool_admin(token, "create tokens")?;
                name_ok(&name)?;
                if scopes.is_empty() {
                    return Err(errors::bad_request(
                        "a token needs at least one scope (SCOPE:PATTERN, e.g. branch:prod)",
                    ));
                }
                let secret = self
                    .tokens
                    .create(&name, scopes.clone())
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
                            .filter(|b| t.owns.contains(&b.id))
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
                let _g = self.lock.lock();
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
                self.tokens.revoke(&name).map_err(errors::token)?;
                log::info!("token '{name}' revoked by '{}'", token.name);
                ok(Done {})
            }
        }
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

    fn create(
        &self,
        token: &TokenView,
        name: &str,
        from: &str,
        snapshot: bool,
        mount: Option<MountSpec>,
    ) -> Res {
        name_ok(name)?;
        let _g = self.lock.lock();
        let src = self.target(from)?;
        require(token, Scope::Branch, &src.name, src.id)?;
        if let Some(m) = &mount {
            check_dir(&m.dir)?;
        }
        self.sync(from)?;
        let id = if snapshot {
            self.pool.snapshot_create(name, from)
        } else {
            self.pool.branch_create(name, from)
        }
        .map_err(errors::pool)?;
        self.tokens
            .add_owned(&token.name, &[id])
            .map_err(errors::token)?;
        if let Some(m) = mount {
            if let Err(e) = self.mounts.mount(name, Path::new(&m.dir), m.read_only) {
                // All or nothing: a branch that could not be mounted as asked is
                // dropped again.
                if let Err(d) = self.pool.branch_delete(name) {
                    log::error!("dropping branch '{name}' after a failed mount: {d}");
                } else if let Err(t) = self.tokens.forget_branch(id) {
                    log::warn!("token store: {t}");
                }
                return Err(errors::mount(e));
            }
        }
        log::info!(
            "{} '{name}' created from '{from}' by token '{}'",
            if snapshot { "snapshot" } else { "branch" },
            token.name
        );
        ok(self.info(name)?)
    }

    fn group(&self, token: &TokenView, members: Vec<proto::GroupMember>) -> Res {
        if members.is_empty() {
            return Err(errors::bad_request("a group needs at least one member"));
        }
        let _g = self.lock.lock();
        for m in &members {
            name_ok(&m.name)?;
            let src = self.target(&m.from)?;
            require(token, Scope::Branch, &src.name, src.id)?;
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
        let ids = self.pool.group_create(&list).map_err(errors::pool)?;
        self.tokens
            .add_owned(&token.name, &ids)
            .map_err(errors::token)?;
        let mut out = Vec::new();
        for m in &members {
            out.push(self.info(&m.name)?);
        }
        ok(BranchList { branches: out })
    }

    fn mount(
        &self,
        token: &TokenView,
        t: &Target,
        dir: &str,
        read_only: bool,
    ) -> Result<(), ErrorReply> {
        let read_only = read_only || t.snapshot;
        require(token, Scope::Mount, &t.name, t.id)?;
        if read_only {
            require(token, Scope::Read, &t.name, t.id)?;
        } else {
            require(token, Scope::Write, &t.name, t.id)?;
            require_unprotected(token, t.protected, "mount read-write", &t.name, t.id)?;
        }
        check_dir(dir)?;
        self.mounts
            .mount(&t.name, Path::new(dir), read_only)
            .map_err(errors::mount)
    }

    fn protect(&self, token: &TokenView, name: &str, on: bool) -> Res {
        let _g = self.lock.lock();
        let t = self.target(name)?;
        require(token, Scope::Admin, &t.name, t.id)?;
        self.pool.set_protected(name, on).map_err(errors::pool)?;
        ok(self.info(name)?)
    }
}

fn quota_info(q: QuotaStatus) -> QuotaInfo {
    QuotaInfo {
        name: q.name,
        max_bytes: q.limits.max_bytes,
        reserve_bytes: q.limits.reserve_bytes,
        used_bytes: q.used_bytes,
    }
}

/// Mount points travel as absolute paths (the daemon's working directory is not
/// the client's).
fn check_dir(dir: &str) -> Result<(), ErrorReply> {
    if !Path::new(dir).is_absolute() || dir.contains('\0') {
        return Err(errors::bad_request(format!(
            "mount point '{}' must be an absolute path",
            dir.escape_debug()
        )));
    }
    Ok(())
}

fn file_type(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFLNK => "symlink",
        _ => "other",
    }
}
