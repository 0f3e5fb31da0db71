//! `POOL.lock`: one process at a time opens a pool for writing. The lock is an
//! flock(2), so it dies with its holder, also on `kill -9`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Held for as long as the pool is open.
pub struct PoolLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("pool {pool} is in use by another cowfs process{holder} (lock file {lock}); stop it first, or talk to it with cowfs-ctl")]
    Held {
        pool: PathBuf,
        lock: PathBuf,
        holder: String,
    },
    #[error("lock file {lock}: {source}")]
    Io { lock: PathBuf, source: io::Error },
}

/// The lock file of a pool: `POOL.lock` (`side_file`).
pub fn lock_path(pool: &Path) -> PathBuf {
    cowfs::control::side_file(pool, ".lock")
}

/// Every command that opens the pool takes this lock first, so it is also where
/// the side-file directory of a block-device pool is made.
pub fn lock(pool: &Path) -> Result<PoolLock, LockError> {
    let lock = lock_path(pool);
    let io_err = |source| LockError::Io {
        lock: lock.clone(),
        source,
    };
    cowfs::control::make_side_dir(pool).map_err(io_err)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(io_err)?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err(e));
        }
        let mut pid = String::new();
        let holder = match f.read_to_string(&mut pid) {
            Ok(_) if !pid.trim().is_empty() => format!(" (pid {})", pid.trim()),
            _ => String::new(),
        };
        return Err(LockError::Held {
            pool: pool.to_path_buf(),
            lock,
            holder,
        });
    }
    f.set_len(0).map_err(io_err)?;
    f.rewind().map_err(io_err)?;
    writeln!(f, "{}", std::process::id()).map_err(io_err)?;
    Ok(PoolLock { _file: f })
}
