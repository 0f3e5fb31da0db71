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
//! - `require`: protected branches that require a sanitize profile, by branch id
//!   (stable across renames, never reused).
//!
//! ```json
//! {"version": 2,
//!  "sanitizing": [{"id": 7, "name": "agent-1"}],
//!  "require": [{"branch": 2, "profile": "pii"}]}
//! ```
//!
//! Version 1 recorded a clone by name before its creation and added the id
//! after; an entry could stay name-only (a failed write, or a daemon that died
//! in between), and any later branch of that name was then taken for the clone.
//! A version-1 file is upgraded when it is first opened (daemon start, `cowfs
//! mount`): each name-only entry becomes the id of the branch of that name that
//! exists then, if it has no owner, and is dropped otherwise; the file is
//! written back as version 2 at once, so no branch created afterwards matches.

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

    /// The clone `id` is ready, gone, or was never created.
    pub fn end(&self, id: BranchId) -> std::io::Result<()> {
        self.update(|f| f.sanitizing.retain(|r| r.id != id))
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

    #[test]
    fn unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = pool(dir.path());
        replace_private(&state_path(pool.name()), br#"{"version": 3}"#).unwrap();
        assert!(SanitizeState::open(&pool).is_err());
    }
}
