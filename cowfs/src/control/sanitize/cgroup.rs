//! A memory cgroup of its own for each hook run, limited to the hook's
//! `memory_max_mib`. Without one, a hook and the clone's code it runs (a
//! database server on production data) could take the host's memory until the
//! kernel's OOM killer picked a victim anywhere, the daemon included.
//!
//! The cgroup is made below the daemon's own (from /proc/self/cgroup) before
//! the hook starts; the hook's process joins it between its fork and its exec
//! (`pid_ns`, by writing "0" to the `cgroup.procs` opened here), so everything
//! the hook runs is born in it. The namespace's init and the relay, copies of
//! the daemon's memory, stay out of it: the OOM killer picks the largest
//! process of the cgroup, and that must be one of the hook's. It is removed
//! once every process of the run is gone.
//!
//! cgroup v1 (a `N:memory:PATH` line; the hierarchy at `/sys/fs/cgroup/memory`)
//! is preferred when the memory controller is there; otherwise cgroup v2 (the
//! `0::PATH` line; the unified hierarchy at `/sys/fs/cgroup`, `memory` in its
//! `cgroup.controllers`). A limit that cannot be applied is a `CgroupError`:
//! it fails the run if the config set the limit (a configured limit is never
//! dropped), and is logged and done without for the default one (see
//! `hook::run_hook_cancellable`).

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where the cgroup file systems are mounted (the systemd layout).
const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The cgroup v1 memory hierarchy's mount, below `CGROUP_ROOT`.
const V1_MEMORY: &str = "memory";
/// How long `remove` retries a cgroup still busy: a process just reaped can
/// stay counted in it for a moment.
const REMOVE_GRACE: Duration = Duration::from_secs(5);

/// Numbers the cgroups of one daemon's runs.
static RUNS: AtomicU64 = AtomicU64::new(0);

/// The memory cgroup of one hook run.
#[derive(Debug)]
pub(super) struct MemoryCgroup {
    dir: PathBuf,
    version: Version,
    /// Its `cgroup.procs`, open for writing, for the hook's process to join.
    procs: OwnedFd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// Why no memory cgroup could be made: the cgroup (or hierarchy) concerned,
/// and the reason.
#[derive(Debug)]
pub(super) struct CgroupError {
    pub path: PathBuf,
    pub why: String,
}

/// Where the daemon's memory cgroup is, from /proc/self/cgroup `text`: the
/// v1 memory hierarchy's line if there is one, else the v2 line, when `v2_has_memory`.
fn own_cgroup(text: &str, v2_has_memory: bool) -> Result<(Version, PathBuf), String> {
    let mut unified = None;
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Ok((
                Version::V1,
                Path::new(CGROUP_ROOT).join(V1_MEMORY).join(path),
            ));
        }
        if id == "0" && controllers.is_empty() {
            unified = Some(Path::new(CGROUP_ROOT).join(path));
        }
    }
    match unified {
        Some(dir) if v2_has_memory => Ok((Version::V2, dir)),
        Some(_) => Err(format!(
            "the memory controller is on neither hierarchy: no cgroup v1 memory line in /proc/self/cgroup, and {CGROUP_ROOT}/cgroup.controllers (cgroup v2) does not list memory"
        )),
        None => Err("/proc/self/cgroup names no cgroup v1 memory hierarchy and no cgroup v2 one: the kernel has no memory cgroups".into()),
    }
}

/// Does cgroup v2's root offer the memory controller?
fn v2_has_memory() -> bool {
    std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), CgroupError> {
    std::fs::write(dir.join(file), value).map_err(|e| CgroupError {
        path: dir.join(file),
        why: format!("writing '{}': {e}", value.trim()),
    })
}

impl MemoryCgroup {
    /// A new cgroup below the daemon's, limited to `limit_mib` MiB (swap
    /// included where the kernel accounts it).
    pub(super) fn create(limit_mib: u32) -> Result<MemoryCgroup, CgroupError> {
        let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| CgroupError {
            path: "/proc/self/cgroup".into(),
            why: format!("reading it: {e}"),
        })?;
        let (version, parent) = own_cgroup(&text, v2_has_memory()).map_err(|why| CgroupError {
            path: CGROUP_ROOT.into(),
            why,
        })?;
        is_cgroup_fs(&parent, version)?;
        if version == Version::V2 {
            enable_memory(&parent)?;
        }
        // SAFETY: getpid cannot fail and touches no memory.
        let pid = unsafe { libc::getpid() };
        remove_stale(&parent, pid);
        let n = RUNS.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("cowfs-hook-{pid}-{n}"));
        std::fs::create_dir(&dir).map_err(|e| CgroupError {
            path: dir.clone(),
            why: format!(
                "creating it: {e} (the daemon needs root and a writable cgroup file system)"
            ),
        })?;
        match Self::limit(&dir, version, limit_mib) {
            Ok(procs) => Ok(MemoryCgroup {
                dir,
                version,
                procs,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Set the limit of the new cgroup `dir`; its `cgroup.procs`, opened.
    fn limit(dir: &Path, version: Version, limit_mib: u32) -> Result<OwnedFd, CgroupError> {
        let bytes = (u64::from(limit_mib) << 20).to_string();
        match version {
            Version::V1 => {
                write(dir, "memory.limit_in_bytes", &bytes)?;
                // memory+swap: without it the hook's pages could go to swap
                // past the limit. Set after the memory limit, which it may not
                // be below. Absent when the kernel does not account swap.
                if dir.join("memory.memsw.limit_in_bytes").exists() {
                    write(dir, "memory.memsw.limit_in_bytes", &bytes)?;
                }
            }
            Version::V2 => {
                write(dir, "memory.max", &bytes)?;
                // v2 counts swap apart: none, so that memory.max bounds both.
                if dir.join("memory.swap.max").exists() {
                    write(dir, "memory.swap.max", "0")?;
                }
            }
        }
        let procs = OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| CgroupError {
                path: dir.join("cgroup.procs"),
                why: format!("opening it: {e}"),
            })?;
        Ok(procs.into())
    }

    /// The descriptor the hook's process writes "0" to, to join the cgroup.
    pub(super) fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Processes of the cgroup the OOM killer killed at its limit: the
    /// `oom_kill` count of memory.events (v2) or memory.oom_control (v1, Linux
    /// 4.13 and later; 0 before).
    pub(super) fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        std::fs::read_to_string(self.dir.join(file))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Remove the cgroup, once the run's processes are gone. A cgroup still
    /// busy is retried for `REMOVE_GRACE` (processes just reaped can count a
    /// moment longer); on v2 with `cgroup.kill`, whatever still runs in it (a
    /// process that escaped the namespace's end, which should not be) is killed.
    pub(super) fn remove(self) -> io::Result<()> {
        let deadline = Instant::now() + REMOVE_GRACE;
        loop {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    let _ = std::fs::write(self.dir.join("cgroup.kill"), "1");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Remove the cgroups in `parent` of runs of daemons no longer running (other
/// than `own`): a daemon killed during a hook (SIGKILL, the OOM killer) could
/// not remove its run's cgroup, which is empty since (its processes died with
/// it). One still holding processes stays: rmdir refuses it.
fn remove_stale(parent: &Path, own: libc::pid_t) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cowfs-hook-")?.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = pid != own
            && pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            if let Err(err) = std::fs::remove_dir(e.path()) {
                log::warn!(
                    "removing the stale hook cgroup {}: {err}",
                    e.path().display()
                );
            }
        }
    }
}

/// Is `dir` a directory of the cgroup file system of `version`? Anything else
/// (a tmpfs over /sys/fs/cgroup) would take the limit's files as plain files
/// and limit nothing.
fn is_cgroup_fs(dir: &Path, version: Version) -> Result<(), CgroupError> {
    use std::os::unix::ffi::OsStrExt;
    let err = |why: String| CgroupError {
        path: dir.to_path_buf(),
        why,
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| err("a path with a NUL byte".into()))?;
    // SAFETY: statfs reads the NUL-terminated path and writes into `st`.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(err(format!(
            "the daemon's cgroup: {}",
            io::Error::last_os_error()
        )));
    }
    let magic = match version {
        Version::V1 => libc::CGROUP_SUPER_MAGIC,
        Version::V2 => libc::CGROUP2_SUPER_MAGIC,
    };
    if st.f_type != magic {
        return Err(err(format!(
            "the daemon's cgroup is not on a {} file system (f_type {:#x})",
            match version {
                Version::V1 => "cgroup (v1)",
                Version::V2 => "cgroup2",
            },
            st.f_type
        )));
    }
    Ok(())
}

/// cgroup v2: have `parent` (the daemon's cgroup) give its children the memory
/// controller. A cgroup with processes in it cannot ("no internal processes"),
/// so a daemon that is itself in a cgroup other than the root cannot, and is
/// told how to run instead.
fn enable_memory(parent: &Path) -> Result<(), CgroupError> {
    let control = parent.join("cgroup.subtree_control");
    let enabled = std::fs::read_to_string(&control).map_err(|e| CgroupError {
        path: control.clone(),
        why: format!("reading it: {e}"),
    })?;
    if enabled.split_whitespace().any(|c| c == "memory") {
        return Ok(());
    }
    std::fs::write(&control, "+memory").map_err(|e| CgroupError {
        path: control.clone(),
        why: if e.raw_os_error() == Some(libc::EBUSY) {
            format!(
                "writing '+memory': {e}: cgroup v2 gives no controller to the children of a cgroup with processes in it, and the daemon is in {}; start the daemon in the root cgroup or in a cgroup whose cgroup.subtree_control already has +memory and that it alone manages",
                parent.display()
            )
        } else {
            format!("writing '+memory': {e}")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_memory_line_wins() {
        let text = "9:name=systemd:/\n4:memory:/a/b\n3:cpu,cpuacct:/x\n0::/\n";
        let (v, dir) = own_cgroup(text, true).unwrap();
        assert_eq!(v, Version::V1);
        assert_eq!(dir, Path::new("/sys/fs/cgroup/memory/a/b"));
    }

    #[test]
    fn v2_when_it_has_memory() {
        let text = "0::/system.slice/cowfs.service\n";
        let (v, dir) = own_cgroup(text, true).unwrap();
        assert_eq!(v, Version::V2);
        assert_eq!(dir, Path::new("/sys/fs/cgroup/system.slice/cowfs.service"));
        let why = own_cgroup(text, false).unwrap_err();
        assert!(why.contains("does not list memory"), "{why}");
        let why = own_cgroup("4:cpu:/\n", true).unwrap_err();
        assert!(why.contains("no memory cgroups"), "{why}");
    }
}
