//! Shared by the mount scenario tests: a pool in a temporary directory, the real
//! `cowfs` binary mounting it, and a guard that always unmounts and reaps the
//! daemon, also when the test fails. Plus thin libc wrappers the tests need.
#![allow(dead_code)] // each scenario uses the part it needs

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn cowfs_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cowfs")
}

/// A temporary directory holding a fresh pool and a mount point. The directory is
/// world-traversable so that an unprivileged user can reach the mount.
pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub pool: PathBuf,
    pub mnt: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        Fixture::build(None, "4G")
    }

    /// A fresh pool of nominal capacity `size` (as `cowfs init --size` takes it),
    /// e.g. a small one to fill.
    pub fn with_size(size: &str) -> Fixture {
        Fixture::build(None, size)
    }

    /// A pool of nominal capacity `size` (as `cowfs init --size` takes it) at
    /// `pool`, e.g. on a small filesystem the test made; the mount point and
    /// daemon logs stay in the temporary directory.
    pub fn with_pool_at(pool: &Path, size: &str) -> Fixture {
        Fixture::build(Some(pool), size)
    }

    fn build(pool: Option<&Path>, size: &str) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("cowfs-test-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod tmp");
        let base = tmp.path().canonicalize().expect("canonical tmp");
        let pool = pool.map_or_else(|| base.join("pool"), Path::to_path_buf);
        let mnt = base.join("mnt");
        fs::create_dir(&mnt).expect("mkdir mnt");
        let out = Command::new(cowfs_bin())
            .arg("init")
            .arg(&pool)
            .arg("--size")
            .arg(size)
            .output()
            .expect("run cowfs init");
        assert!(
            out.status.success(),
            "cowfs init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Fixture { tmp, pool, mnt }
    }

    /// A scratch directory on the native filesystem, beside the pool.
    pub fn native_dir(&self, name: &str) -> PathBuf {
        let d = self.mnt.parent().expect("parent").join(name);
        fs::create_dir_all(&d).expect("mkdir native");
        d
    }

    pub fn mount(&self) -> Mounted {
        Mounted::start(&self.pool, "main", &self.mnt, false)
    }

    pub fn mount_ro(&self) -> Mounted {
        Mounted::start(&self.pool, "main", &self.mnt, true)
    }

    /// Mount `main` with every FUSE request the kernel sends logged (fuser's
    /// debug log, one line per request; see `Mounted::requests`).
    pub fn mount_logging_requests(&self) -> Mounted {
        Mounted::start_with_log(
            &self.pool,
            "main",
            &self.mnt,
            false,
            "info,fuser::request=debug",
        )
    }

    /// `cowfs fsck POOL`: returns (exit code, output).
    pub fn fsck(&self) -> (i32, String) {
        let (st, text) = run_text(Command::new(cowfs_bin()).arg("fsck").arg(&self.pool));
        (st.code().unwrap_or(-1), text)
    }

    pub fn assert_fsck_clean(&self) {
        let (code, text) = self.fsck();
        assert_eq!(code, 0, "cowfs fsck is not clean:\n{text}");
    }
}

/// Is `dir` a mount point right now (per /proc/self/mountinfo)?
pub fn is_mounted(dir: &Path) -> bool {
    let want = dir.as_os_str().as_bytes();
    fs::read("/proc/self/mountinfo")
        .map(|all| {
            all.split(|b| *b == b'\n')
                .any(|line| line.split(|b| *b == b' ').nth(4).is_some_and(|m| m == want))
        })
        .unwrap_or(false)
}

/// `umount -l`, quietly: a no-op when nothing is mounted there.
pub fn lazy_umount(dir: &Path) {
    if is_mounted(dir) {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
}

/// A running `cowfs mount` daemon. Dropping it unmounts (lazily) and kills and
/// reaps the daemon, whatever state the test left it in.
pub struct Mounted {
    child: Option<Child>,
    pub mnt: PathBuf,
    log: PathBuf,
}

impl Mounted {
    pub fn start(pool: &Path, branch: &str, mnt: &Path, ro: bool) -> Mounted {
        Mounted::start_with_log(pool, branch, mnt, ro, "info")
    }

    /// `start` with the daemon's `RUST_LOG` set to `log_filter`.
    pub fn start_with_log(
        pool: &Path,
        branch: &str,
        mnt: &Path,
        ro: bool,
        log_filter: &str,
    ) -> Mounted {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = mnt.with_extension(format!("daemon-{n}.log"));
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("daemon log");
        let mut cmd = Command::new(cowfs_bin());
        cmd.arg("mount").arg(pool).arg(branch).arg(mnt);
        if ro {
            cmd.arg("--ro");
        }
        // If the test process dies without running its guards (killed by a
        // timeout), the daemon gets SIGTERM and unmounts instead of lingering.
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of ours.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .env("RUST_LOG", log_filter)
            .spawn()
            .expect("spawn cowfs mount");
        let mut m = Mounted {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(mnt) {
            if let Some(c) = m.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("cowfs mount exited with {st}:\n{}", m.log_text());
                }
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        m
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The requests logged so far by a `mount_logging_requests` daemon, as
    /// (inode, opcode name) in arrival order, from fuser's lines
    /// `FUSE( 16) ino 0x0000000000000002 SETATTR ...`.
    pub fn requests(&self) -> Vec<(u64, String)> {
        self.log_text()
            .lines()
            .filter_map(|line| {
                let rest = &line[line.find("FUSE(")?..];
                let rest = &rest[rest.find(" ino 0x")? + 7..];
                let (hex, rest) = rest.split_once(' ')?;
                let op = rest.split_whitespace().next()?;
                Some((u64::from_str_radix(hex, 16).ok()?, op.to_string()))
            })
            .collect()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGTERM, then the daemon must unmount, commit and exit 0.
    pub fn stop(mut self) {
        let mut c = self.child.take().expect("daemon running");
        signal(c.id(), libc::SIGTERM);
        let st = wait_timeout(&mut c, Duration::from_secs(30));
        assert!(
            st.is_some_and(|s| s.success()),
            "daemon did not exit 0 on SIGTERM ({st:?}):\n{}",
            self.log_text()
        );
        assert!(!is_mounted(&self.mnt), "still mounted after SIGTERM");
    }

    /// Wait for the daemon to exit on its own; its exit status.
    pub fn wait_exit(mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take().expect("daemon running");
        let st = wait_timeout(&mut c, Duration::from_secs(30));
        if st.is_none() {
            let _ = c.kill();
            let _ = c.wait();
        }
        st
    }

    /// kill -9 the daemon (a crash), then clear the dead mount.
    pub fn crash(mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGKILL);
            let _ = c.wait();
        }
        lazy_umount(&self.mnt);
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        lazy_umount(&self.mnt);
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = fs::remove_file(&self.log);
    }
}

fn wait_timeout(c: &mut Child, t: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + t;
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn signal(pid: u32, sig: i32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: kill(2) takes plain integers.
    unsafe { libc::kill(pid, sig) };
}

/// Run `sh -c script` as uid/gid 65534 (nobody); returns (success, stdout+stderr).
pub fn as_nobody(script: &str) -> (bool, String) {
    let (st, text) = run_text(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .uid(NOBODY)
            .gid(NOBODY)
            .env("LC_ALL", "C"),
    );
    (st.success(), text)
}

/// Run `cmd` to completion: its exit status and its stdout followed by its stderr.
pub fn run_text(cmd: &mut Command) -> (std::process::ExitStatus, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

pub const NOBODY: u32 = 65534;

pub fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn check(r: i64) -> io::Result<i64> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The errno of an io::Error (0 if none).
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

pub fn renameat2(from: &Path, to: &Path, flags: u32) -> io::Result<()> {
    let (a, b) = (cpath(from), cpath(to));
    // SAFETY: both strings are valid NUL-terminated paths for the call's duration.
    check(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    } as i64)
    .map(|_| ())
}

pub fn lseek(fd: i32, off: i64, whence: i32) -> io::Result<i64> {
    // SAFETY: lseek takes plain integers.
    check(unsafe { libc::lseek(fd, off, whence) })
}

pub fn fallocate(fd: i32, mode: i32, off: i64, len: i64) -> io::Result<()> {
    // SAFETY: fallocate takes plain integers.
    check(unsafe { libc::fallocate(fd, mode, off, len) } as i64).map(|_| ())
}

pub fn copy_file_range(fd_in: i32, fd_out: i32, len: usize) -> io::Result<usize> {
    // SAFETY: null offsets mean "use and advance the file offsets".
    let n = check(unsafe {
        libc::copy_file_range(
            fd_in,
            std::ptr::null_mut(),
            fd_out,
            std::ptr::null_mut(),
            len,
            0,
        )
    } as i64)?;
    Ok(n as usize)
}

pub fn setxattr(p: &Path, name: &str, value: &[u8], flags: i32) -> io::Result<()> {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid strings and a buffer of the given length.
    check(unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    } as i64)
    .map(|_| ())
}

pub fn getxattr(p: &Path, name: &str) -> io::Result<Vec<u8>> {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    let mut buf = vec![0u8; 65536];
    // SAFETY: valid strings and a writable buffer of the given length.
    let len =
        check(
            unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
                as i64,
        )?;
    buf.truncate(len as usize);
    Ok(buf)
}

pub fn listxattr(p: &Path) -> io::Result<Vec<String>> {
    let c = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: a valid string and a writable buffer of the given length.
    let len =
        check(unsafe { libc::listxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) } as i64)?;
    buf.truncate(len as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect())
}

pub fn removexattr(p: &Path, name: &str) -> io::Result<()> {
    let (c, n) = (cpath(p), CString::new(name).expect("name"));
    // SAFETY: valid strings.
    check(unsafe { libc::removexattr(c.as_ptr(), n.as_ptr()) } as i64).map(|_| ())
}

pub fn utimens(p: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let c = cpath(p);
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
    // SAFETY: a valid path and an array of two timespecs.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) } as i64).map(|_| ())
}

pub fn fsync(fd: i32) -> io::Result<()> {
    // SAFETY: fsync takes a descriptor.
    check(unsafe { libc::fsync(fd) } as i64).map(|_| ())
}
