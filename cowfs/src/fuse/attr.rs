//! Conversions between the engine's types and fuser's: attributes, times, errors.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{Errno, FileAttr, FileType, INodeNo, TimeOrNow};

use crate::fs::{Attr, FsError, Timespec};
use crate::store::BLOCK_SIZE;

/// How long the kernel may cache attributes and entries. The engine is the only
/// writer of a branch, and every change goes through this mount's kernel cache.
pub(crate) const TTL: Duration = Duration::from_secs(30);

pub(crate) fn errno(e: &FsError) -> Errno {
    let n = e.errno();
    if n == libc::EIO {
        log::error!("I/O error: {e}");
    }
    Errno::from_i32(n)
}

pub(crate) fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

pub(crate) fn to_system_time(t: Timespec) -> SystemTime {
    let nsec = Duration::from_nanos(u64::from(t.nsec.min(999_999_999)));
    if t.sec >= 0 {
        UNIX_EPOCH + Duration::from_secs(t.sec.unsigned_abs()) + nsec
    } else {
        UNIX_EPOCH - Duration::from_secs(t.sec.unsigned_abs()) + nsec
    }
}

/// A time from a SETATTR request. The kernel sends (sec, nsec) with nsec in
/// 0..1e9; for sec < 0 fuser 0.18 builds `EPOCH - Duration::new(-sec, nsec)`, one
/// second and 2*nsec off (its own TODO: it should subtract 1e9 - nsec). Both
/// fields are read back from the distance to the epoch as they came. Cargo.toml
/// pins fuser so that a fixed release is taken on purpose (tests/posix.rs `times`
/// checks a pre-1970 time end to end).
pub(crate) fn from_request_time(t: SystemTime) -> Timespec {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timespec {
            sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nsec: d.subsec_nanos(),
        },
        Err(before) => {
            let d = before.duration();
            Timespec {
                sec: -i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                nsec: d.subsec_nanos(),
            }
        }
    }
}

pub(crate) fn time_or_now(t: TimeOrNow) -> Timespec {
    match t {
        TimeOrNow::SpecificTime(t) => from_request_time(t),
        TimeOrNow::Now => Timespec::now(),
    }
}

pub(crate) fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: to_system_time(a.atime),
        mtime: to_system_time(a.mtime),
        ctime: to_system_time(a.ctime),
        crtime: to_system_time(a.crtime),
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        // The kernel's rdev field is 32 bits (new_encode_dev); larger values do not fit.
        rdev: u32::try_from(a.rdev).unwrap_or(0),
        blksize: BLOCK_SIZE as u32,
        flags: 0,
    }
}

/// The entry of a name that does not exist: node id 0 tells the kernel to keep a
/// negative dentry for the entry timeout, so a name probed again (a search path,
/// an import, a lock file) costs no LOOKUP. Sound for the same reason as TTL: every
/// create, link and rename of this branch goes through this mount, and the kernel
/// replaces the negative dentry when one does.
pub(crate) fn negative_entry() -> FileAttr {
    FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE as u32,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What fuser 0.18 makes of the kernel's (sec, nsec) in a SETATTR request.
    fn as_fuser_hands_it_over(sec: i64, nsec: u32) -> SystemTime {
        if sec >= 0 {
            UNIX_EPOCH + Duration::new(sec.unsigned_abs(), nsec)
        } else {
            UNIX_EPOCH - Duration::new(sec.unsigned_abs(), nsec)
        }
    }

    #[test]
    fn request_times_keep_their_fields() {
        for (sec, nsec) in [
            (0, 0),
            (1_700_000_000, 123_456_789),
            (-5, 250_000_000),
            (-2, 999_999_999),
            (-1, 0),
        ] {
            let t = from_request_time(as_fuser_hands_it_over(sec, nsec));
            assert_eq!(t, Timespec { sec, nsec });
            // And the reply carries the same instant back.
            let back = to_system_time(t);
            let want = if sec >= 0 {
                UNIX_EPOCH + Duration::new(sec.unsigned_abs(), nsec)
            } else {
                UNIX_EPOCH - Duration::from_secs(sec.unsigned_abs())
                    + Duration::from_nanos(nsec.into())
            };
            assert_eq!(back, want);
        }
    }

    #[test]
    fn types_from_mode() {
        assert_eq!(file_type(libc::S_IFDIR | 0o755), FileType::Directory);
        assert_eq!(file_type(libc::S_IFLNK | 0o777), FileType::Symlink);
        assert_eq!(file_type(libc::S_IFIFO), FileType::NamedPipe);
        assert_eq!(file_type(libc::S_IFREG | 0o644), FileType::RegularFile);
    }
}
