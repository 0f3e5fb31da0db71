//! One side of the comparison: a tree root plus the descriptors opened in it,
//! and the application of one operation to it, reduced to a comparable outcome.
//!
//! Where POSIX leaves the answer to the filesystem, the outcome is normalised
//! instead of compared raw: SEEK_DATA/SEEK_HOLE answers are checked against the
//! file's own contents (`seek_data_hole`); directory descriptors get no offset or
//! data calls (ext4 hashes names into its offsets); a truncate(2) to the current
//! size puts the old mtime back (`truncate_path`); a FIFO's mtime is not probed.
//! The generator keeps xattr values small enough for ext4's one block per file.

use std::fmt;
use std::path::{Path, PathBuf};

use super::ops::{Cred, Op, SLOTS};
use super::sys::*;

/// An open descriptor and whether it is a directory (no data operations).
#[derive(Clone, Copy)]
pub struct Open {
    pub fd: i32,
    pub dir: bool,
}

pub struct Side {
    pub root: PathBuf,
    pub fds: [Option<Open>; SLOTS],
}

#[derive(PartialEq, Eq)]
pub enum Outcome {
    Ret(Sys),
    Bytes(Result<Vec<u8>, i32>),
    Stat(Result<StatView, i32>),
    Names(Result<Vec<Vec<u8>>, i32>),
    Times(Result<[(i64, i64); 2], i32>),
    /// An operation's outcome and, if the probe could set the path's times,
    /// whether (after the operation) the path's mtime changed.
    Probed(Box<Outcome>, Option<Result<bool, i32>>),
    /// The slot holds nothing on this side (both sides must agree).
    NoFd,
    /// The operation does not apply (a directory descriptor, an empty file to map).
    NotApplicable,
    /// SEEK_DATA/SEEK_HOLE gave an answer the file's contents contradict.
    BadSeek {
        off: i64,
        size: i64,
        got: Sys,
    },
}

impl Outcome {
    /// Did the call (or a probe's call) succeed?
    pub fn succeeded(&self) -> bool {
        match self {
            Outcome::Ret(r) => r.is_ok(),
            Outcome::Bytes(r) => r.is_ok(),
            Outcome::Stat(r) => r.is_ok(),
            Outcome::Names(r) => r.is_ok(),
            Outcome::Times(r) => r.is_ok(),
            Outcome::Probed(o, ..) => o.succeeded(),
            Outcome::NoFd | Outcome::NotApplicable | Outcome::BadSeek { .. } => false,
        }
    }
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Data is shown by length and where it stops being the same pattern;
            // a full dump would bury the message.
            Outcome::Bytes(Ok(b)) => {
                let nonzero = b.iter().filter(|x| **x != 0).count();
                write!(
                    f,
                    "Bytes({} bytes, {nonzero} non-zero, head {:?})",
                    b.len(),
                    &b[..b.len().min(16)]
                )
            }
            Outcome::Ret(r) => write!(f, "Ret({r:?})"),
            Outcome::Bytes(Err(e)) => write!(f, "Bytes(Err({e}))"),
            Outcome::Stat(s) => write!(f, "Stat({s:?})"),
            Outcome::Names(n) => {
                let n = n.as_ref().map(|v| {
                    v.iter()
                        .map(|s| String::from_utf8_lossy(s))
                        .collect::<Vec<_>>()
                });
                write!(f, "Names({n:?})")
            }
            Outcome::Times(t) => write!(f, "Times({t:?})"),
            Outcome::Probed(o, changed) => write!(f, "Probed({o:?}, mtime changed {changed:?})"),
            Outcome::NoFd => write!(f, "NoFd"),
            Outcome::NotApplicable => write!(f, "NotApplicable"),
            Outcome::BadSeek { off, size, got } => {
                write!(f, "BadSeek(off {off}, size {size}, got {got:?})")
            }
        }
    }
}

impl Side {
    pub fn new(root: &Path) -> Side {
        Side {
            root: root.to_path_buf(),
            fds: [None; SLOTS],
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn open_fds(&self) -> impl Iterator<Item = Option<i32>> + '_ {
        self.fds.iter().map(|o| o.map(|o| o.fd))
    }

    pub fn slots_in_use(&self) -> [bool; SLOTS] {
        self.fds.map(|o| o.is_some())
    }

    /// Close every slot; close's results (a write-back error surfaces there).
    pub fn close_all(&mut self) -> Vec<Sys> {
        (0..SLOTS).map(|s| self.close(s)).collect()
    }

    fn close(&mut self, slot: usize) -> Sys {
        match self.fds[slot].take() {
            // SAFETY: the descriptor is ours and closed once.
            Some(o) => ret(unsafe { libc::close(o.fd) } as i64),
            None => Ok(-1),
        }
    }

    pub fn apply(&mut self, op: &Op) -> Outcome {
        use Outcome::*;
        match op {
            Op::As { cred, op } => {
                let _user = FsUser::become_(cred);
                return self.apply(op);
            }
            Op::Probe { path, op } => return self.probe(path, op),
            Op::CopyRange { from, to, len } => {
                let (Some(a), Some(b)) = (self.fds[*from], self.fds[*to]) else {
                    return NoFd;
                };
                let (n, z) = (std::ptr::null_mut(), std::ptr::null_mut());
                // SAFETY: open descriptors; null offsets use and advance theirs.
                return Ret(ret(
                    unsafe { libc::copy_file_range(a.fd, n, b.fd, z, *len, 0) } as i64,
                ));
            }
            _ => {}
        }
        if let Some(slot) = op_slot(op) {
            let Some(o) = self.fds[slot] else {
                return if matches!(op, Op::Open { .. }) {
                    self.open(op)
                } else {
                    NoFd
                };
            };
            if matches!(op, Op::Open { .. }) {
                let _ = self.close(slot);
                return self.open(op);
            }
            return self.fd_op(o, op);
        }
        match op {
            Op::Truncate { path, len } => Ret(truncate_path(&self.p(path), *len)),
            Op::Unlink { path } => Ret(ret(
                unsafe { libc::unlink(c(&self.p(path)).as_ptr()) } as i64
            )),
            Op::Rmdir { path } => {
                Ret(ret(unsafe { libc::rmdir(c(&self.p(path)).as_ptr()) } as i64))
            }
            Op::Mkdir { path, mode } => {
                Ret(ret(
                    unsafe { libc::mkdir(c(&self.p(path)).as_ptr(), *mode) } as i64,
                ))
            }
            Op::Mknod { path, mode, rdev } => {
                Ret(ret(
                    unsafe { libc::mknod(c(&self.p(path)).as_ptr(), *mode, *rdev) } as i64,
                ))
            }
            Op::Rename { from, to, flags } => {
                let (a, b) = (c(&self.p(from)), c(&self.p(to)));
                // SAFETY: valid NUL-terminated paths.
                Ret(ret(unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        a.as_ptr(),
                        libc::AT_FDCWD,
                        b.as_ptr(),
                        *flags,
                    )
                } as i64))
            }
            Op::Link { from, to } => {
                let (a, b) = (c(&self.p(from)), c(&self.p(to)));
                Ret(ret(unsafe { libc::link(a.as_ptr(), b.as_ptr()) } as i64))
            }
            Op::Symlink { target, path } => {
                let (t, p) = (cs(target), c(&self.p(path)));
                Ret(ret(unsafe { libc::symlink(t.as_ptr(), p.as_ptr()) } as i64))
            }
            Op::Readlink { path } => Bytes(readlink(&self.p(path))),
            Op::Stat { path } => Stat(stat(&self.p(path)).map(|s| view(&s))),
            Op::Lstat { path } => Stat(lstat(&self.p(path)).map(|s| view(&s))),
            Op::Chmod { path, mode } => {
                Ret(ret(
                    unsafe { libc::chmod(c(&self.p(path)).as_ptr(), *mode) } as i64,
                ))
            }
            Op::Lchown { path, uid, gid } => {
                Ret(ret(
                    unsafe { libc::lchown(c(&self.p(path)).as_ptr(), *uid, *gid) } as i64,
                ))
            }
            Op::Chown { path, uid, gid } => {
                Ret(ret(
                    unsafe { libc::chown(c(&self.p(path)).as_ptr(), *uid, *gid) } as i64,
                ))
            }
            Op::Utimens { path, atime, mtime } => Times(self.utimens(path, *atime, *mtime)),
            Op::Setxattr {
                path,
                name,
                value,
                flags,
                nofollow,
            } => {
                let (p, n) = (c(&self.p(path)), cs(name));
                let set = if *nofollow {
                    libc::lsetxattr
                } else {
                    libc::setxattr
                };
                let (v, len) = (value.0.as_ptr().cast(), value.0.len());
                // SAFETY: valid strings and a buffer of the given length.
                Ret(ret(
                    unsafe { set(p.as_ptr(), n.as_ptr(), v, len, *flags) } as i64
                ))
            }
            Op::Getxattr { path, name } => {
                let (p, n) = (c(&self.p(path)), cs(name));
                let mut buf = vec![0u8; 65536];
                // SAFETY: valid strings and a writable buffer of the given length.
                let r = ret(unsafe {
                    libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                } as i64);
                Bytes(r.map(|n| {
                    buf.truncate(n as usize);
                    buf
                }))
            }
            Op::Removexattr { path, name } => {
                let (p, n) = (c(&self.p(path)), cs(name));
                Ret(ret(
                    unsafe { libc::removexattr(p.as_ptr(), n.as_ptr()) } as i64
                ))
            }
            Op::Listxattr { path } => Names(
                compared_xattrs(&self.p(path)).map(|v| v.into_iter().map(|(n, _)| n).collect()),
            ),
            Op::Readdir { path } => Names(list_dir(&self.p(path))),
            _ => unreachable!("descriptor operations are handled above"),
        }
    }

    /// Old times on `path`, then `op`, then: did `path`'s mtime change? The
    /// set-up's own result is part of the outcome (the path may not exist). The
    /// probe itself runs as root, whoever `op` runs as.
    fn probe(&mut self, path: &str, op: &Op) -> Outcome {
        const OLD: libc::timespec = libc::timespec {
            tv_sec: PROBE_TIME,
            tv_nsec: 0,
        };
        let p = self.p(path);
        let cp = c(&p);
        // SAFETY: a valid path and two timespecs.
        let set =
            ret(
                unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), [OLD, OLD].as_ptr(), 0) }
                    as i64,
            );
        let inner = self.apply(op);
        let changed = match (set, stat(&p)) {
            // A FIFO's times do not follow its data on a FUSE mount (tree.rs).
            (Ok(_), Ok(s)) if s.st_mode & libc::S_IFMT == libc::S_IFIFO => None,
            (Ok(_), st) => Some(st.map(|s| (s.st_mtime, s.st_mtime_nsec) != (OLD.tv_sec, 0))),
            (Err(_), _) => None,
        };
        Outcome::Probed(Box::new(inner), changed)
    }

    fn open(&mut self, op: &Op) -> Outcome {
        let Op::Open {
            path,
            flags,
            mode,
            slot,
        } = op
        else {
            unreachable!()
        };
        let p = c(&self.p(path));
        // SAFETY: a valid path; the descriptor is kept in the slot and closed later.
        let r = ret(unsafe { libc::open(p.as_ptr(), *flags | libc::O_CLOEXEC, *mode) } as i64);
        if let Ok(fd) = r {
            let fd = fd as i32;
            let dir = fstat(fd)
                .map(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
                .unwrap_or(false);
            self.fds[*slot] = Some(Open { fd, dir });
        }
        Outcome::Ret(r.map(|_| 0))
    }

    fn utimens(
        &self,
        path: &str,
        atime: (i64, i64),
        mtime: (i64, i64),
    ) -> Result<[(i64, i64); 2], i32> {
        let p = c(&self.p(path));
        let ts = [
            libc::timespec {
                tv_sec: atime.0,
                tv_nsec: atime.1,
            },
            libc::timespec {
                tv_sec: mtime.0,
                tv_nsec: mtime.1,
            },
        ];
        // SAFETY: a valid path and two timespecs.
        ret(unsafe { libc::utimensat(libc::AT_FDCWD, p.as_ptr(), ts.as_ptr(), 0) } as i64)?;
        let st = stat(&self.p(path))?;
        Ok([
            (st.st_atime, st.st_atime_nsec),
            (st.st_mtime, st.st_mtime_nsec),
        ])
    }

    fn fd_op(&mut self, o: Open, op: &Op) -> Outcome {
        use Outcome::*;
        let fd = o.fd;
        // Offsets and reads of a directory descriptor are the filesystem's own
        // (ext4 hashes names into its offsets); only metadata calls are compared.
        let data_op = !matches!(
            op,
            Op::Close { .. }
                | Op::Fstat { .. }
                | Op::Fsync { .. }
                | Op::Fchmod { .. }
                | Op::Fchown { .. }
                | Op::Fsetxattr { .. }
                | Op::Fgetxattr { .. }
                | Op::DirList { .. }
        );
        if o.dir && data_op {
            return NotApplicable;
        }
        // SAFETY (all calls below): `fd` is open, buffers have the lengths passed.
        match op {
            Op::Close { slot } => Ret(self.close(*slot)),
            Op::Write { data, .. } => {
                Ret(ret(
                    unsafe { libc::write(fd, data.0.as_ptr().cast(), data.0.len()) } as i64,
                ))
            }
            Op::Pwrite { off, data, .. } => {
                Ret(ret(
                    unsafe { libc::pwrite(fd, data.0.as_ptr().cast(), data.0.len(), *off) } as i64,
                ))
            }
            Op::Read { len, .. } => Bytes(read_fd(fd, *len)),
            Op::Pread { off, len, .. } => Bytes(pread(fd, *off, *len)),
            Op::Seek { off, whence, .. } => Ret(ret(unsafe { libc::lseek(fd, *off, *whence) })),
            Op::SeekDataHole { off, whence, .. } => seek_data_hole(fd, *off, *whence),
            Op::Ftruncate { len, .. } => Ret(ret(unsafe { libc::ftruncate(fd, *len) } as i64)),
            Op::Fstat { .. } => Stat(fstat(fd).map(|s| view(&s))),
            Op::Fsync { .. } => Ret(ret(unsafe { libc::fsync(fd) } as i64)),
            Op::Fallocate { mode, off, len, .. } => {
                Ret(ret(unsafe { libc::fallocate(fd, *mode, *off, *len) } as i64))
            }
            Op::Mmap {
                off, data, msync, ..
            } => mmap_write(fd, *off, &data.0, *msync),
            Op::DropCache { .. } => {
                let s = ret(unsafe { libc::fsync(fd) } as i64);
                let a =
                    ret(unsafe { libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED) } as i64);
                Ret(s.and(a))
            }
            Op::Fchmod { mode, .. } => Ret(ret(unsafe { libc::fchmod(fd, *mode) } as i64)),
            Op::Fchown { uid, gid, .. } => Ret(ret(unsafe { libc::fchown(fd, *uid, *gid) } as i64)),
            Op::Fsetxattr { name, value, .. } => {
                let n = cs(name);
                Ret(ret(unsafe {
                    libc::fsetxattr(fd, n.as_ptr(), value.0.as_ptr().cast(), value.0.len(), 0)
                } as i64))
            }
            Op::Fgetxattr { name, .. } => {
                let n = cs(name);
                let mut buf = vec![0u8; 65536];
                let r = ret(unsafe {
                    libc::fgetxattr(fd, n.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
                } as i64);
                Bytes(r.map(|n| {
                    buf.truncate(n as usize);
                    buf
                }))
            }
            Op::DirList { .. } => Names(if o.dir {
                dir_names(fd)
            } else {
                Err(libc::ENOTDIR)
            }),
            _ => unreachable!("path operations are handled by apply"),
        }
    }
}

/// The calling thread's filesystem uid and gid and its supplementary groups
/// switched to `cred` (dropping the capabilities that let root bypass
/// permission checks) until dropped. Both sides run with exactly these
/// credentials; the kernel checks group bits and ACLs against all of them, and
/// cowfs reads the groups from the caller's /proc status (set-group-ID rules).
struct FsUser {
    /// The thread's supplementary groups before, put back on drop.
    groups: Vec<libc::gid_t>,
}

impl FsUser {
    fn become_(cred: &Cred) -> FsUser {
        let mut groups = vec![0; 256];
        // SAFETY: a writable buffer of the given length.
        let n = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
        assert!(n >= 0, "getgroups");
        groups.truncate(n as usize);
        // SAFETY: the raw setgroups, setfsgid and setfsuid system calls change
        // only this thread's credentials (glibc's setgroups would change every
        // thread's); the test runs its operations on this one thread.
        unsafe {
            let r = libc::syscall(libc::SYS_setgroups, cred.groups.len(), cred.groups.as_ptr());
            assert_eq!(r, 0, "setgroups {:?}", cred.groups);
            libc::setfsgid(cred.gid);
            libc::setfsuid(cred.uid);
        }
        FsUser { groups }
    }
}

impl Drop for FsUser {
    fn drop(&mut self) {
        // SAFETY: as in become_; back to root and its groups.
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
        }
    }
}

/// truncate(2). POSIX marks the mtime for update only when the size changes;
/// ext4 updates it on every truncate, FUSE's writeback cache (cowfs) only on a
/// change (README Limits). So when the size stays, the old mtime is put back (as
/// root: the caller may only have write permission) to keep the sides comparable.
fn truncate_path(p: &Path, len: i64) -> Sys {
    let same_size = stat(p)
        .ok()
        .filter(|s| s.st_size == len && s.st_mode & libc::S_IFMT == libc::S_IFREG);
    let cp = c(p);
    // SAFETY: a valid path.
    let r = ret(unsafe { libc::truncate(cp.as_ptr(), len) } as i64);
    if let (Ok(_), Some(before)) = (r, same_size) {
        let ts = [
            libc::timespec {
                tv_sec: 0,
                tv_nsec: libc::UTIME_OMIT,
            },
            libc::timespec {
                tv_sec: before.st_mtime,
                tv_nsec: before.st_mtime_nsec,
            },
        ];
        // SAFETY: a valid path and two timespecs.
        let put_back =
            as_root(|| unsafe { libc::utimensat(libc::AT_FDCWD, cp.as_ptr(), ts.as_ptr(), 0) });
        assert_eq!(put_back, 0, "putting back the mtime of {}", p.display());
    }
    r
}

/// The names a directory descriptor lists from its start, sorted (without "."
/// and ".."): a rewind, then getdents64 until it returns 0.
fn dir_names(fd: i32) -> Result<Vec<Vec<u8>>, i32> {
    // SAFETY: lseek on an open descriptor.
    ret(unsafe { libc::lseek(fd, 0, libc::SEEK_SET) })?;
    let mut names = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: a writable buffer of the given length.
        let n =
            ret(unsafe { libc::syscall(libc::SYS_getdents64, fd, buf.as_mut_ptr(), buf.len()) })?
                as usize;
        if n == 0 {
            break;
        }
        // Records: u64 ino, i64 off, u16 reclen, u8 type, NUL-terminated name.
        let mut at = 0;
        while at < n {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
            if name != b"." && name != b".." {
                names.push(name.to_vec());
            }
            at += reclen;
        }
    }
    names.sort();
    Ok(names)
}

/// `f` with the thread's filesystem ids back at root, then as they were.
fn as_root<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: as in FsUser::become_; setfsuid/setfsgid return the previous ids.
    let (uid, gid) = unsafe { (libc::setfsuid(0), libc::setfsgid(0)) };
    let r = f();
    // SAFETY: as above.
    unsafe {
        libc::setfsgid(gid as u32);
        libc::setfsuid(uid as u32);
    }
    r
}

fn op_slot(op: &Op) -> Option<usize> {
    Some(match op {
        Op::Open { slot, .. }
        | Op::Close { slot }
        | Op::Write { slot, .. }
        | Op::Pwrite { slot, .. }
        | Op::Read { slot, .. }
        | Op::Pread { slot, .. }
        | Op::Seek { slot, .. }
        | Op::SeekDataHole { slot, .. }
        | Op::Ftruncate { slot, .. }
        | Op::Fstat { slot }
        | Op::Fsync { slot }
        | Op::Fallocate { slot, .. }
        | Op::Mmap { slot, .. }
        | Op::DropCache { slot }
        | Op::Fchmod { slot, .. }
        | Op::Fchown { slot, .. }
        | Op::Fsetxattr { slot, .. }
        | Op::Fgetxattr { slot, .. }
        | Op::DirList { slot } => *slot,
        _ => return None,
    })
}

/// SEEK_DATA/SEEK_HOLE. Past the end both must fail with ENXIO. Before it, a
/// filesystem may report holes or call the whole file data (cowfs does on a
/// writable mount, see README Limits), so the answer is checked against the
/// file's own contents (holes read as zeros; the test never writes zeros)
/// instead of against the other side. The file offset is restored, so the
/// sides stay comparable.
fn seek_data_hole(fd: i32, off: i64, whence: i32) -> Outcome {
    // SAFETY: lseek and fstat on an open descriptor.
    let pos = unsafe { libc::lseek(fd, 0, libc::SEEK_CUR) };
    let size = match fstat(fd) {
        Ok(s) if s.st_mode & libc::S_IFMT == libc::S_IFREG => s.st_size,
        Ok(_) => return Outcome::NotApplicable,
        Err(e) => return Outcome::Ret(Err(e)),
    };
    let got = ret(unsafe { libc::lseek(fd, off, whence) });
    unsafe { libc::lseek(fd, pos, libc::SEEK_SET) };
    if off >= size {
        return Outcome::Ret(got);
    }
    // The descriptor may be write-only: read through a fresh one of the same
    // file (/proc/self/fd reaches it even when it is unlinked), as root, since
    // the operation may run as a user who may not read the file.
    let proc = c(Path::new(&format!("/proc/self/fd/{fd}")));
    // SAFETY: a valid path; the descriptor is closed below.
    let rfd = as_root(|| unsafe { libc::open(proc.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) });
    let zeros = |from: i64, to: i64| {
        pread(rfd, from, (to - from) as usize)
            .is_ok_and(|b| b.len() as i64 == to - from && b.iter().all(|x| *x == 0))
    };
    let valid = match (whence, got) {
        (libc::SEEK_DATA, Ok(r)) => off <= r && r < size && zeros(off, r),
        (libc::SEEK_DATA, Err(libc::ENXIO)) => zeros(off, size),
        (_, Ok(r)) => off <= r && r <= size && (r == size || zeros(r, r + 1)),
        _ => false,
    };
    // SAFETY: closes the descriptor opened above (or fails harmlessly on -1).
    unsafe { libc::close(rfd) };
    if valid {
        Outcome::Ret(Ok(0))
    } else {
        Outcome::BadSeek { off, size, got }
    }
}

/// Write through a shared writable mapping of the whole file, within its size
/// (beyond it is SIGBUS), optionally msync'ed.
fn mmap_write(fd: i32, off: i64, data: &[u8], msync: bool) -> Outcome {
    let size = match fstat(fd) {
        Ok(s) => s.st_size as usize,
        Err(e) => return Outcome::Ret(Err(e)),
    };
    if size == 0 {
        return Outcome::NotApplicable;
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a fresh mapping of `size` bytes, written only within its bounds and
    // unmapped before returning.
    unsafe {
        let p = libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, 0);
        if p == libc::MAP_FAILED {
            return Outcome::Ret(ret(-1));
        }
        let off = (off as usize).min(size);
        let n = data.len().min(size - off);
        std::ptr::copy_nonoverlapping(data.as_ptr(), p.cast::<u8>().add(off), n);
        let r = if msync {
            ret(libc::msync(p, size, libc::MS_SYNC) as i64)
        } else {
            Ok(0)
        };
        libc::munmap(p, size);
        Outcome::Ret(r.map(|_| n as i64))
    }
}
