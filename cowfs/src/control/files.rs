//! Private files beside the pool (`POOL.token`, `POOL.tokens`, `POOL.quotas`,
//! `POOL.sanitize-state`): mode 0600, written durably, replaced atomically.
//!
//! The pool's directory may be shared with other users, so nothing here opens an
//! existing name for writing: the data goes to a new file with a random name,
//! created with O_CREAT|O_EXCL (which never follows a symlink and fails on any
//! existing name), and is renamed over the target. A symlink or a hard link
//! someone planted at the target or at a predictable temporary name is replaced
//! (or avoided), never written through, and a file someone else created at the
//! target (and may hold open) never receives the secrets.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// `POOL` + `suffix`, e.g. `pool.cowfs.tokens`.
pub fn with_suffix(pool: &Path, suffix: &str) -> PathBuf {
    let mut s = pool.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The directory holding `path` ("." for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A new, empty file with mode 0600 beside `path`, named `.NAME.XXXXXX.tmp` (the
/// `tempfile` crate: O_CREAT|O_EXCL, a random name, retried on collision, and
/// removed when dropped unless persisted: every error path below cleans up).
pub fn private_temp(path: &Path) -> io::Result<tempfile::NamedTempFile> {
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(path.file_name().unwrap_or_default());
    prefix.push(".");
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(parent_dir(path))?;
    // Exactly 0600 whatever the daemon's umask.
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(tmp)
}

/// fsync the directory holding `path`, so that a rename or link into it survives
/// a crash.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

/// Replace `path` atomically with `data`: a new private temporary file (see
/// `private_temp`), fsync, rename over `path`, fsync the directory. Readers see
/// the old content or the new, never a mix, also after a crash.
pub fn replace_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = private_temp(path)?;
    tmp.write_all(data)?;
    tmp.as_file().sync_all()?;
    // On failure the returned temporary file is dropped, which removes it.
    tmp.persist(path).map_err(|e| e.error)?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A symlink at the old fixed temporary name (`PATH.tmp`) or at the target
    /// itself pointed the daemon's write (truncate, secrets, chmod 0600) at any
    /// file it names.
    #[test]
    fn planted_symlinks_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
        let target = dir.path().join("pool.tokens");
        std::os::unix::fs::symlink(&victim, with_suffix(&target, ".tmp")).unwrap();
        replace_private(&target, b"secret 1\n").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("pool.token")).unwrap();
        replace_private(&dir.path().join("pool.token"), b"secret 2\n").unwrap();

        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        let mode = std::fs::metadata(&victim).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret 1\n");
        let token = dir.path().join("pool.token");
        assert!(!std::fs::symlink_metadata(&token).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&token).unwrap(), "secret 2\n");
        for f in [&target, &token] {
            let mode = std::fs::metadata(f).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", f.display());
        }
        // No temporary file is left behind.
        assert_eq!(
            names(dir.path()),
            ["pool.token", "pool.tokens", "pool.tokens.tmp", "victim"]
        );
    }

    /// A failed rename (here: the target is a directory) removes the temporary file.
    #[test]
    fn failure_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("pool.quotas");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("x"), "x").unwrap();
        assert!(replace_private(&target, b"data").is_err());
        assert_eq!(names(dir.path()), ["pool.quotas"]);
    }
}
