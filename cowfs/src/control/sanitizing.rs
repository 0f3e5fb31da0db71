//! Sanitize state the daemon keeps beside the pool, in `POOL.sanitize-state` (JSON,
//! mode 0600, replaced atomically on every change):
//!
//! - `sanitizing`: clones being sanitized, by branch id (never reused; the name
//!   is for messages). An entry is written *before* the branch exists durably,
//!   after its id is committed as taken (`Pool::branch_create_recorded`: a
//!   daemon dying in between leaves an id nothing gets), and removed once the
//!   clone is ready (committed) or deleted. A daemon that starts and finds entries deletes those
//!   branches: a clone that was not finished is never kept. An entry a failed
//!   write left behind names no other branch, whatever names branches get later.
//! - `require`: branches that require a sanitize profile, by branch id (stable
//!   across renames, never reused): every branch a non-admin token takes from
//!   one is sanitized with it. A requirement set on a branch is recorded on each
//!   of its descendants too (`require_lineage`): an older snapshot, or a branch
//!   taken before the requirement, holds the same unsanitized data.
//! - `sanitized`: clones made by sanitizing, with the profile that ran, by
//!   branch id. Their content, and that of everything taken from them, holds
//!   none of what that profile removes, so a requirement of that profile set
//!   later on one of their ancestors does not reach them.
//! - `copied`: branches a reset gave another branch's content (`to`), with
//!   that branch and its ancestors then (`from`). The catalog's parent of `to`
//!   stays what it was, so lineage (`lineage`) follows these too: a branch reset
//!   to prod before prod required a profile holds prod's data like a snapshot
//!   taken then. A branch reset is no clean copy (`clean`) whatever it was
//!   taken from, nor is what was taken from it. A deleted `to` passes its
//!   entries to its children (`pass_copied`).
//!
//! ```json
//! {"version": 2,
//!  "sanitizing": [{"id": 7, "name": "agent-1"}],
//!  "require": [{"branch": 2, "profile": "pii"}],
//!  "sanitized": [{"branch": 5, "profile": "pii"}],
//!  "copied": [{"to": 9, "from": [2, 1]}]}
//! ```
//!
//! Version 1 recorded a clone by name before its creation and added the id
//! after; an entry could stay name-only (a failed write, or a daemon that died
//! in between), and any later branch of that name was then taken for the clone.
//! A version-1 file is upgraded when it is first opened (daemon start, `cowfs
//! mount`): each name-only entry becomes the id of the branch of that name that
//! exists then, if it has no owner, and is dropped otherwise; the file is
//! written back as version 2 at once, so no branch created afterwards matches.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::files::{read_private, replace_private, side_file};
use super::ControlError;
use crate::pool::{BranchId, Pool, NO_OWNER};

const FILE_VERSION: u32 = 2;

/// `POOL.sanitize-state`.
pub fn state_path(pool: &Path) -> PathBuf {
    side_file(pool, ".sanitize-state")
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    #[serde(default)]
    sanitizing: Vec<Running>,
    #[serde(default)]
    require: Vec<Requirement>,
    /// Older files have none: their clones count as unsanitized (the safe side).
    #[serde(default)]
    sanitized: Vec<Requirement>,
    /// Older files have none: resets they did not record are not followed.
    #[serde(default)]
    copied: Vec<Copied>,
}

/// Branch `to` was reset to `from[0]`, whose ancestors then were the rest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Copied {
    to: BranchId,
    from: Vec<BranchId>,
}

/// A clone being sanitized.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    pub id: BranchId,
    /// Its name when recorded, for messages.
    pub name: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Requirement {
    branch: BranchId,
    profile: String,
}

/// The version-1 layout: an entry's id was missing until the branch existed.
#[derive(Deserialize)]
struct FirstLayout {
    #[serde(default)]
    sanitizing: Vec<FirstLayoutRunning>,
    #[serde(default)]
    require: Vec<Requirement>,
}

#[derive(Deserialize)]
struct FirstLayoutRunning {
    name: String,
    #[serde(default)]
    id: Option<BranchId>,
}

impl FirstLayout {
    /// As version 2, an entry without an id settled against `pool` as it is now.
    /// Such an entry stands for the clone a daemon was creating when it stopped,
    /// or, if a failed write left it, for nothing: only a branch of that name
    /// without an owner is taken for the clone (a sanitized clone gets its owner
    /// when ready; every branch created through the daemon has one from the
    /// start).
    fn upgrade(self, pool: &Pool, path: &Path) -> StateFile {
        let mut sanitizing = Vec::new();
        for r in self.sanitizing {
            let id = match r.id {
                Some(id) => id,
                None => match pool.info(&r.name) {
                    Ok(b) if b.owner == NO_OWNER => b.id,
                    Ok(_) => {
                        log::warn!(
                            "{}: keeping branch '{}': the unfinished clone recorded under that name is not it (it has an owner)",
                            path.display(),
                            r.name
                        );
                        continue;
                    }
                    Err(_) => continue,
                },
            };
            sanitizing.push(Running { id, name: r.name });
        }
        StateFile {
            version: FILE_VERSION,
            sanitizing,
            require: self.require,
            sanitized: Vec::new(),
            copied: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
struct Version {
    version: u32,
}

enum Parsed {
    Current(StateFile),
    First(FirstLayout),
}

/// The state file's text, of either layout.
fn parse(text: &str) -> Result<Parsed, String> {
    let v: Version = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match v.version {
        1 => serde_json::from_str(text)
            .map(Parsed::First)
            .map_err(|e| e.to_string()),
        FILE_VERSION => serde_json::from_str(text)
            .map(Parsed::Current)
            .map_err(|e| e.to_string()),
        n => Err(format!(
            "version {n} (this daemon reads 1 and {FILE_VERSION})"
        )),
    }
}

/// Replace the file at `path` with `file`, durably.
fn write(path: &Path, file: &StateFile) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    replace_private(path, &text)
}

/// Requirements and sanitized marks at one moment (`SanitizeState::saved`).
pub struct Saved {
    require: Vec<Requirement>,
    sanitized: Vec<Requirement>,
    copied: Vec<Copied>,
}

pub struct SanitizeState {
    path: PathBuf,
    file: Mutex<StateFile>,
}

impl SanitizeState {
    /// Load `pool`'s `POOL.sanitize-state` (missing: empty). A version-1 file is
    /// upgraded against the pool's branches now and written back as version 2
    /// before this returns (see the module comment).
    pub fn open(pool: &Pool) -> Result<SanitizeState, ControlError> {
        let path = state_path(pool.name());
        let parsed = match read_private(&path) {
            Ok(text) => parse(&text).map_err(|why| ControlError::Config {
                path: path.clone(),
                why,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Parsed::Current(StateFile {
                version: FILE_VERSION,
                ..Default::default()
            }),
            Err(source) => return Err(ControlError::Io { path, source }),
        };
        let file = match parsed {
            Parsed::Current(file) => file,
            Parsed::First(first) => {
                let file = first.upgrade(pool, &path);
                write(&path, &file).map_err(|source| ControlError::Io {
                    path: path.clone(),
                    source,
                })?;
                log::info!("{}: upgraded to version {FILE_VERSION}", path.display());
                file
            }
        };
        Ok(SanitizeState {
            path,
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Change a copy, write it durably, then make it current.
    fn update(&self, change: impl FnOnce(&mut StateFile)) -> std::io::Result<()> {
        let mut f = self.file.lock();
        let mut next = f.clone();
        change(&mut next);
        write(&self.path, &next)?;
        *f = next;
        Ok(())
    }

    /// Record that branch `id` (`name`), not created yet, will be sanitized.
    pub fn begin(&self, id: BranchId, name: &str) -> std::io::Result<()> {
        self.update(|f| {
            f.sanitizing.push(Running {
                id,
                name: name.into(),
            })
        })
    }

    /// The clone `id` is gone, or was never created (a ready one: `finish`).
    pub fn end(&self, id: BranchId) -> std::io::Result<()> {
        self.update(|f| f.sanitizing.retain(|r| r.id != id))
    }

    /// The clone `id`, sanitized with `profile`, is ready: it leaves
    /// `sanitizing` and is recorded as sanitized with it, in one write.
    pub fn finish(&self, id: BranchId, profile: &str) -> std::io::Result<()> {
        self.update(|f| {
            f.sanitizing.retain(|r| r.id != id);
            f.sanitized.push(Requirement {
                branch: id,
                profile: profile.into(),
            });
        })
    }

    /// Branch `id` is about to be deleted: `children` (then the children of its
    /// parent, `Pool::branch_delete`) take what a reset copied into it, as those
    /// taken after the reset hold that data. Written before the delete's commit:
    /// a daemon stopping in between leaves more entries, never fewer.
    pub fn pass_copied(&self, id: BranchId, children: &[BranchId]) -> std::io::Result<()> {
        if children.is_empty() || !self.file.lock().copied.iter().any(|c| c.to == id) {
            return Ok(());
        }
        self.update(|f| {
            let mut passed = Vec::new();
            for c in f.copied.iter().filter(|c| c.to == id) {
                for &child in children {
                    passed.push(Copied {
                        to: child,
                        from: c.from.clone(),
                    });
                }
            }
            f.copied.extend(passed);
        })
    }

    /// Branch `id` was deleted: drop its requirement, its sanitized mark and
    /// what was copied into it (`pass_copied` gave that to its children).
    pub fn forget(&self, id: BranchId) -> std::io::Result<()> {
        self.update(|f| {
            f.require.retain(|r| r.branch != id);
            f.sanitized.retain(|r| r.branch != id);
            f.copied.retain(|c| c.to != id);
        })
    }

    /// `id` and every branch its data reached, without `id`: its descendants in
    /// `pool`, the branches reset to one of those (`copied`), theirs, and so on.
    /// Asks the pool: never called with the file locked (see `clean`).
    fn lineage(f: &StateFile, pool: &Pool, id: BranchId) -> Vec<BranchId> {
        let mut seen = HashSet::from([id]);
        let mut out = Vec::new();
        let mut roots = vec![id];
        while let Some(r) = roots.pop() {
            let mut reached = vec![r];
            for d in pool.descendants(r) {
                if seen.insert(d) {
                    out.push(d);
                    reached.push(d);
                }
            }
            for m in reached {
                for c in f.copied.iter().filter(|c| c.from.contains(&m)) {
                    if seen.insert(c.to) {
                        out.push(c.to);
                        roots.push(c.to);
                    }
                }
            }
        }
        out
    }

    /// Those of `descendants` that hold none of what `profile` removes: clones
    /// sanitized with it (marked in `f.sanitized`) and everything taken from
    /// them, except a branch reset since (`f.copied`: it holds what it was
    /// reset to) and everything taken from that. Asks the pool: never called
    /// with the file locked (creating a sanitized clone locks the file while it
    /// holds the pool, `begin`).
    fn clean(
        f: &StateFile,
        pool: &Pool,
        descendants: &[BranchId],
        profile: &str,
    ) -> HashSet<BranchId> {
        let reset: HashSet<BranchId> = f.copied.iter().map(|c| c.to).collect();
        let mut clean = HashSet::new();
        for &d in descendants {
            let marked = f
                .sanitized
                .iter()
                .any(|m| m.branch == d && m.profile == profile);
            if !marked || reset.contains(&d) {
                continue;
            }
            let below = pool.descendants(d);
            let mut not_clean = HashSet::new();
            for &r in below.iter().filter(|b| reset.contains(b)) {
                not_clean.insert(r);
                not_clean.extend(pool.descendants(r));
            }
            clean.insert(d);
            clean.extend(below.into_iter().filter(|b| !not_clean.contains(b)));
        }
        clean
    }

    /// Branch `id` requires `profile`, and so does every descendant of it in
    /// `pool` that requires no profile yet, in one write. A descendant that
    /// requires one keeps it (as an inherited requirement does). A clone
    /// sanitized with `profile`, and what was taken from it, holds none of the
    /// data `profile` removes: left as it is.
    pub fn require_lineage(&self, pool: &Pool, id: BranchId, profile: &str) -> std::io::Result<()> {
        let f = self.file.lock().clone();
        let descendants = Self::lineage(&f, pool, id);
        let clean = Self::clean(&f, pool, &descendants, profile);
        self.update(|f| {
            f.require.retain(|r| r.branch != id);
            let covered: HashSet<BranchId> = f.require.iter().map(|r| r.branch).collect();
            for b in std::iter::once(id).chain(descendants.iter().copied()) {
                if !covered.contains(&b) && !clean.contains(&b) {
                    f.require.push(Requirement {
                        branch: b,
                        profile: profile.into(),
                    });
                }
            }
        })
    }

    /// Descendants that a requirement does not reach although `require_lineage`
    /// would give it to them: (the branch requiring it, the descendant, the
    /// profile). Requirements set by builds before lineage was covered leave
    /// these (and an admin may have unprotected a descendant since).
    pub fn uncovered(&self, pool: &Pool) -> Vec<(BranchId, BranchId, String)> {
        let f = self.file.lock().clone();
        let required: HashSet<BranchId> = f.require.iter().map(|r| r.branch).collect();
        let mut out = Vec::new();
        for r in &f.require {
            let descendants = Self::lineage(&f, pool, r.branch);
            let clean = Self::clean(&f, pool, &descendants, &r.profile);
            for d in descendants {
                if !required.contains(&d) && !clean.contains(&d) {
                    out.push((r.branch, d, r.profile.clone()));
                }
            }
        }
        out
    }

    /// Branch `id` now holds another branch's content (a reset to `from[0]`,
    /// whose ancestors are the rest): it is no sanitized clone anymore, is
    /// recorded as a copy of those (`copied`), and requires `profile` if that
    /// is `Some`.
    pub fn replaced(
        &self,
        id: BranchId,
        from: Vec<BranchId>,
        profile: Option<&str>,
    ) -> std::io::Result<()> {
        self.update(|f| {
            f.sanitized.retain(|r| r.branch != id);
            let from: Vec<BranchId> = from.into_iter().filter(|&b| b != id).collect();
            if !from.is_empty() && !f.copied.iter().any(|c| c.to == id && c.from == from) {
                f.copied.push(Copied { to: id, from });
            }
            if let Some(p) = profile {
                f.require.retain(|r| r.branch != id);
                f.require.push(Requirement {
                    branch: id,
                    profile: p.into(),
                });
            }
        })
    }

    /// The requirements and sanitized marks as they are, for `restore` to put
    /// back when a later step of the same request fails.
    pub fn saved(&self) -> Saved {
        let f = self.file.lock();
        Saved {
            require: f.require.clone(),
            sanitized: f.sanitized.clone(),
            copied: f.copied.clone(),
        }
    }

    /// Put back what `saved` returned (under the operation lock, so that no other
    /// change to them came in between).
    pub fn restore(&self, saved: Saved) -> std::io::Result<()> {
        self.update(|f| {
            f.require = saved.require;
            f.sanitized = saved.sanitized;
            f.copied = saved.copied;
        })
    }

    /// Is branch `id` being sanitized?
    pub fn is_sanitizing(&self, id: BranchId) -> bool {
        self.file.lock().sanitizing.iter().any(|r| r.id == id)
    }

    /// Every unfinished clone (at daemon start: left by a daemon that stopped).
    pub fn running(&self) -> Vec<Running> {
        self.file.lock().sanitizing.clone()
    }

    /// The profile branch `id` requires, if any.
    pub fn required(&self, id: BranchId) -> Option<String> {
        self.file
            .lock()
            .require
            .iter()
            .find(|r| r.branch == id)
            .map(|r| r.profile.clone())
    }

    /// Set (`Some`) or clear the profile branch `id` requires.
    pub fn set_required(&self, id: BranchId, profile: Option<&str>) -> std::io::Result<()> {
        if self.required(id).as_deref() == profile {
            return Ok(());
        }
        self.update(|f| {
            f.require.retain(|r| r.branch != id);
            if let Some(p) = profile {
                f.require.push(Requirement {
                    branch: id,
                    profile: p.into(),
                });
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::PoolOptions;

    /// A pool file `p` in `dir`; its side files go beside it.
    fn pool(dir: &Path) -> Pool {
        let opts = PoolOptions {
            capacity_bytes: Some(64 << 20),
            ..Default::default()
        };
        Pool::create(&dir.join("p"), &opts).unwrap()
    }

    #[test]
    fn durable_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path());
        let s = SanitizeState::open(&pool).unwrap();
        s.begin(4, "a").unwrap();
        s.begin(5, "b").unwrap();
        s.set_required(1, Some("pii")).unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        assert!(s.is_sanitizing(4) && s.is_sanitizing(5) && !s.is_sanitizing(6));
        assert_eq!(
            s.running(),
            vec![
                Running {
                    id: 4,
                    name: "a".into()
                },
                Running {
                    id: 5,
                    name: "b".into()
                }
            ]
        );
        assert_eq!(s.required(1).as_deref(), Some("pii"));
        s.end(4).unwrap();
        s.end(5).unwrap();
        s.set_required(1, None).unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        assert!(s.running().is_empty() && s.required(1).is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state_path(pool.name()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A version-1 file is upgraded and written back when opened: entries with
    /// an id as they were, a name-only one as the id of the ownerless branch of
    /// that name, dropped if that branch has an owner or does not exist.
    #[test]
    fn first_layout_is_upgraded_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path());
        let half = pool.branch_create("half", "main").unwrap();
        let owned = pool.branch_create_owned("owned", "main", 3).unwrap();
        let v1 = r#"{"version": 1,
            "sanitizing": [{"name": "a", "id": 7}, {"name": "half"}, {"name": "owned"},
                           {"name": "missing"}],
            "require": [{"branch": 2, "profile": "pii"}]}"#;
        replace_private(&state_path(pool.name()), v1.as_bytes()).unwrap();
        SanitizeState::open(&pool).unwrap();
        let text = std::fs::read_to_string(state_path(pool.name())).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
        // A branch made now under a dropped name is not taken for the clone.
        pool.branch_delete("owned").unwrap();
        let later = pool.branch_create("owned", "main").unwrap();
        let missing = pool.branch_create("missing", "main").unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        assert_eq!(
            s.running(),
            vec![
                Running {
                    id: 7,
                    name: "a".into()
                },
                Running {
                    id: half,
                    name: "half".into()
                }
            ]
        );
        for id in [owned, later, missing] {
            assert!(!s.is_sanitizing(id));
        }
        assert_eq!(s.required(2).as_deref(), Some("pii"));
    }

    /// main -> prod -> {old (requires "other"), clone (sanitized with pii) ->
    /// copy, snap}: requiring pii on prod reaches `snap` and nothing the rules
    /// keep out; the marks survive a reopen, and `forget` drops them.
    #[test]
    fn a_requirement_reaches_descendants_but_not_clean_clones() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path());
        let prod = pool.branch_create("prod", "main").unwrap();
        let old = pool.branch_create("old", "prod").unwrap();
        let clone = pool.branch_create("clone", "prod").unwrap();
        let copy = pool.branch_create("copy", "clone").unwrap();
        let snap = pool.snapshot_create("snap", "prod").unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        s.set_required(old, Some("other")).unwrap();
        s.begin(clone, "clone").unwrap();
        s.finish(clone, "pii").unwrap();
        s.require_lineage(&pool, prod, "pii").unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        assert!(s.running().is_empty());
        let req = |id| s.required(id);
        assert_eq!(req(prod).as_deref(), Some("pii"));
        assert_eq!(req(snap).as_deref(), Some("pii"));
        assert_eq!(req(old).as_deref(), Some("other"), "its own stays");
        assert_eq!((req(clone), req(copy)), (None, None));
        // Another profile is not what the clone was sanitized with.
        s.require_lineage(&pool, prod, "strict").unwrap();
        assert_eq!(s.required(copy).as_deref(), Some("strict"));
        assert_eq!(s.required(prod).as_deref(), Some("strict"));
        // Forgotten (as when deleted): requirement and mark gone.
        s.forget(clone).unwrap();
        s.set_required(copy, None).unwrap();
        s.require_lineage(&pool, prod, "pii").unwrap();
        assert_eq!(s.required(clone).as_deref(), Some("pii"), "no mark left");
        assert_eq!(s.required(copy).as_deref(), Some("pii"));
    }

    /// Branches reset to prod's data (recorded by `replaced`) are in its
    /// lineage although their catalog parent is not prod: also when what they
    /// were reset to, or they themselves, are deleted later (their children
    /// take the record), and under a sanitized clone, whose mark does not
    /// reach a branch reset since nor what was taken of it.
    #[test]
    fn a_requirement_reaches_branches_reset_to_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path());
        let prod = pool.branch_create("prod", "main").unwrap();
        let monday = pool.snapshot_create("monday", "prod").unwrap();
        let x = pool.branch_create("x", "main").unwrap();
        let y = pool.branch_create("y", "main").unwrap();
        let clone = pool.branch_create("clone", "prod").unwrap();
        let under = pool.branch_create("under", "clone").unwrap();
        let kept = pool.snapshot_create("kept", "clone").unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        s.begin(clone, "clone").unwrap();
        s.finish(clone, "pii").unwrap();
        let from = |id| {
            let mut v = vec![id];
            v.extend(pool.ancestors(id));
            v
        };
        s.replaced(x, from(prod), None).unwrap();
        s.replaced(y, from(monday), None).unwrap();
        s.replaced(under, from(prod), None).unwrap();
        let under_snap = pool.snapshot_create("under-snap", "under").unwrap();
        let x_snap = pool.snapshot_create("x-snap", "x").unwrap();
        // x goes (its snapshot takes x's parent, main, and x's record).
        s.pass_copied(x, &pool.children(x)).unwrap();
        pool.branch_delete("x").unwrap();
        s.forget(x).unwrap();
        // What y was reset to goes: y was recorded with its ancestors too.
        s.pass_copied(monday, &pool.children(monday)).unwrap();
        pool.branch_delete("monday").unwrap();
        s.forget(monday).unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        s.require_lineage(&pool, prod, "pii").unwrap();
        for (id, what) in [(x_snap, "x-snap"), (y, "y"), (under, "under")] {
            assert_eq!(s.required(id).as_deref(), Some("pii"), "{what}");
        }
        assert_eq!(
            s.required(under_snap).as_deref(),
            Some("pii"),
            "taken of a branch reset to prod"
        );
        assert_eq!((s.required(clone), s.required(kept)), (None, None));
    }

    /// A requirement recorded on prod alone (as builds before lineage was
    /// covered did) leaves its older descendants uncovered; a clone sanitized
    /// with it is no gap; `require_lineage` closes the rest.
    #[test]
    fn uncovered_descendants_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path());
        let prod = pool.branch_create("prod", "main").unwrap();
        let monday = pool.snapshot_create("prod-monday", "prod").unwrap();
        let clone = pool.branch_create("clone", "prod").unwrap();
        pool.branch_create("copy", "clone").unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        s.begin(clone, "clone").unwrap();
        s.finish(clone, "pii").unwrap();
        s.set_required(prod, Some("pii")).unwrap();
        assert_eq!(s.uncovered(&pool), vec![(prod, monday, "pii".to_string())]);
        s.require_lineage(&pool, prod, "pii").unwrap();
        assert!(s.uncovered(&pool).is_empty());
    }

    #[test]
    fn unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path());
        replace_private(&state_path(pool.name()), br#"{"version": 3}"#).unwrap();
        assert!(SanitizeState::open(&pool).is_err());
    }
}
