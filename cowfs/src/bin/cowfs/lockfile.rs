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
    take(&mut f, libc::LOCK_EX, pool, &lock)?;
    f.set_len(0).map_err(io_err)?;
    f.rewind().map_err(io_err)?;
    writeln!(f, "{}", std::process::id()).map_err(io_err)?;
    Ok(PoolLock { _file: f })
}

/// The lock for a command that only reads the pool (fsck, scrub): `lock` where
/// the lock file can be written. Where it cannot (a read-only mount, a
/// directory the caller may not write), a shared lock on the lock file opened
/// read-only, which still fails while a daemon holds the pool and keeps one
/// from starting meanwhile; and none if there is no lock file there: no process
/// holds a lock file that does not exist. A daemon that can create it (another
/// user's, or one reaching the directory through a writable path beside a
/// read-only bind mount) could then start during the check; the check still
/// writes nothing, but it would read a pool that changes under it, and may
/// report damage that is not there. `cowfs init` always makes the lock file:
/// this is a pool copied without it, or made through the library.
pub fn lock_to_read(pool: &Path) -> Result<Option<PoolLock>, LockError> {
    let source = match lock(pool) {
        Err(LockError::Io { source, .. }) => source,
        r => return r.map(Some),
    };
    let refused = [libc::EROFS, libc::EACCES, libc::EPERM];
    let lock = lock_path(pool);
    let io_err = |source| LockError::Io {
        lock: lock.clone(),
        source,
    };
    if !source.raw_os_error().is_some_and(|e| refused.contains(&e)) {
        return Err(io_err(source));
    }
    let mut f = match File::open(&lock) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    take(&mut f, libc::LOCK_SH, pool, &lock)?;
    Ok(Some(PoolLock { _file: f }))
}

/// flock `f` (`how`: LOCK_EX or LOCK_SH) without waiting; Held, with the pid
/// the file names, if another process holds it.
fn take(f: &mut File, how: libc::c_int, pool: &Path, lock: &Path) -> Result<(), LockError> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), how | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(LockError::Io {
            lock: lock.to_path_buf(),
            source: e,
        });
    }
    let mut pid = String::new();
    let holder = match f.read_to_string(&mut pid) {
        Ok(_) if !pid.trim().is_empty() => format!(" (pid {})", pid.trim()),
        _ => String::new(),
    };
    Err(LockError::Held {
        pool: pool.to_path_buf(),
        lock: lock.to_path_buf(),
        holder,
    })
}
