//! The control plane: a Unix socket speaking JSON lines
//! (`format-spec/control-protocol.md`), token checks, and the operations behind
//! `cowfs-ctl`. Calls the pool and the mount table only.
//!
//! - `server`: socket, connections, framing, handshake
//! - `dispatch`: one request -> permission checks -> pool / mount calls
//! - `auth`: the permission rules
//! - `tokens`: the hashed token store beside the pool (`POOL.tokens`)
//! - `config`: limits and mount roots from the `--config` file
//! - `mount_points`: where a token may mount (mount roots, never inside a mount)
//! - `mountinfo`: the host's mounts, from `/proc/self/mountinfo`
//! - `quotas`: branch quotas and reservations kept beside the pool (`POOL.quotas`)
//! - `sanitize`: the sanitize engine (profiles from the `--config` file)
//! - `sanitizing`: clones being sanitized and required profiles
//!   (`POOL.sanitize-state`)
//! - `slots`: connection slots, in all and per user
//! - `socket`: binding the control socket, never reachable with a wider mode
//! - `peer`: the user of a connection's client, as the kernel recorded it
//! - `files`: private files beside the pool, replaced atomically
//! - `errors`: engine errors as typed protocol errors

mod auth;
pub mod config;
mod dispatch;
mod errors;
mod files;
mod frame;
mod mount_points;
pub mod mountinfo;
mod peer;
pub mod quotas;
pub mod sanitize;
pub mod sanitizing;
mod server;
mod slots;
mod socket;
pub mod tokens;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::fuse::MountTable;
use crate::pool::Pool;
use config::ServerConfig;
pub use files::{make_side_dir, parent_dir, side_file};
pub use server::parse as parse_request;
use tokens::{TokenError, TokenStore};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: another cowfs daemon is serving this socket; stop it or pick another --socket"
    )]
    InUse { path: PathBuf },
    #[error("{path}: invalid control config: {why}")]
    Config { path: PathBuf, why: String },
    #[error(transparent)]
    Tokens(#[from] TokenError),
    #[error("moving branch owners from the token file into the pool (retried at the next start; the token file is unchanged): {0}")]
    OwnerUpgrade(crate::pool::PoolError),
    #[error(transparent)]
    Sanitize(#[from] sanitize::SanitizeError),
}

/// A running control socket.
pub struct ControlServer {
    shared: Arc<server::Shared>,
    socket: PathBuf,
    /// The listening socket, kept to wake the accept loop at shutdown.
    listener: UnixListener,
    accept: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Bind `socket` (mode 0660; a stale socket file is replaced), load the pool's
    /// tokens (creating the admin token if the pool has none), the sanitize
    /// profiles of `config` and the pool's pseudonym key (created if missing),
    /// delete clones a previous daemon left unfinished in state `sanitizing` and
    /// the directories its hooks left in the scratch directory, and serve on
    /// background threads.
    pub fn start(
        pool: Arc<Pool>,
        mounts: Arc<MountTable>,
        socket: &Path,
        config: Option<&Path>,
    ) -> Result<ControlServer, ControlError> {
        let cfg = ServerConfig::load(config)?;
        let mount_roots = cfg.mount_roots(pool.name())?;
        let tokens = TokenStore::open(pool.name())?;
        // A token file from before the catalog recorded owners: move them there.
        pool.set_owners(&tokens.legacy_owners())
            .map_err(ControlError::OwnerUpgrade)?;
        tokens.finish_upgrade()?;
        let quotas = quotas::QuotaStore::open(&pool)?;
        let profiles = match config {
            Some(path) => sanitize::SanitizeConfig::load(path)?,
            None => sanitize::SanitizeConfig::parse("", Path::new("."))?,
        };
        // A hook's own host paths must not show the pool's branches (mounted in
        // its mount roots, production among them) or the pool's files.
        let mut checked = mount_roots
            .iter()
            .try_for_each(|r| profiles.refuse_host_paths_near("the pool's mount root", r))
            .and_then(|()| profiles.refuse_host_paths_to_pool(pool.name()))
            // A block device's files are kept elsewhere (`files::side_file`).
            .and_then(|()| profiles.refuse_host_paths_to_pool(&files::side_file(pool.name(), "")));
        if let (Err(sanitize::SanitizeError::Config { file, .. }), Some(path)) =
            (&mut checked, config)
        {
            *file = Some(path.to_path_buf());
        }
        checked?;
        let key = sanitize::load_or_create_key(pool.name())?;
        let state = sanitizing::SanitizeState::open(&pool)?;
        // A daemon killed while a hook ran left the hooks' directory; its dead
        // mount there was detached by `MountTable::new` (`mounts` exists).
        sanitize::private_dir::remove_stale(&profiles.scratch_dir, pool.id());
        let io = |source| ControlError::Io {
            path: socket.to_path_buf(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(socket) {
            if !meta.file_type().is_socket() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            if UnixStream::connect(socket).is_ok() {
                return Err(ControlError::InUse {
                    path: socket.to_path_buf(),
                });
            }
            std::fs::remove_file(socket).map_err(io)?;
        }
        let listener = socket::bind(socket, 0o660).map_err(io)?;
        let ctx = dispatch::Ctx::new(
            pool,
            mounts,
            tokens,
            quotas,
            profiles,
            key,
            state,
            mount_roots,
        );
        ctx.delete_unfinished()?;
        ctx.warn_uncovered();
        let shared = Arc::new(server::Shared::new(ctx, cfg));
        let sh = shared.clone();
        let kept = listener.try_clone().map_err(io)?;
        let accept = std::thread::Builder::new()
            .name("cowfs-ctl-accept".into())
            .spawn(move || server::accept_loop(sh, listener))
            .map_err(io)?;
        log::info!("control socket listening on {}", socket.display());
        Ok(ControlServer {
            shared,
            socket: socket.to_path_buf(),
            listener: kept,
            accept: Some(accept),
        })
    }

    /// Stop accepting, close every connection, wait for their threads and remove
    /// the socket file.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Sanitize runs stop (their hooks killed) and delete their clones, so
        // that the connection threads joined below end promptly.
        self.shared.ctx.cancel.store(true, Ordering::SeqCst);
        // Wake the accept loop: shutdown(2) on the listening socket makes a blocked
        // accept fail; connecting works too while the socket file still exists.
        // SAFETY: the descriptor belongs to `self.listener`, open until drop.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        let _ = UnixStream::connect(&self.socket);
        if accept.join().is_err() {
            log::error!("control accept thread panicked");
        }
        self.shared.close_all();
        if let Err(e) = std::fs::remove_file(&self.socket) {
            log::warn!("{}: {e}", self.socket.display());
        }
        log::info!("control socket closed");
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}
