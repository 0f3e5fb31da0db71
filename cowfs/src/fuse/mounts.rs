//! The mounts a daemon serves: mount a branch on a directory (a background FUSE
//! session), unmount, list, and make a branch's mounted state durable.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::abort::abort_connection;
use super::filesystem::CowFs;
use super::kernel;
use super::pinned::PinnedDir;
use super::sys;
use super::unmount::{unmount_ours, Unmount};
use super::write_back::WriteBack;
use crate::control::mountinfo;
use crate::pool::{Pool, PoolError};

/// One mounted branch, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    pub branch: String,
    pub dir: PathBuf,
    pub read_only: bool,
    /// The id of the control-plane token whose request made the mount (`None`:
    /// made through the library, or by the daemon itself), so that revoking
    /// the token, or protecting the branch, can end the access it gave.
    pub token: Option<u64>,
}

/// How `MountTable::end` took a mount away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// Unmounted: nothing was open on it.
    Unmounted,
    /// Files were open on it: they fail from now on (ENOTCONN), and the mount
    /// is detached.
    Detached,
    /// Another filesystem is mounted over it: files fail from now on, and the
    /// dead mount stays under that one until the next daemon start.
    Aborted,
}

/// Errors of mount management.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error("{0}: not a directory; create the mount point first")]
    NotADirectory(PathBuf),
    #[error("{0}: not a directory reached without symbolic links (was it replaced since it was checked?); give the mount point's real path")]
    NotRealPath(PathBuf),
    #[error("{dir}: the mount point was renamed to {now} while the branch was being mounted on it, so the mount was undone; retry on a directory that stays put")]
    Moved { dir: PathBuf, now: PathBuf },
    #[error("{0}: a cowfs branch is already mounted there; unmount it first")]
    AlreadyMounted(PathBuf),
    #[error("branch '{branch}' is already mounted on {dir}; a branch is mounted read-write once or read-only any number of times: unmount it, or branch it and mount the new branch")]
    BranchMounted { branch: String, dir: PathBuf },
    #[error("{0}: no cowfs branch is mounted there (see the mount list)")]
    NotMounted(PathBuf),
    #[error("{0}: files are open on this mount; close them (stop the service using it) and retry")]
    Busy(PathBuf),
    #[error("{0}: was unmounted lazily from outside cowfs while files were open there; the detached mount is served until they are closed: close them (stop the service using it) and retry")]
    Detached(PathBuf),
    #[error("{0}: another filesystem is mounted over the branch's mount; unmount it first (cowfs unmounts only its own mount), then retry")]
    Covered(PathBuf),
    #[error("{dir}: the cowfs mount on {below} is below it, and a mount there would hide it; mount on a directory that holds no cowfs mount")]
    WouldHide { dir: PathBuf, below: PathBuf },
    #[error(
        "mounting branch '{branch}' on {dir}: {source} (is /dev/fuse available and are you root?)"
    )]
    Mount {
        branch: String,
        dir: PathBuf,
        source: io::Error,
    },
    #[error("unmounting {dir}: {source}")]
    Unmount { dir: PathBuf, source: io::Error },
    #[error("flushing {dir} (syncfs): {source}")]
    Sync { dir: PathBuf, source: io::Error },
    #[error("committing branch '{branch}': {source}")]
    Commit { branch: String, source: PoolError },
}

struct Mounted {
    info: MountInfo,
    /// Which mount on `info.dir` is this one.
    ours: MountId,
    session: JoinHandle<io::Result<()>>,
    write_back: Arc<WriteBack>,
}

/// A mount as /proc/self/mountinfo names it: its id and its device (the FUSE
/// connection's). Either may be reused once the mount is gone; both at once
/// while its session still runs, practically never.
#[derive(Clone, Debug)]
pub(super) struct MountId {
    pub(super) id: u64,
    pub(super) dev: String,
}

/// Where a mount of the table is now, seen from its directory.
#[derive(Debug)]
pub(super) enum Place {
    /// On top of the directory: unmounting the directory unmounts it.
    Top,
    /// Another mount is stacked on it: unmounting the directory would
    /// unmount that one.
    Covered,
    /// Not on the directory (detached or unmounted from outside): whatever is
    /// mounted there is someone else's.
    Gone,
}

/// Every mount of one pool.
pub struct MountTable {
    pool: Arc<Pool>,
    mounts: Mutex<Vec<Mounted>>,
}

impl MountTable {
    pub fn new(pool: Arc<Pool>) -> Arc<MountTable> {
        kernel::note_vcpu_halt_polling();
        detach_dead_mounts(&pool);
        Arc::new(MountTable {
            pool,
            mounts: Mutex::new(Vec::new()),
        })
    }

    /// Mount `branch` on `dir` and serve it on background threads. Snapshots are
    /// always mounted read-only. Orphans left by an earlier session are freed first.
    pub fn mount(&self, branch: &str, dir: &Path, read_only: bool) -> Result<(), MountError> {
        let dir = dir
            .canonicalize()
            .map_err(|_| MountError::NotADirectory(dir.to_path_buf()))?;
        self.mount_exact(branch, &dir, read_only)
    }

    /// `mount` on `dir` exactly as given: an absolute path without symlinks (the
    /// path the control plane checked). It is not resolved again: a symlink
    /// found on it now (someone swapped a directory for one since the check)
    /// is refused, and the mount is made on the directory held open, so it
    /// cannot land anywhere else (`PinnedDir`).
    pub fn mount_exact(&self, branch: &str, dir: &Path, read_only: bool) -> Result<(), MountError> {
        let pinned = PinnedDir::open(dir).map_err(|source| match source.raw_os_error() {
            Some(libc::ENOENT) => MountError::NotADirectory(dir.to_path_buf()),
            Some(libc::ENOTDIR | libc::ELOOP) => MountError::NotRealPath(dir.to_path_buf()),
            _ => MountError::Mount {
                branch: branch.to_string(),
                dir: dir.to_path_buf(),
                source,
            },
        })?;
        self.mount_pinned(branch, dir, pinned, read_only, None)
    }

    /// `mount_exact` on `pinned`, `PinnedDir::open(dir)` made (and checked) by
    /// the caller: the mount lands on the very directory the caller checked.
    /// `token` is recorded as the mount's maker (`MountInfo::token`).
    pub(crate) fn mount_pinned(
        &self,
        branch: &str,
        dir: &Path,
        pinned: PinnedDir,
        read_only: bool,
        token: Option<u64>,
    ) -> Result<(), MountError> {
        let id = self.pool.branch_id(branch)?;
        let read_only = read_only || self.pool.is_read_only(id).map_err(PoolError::from)?;
        let dir = dir.to_path_buf();
        let mut mounts = self.live();
        if mounts.iter().any(|m| m.info.dir == dir) {
            return Err(MountError::AlreadyMounted(dir));
        }
        // Checked here too, under the table's lock, for the mounts that appear
        // after the control plane checked (`control::mount_points`): a sanitize
        // hook's private mount is made without the control plane's lock.
        if let Some(m) = mounts.iter().find(|m| m.info.dir.starts_with(&dir)) {
            return Err(MountError::WouldHide {
                dir,
                below: m.info.dir.clone(),
            });
        }
        // A branch has one writer: the kernel caches attributes and data per
        // mount, so two mounts of a branch agree only when neither writes.
        if let Some(other) = mounts
            .iter()
            .find(|m| m.info.branch == branch && !(read_only && m.info.read_only))
        {
            return Err(MountError::BranchMounted {
                branch: branch.to_string(),
                dir: other.info.dir.clone(),
            });
        }
        if !read_only {
            let n = self.pool.cleanup_orphans(id).map_err(PoolError::from)?;
            if n > 0 {
                log::info!("branch '{branch}': freed {n} orphaned inodes");
            }
        }
        let fs = CowFs::new(self.pool.clone(), id, read_only);
        let source = format!("{}:{branch}", self.pool.name().display());
        let mount_err = |source| MountError::Mount {
            branch: branch.to_string(),
            dir: dir.clone(),
            source,
        };
        let fd = kernel::mount(&source, &pinned.proc_path(), read_only).map_err(mount_err)?;
        drop(pinned);
        let known: Vec<MountId> = mounts.iter().map(|m| m.ours.clone()).collect();
        let (ours, point) = match identify(&source, &known) {
            Ok(found) => found,
            Err(e) => {
                // Just mounted by this call: nothing else can be on top yet
                // (unmounted only if `dir` is no symlink, see `sys::umount2`).
                if let Err(u) = sys::detach(&dir) {
                    log::error!("{}: detaching the new mount: {u}", dir.display());
                }
                return Err(mount_err(e));
            }
        };
        if point != dir {
            // The directory held open was renamed before mount(2) attached to
            // it: the mount is on its new name. Just made, nothing is on top of
            // it yet; detached there, never through `dir` (a symlink now, say).
            if let Err(u) = sys::detach(&point) {
                log::error!("{}: detaching the new mount: {u}", point.display());
            }
            return Err(MountError::Moved { dir, now: point });
        }
        let notifier = fs.notifier_slot();
        let write_back = Arc::new(fs.write_back());
        let config = kernel::session_config();
        let served = fuser::Session::from_fd(fs, fd, config.acl, config).and_then(|session| {
            let _ = notifier.set(session.notifier());
            std::thread::Builder::new()
                .name(format!("cowfs-{branch}"))
                .spawn(move || session.run())
        });
        let session = match served {
            Ok(session) => session,
            Err(e) => {
                // Its connection is closed: detach the dead mount.
                detach_if_ours(&dir, &ours);
                return Err(mount_err(e));
            }
        };
        kernel::widen_readahead(&dir);
        log::info!(
            "mounted branch '{branch}' on {}{}",
            dir.display(),
            if read_only { " (read-only)" } else { "" }
        );
        mounts.push(Mounted {
            info: MountInfo {
                branch: branch.to_string(),
                dir,
                read_only,
                token,
            },
            ours,
            session,
            write_back,
        });
        Ok(())
    }

    /// Unmount `dir`. Refused with `Busy` while files are open on it (or a
    /// process keeps using it, see `unmount_ours`), and with `Covered` while
    /// another filesystem is mounted over it. A mount detached from outside is
    /// forgotten once its session ends (`Detached` until then); whatever is
    /// mounted on `dir` since, or while this runs, is left alone.
    pub fn unmount(&self, dir: &Path) -> Result<(), MountError> {
        let canonical = dir.canonicalize().ok();
        let mut mounts = self.live();
        let Some(idx) = mounts
            .iter()
            .position(|m| m.info.dir == dir || Some(&m.info.dir) == canonical.as_ref())
        else {
            return Err(MountError::NotMounted(dir.to_path_buf()));
        };
        let target = mounts[idx].info.dir.clone();
        let unmount_err = |source| MountError::Unmount {
            dir: target.clone(),
            source,
        };
        let gone = match unmount_ours(&target, &mounts[idx].ours).map_err(unmount_err)? {
            Unmount::Done => false,
            Unmount::Busy => return Err(MountError::Busy(target)),
            Unmount::Covered => return Err(MountError::Covered(target)),
            Unmount::Gone => true,
        };
        // Gone from outside: forget it below. Unless it was only detached
        // (`umount -l` with files open there): its session serves them until
        // they are closed, and joining it below would wait that long (with the
        // control plane's lock held).
        if gone {
            if !ends_soon(&mounts[idx].session) {
                return Err(MountError::Detached(target));
            }
            log::warn!("{}: was no longer mounted", target.display());
        }
        let m = mounts.remove(idx);
        drop(mounts);
        finish(m);
        Ok(())
    }

    /// End all access through the mount on `dir`, as revoking the right that
    /// made it must: unmount it like `unmount`; if files are open there (or
    /// another filesystem covers it, or it was detached from outside with files
    /// open), abort its FUSE connection so that they fail (ENOTCONN) from now
    /// on, then detach it (a covered one stays under the cover, dead, until the
    /// next daemon start detaches it). What was written to it before is flushed
    /// first and kept.
    pub fn end(&self, dir: &Path) -> Result<Ended, MountError> {
        let mut mounts = self.live();
        let Some(idx) = mounts.iter().position(|m| m.info.dir == dir) else {
            return Err(MountError::NotMounted(dir.to_path_buf()));
        };
        let target = mounts[idx].info.dir.clone();
        let ours = mounts[idx].ours.clone();
        let unmount_err = |source| MountError::Unmount {
            dir: target.clone(),
            source,
        };
        // Flushed as `sync_branch` does (the pages syncfs leaves in flight are
        // waited for): an abort below would fail them. The descriptor on the
        // mount is closed before the unmount, which it would make busy.
        if matches!(place(&target, &ours), Ok(Place::Top)) {
            match sys::syncfs_of(&target, ours.id) {
                Ok(Some(root)) => mounts[idx].write_back.wait(&root),
                Ok(None) => {}
                Err(e) => log::warn!("{}: syncfs before ending the mount: {e}", target.display()),
            }
        }
        let ended = match unmount_ours(&target, &ours).map_err(unmount_err)? {
            Unmount::Done => Ended::Unmounted,
            Unmount::Gone if ends_soon(&mounts[idx].session) => Ended::Unmounted,
            Unmount::Gone => {
                abort_connection(&ours.dev).map_err(unmount_err)?;
                Ended::Detached
            }
            Unmount::Busy => {
                abort_connection(&ours.dev).map_err(unmount_err)?;
                // Ours was on top just now and the caller (the control plane)
                // holds its operation lock, so no mount of the table is made on
                // `dir` meanwhile (see `place` on lazy detaches).
                sys::detach(&target).map_err(unmount_err)?;
                Ended::Detached
            }
            Unmount::Covered => {
                abort_connection(&ours.dev).map_err(unmount_err)?;
                Ended::Aborted
            }
        };
        let m = mounts.remove(idx);
        if ends_soon(&m.session) {
            drop(mounts);
            finish(m);
        } else {
            // Reaped by `live` once it ends; joining here would hold the lock.
            log::warn!("{}: its session did not end yet", target.display());
            mounts.push(m);
        }
        Ok(ended)
    }

    pub fn list(&self) -> Vec<MountInfo> {
        self.live().iter().map(|m| m.info.clone()).collect()
    }

    pub fn is_mounted(&self, branch: &str) -> bool {
        self.live().iter().any(|m| m.info.branch == branch)
    }

    /// The table, without mounts whose session has ended (unmounted from
    /// outside, e.g. `umount DIR`); those are reaped here.
    fn live(&self) -> parking_lot::MutexGuard<'_, Vec<Mounted>> {
        let mut mounts = self.mounts.lock();
        let (ended, live): (Vec<Mounted>, Vec<Mounted>) = std::mem::take(&mut *mounts)
            .into_iter()
            .partition(|m| m.session.is_finished());
        *mounts = live;
        for m in ended {
            log::warn!("{}: unmounted from outside cowfs", m.info.dir.display());
            finish(m);
        }
        mounts
    }

    /// Make everything written to `branch` so far durable: syncfs(2) on each of its
    /// mounts pushes the kernel's dirty pages to the engine (and `write_back`
    /// waits until they arrived), then the pool commits.
    /// A branch or snapshot taken after this holds every write completed before.
    /// syncfs(2) reaches a mount through its directory only while it is on top
    /// there: one covered by another filesystem or detached from outside (with
    /// files still open, so its session runs) would sync whatever is there now
    /// and leave this branch's dirty pages out of what follows, so it is refused
    /// (`Covered`, `Detached`), also when that happens after the check (the
    /// descriptor syncfs works on is checked to be on our mount).
    pub fn sync_branch(&self, branch: &str) -> Result<(), MountError> {
        let mounts: Vec<(PathBuf, MountId, Arc<WriteBack>)> = self
            .live()
            .iter()
            .filter(|m| m.info.branch == branch && !m.info.read_only)
            .map(|m| (m.info.dir.clone(), m.ours.clone(), m.write_back.clone()))
            .collect();
        for (dir, ours, write_back) in mounts {
            match place(&dir, &ours) {
                Ok(Place::Top) => {}
                Ok(Place::Covered) => return Err(MountError::Covered(dir)),
                Ok(Place::Gone) => return Err(MountError::Detached(dir)),
                Err(source) => return Err(MountError::Sync { dir, source }),
            }
            match sys::syncfs_of(&dir, ours.id) {
                Ok(Some(root)) => write_back.wait(&root),
                // Covered, or gone, since `place` looked.
                Ok(None) => {
                    return Err(match place(&dir, &ours) {
                        Ok(Place::Gone) => MountError::Detached(dir),
                        _ => MountError::Covered(dir),
                    })
                }
                Err(source) => return Err(MountError::Sync { dir, source }),
            }
        }
        self.pool.commit().map_err(|source| MountError::Commit {
            branch: branch.to_string(),
            source,
        })
    }

    /// Unmount everything (daemon shutdown). A mount with open files is detached
    /// lazily; once the daemon exits, those files fail with ENOTCONN.
    pub fn unmount_all(&self) {
        let all: Vec<Mounted> = std::mem::take(&mut *self.mounts.lock());
        for m in all {
            release(m);
        }
    }
}

/// Unmount one mount at shutdown, touching its directory only while the mount
/// on top of it is this one.
fn release(m: Mounted) {
    let dir = m.info.dir.clone();
    match place(&dir, &m.ours) {
        Ok(Place::Top) => {}
        Ok(Place::Covered) => return covered(&m),
        Ok(Place::Gone) => return forget_gone(m),
        Err(e) => {
            log::error!(
                "{}: not unmounted: reading /proc/self/mountinfo: {e}",
                dir.display()
            );
            return;
        }
    }
    match sys::syncfs_of(&dir, m.ours.id) {
        Ok(Some(_)) => {}
        // Covered since `place` looked: the unmount below finds it so.
        Ok(None) => log::warn!("{}: syncfs before unmount: not on top", dir.display()),
        Err(e) => log::warn!("{}: syncfs before unmount: {e}", dir.display()),
    }
    let why = match unmount_ours(&dir, &m.ours) {
        Ok(Unmount::Done) => return finish(m),
        Ok(Unmount::Gone) => return forget_gone(m),
        Ok(Unmount::Covered) => return covered(&m),
        Ok(Unmount::Busy) => "files are open there".to_string(),
        Err(e) => e.to_string(),
    };
    log::warn!(
        "{}: {why}; detaching it: files still open there fail from now on",
        dir.display()
    );
    if let Err(e) = sys::detach(&dir) {
        log::error!("{}: lazy unmount failed: {e}", dir.display());
    }
}

/// At shutdown, a mount another filesystem covers: left alone.
fn covered(m: &Mounted) {
    log::warn!(
        "{}: another filesystem is mounted over branch '{}'; left mounted under it, where files fail once the daemon exits",
        m.info.dir.display(),
        m.info.branch
    );
}

/// At shutdown, a mount gone from its directory (unmounted or detached from
/// outside). Detached with files open there, its session would be joined only
/// once they are closed, so SIGTERM would not stop the daemon: it is left to
/// end with the process.
fn forget_gone(m: Mounted) {
    if ends_soon(&m.session) {
        return finish(m);
    }
    log::warn!(
        "{}: unmounted lazily from outside with files still open there; they fail once the daemon exits",
        m.info.dir.display()
    );
}

/// The mount just made for `source`, and where it is: the last listed for
/// `source` that is none of the table's (`known`: read-only mounts of a branch
/// share its source; the table's lock is held, so no other is being made).
/// Found by source, not by directory: the directory held open for mount(2) may
/// have been renamed before the mount attached to it.
fn identify(source: &str, known: &[MountId]) -> io::Result<(MountId, PathBuf)> {
    mountinfo::read()?
        .into_iter()
        .rev()
        .find(|m| {
            m.source == Path::new(source) && !known.iter().any(|k| k.id == m.id && k.dev == m.dev)
        })
        .map(|m| {
            let id = MountId {
                id: m.id,
                dev: m.dev,
            };
            (id, m.point)
        })
        .ok_or_else(|| io::Error::other("the new mount is not in /proc/self/mountinfo"))
}

/// Where mount `ours` of `dir` is now. (An unmount after this look takes
/// whatever is on top by then: see `unmount_ours`, which checks again after
/// marking. A lazy detach (`sys::detach`) cannot be made so: a mount made on
/// `dir` between the look and it would be detached instead.)
pub(super) fn place(dir: &Path, ours: &MountId) -> io::Result<Place> {
    let all = mountinfo::read()?;
    if !all
        .iter()
        .any(|m| m.id == ours.id && m.dev == ours.dev && m.point == dir)
    {
        return Ok(Place::Gone);
    }
    // A mount stacked on ours has ours as its parent and the same point.
    if all.iter().any(|m| m.parent == ours.id && m.point == dir) {
        return Ok(Place::Covered);
    }
    Ok(Place::Top)
}

/// Detach a mount just made whose session could not start.
fn detach_if_ours(dir: &Path, ours: &MountId) {
    if !matches!(place(dir, ours), Ok(Place::Top)) {
        return;
    }
    if let Err(e) = sys::detach(dir) {
        log::error!("{}: detaching the new mount: {e}", dir.display());
    }
}

impl Drop for MountTable {
    /// A table dropped with mounts left (an embedding program that did not call
    /// `unmount_all`) does not leave them served by orphaned threads.
    fn drop(&mut self) {
        if !self.mounts.get_mut().is_empty() {
            self.unmount_all();
        }
    }
}

/// Whether a session whose mount is gone from the namespace ends within a moment
/// (it does once the kernel tears the mount down; a mount only detached with
/// files open lives on).
fn ends_soon(session: &JoinHandle<io::Result<()>>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !session.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Detach the mounts of this pool that a dead daemon left (`kill -9`, a crash):
/// the kernel keeps them, answering ENOTCONN, until someone unmounts them, so the
/// branch could not be mounted on the same directory again, and they never went
/// away. A mount is this pool's if its source is `POOL:` (see `mount`) and dead if
/// statfs(2), which always asks the server, fails with ENOTCONN; a live one (of
/// another process using the pool as a library) is left alone. Lazily: processes
/// may still hold files there, which fail either way.
fn detach_dead_mounts(pool: &Pool) {
    use std::os::unix::ffi::OsStrExt;
    let prefix = format!("{}:", pool.name().display());
    let Ok(mounts) = mountinfo::read() else {
        return;
    };
    // Last listed first: mounts stacked or nested on a dead one come after it.
    for m in mounts.iter().rev() {
        if !m.fstype.starts_with("fuse")
            || !m
                .source
                .as_os_str()
                .as_bytes()
                .starts_with(prefix.as_bytes())
        {
            continue;
        }
        match sys::statfs(&m.point) {
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {}
            _ => continue,
        }
        match sys::detach(&m.point) {
            Ok(()) => log::warn!(
                "{}: detached the dead mount of {} left by a previous daemon",
                m.point.display(),
                m.source.display()
            ),
            Err(e) => log::warn!(
                "{}: dead mount of {} left by a previous daemon: unmounting it: {e}",
                m.point.display(),
                m.source.display()
            ),
        }
    }
}

/// Wait for an unmounted session's threads to end.
fn finish(m: Mounted) {
    let dir = m.info.dir.display();
    match m.session.join() {
        Ok(Ok(())) => log::info!("unmounted {dir}"),
        Ok(Err(e)) => log::error!("{dir}: session ended with an error: {e}"),
        Err(_) => log::error!("{dir}: session thread panicked"),
    }
}
