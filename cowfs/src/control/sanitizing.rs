//! Sanitize state the daemon keeps beside the pool, in `POOL.sanitize-state` (JSON,
//! mode 0600, replaced atomically on every change):
//!
//! - `sanitizing`: clones being sanitized. An entry is written *before* the branch
//!   is created (name only), completed with the branch id right after, and removed
//!   once the clone is ready (committed) or deleted. A daemon that starts and finds
//!   entries deletes those branches: a clone that was not finished is never kept.
//! - `require`: protected branches that require a sanitize profile, by branch id
//!   (stable across renames, never reused).
//!
//! ```json
//! {"version": 1,
//!  "sanitizing": [{"name": "agent-1", "id": 7}],
//!  "require": [{"branch": 2, "profile": "pii"}]}
//! ```

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::files::{read_private, replace_private, side_file};
use super::ControlError;
use crate::pool::BranchId;

const FILE_VERSION: u32 = 1;

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
    pub name: String,
    /// Missing while the branch is being created.
    #[serde(default)]
    pub id: Option<BranchId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Requirement {
    branch: BranchId,
    profile: String,
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
            Ok(text) => {
                let f: StateFile =
                    serde_json::from_str(&text).map_err(|e| ControlError::Config {
                        path: path.clone(),
                        why: e.to_string(),
                    })?;
                if f.version != FILE_VERSION {
                    return Err(ControlError::Config {
                        path,
                        why: format!("version {} (this daemon reads {FILE_VERSION})", f.version),
                    });
                }
                f
            }
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

    /// Record, before creating it, that branch `name` will be sanitized.
    pub fn begin(&self, name: &str) -> std::io::Result<()> {
        self.update(|f| {
            f.sanitizing.retain(|r| r.name != name || r.id.is_some());
            f.sanitizing.push(Running {
                name: name.into(),
                id: None,
            });
        })
    }

    /// The branch of `begin(name)` now exists with this id.
    pub fn created(&self, name: &str, id: BranchId) -> std::io::Result<()> {
        self.update(|f| {
            for r in &mut f.sanitizing {
                if r.name == name && r.id.is_none() {
                    r.id = Some(id);
                }
            }
        })
    }

    /// The clone `name` (id, once known) is ready or gone.
    pub fn end(&self, name: &str, id: Option<BranchId>) -> std::io::Result<()> {
        self.update(|f| {
            f.sanitizing
                .retain(|r| !(r.name == name && (r.id.is_none() || r.id == id)));
        })
    }

    /// Is branch `id` being sanitized?
    pub fn is_sanitizing(&self, id: BranchId) -> bool {
        self.file.lock().sanitizing.iter().any(|r| r.id == Some(id))
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
        s.begin("a").unwrap();
        assert!(!s.is_sanitizing(4));
        s.created("a", 4).unwrap();
        s.begin("b").unwrap();
        s.set_required(1, Some("pii")).unwrap();
        let s = SanitizeState::open(&pool).unwrap();
        assert!(s.is_sanitizing(4));
        assert_eq!(
            s.running(),
            vec![
                Running {
                    name: "a".into(),
                    id: Some(4)
                },
                Running {
                    name: "b".into(),
                    id: None
                }
            ]
        );
        assert_eq!(s.required(1).as_deref(), Some("pii"));
        s.end("a", Some(4)).unwrap();
        s.end("b", None).unwrap();
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
}
