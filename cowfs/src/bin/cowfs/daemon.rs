//! The foreground daemon shared by `cowfs mount` and `cowfs serve`: lock and open
//! the pool, commit periodically, wait for SIGTERM/SIGINT, then unmount everything
//! and commit a last time.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use cowfs::control::sanitizing::SanitizeState;
use cowfs::control::ControlServer;
use cowfs::fuse::MountTable;
use cowfs::pool::{Pool, PoolOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::lockfile::{self, PoolLock};
use crate::timer::CommitTimer;
use crate::Fallible;

/// How often `cowfs mount` checks that its mount is still there.
const POLL: Duration = Duration::from_millis(200);

struct Daemon {
    pool: Arc<Pool>,
    mounts: Arc<MountTable>,
    timer: CommitTimer,
    signals: Signals,
    _lock: PoolLock,
}

impl Daemon {
    fn open(pool_path: &Path) -> Result<Daemon, Box<dyn std::error::Error>> {
        // Handlers first, so a signal that arrives while mounting is not lost.
        let signals = Signals::new([SIGTERM, SIGINT])?;
        let lock = lockfile::lock(pool_path)?;
        let pool = Arc::new(Pool::open(&pool_name(pool_path), &PoolOptions::default())?);
        let mounts = MountTable::new(pool.clone());
        let timer = CommitTimer::start(pool.clone())?;
        Ok(Daemon {
            pool,
            mounts,
            timer,
            signals,
            _lock: lock,
        })
    }

    fn wait_for_signal(&mut self) {
        if let Some(sig) = self.signals.forever().next() {
            log::info!("signal {sig} received: unmounting and committing");
        }
    }

    fn shutdown(self) -> Fallible {
        self.mounts.unmount_all();
        self.timer.stop();
        self.pool.commit()?;
        log::info!("{}: committed, exiting", self.pool.name().display());
        Ok(ExitCode::SUCCESS)
    }
}

/// The name the daemon opens the pool by, from which the control layer derives the
/// side files (`side_file`) and the mounts their source (`POOL:BRANCH`): a pool
/// file's real path (symlinks resolved, so that every name of the file finds the
/// side files `cowfs init` wrote, which uses this name too); a block device's
/// absolute path, symlinks kept (its side files are keyed by the pool's id).
pub(crate) fn pool_name(pool_path: &Path) -> PathBuf {
    use std::os::unix::fs::FileTypeExt;
    let on_device = std::fs::metadata(pool_path).is_ok_and(|m| m.file_type().is_block_device());
    let name = if on_device {
        std::path::absolute(pool_path)
    } else {
        pool_path.canonicalize()
    };
    name.unwrap_or_else(|_| pool_path.to_path_buf())
}

/// `cowfs mount`: one branch, in the foreground.
pub fn mount(pool_path: &Path, branch: &str, dir: &Path, read_only: bool) -> Fallible {
    let mut d = Daemon::open(pool_path)?;
    let mounted = refuse_unfinished_clone(&d.pool, branch)
        .and_then(|()| Ok(d.mounts.mount(branch, dir, read_only)?));
    if let Err(e) = mounted {
        d.shutdown()?;
        return Err(e);
    }
    // Until a signal, or until the mount goes away (`umount DIR`).
    loop {
        if let Some(sig) = d.signals.pending().next() {
            log::info!("signal {sig} received: unmounting and committing");
            break;
        }
        if d.mounts.list().is_empty() {
            log::info!("{} was unmounted: committing and exiting", dir.display());
            break;
        }
        std::thread::sleep(POLL);
    }
    d.shutdown()
}

/// A clone whose sanitize did not finish (its daemon stopped) may still hold its
/// parent's personal data. `cowfs serve` deletes it at start; until then nothing
/// mounts it, `cowfs mount` included (which does not read the daemon's state
/// otherwise).
fn refuse_unfinished_clone(pool: &Pool, branch: &str) -> Result<(), Box<dyn std::error::Error>> {
    // A version-1 file is upgraded here if no daemon started since.
    let state = SanitizeState::open(pool)?;
    // Not found: the mount says so.
    let Ok(b) = pool.info(branch) else {
        return Ok(());
    };
    if state.is_sanitizing(b.id) {
        return Err(format!(
            "branch '{branch}' is a clone whose sanitize did not finish ({} lists it), so it \
             may hold unsanitized data; `cowfs serve {}` deletes it when it starts",
            state.path().display(),
            pool.name().display()
        )
        .into());
    }
    Ok(())
}

/// The control socket: `--socket`, else `$COWFS_SOCKET`, else `POOL.sock`
/// (`side_file`).
fn socket_path(pool: &Path, socket: Option<PathBuf>) -> PathBuf {
    socket
        .or_else(|| std::env::var_os("COWFS_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| cowfs::control::side_file(pool, ".sock"))
}

/// `cowfs serve`: the daemon, driven over the control socket.
pub fn serve(pool_path: &Path, socket: Option<PathBuf>, config: Option<&Path>) -> Fallible {
    let mut d = Daemon::open(pool_path)?;
    let socket = socket_path(pool_path, socket);
    let server = match ControlServer::start(d.pool.clone(), d.mounts.clone(), &socket, config) {
        Ok(s) => s,
        Err(e) => {
            d.shutdown()?;
            return Err(e.into());
        }
    };
    log::info!("serving {} on {}", pool_path.display(), socket.display());
    d.wait_for_signal();
    server.shutdown();
    d.shutdown()
}
