//! Sanitize state the daemon keeps beside the pool, in `POOL.sanitize-state` (JSON,
//! mode 0600, replaced atomically on every change):
//!
//! - `sanitizing`: clones being sanitized, by branch id (never reused; the name
//!   is for messages). An entry is written *before* the branch exists durably
//!   (`Pool::branch_create_recorded`) and removed once the clone is ready
//!   (committed) or deleted. A daemon that starts and finds entries deletes those
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
//! after; an entry could stay name-only (a failed write), and a later branch of
//! that name was then taken for the clone. A version-1 file is read, its
//! name-only entries kept aside for `Ctx::delete_unfinished` to settle, and
//! written back as version 2 at the next change.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::files::{read_private, replace_private, side_file};
use super::ControlError;
use crate::pool::BranchId;

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
    /// Read from a version-1 file (to be written as version 2): the names of its
    /// entries that had no id.
    #[serde(skip)]
    first_layout: Option<Vec<String>>,
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
    /// As version 2; entries without an id go to `first_layout`.
    fn upgrade(self) -> StateFile {
        let mut names = Vec::new();
        let mut sanitizing = Vec::new();
        for r in self.sanitizing {
            match r.id {
                Some(id) => sanitizing.push(Running { id, name: r.name }),
                None => names.push(r.name),
            }
        }
        StateFile {
            version: FILE_VERSION,
            sanitizing,
            require: self.require,
            first_layout: Some(names),
        }
    }
}

#[derive(Deserialize)]
struct Version {
    version: u32,
}

/// The state file's text, of either layout.
fn parse(text: &str) -> Result<StateFile, String> {
    let v: Version = serde_json::from_str(text).map_err(|e| e.to_string())?;
    match v.version {
        1 => serde_json::from_str::<FirstLayout>(text)
            .map(FirstLayout::upgrade)
            .map_err(|e| e.to_string()),
        FILE_VERSION => serde_json::from_str(text).map_err(|e| e.to_string()),
        n => Err(format!(
            "version {n} (this daemon reads 1 and {FILE_VERSION})"
        )),
    }
}

pub struct SanitizeState {
    path: PathBuf,
    file: Mutex<StateFile>,
}

impl SanitizeState {
    /// Load `POOL.sanitize-state` (missing: empty).
    pub fn open(pool: &Path) -> Result<SanitizeState, ControlError> {
        let path = state_path(pool);
        let file = match read_private(&path) {
            Ok(text) => parse(&text).map_err(|why| ControlError::Config {
                path: path.clone(),
                why,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StateFile {
                version: FILE_VERSION,
                ..Default::default()
            },
            Err(source) => return Err(ControlError::Io { path, source }),
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
        let text = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
        replace_private(&self.path, &text)?;
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

    /// Read from a version-1 file: the names its entries without an id had
    /// (`settle_first_layout` must follow).
    pub fn first_layout(&self) -> Option<Vec<String>> {
        self.file.lock().first_layout.clone()
    }

    /// Write the file as version 2, with `found` (the clones the name-only
    /// entries of `first_layout` stood for) recorded by id.
    pub fn settle_first_layout(&self, found: Vec<Running>) -> std::io::Result<()> {
        self.update(|f| {
            f.sanitizing.extend(found);
            f.first_layout = None;
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

    #[test]
    fn durable_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("p");
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
        assert_eq!(s.first_layout(), None);
        s.end(4).unwrap();
        s.end(5).unwrap();
        s.set_required(1, None).unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        assert!(s.running().is_empty() && s.required(1).is_none());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state_path(&pool))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A version-1 file is read: entries with an id as they were, name-only ones
    /// set aside; settling them writes version 2.
    #[test]
    fn first_layout_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("p");
        let v1 = r#"{"version": 1,
            "sanitizing": [{"name": "a", "id": 7}, {"name": "b"}],
            "require": [{"branch": 2, "profile": "pii"}]}"#;
        replace_private(&state_path(&pool), v1.as_bytes()).unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        assert!(s.is_sanitizing(7));
        assert_eq!(s.first_layout(), Some(vec!["b".to_string()]));
        s.settle_first_layout(vec![Running {
            id: 9,
            name: "b".into(),
        }])
        .unwrap();
        let text = std::fs::read_to_string(state_path(&pool)).unwrap();
        assert!(text.contains("\"version\": 2"), "{text}");
        let s = SanitizeState::open(&pool).unwrap();
        assert_eq!(s.first_layout(), None);
        assert!(s.is_sanitizing(7) && s.is_sanitizing(9));
        assert_eq!(s.required(2).as_deref(), Some("pii"));
    }

    #[test]
    fn unknown_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("p");
        replace_private(&state_path(&pool), br#"{"version": 3}"#).unwrap();
        assert!(SanitizeState::open(&pool).is_err());
    }
}
