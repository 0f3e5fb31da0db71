//! Private files beside the pool (`POOL.token`, `POOL.tokens`, `POOL.quotas`):
//! mode 0600, written durably, replaced atomically.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `POOL` + `suffix`, e.g. `pool.cowfs.tokens`.
pub fn with_suffix(pool: &Path, suffix: &str) -> PathBuf {
    let mut s = pool.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Create or truncate `path` with mode 0600 and write `data` durably.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: make sure it is private.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Replace `path` atomically: a temporary file (0600), fsync, rename over, fsync
/// the folder.
pub fn replace_private(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    write_private(&tmp, data)?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}
