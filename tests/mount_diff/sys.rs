//! Raw system calls as the differential test issues them: every call returns
//! its result or the errno it failed with, so the two filesystems' answers can
//! be compared as plain values.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The mtime (seconds, no nanoseconds) a probe sets: long past, so any update
/// moves it.
pub const PROBE_TIME: i64 = 1_000_000_000;

/// A call's result: its return value, or the errno.
pub type Sys = Result<i64, i32>;

pub fn c(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

pub fn cs(s: &str) -> CString {
    CString::new(s).expect("string without NUL")
}

/// A libc return value (-1 means errno) as `Sys`.
pub fn ret(r: i64) -> Sys {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        Ok(r)
    }
}

/// The parts of a `stat` that POSIX fixes and ext4 and cowfs must agree on:
/// type, permission bits, owner, link count, and the size of everything but a
/// directory (whose size is the filesystem's business), and a device's number.
#[derive(Clone, PartialEq, Eq)]
pub struct StatView {
    pub ftype: u32,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: Option<i64>,
    pub rdev: u64,
}

impl std::fmt::Debug for StatView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{type {:o} perm {:o} uid {} gid {} nlink {} size {:?} rdev {:x}}}",
            self.ftype, self.perm, self.uid, self.gid, self.nlink, self.size, self.rdev
        )
    }
}

pub fn view(st: &libc::stat) -> StatView {
    let ftype = st.st_mode & libc::S_IFMT;
    StatView {
        ftype,
        perm: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        nlink: st.st_nlink,
        size: (ftype != libc::S_IFDIR).then_some(st.st_size),
        rdev: if matches!(ftype, libc::S_IFCHR | libc::S_IFBLK) {
            st.st_rdev
        } else {
            0
        },
    }
}

pub fn lstat(p: &Path) -> Result<libc::stat, i32> {
    let cp = c(p);
    // SAFETY: a valid path and a zeroed stat buffer the call fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    ret(unsafe { libc::lstat(cp.as_ptr(), &mut st) } as i64).map(|_| st)
}

pub fn stat(p: &Path) -> Result<libc::stat, i32> {
    let cp = c(p);
    // SAFETY: as lstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    ret(unsafe { libc::stat(cp.as_ptr(), &mut st) } as i64).map(|_| st)
}

pub fn fstat(fd: i32) -> Result<libc::stat, i32> {
    // SAFETY: a zeroed stat buffer the call fills.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    ret(unsafe { libc::fstat(fd, &mut st) } as i64).map(|_| st)
}

pub fn read_fd(fd: i32, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    // SAFETY: a writable buffer of `len` bytes.
    let n = ret(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), len) } as i64)?;
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn pread(fd: i32, off: i64, len: usize) -> Result<Vec<u8>, i32> {
    let mut buf = vec![0u8; len];
    // SAFETY: a writable buffer of `len` bytes.
    let n = ret(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), len, off) } as i64)?;
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn readlink(p: &Path) -> Result<Vec<u8>, i32> {
    let cp = c(p);
    let mut buf = vec![0u8; 4096];
    // SAFETY: a valid path and a writable buffer of the given length.
    let n = ret(unsafe { libc::readlink(cp.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) } as i64)?;
    buf.truncate(n as usize);
    Ok(buf)
}

/// xattr (name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// `user.*` and `trusted.*` xattrs and POSIX ACLs of `p` (not following a
/// symlink), as (name, value), sorted. `security.*` is the host's (labels) and
/// not compared.
pub fn compared_xattrs(p: &Path) -> Result<Xattrs, i32> {
    let cp = c(p);
    let mut names = vec![0u8; 65536];
    // SAFETY: a valid path and a writable buffer of the given length.
    let n = ret(
        unsafe { libc::llistxattr(cp.as_ptr(), names.as_mut_ptr().cast(), names.len()) } as i64,
    )?;
    names.truncate(n as usize);
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|s| {
        s.starts_with(b"user.") || s.starts_with(b"trusted.") || s.starts_with(b"system.posix_acl_")
    }) {
        let cn = CString::new(name).expect("xattr name without NUL");
        let mut val = vec![0u8; 65536];
        // SAFETY: valid strings and a writable buffer of the given length.
        let n = ret(unsafe {
            libc::lgetxattr(cp.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len())
        } as i64)?;
        val.truncate(n as usize);
        out.push((name.to_vec(), val));
    }
    out.sort();
    Ok(out)
}

/// The names in directory `p` (without "." and ".."), sorted: dirent order is
/// the filesystem's business.
pub fn list_dir(p: &Path) -> Result<Vec<Vec<u8>>, i32> {
    let rd = std::fs::read_dir(p).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    let mut names = Vec::new();
    for e in rd {
        let e = e.map_err(|e| e.raw_os_error().unwrap_or(-1))?;
        names.push(e.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}
