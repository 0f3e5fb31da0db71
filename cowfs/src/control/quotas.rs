//! Branch quotas and reservations as the daemon keeps them: `POOL.quotas` beside
//! the pool (JSON, mode 0600, replaced atomically), keyed by branch id (stable
//! across renames), applied to the pool when the daemon starts and on every change.

use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::files::{read_private, replace_private, side_file};
use super::ControlError;
use crate::pool::quota::QuotaLimits;
use crate::pool::{BranchId, Pool};

const FILE_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct QuotaFile {
    version: u32,
    quotas: Vec<Stored>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Stored {
    branch: BranchId,
    #[serde(default)]
    max_bytes: Option<u64>,
    #[serde(default)]
    reserve_bytes: u64,
}

pub struct QuotaStore {
    path: PathBuf,
    file: Mutex<QuotaFile>,
}

impl QuotaStore {
    /// Load `POOL.quotas` (missing: none) and set every quota in the pool. Entries
    /// of branches deleted meanwhile are dropped; a reservation that no longer fits
    /// is logged and not applied (it stays in the file until changed).
    pub fn open(pool: &Pool) -> Result<QuotaStore, ControlError> {
        let path = side_file(pool.name(), ".quotas");
        let mut file = match read_private(&path) {
            Ok(text) => {
                serde_json::from_str::<QuotaFile>(&text).map_err(|e| ControlError::Config {
                    path: path.clone(),
                    why: e.to_string(),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => QuotaFile {
                version: FILE_VERSION,
                quotas: Vec::new(),
            },
            Err(source) => return Err(ControlError::Io { path, source }),
        };
        if file.version != FILE_VERSION {
            return Err(ControlError::Config {
                path,
                why: format!(
                    "version {} (this daemon reads {FILE_VERSION})",
                    file.version
                ),
            });
        }
        let names: Vec<(BranchId, String)> =
            pool.list().into_iter().map(|b| (b.id, b.name)).collect();
        file.quotas.retain(|q| {
            let Some((_, name)) = names.iter().find(|(id, _)| *id == q.branch) else {
                return false;
            };
            let limits = QuotaLimits {
                max_bytes: q.max_bytes,
                reserve_bytes: q.reserve_bytes,
            };
            match pool.quota_set(name, limits) {
                Ok(_) => true,
                Err(e) => {
                    log::error!("quota of branch '{name}' not applied: {e}");
                    true
                }
            }
        });
        Ok(QuotaStore {
            path,
            file: Mutex::new(file),
        })
    }

    /// Remember the limits of branch `id` (empty limits: forget it).
    pub fn set(&self, id: BranchId, limits: QuotaLimits) -> std::io::Result<()> {
        let mut f = self.file.lock();
        let mut next = f.clone();
        next.quotas.retain(|q| q.branch != id);
        if !limits.is_none() {
            next.quotas.push(Stored {
                branch: id,
                max_bytes: limits.max_bytes,
                reserve_bytes: limits.reserve_bytes,
            });
        }
        let text = serde_json::to_vec_pretty(&next).map_err(std::io::Error::other)?;
        replace_private(&self.path, &text)?;
        *f = next;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
