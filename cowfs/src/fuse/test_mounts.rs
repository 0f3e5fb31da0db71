//! Test fixtures: tmpfs mounts on temporary directories standing in for the
//! table's mounts, and a guard that unmounts whatever a test left there, also
//! when it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::mounts::MountId;
use crate::control::mountinfo;

/// Unmounts whatever a test left on its directory, also when it fails.
pub(crate) struct Cleanup(pub(crate) PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        while top(&self.0).is_some() {
            let st = Command::new("umount").arg("-l").arg(&self.0).status();
            if !st.is_ok_and(|s| s.success()) {
                break;
            }
        }
    }
}

/// The mount on top of `dir` (the last listed there) and its source.
pub(crate) fn top(dir: &Path) -> Option<(MountId, PathBuf)> {
    let m = mountinfo::read().expect("mountinfo");
    let m = m.into_iter().rev().find(|m| m.point == dir)?;
    Some((
        MountId {
            id: m.id,
            dev: m.dev,
        },
        m.source,
    ))
}

pub(crate) fn is_listed(ours: &MountId) -> bool {
    let all = mountinfo::read().expect("mountinfo");
    all.iter().any(|m| m.id == ours.id && m.dev == ours.dev)
}

/// A tmpfs named `source` mounted on `dir`.
pub(crate) fn tmpfs(dir: &Path, source: &str) -> MountId {
    let st = Command::new("mount")
        .args(["-t", "tmpfs", source])
        .arg(dir)
        .status()
        .expect("run mount");
    assert!(st.success(), "mount tmpfs on {}", dir.display());
    let (id, listed) = top(dir).expect("the new mount");
    assert_eq!(listed, Path::new(source));
    id
}

/// A directory with "ours" mounted on it.
pub(crate) fn mounted() -> (tempfile::TempDir, Cleanup, MountId) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().canonicalize().expect("canonical");
    let cleanup = Cleanup(dir.clone());
    let ours = tmpfs(&dir, "cowfs-unit-ours");
    (tmp, cleanup, ours)
}
