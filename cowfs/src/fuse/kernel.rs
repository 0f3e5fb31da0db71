//! What a mount asks of the kernel: the mount itself, mount options, worker
//! threads and the capabilities negotiated at FUSE_INIT.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use fuser::{Config, InitFlags, KernelConfig, SessionACL};

use super::sys;

/// Largest read or write request: 1 MiB.
pub(crate) const MAX_REQUEST: u32 = 1 << 20;

/// Threads reading requests from the kernel, each on its own cloned /dev/fuse fd.
const WORKER_THREADS: usize = 4;

/// Mount a new FUSE connection for `source` (`POOL:BRANCH`, what mount lists show)
/// on `dir`; its /dev/fuse descriptor, for `fuser::Session::from_fd`.
///
/// Mounted here rather than by `fuser::Session::new`: fuser's session unmounts
/// its mount point by path when it ends, even when the mount was detached from
/// outside meanwhile (fuser 0.18 takes a dead connection for a live one), and so
/// unmounted whatever had been mounted on the directory since. A session made
/// from a descriptor never unmounts; `MountTable` does, once it has checked that
/// the mount on the directory is still this one.
pub(crate) fn mount(source: &str, dir: &Path, read_only: bool) -> io::Result<OwnedFd> {
    let dev = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let (flags, data) = mount_options(dev.as_raw_fd(), read_only);
    sys::mount(source, dir, "fuse", flags, &data)?;
    Ok(dev.into())
}

/// mount(2) flags and options for one branch on connection `fd`.
/// `default_permissions`: the kernel checks modes and ownership (the engine does
/// not); `allow_other`: services running as their own user can use the mount.
/// Access times are not updated on read (noatime); device files and set-id bits
/// work as on a local filesystem (no nodev, nosuid).
fn mount_options(fd: RawFd, read_only: bool) -> (libc::c_ulong, String) {
    let mut flags = libc::MS_NOATIME;
    if read_only {
        flags |= libc::MS_RDONLY;
    }
    // SAFETY: getuid(2) and getgid(2) always succeed.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let data = format!(
        "fd={fd},rootmode={:o},user_id={uid},group_id={gid},default_permissions,allow_other",
        libc::S_IFDIR
    );
    (flags, data)
}

/// How fuser serves a mounted connection: requests of every user are answered
/// (the mount is `allow_other`), on worker threads with a descriptor each.
pub(crate) fn session_config() -> Config {
    let mut c = Config::default();
    c.acl = SessionACL::All;
    c.n_threads = Some(WORKER_THREADS);
    c.clone_fd = true;
    c
}

/// Ask for what cowfs wants; log what the kernel refuses, and carry on without it.
/// Returns whether the kernel took the writeback cache: it then keeps the times
/// of regular files itself (see `CowFs::content_times`).
pub(crate) fn negotiate(cfg: &mut KernelConfig, read_only: bool) -> bool {
    let mut wanted = vec![
        ("parallel dirops", InitFlags::FUSE_PARALLEL_DIROPS),
        ("readdirplus", InitFlags::FUSE_DO_READDIRPLUS),
        ("adaptive readdirplus", InitFlags::FUSE_READDIRPLUS_AUTO),
        ("large requests", InitFlags::FUSE_MAX_PAGES),
        ("asynchronous direct I/O", InitFlags::FUSE_ASYNC_DIO),
        ("cached symlinks", InitFlags::FUSE_CACHE_SYMLINKS),
        // The kernel enforces ACLs it reads from us (fuse/acl.rs keeps them and
        // the mode in step) and leaves the umask to us: a directory's default
        // ACL replaces it. (If refused, the kernel applies the umask itself.)
        ("POSIX ACLs", InitFlags::FUSE_POSIX_ACL),
        ("umask left to the filesystem", InitFlags::FUSE_DONT_MASK),
    ];
    if !read_only {
        wanted.push(("writeback cache", InitFlags::FUSE_WRITEBACK_CACHE));
        // We drop set-id bits and file capabilities ourselves (fuse/privileges.rs);
        // in exchange the kernel stops asking for security.capability before every
        // write(2), one round trip each.
        wanted.push((
            "privilege dropping by the filesystem",
            InitFlags::FUSE_HANDLE_KILLPRIV_V2,
        ));
    }
    let mut writeback_cache = false;
    for (what, flag) in wanted {
        match cfg.add_capabilities(flag) {
            Ok(()) => writeback_cache |= flag == InitFlags::FUSE_WRITEBACK_CACHE,
            Err(missing) => {
                log::warn!("kernel refused {what} ({missing:?}); continuing without it")
            }
        }
    }
    if let Err(max) = cfg.set_max_write(MAX_REQUEST) {
        log::warn!("kernel limits writes to {max} bytes");
        let _ = cfg.set_max_write(max);
    }
    if let Err(max) = cfg.set_max_readahead(MAX_REQUEST) {
        log::info!("kernel limits readahead to {max} bytes");
        let _ = cfg.set_max_readahead(max);
    }
    if let Err(n) = cfg.set_max_background(64) {
        log::info!("kernel limits background requests to {n}");
    }
    writeback_cache
}

/// Readahead of a mounted branch, in KiB. The kernel starts a FUSE mount at 128 KiB
/// (what it offers at FUSE_INIT, so `set_max_readahead` cannot ask for more).
/// Measured on a cold 2 GiB sequential read: 128 KiB -> ~740 MiB/s, 1 MiB -> ~890,
/// 4 MiB -> ~990, with the daemon reading data blocks directly: a wider window
/// keeps several 1 MiB READ requests in flight, one per worker thread.
const READAHEAD_KB: u32 = 4096;

/// Widen the mount's readahead through its backing-device entry in sysfs. Needs
/// root; without it the mount keeps the kernel's default, which is only slower.
/// Must run after FUSE_INIT (which lowers the window to what the reply allows):
/// stat on the mount point waits for it.
pub(crate) fn widen_readahead(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let dev = match std::fs::metadata(dir) {
        Ok(m) => m.dev(),
        Err(e) => {
            log::info!("{}: {e}; readahead left at the default", dir.display());
            return;
        }
    };
    let knob = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&knob, READAHEAD_KB.to_string()) {
        log::info!("{knob}: {e}; readahead left at the default");
    }
}

/// Where a KVM guest's haltpoll cpuidle driver keeps how long an idle vCPU polls
/// before it halts.
const HALT_POLL_KNOB: &str = "/sys/module/haltpoll/parameters/guest_halt_poll_ns";

/// Say so when this is a VM whose idle vCPUs halt at once: there every FUSE request
/// and reply wakes a halted vCPU (a VM exit and an IPI), most of a metadata round
/// trip. The knob is the machine's to set (README, "Running in a VM"), not ours.
pub(crate) fn note_vcpu_halt_polling() {
    if let Ok(v) = std::fs::read_to_string(HALT_POLL_KNOB) {
        if v.trim() == "0" {
            log::info!(
                "{HALT_POLL_KNOB} is 0: idle vCPUs halt at once, so each FUSE round trip \
                 waits for a vCPU wake-up; the upstream default 200000 makes metadata \
                 operations 2-3x faster here (README, \"Running in a VM\")"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_options_and_session() {
        let (rw, data) = mount_options(9, false);
        assert_eq!(rw, libc::MS_NOATIME);
        assert!(data.starts_with("fd=9,rootmode=40000,"), "{data}");
        assert!(data.ends_with(",default_permissions,allow_other"), "{data}");
        let (ro, _) = mount_options(9, true);
        assert_eq!(ro, libc::MS_NOATIME | libc::MS_RDONLY);
        let c = session_config();
        assert_eq!(c.acl, SessionACL::All, "allow_other");
        assert_eq!(c.n_threads, Some(WORKER_THREADS));
        assert!(c.clone_fd);
    }
}
