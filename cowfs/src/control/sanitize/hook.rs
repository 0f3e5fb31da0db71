//! Hooks: commands run against the clone (for databases: start the server on the
//! clone's data directory, rewrite the data with SQL, stop it). A hook runs in its
//! own process group, PID namespace (see `pid_ns`), memory cgroup (see
//! `cgroup`) and mount namespace, whose
//! view of the file system is an allow list (see `sandbox`), in a clean environment:
//! PATH (absolute entries only, see `hook_search_path`), the hook's `env`,
//! `$COWFS_CLONE_DIR`, `$COWFS_BRANCH` and `$COWFS_HOOK_KEY` (the pseudonym sub-key
//! of the pool key, for the same pseudonyms in SQL). Its output is captured (the
//! last `MAX_OUTPUT` bytes). Every process it starts, daemonized or not, ends
//! when the hook ends, when it is killed at its timeout, and when the daemon dies
//! in any way (SIGKILL included). One the hook did not wait for fails the hook:
//! killed midway, or failing right after it with nobody to see, it may have
//! left the clone half scrubbed. `run_hooks` gives the hooks a private
//! read-write mount of the clone.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::fs::ROOT_INO;
use crate::fuse::{MountError, MountTable};
use crate::pool::{BranchId, Pool};

use super::super::mountinfo;
use super::cgroup::MemoryCgroup;
use super::config::{Hook, Profile};
use super::pid_ns;
use super::private_dir;
use super::pseudo::hook_key_hex;
use super::sandbox::Sandbox;
use super::SanitizeError;

/// Output kept per hook (the tail: errors come last).
pub const MAX_OUTPUT: usize = 64 << 10;
/// PATH for hooks when the daemon has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// After the hook ends, how long to wait for its pipes to close: processes of its
/// namespace that were killed with it (at a timeout) may take a moment to go.
const PIPE_GRACE: Duration = Duration::from_secs(2);
/// How long a relay asked to stop (`pid_ns::Stop`) may take to end, having
/// reaped the init: the kernel ends the namespace's processes first.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// What a successful hook did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookReport {
    pub name: String,
    pub duration: Duration,
    /// stdout and stderr interleaved, lossily decoded, at most `MAX_OUTPUT` bytes.
    pub output: String,
}

#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    dropped: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        if self.bytes.len() > MAX_OUTPUT {
            let cut = self.bytes.len() - MAX_OUTPUT;
            self.bytes.drain(..cut);
            self.dropped = true;
        }
    }

    fn text(&self) -> String {
        let t = String::from_utf8_lossy(&self.bytes);
        if self.dropped {
            format!("[earlier output dropped]\n{t}")
        } else {
            t.into_owned()
        }
    }
}

/// The hooks' PATH: the daemon's (`DEFAULT_PATH` if it has none) without its
/// relative and empty entries. A hook runs with the clone as its working
/// directory, so `.`, an empty entry or `bin` would make a command name (the
/// hook's program, or one its script runs) name a file of the clone: production
/// data, run as the daemon's user.
pub fn hook_search_path() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into());
    absolute_entries(&path)
}

/// The absolute entries of the search path `path`, `DEFAULT_PATH` if none.
fn absolute_entries(path: &OsStr) -> OsString {
    let kept: Vec<PathBuf> = std::env::split_paths(path)
        .filter(|p| p.is_absolute())
        .collect();
    match std::env::join_paths(kept) {
        Ok(p) if !p.is_empty() => p,
        _ => DEFAULT_PATH.into(),
    }
}

/// The first `DIR/name` of the search path `path` that is an executable file,
/// as exec would pick it.
pub fn find_program(name: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// End a hook still running: its relay kills the init, reaps it and ends, and
/// is waited for here. Killing the relay instead handed the init, unreaped, to
/// the daemon's reaper, the daemon itself when it is a container's pid 1 or a
/// child subreaper, which never waited for it. Only a relay that does not end
/// within `STOP_GRACE` (a process of the namespace stuck in the kernel) has its
/// group killed, the relay with it, so that the daemon can go on.
fn stop(child: &mut Child, stop: &pid_ns::Stop) {
    stop.request();
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    log::error!(
        "hook process {} did not end within {STOP_GRACE:?} of being stopped: killing its process group",
        child.id()
    );
    // The relay leads the hook's process group (`process_group(0)`).
    kill_group(child.id());
    let _ = child.wait();
}

/// Kill every process of the group `pgid` (ignoring a group already gone).
fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory
        // is involved.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Run one hook against `clone_dir` (any directory holding the clone's files).
pub fn run_hook(
    hook: &Hook,
    clone_dir: &Path,
    branch: &str,
    hook_key: &str,
) -> Result<HookReport, SanitizeError> {
    run_hook_cancellable(hook, clone_dir, branch, hook_key, &AtomicBool::new(false))
}

/// `run_hook`, killing the hook (with every process it started) and returning
/// `Cancelled` soon after `cancel` is set. Returns only once the hook's process
/// was waited for (`pid_ns::enter` relies on it). The hook runs in a memory
/// cgroup of its own (see `cgroup`), made first and removed last; one that
/// cannot be made fails the run, the hook not started, if the config set
/// `memory_max_mib`, and is logged and done without otherwise.
pub fn run_hook_cancellable(
    hook: &Hook,
    clone_dir: &Path,
    branch: &str,
    hook_key: &str,
    cancel: &AtomicBool,
) -> Result<HookReport, SanitizeError> {
    let cgroup = match MemoryCgroup::create(hook.memory_max_mib) {
        Ok(c) => c,
        Err(e) if !hook.memory_limit_required => {
            log::warn!(
                "hook '{}' runs without a memory limit: the default one ({} MiB) cannot be applied: {}: {} (set memory_max_mib to require one)",
                hook.name,
                hook.memory_max_mib,
                e.path.display(),
                e.why
            );
            return run_in_cgroup(hook, clone_dir, branch, hook_key, cancel, None);
        }
        Err(e) => {
            return Err(SanitizeError::HookMemoryLimit {
                hook: hook.name.clone(),
                memory_max_mib: hook.memory_max_mib,
                cgroup: e.path,
                why: e.why,
            })
        }
    };
    let result = run_in_cgroup(hook, clone_dir, branch, hook_key, cancel, Some(&cgroup));
    // Every process of the run is gone here (see `run_in_cgroup`).
    let oom_kills = cgroup.oom_kills();
    let dir = cgroup.dir().to_path_buf();
    if let Err(e) = cgroup.remove() {
        log::error!(
            "hook '{}': removing its memory cgroup {}: {e}",
            hook.name,
            dir.display()
        );
    }
    if oom_kills == 0 {
        return result;
    }
    let out_of_memory = |output| SanitizeError::HookOutOfMemory {
        hook: hook.name.clone(),
        memory_max_mib: hook.memory_max_mib,
        oom_kills: u32::try_from(oom_kills).unwrap_or(u32::MAX),
        output,
    };
    // A process killed at the limit was cut short, whatever the hook's own
    // status says: the limit is named rather than the symptom.
    match result {
        Ok(r) => Err(out_of_memory(r.output)),
        Err(
            SanitizeError::HookFailed { output, .. }
            | SanitizeError::HookLeftProcesses { output, .. }
            | SanitizeError::HookLeftoverFailed { output, .. }
            | SanitizeError::HookTimeout { output, .. },
        ) => Err(out_of_memory(output)),
        Err(e) => Err(e),
    }
}

/// The hook run of `run_hook_cancellable`, its process joining `cgroup` (if any).
/// Returns once the relay was waited for: it ends after the namespace's init,
/// whose end the kernel completes only when every process of the namespace
/// is gone.
fn run_in_cgroup(
    hook: &Hook,
    clone_dir: &Path,
    branch: &str,
    hook_key: &str,
    cancel: &AtomicBool,
    cgroup: Option<&MemoryCgroup>,
) -> Result<HookReport, SanitizeError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::{CommandExt, ExitStatusExt};

    let start = Instant::now();
    // Prepared here: after the fork nothing may allocate.
    let sandbox = Sandbox::new(clone_dir, hook).map_err(|source| SanitizeError::HookNamespace {
        hook: hook.name.clone(),
        step: "preparing its file system view (sandbox)".into(),
        hint: "",
        source,
    })?;
    let sandbox = Arc::new(sandbox);
    // The paths as the sandbox shows them (real paths).
    let clone_dir = sandbox.clone_dir();
    let mut cmd = Command::new(sandbox.program());
    // A clean environment: the daemon's own (tokens, credentials) is not the
    // hook's business. PATH is kept so that scripts find their tools, without
    // the entries that would find them in the clone.
    cmd.args(&hook.argv[1..])
        .current_dir(clone_dir)
        .env_clear()
        .env("PATH", hook_search_path())
        .envs(&hook.env)
        .env("COWFS_CLONE_DIR", clone_dir)
        .env("COWFS_BRANCH", branch)
        .env("COWFS_HOOK_KEY", hook_key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let spawn_error = |source| SanitizeError::HookSpawn {
        hook: hook.name.clone(),
        program: hook.argv[0].clone(),
        source,
    };
    let (report, report_w) = pid_ns::Report::new().map_err(spawn_error)?;
    let (stopper, stop_r) = pid_ns::Stop::new().map_err(spawn_error)?;
    let (relay_report, relay_stop) = (report_w.as_raw_fd(), stop_r.as_raw_fd());
    // SAFETY: getpid cannot fail and touches no memory.
    let daemon = unsafe { libc::getpid() };
    let own_network = !hook.network;
    let cgroup_procs = cgroup.map_or(-1, MemoryCgroup::procs_fd);
    let in_child = sandbox.clone();
    // SAFETY: the closure runs in the forked child and only makes the system
    // calls of `pid_ns::enter`, without allocating.
    unsafe {
        cmd.pre_exec(move || {
            pid_ns::enter(
                daemon,
                relay_report,
                relay_stop,
                own_network,
                &in_child,
                cgroup_procs,
            )
        });
    }
    let spawned = cmd.spawn();
    // The relay has its copies; the daemon's would keep the pipes open for nothing.
    drop(report_w);
    drop(stop_r);
    let mut child = spawned.map_err(|source| match pid_ns::setup_failure(&source, &sandbox) {
        Some(f) => SanitizeError::HookNamespace {
            hook: hook.name.clone(),
            step: f.step,
            hint: f.hint,
            source: f.source,
        },
        None => spawn_error(source),
    })?;
    let tail = Arc::new(Mutex::new(Tail::default()));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut readers = 0;
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    for mut pipe in pipes.into_iter().flatten() {
        let tail = tail.clone();
        let tx = done_tx.clone();
        readers += 1;
        let spawned = std::thread::Builder::new()
            .name(format!("hook-{}", hook.name))
            .spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    tail.lock().push(&buf[..n]);
                }
                let _ = tx.send(());
            });
        if let Err(source) = spawned {
            stop(&mut child, &stopper);
            return Err(spawn_error(source));
        }
    }
    drop(done_tx);

    let deadline = start + hook.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline || cancel.load(Ordering::Relaxed) => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(source) => {
                stop(&mut child, &stopper);
                return Err(spawn_error(source));
            }
        }
    };
    // A relay that ended by itself did so after the init, whose end took every
    // process left in the namespace: nothing of the hook runs any more. Timed
    // out or cancelled: the relay ends the init, and with it the namespace.
    if status.is_none() {
        stop(&mut child, &stopper);
    }
    let grace = Instant::now() + PIPE_GRACE;
    for _ in 0..readers {
        let left = grace.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            tail.lock()
                .push(b"\n[the hook's output was still held open after it ended]\n");
            break;
        }
    }
    let output = tail.lock().text();
    let Some(status) = status else {
        if cancel.load(Ordering::Relaxed) {
            return Err(SanitizeError::Cancelled);
        }
        return Err(SanitizeError::HookTimeout {
            hook: hook.name.clone(),
            timeout_secs: hook.timeout.as_secs(),
            output,
        });
    };
    if !status.success() {
        return Err(SanitizeError::HookFailed {
            hook: hook.name.clone(),
            exit_code: status.code(),
            signal: status.signal(),
            output,
        });
    }
    // Read only now: the relay wrote it, if at all, before it ended. Processes
    // still running are named first: they were cut short for certain.
    let left = report.leftovers();
    if left.killed > 0 {
        return Err(SanitizeError::HookLeftProcesses {
            hook: hook.name.clone(),
            processes: left.killed,
            output,
        });
    }
    if left.failed > 0 {
        let first = std::process::ExitStatus::from_raw(left.first_failure);
        return Err(SanitizeError::HookLeftoverFailed {
            hook: hook.name.clone(),
            processes: left.failed,
            exit_code: first.code(),
            signal: first.signal(),
            output,
        });
    }
    Ok(HookReport {
        name: hook.name.clone(),
        duration: start.elapsed(),
        output,
    })
}

/// Does `path` (relative, '/'-separated) exist in branch `b`?
fn exists(pool: &Pool, b: BranchId, path: &str) -> Result<bool, SanitizeError> {
    let mut ino = ROOT_INO;
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    for (i, c) in parts.iter().enumerate() {
        match pool.lookup(b, ino, c.as_bytes()) {
            // A symlink on the way (`pg -> data/pg15`): lookup would say ENOTDIR
            // and the hook be skipped, leaving what it scrubs as it is. Following
            // it is no answer (an absolute target names the host, not the clone):
            // fail the run, the clone is not what the profile expects.
            Ok(a) if i + 1 < parts.len() && a.mode & libc::S_IFMT == libc::S_IFLNK => {
                return Err(SanitizeError::File {
                    rule: String::new(),
                    path: path.to_string(),
                    what: "when_exists goes through a symlink at",
                    source: crate::fs::FsError::Posix(libc::ELOOP),
                })
            }
            Ok(a) => ino = a.ino,
            Err(e) if e.errno() == libc::ENOENT || e.errno() == libc::ENOTDIR => return Ok(false),
            Err(source) => {
                return Err(SanitizeError::File {
                    rule: String::new(),
                    path: path.to_string(),
                    what: "looking up",
                    source,
                })
            }
        }
    }
    Ok(true)
}

/// Run the profile's hooks whose `when_exists` holds, against one private
/// read-write mount of `branch` in a fresh private directory under `scratch`
/// (see `private_dir`; unmounted and removed afterwards, also on failure). Stops
/// at the first failing hook. Fails if anything was mounted inside the clone's
/// mount when the hooks end, or if the mounts at or above it are not those of
/// when it was made: they did not see (only) the clone.
pub fn run_hooks(
    pool: &Pool,
    mounts: &MountTable,
    branch: &str,
    profile: &Profile,
    key: &[u8],
    scratch: &Path,
) -> Result<Vec<HookReport>, SanitizeError> {
    let never = AtomicBool::new(false);
    run_hooks_cancellable(pool, mounts, branch, profile, key, scratch, &never)
}

/// `run_hooks`, stopping (the running hook killed, the mount removed) with
/// `Cancelled` soon after `cancel` is set.
pub fn run_hooks_cancellable(
    pool: &Pool,
    mounts: &MountTable,
    branch: &str,
    profile: &Profile,
    key: &[u8],
    scratch: &Path,
    cancel: &AtomicBool,
) -> Result<Vec<HookReport>, SanitizeError> {
    let b = pool
        .branch_id(branch)
        .map_err(|source| SanitizeError::Branch {
            branch: branch.to_string(),
            source,
        })?;
    let mut todo = Vec::new();
    for h in &profile.hooks {
        match &h.when_exists {
            Some(p) if !exists(pool, b, p)? => {
                log::info!("sanitize '{branch}': hook '{}' skipped, no {p}", h.name);
            }
            _ => todo.push(h),
        }
    }
    if todo.is_empty() {
        return Ok(Vec::new());
    }
    let hook_key = hook_key_hex(key).ok_or(SanitizeError::KeyTooShort)?;
    // The mount checks compare mountinfo's mount points, which are real paths:
    // through a symlinked scratch_dir (say /var/run) the mount was never found.
    let scratch = scratch
        .canonicalize()
        .map_err(|source| SanitizeError::Scratch {
            dir: scratch.to_path_buf(),
            source,
        })?;
    let private: PathBuf = private_dir::new_path(&scratch, pool.id());
    let dir = private.join(private_dir::MOUNT_POINT);
    let io = |source| SanitizeError::Scratch {
        dir: private.clone(),
        source,
    };
    private_dir::create(&private).map_err(io)?;
    let cleanup = || {
        let _ = std::fs::remove_dir(&dir);
        let _ = std::fs::remove_dir(&private);
    };
    if let Err(e) = std::fs::create_dir(&dir) {
        cleanup();
        return Err(io(e));
    }
    let mount_err = |source: MountError| SanitizeError::Mount {
        branch: branch.to_string(),
        source: Box::new(source),
    };
    if let Err(e) = mounts.mount(branch, &dir, false) {
        cleanup();
        return Err(mount_err(e));
    }
    // The mounts a lookup of `dir` crosses, ours included. A hook reaches the clone
    // by that path ($COWFS_CLONE_DIR): anything mounted on it or above it
    // later (root on the host can; tokens cannot), or ours gone, and the path
    // leads to another tree. Unreadable: none, so that every check fails.
    let path_mounts = mountinfo::read()
        .map(|m| mountinfo::along(&m, &dir))
        .unwrap_or_else(|e| {
            log::error!("sanitize '{branch}': reading /proc/self/mountinfo: {e}");
            Vec::new()
        });
    let watched: Vec<&str> = todo
        .iter()
        .filter_map(|h| h.when_exists.as_deref())
        .collect();
    let mut result =
        private_dir::allow_search(&private, &private_dir::owners(&dir, &watched)).map_err(io);
    let mut reports = Vec::new();
    for h in todo {
        if result.is_err() {
            break;
        }
        if cancel.load(Ordering::Relaxed) {
            result = Err(SanitizeError::Cancelled);
            break;
        }
        log::info!("sanitize '{branch}': running hook '{}'", h.name);
        match run_hook_cancellable(h, &dir, branch, &hook_key, cancel) {
            Ok(r) => reports.push(r),
            Err(e) => result = Err(e),
        }
        let changed = path_changes(&path_mounts, &dir);
        if !changed.is_empty() {
            log::error!(
                "sanitize '{branch}': the mounts on the path to the hooks' mount of the clone changed while hook '{}' ran: {changed:?}",
                h.name
            );
            result = Err(SanitizeError::PathChanged { mounts: changed });
        }
    }
    // Anything mounted inside the clone's mount hid part of the clone from the
    // hooks: what they scrubbed was not (all) the clone. Never publish then.
    let shadowed = match mountinfo::read() {
        Ok(m) => mountinfo::below(&m, &dir),
        Err(e) => {
            log::error!("sanitize '{branch}': reading /proc/self/mountinfo: {e}");
            vec![dir.clone()]
        }
    };
    if !shadowed.is_empty() {
        log::error!(
            "sanitize '{branch}': something was mounted inside the hooks' mount of the clone: {shadowed:?}"
        );
        result = Err(SanitizeError::Shadowed { mounts: shadowed });
    }
    // Processes killed a moment ago may still hold files open: retry briefly.
    // A mount inside is the other reason for a busy unmount; one seen while
    // retrying fails the run too, even if it goes away before the unmount works.
    // A mount above it makes the path lead elsewhere: wait for it to go too.
    let mut unmounted = mounts.unmount(&dir);
    for _ in 0..50 {
        let retry = match &unmounted {
            Ok(()) => false,
            Err(MountError::Busy(_)) => true,
            Err(_) => mounted_along_since(&path_mounts, &dir),
        };
        if !retry {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        if result.is_ok() {
            if let Some(below) = mountinfo::read().ok().map(|m| mountinfo::below(&m, &dir)) {
                if !below.is_empty() {
                    result = Err(SanitizeError::Shadowed { mounts: below });
                }
            }
        }
        unmounted = mounts.unmount(&dir);
    }
    match unmounted {
        Ok(()) => cleanup(),
        Err(e) if result.is_ok() => result = Err(mount_err(e)),
        Err(e) => log::error!("sanitize '{branch}': unmounting {}: {e}", dir.display()),
    }
    result.map(|()| reports)
}

/// The mount points at or above `dir` that are not as in `before` (its mounts
/// along the path when the clone was mounted): mounted since, or gone. If
/// mountinfo cannot be read, `dir` itself (nothing is known to be the same).
fn path_changes(before: &[mountinfo::Mount], dir: &Path) -> Vec<PathBuf> {
    let now = match mountinfo::read() {
        Ok(m) => mountinfo::along(&m, dir),
        Err(e) => {
            log::error!("reading /proc/self/mountinfo: {e}");
            return vec![dir.to_path_buf()];
        }
    };
    let gone = before.iter().filter(|m| !now.contains(m));
    let new = now.iter().filter(|m| !before.contains(m));
    new.chain(gone).map(|m| m.point.clone()).collect()
}

/// Is anything mounted at or above `dir` that was not in `before`?
fn mounted_along_since(before: &[mountinfo::Mount], dir: &Path) -> bool {
    mountinfo::read().is_ok_and(|m| {
        mountinfo::along(&m, dir)
            .iter()
            .any(|m| !before.contains(m))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn hook(cmd: &str, timeout_ms: u64) -> Hook {
        Hook {
            name: "t".into(),
            argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
            timeout: Duration::from_millis(timeout_ms),
            env: BTreeMap::from([("EXTRA".to_string(), "x1".to_string())]),
            when_exists: None,
            network: false,
            read_only_paths: Vec::new(),
            read_write_paths: Vec::new(),
            tmpfs_size_mib: crate::control::sanitize::config::DEFAULT_TMPFS_SIZE_MIB,
            memory_max_mib: crate::control::sanitize::config::DEFAULT_MEMORY_MAX_MIB,
            memory_limit_required: false,
        }
    }

    #[test]
    fn success_sees_its_environment() {
        let dir = std::env::temp_dir();
        let r = run_hook(
            &hook(
                "echo $COWFS_BRANCH $EXTRA $COWFS_HOOK_KEY ${CARGO_MANIFEST_DIR-clean}; pwd; echo err >&2",
                10_000,
            ),
            &dir,
            "clone-1",
            "k3y",
        )
        .unwrap();
        // cargo sets CARGO_MANIFEST_DIR for this test process; the hook must not see it.
        assert!(r.output.contains("clone-1 x1 k3y clean"), "{}", r.output);
        assert!(r.output.contains("err"), "{}", r.output);
    }

    #[test]
    fn failure_carries_exit_code_and_output() {
        let e = run_hook(
            &hook("echo boom; exit 3", 10_000),
            &std::env::temp_dir(),
            "b",
            "k",
        )
        .unwrap_err();
        match &e {
            SanitizeError::HookFailed {
                exit_code, output, ..
            } => {
                assert_eq!(*exit_code, Some(3));
                assert!(output.contains("boom"));
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("exit code 3") && e.to_string().contains("boom"));
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let start = Instant::now();
        // A grandchild in the same group keeps the pipe open: it must die too.
        let e = run_hook(
            &hook("echo started; sleep 30 & sleep 30", 300),
            &std::env::temp_dir(),
            "b",
            "k",
        )
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(10));
        match e {
            SanitizeError::HookTimeout { output, .. } => assert!(output.contains("started")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_kills_the_hook() {
        let cancel = Arc::new(AtomicBool::new(false));
        let c = cancel.clone();
        let setter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.store(true, Ordering::Relaxed);
        });
        let start = Instant::now();
        let e = run_hook_cancellable(
            &hook("sleep 30", 60_000),
            &std::env::temp_dir(),
            "b",
            "k",
            &cancel,
        )
        .unwrap_err();
        setter.join().unwrap();
        assert!(matches!(e, SanitizeError::Cancelled), "{e:?}");
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    /// `cowfs serve --config examples/cowfs.toml` (README): the config's directory
    /// is relative, and the hook runs in the clone, so a program path left relative
    /// names a file of the clone (production data) instead of the site's hook.
    #[test]
    fn relative_config_dir_does_not_run_the_clones_program() {
        use super::super::config::SanitizeConfig;
        let clone = tempfile::tempdir().unwrap();
        let planted = clone.path().join("examples");
        std::fs::create_dir(&planted).unwrap();
        std::fs::write(planted.join("hook.sh"), "#!/bin/sh\necho planted\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            planted.join("hook.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let cfg = SanitizeConfig::parse(
            "[[profiles.p.hooks]]\nname = \"h\"\ncommand = [\"./hook.sh\"]\n",
            Path::new("examples"),
        )
        .unwrap();
        let h = &cfg.profiles["p"].hooks[0];
        if let Ok(r) = run_hook(h, clone.path(), "b", "k") {
            assert!(!r.output.contains("planted"), "ran the clone's program");
        }
        let expected = std::env::current_dir().unwrap().join("examples/hook.sh");
        assert!(Path::new(&h.argv[0]).is_absolute(), "{}", h.argv[0]);
        assert_eq!(
            Path::new(&h.argv[0]).components().collect::<Vec<_>>(),
            expected.components().collect::<Vec<_>>()
        );
    }

    /// Shell for a hook: start `sleep 1000` in a session of its own, out of the
    /// hook's process group as a daemonizing server (`pg_ctl start`) is, and wait
    /// until it wrote the file `$SLEEPER`. Its pid there would be its PID
    /// namespace's (the hook's /proc is its own): the test finds it by the
    /// `SLEEPER` of its environment (`marked`).
    const DAEMONIZE: &str = r#"setsid sh -c 'read -r pid rest < /proc/self/stat; echo $pid > "$SLEEPER.new"; mv "$SLEEPER.new" "$SLEEPER"; exec sleep 1000' </dev/null >/dev/null 2>&1 &
while [ ! -e "$SLEEPER" ]; do sleep 0.02; done
"#;

    /// `hook(cmd)` with `$SLEEPER` set to `sleeper` (see `DAEMONIZE`).
    fn daemonizing_hook(cmd: &str, timeout_ms: u64, sleeper: &Path) -> Hook {
        let mut h = hook(&format!("{DAEMONIZE}{cmd}"), timeout_ms);
        h.env
            .insert("SLEEPER".into(), sleeper.to_string_lossy().into_owned());
        h
    }

    /// The live processes (host pids) whose environment has a variable set to
    /// `file`: what a test's hook started, its files being unique to the test.
    fn marked(file: &Path) -> Vec<u32> {
        let mut suffix = b"=".to_vec();
        suffix.extend_from_slice(file.as_os_str().as_encoded_bytes());
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v.ends_with(&suffix)))
            })
            .filter(|pid| running(*pid))
            .collect()
    }

    /// Whether every process `marked` with `file` is gone within `secs` seconds.
    fn gone_within(file: &Path, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !marked(file).is_empty() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Kills, when dropped, the processes `marked` with these files: whatever
    /// a test's hooks left running, also when the test fails.
    struct KillPids(Vec<PathBuf>);

    impl Drop for KillPids {
        fn drop(&mut self) {
            for pid in self.0.iter().flat_map(|f| marked(f)) {
                if let Ok(pid) = i32::try_from(pid) {
                    // SAFETY: kill(2) on a process this test's hook started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    /// A process the hook daemonized (setsid) left the hook's process group, so
    /// the group kill at the timeout missed it and it ran on, holding the clone.
    #[test]
    fn timeout_kills_what_the_hook_daemonized() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper = dir.path().join("sleeper");
        let _kill = KillPids(vec![sleeper.clone()]);
        let e = run_hook(
            &daemonizing_hook("echo started; sleep 30", 2_000, &sleeper),
            dir.path(),
            "b",
            "k",
        )
        .unwrap_err();
        assert!(matches!(e, SanitizeError::HookTimeout { .. }), "{e:?}");
        assert!(sleeper.exists(), "the hook started its sleeper");
        assert!(gone_within(&sleeper, 5), "the daemonized sleeper survived");
    }

    /// A hook that exits without waiting for what it started (a scrubber in
    /// the background) had it killed midway, and the half-scrubbed clone was
    /// published: the hook fails instead, and by the time `run_hook` returns
    /// what it left is gone, daemonized (setsid) or not.
    #[test]
    fn a_hook_that_leaves_processes_running_fails() {
        let dir = tempfile::tempdir().unwrap();
        let sleeper = dir.path().join("sleeper");
        let _kill = KillPids(vec![sleeper.clone()]);
        let e = run_hook(
            &daemonizing_hook("echo done", 30_000, &sleeper),
            dir.path(),
            "b",
            "k",
        )
        .unwrap_err();
        match &e {
            SanitizeError::HookLeftProcesses {
                hook,
                processes,
                output,
            } => assert_eq!(
                (hook.as_str(), *processes, output.as_str()),
                ("t", 1, "done\n")
            ),
            other => panic!("{other:?}"),
        }
        assert!(
            e.to_string()
                .starts_with("hook 't' exited but left 1 process running; wait for them"),
            "{e}"
        );
        assert!(sleeper.exists(), "the hook started its sleeper");
        assert_eq!(
            marked(&sleeper),
            Vec::<u32>::new(),
            "the daemonized sleeper outlived its hook"
        );

        // In the hook's own process group, two of them.
        let pids = dir.path().join("pids");
        let _kill = KillPids(vec![pids.clone()]);
        let mut h = hook(
            r#"sleep 1000 & sh -c 'read -r pid rest < /proc/self/stat; echo $pid > "$PIDS"; exec sleep 1000' &
while [ ! -s "$PIDS" ]; do sleep 0.02; done"#,
            30_000,
        );
        h.env
            .insert("PIDS".into(), pids.to_string_lossy().into_owned());
        let e = run_hook(&h, dir.path(), "b", "k").unwrap_err();
        assert!(
            matches!(e, SanitizeError::HookLeftProcesses { processes: 2, .. }),
            "{e:?}"
        );
        assert!(pids.exists(), "the hook started its sleeper");
        assert_eq!(
            marked(&pids),
            Vec::<u32>::new(),
            "the sleeper outlived its hook"
        );
    }

    /// What a hook starts in the background and waits for is not left over,
    /// nor is what ends by itself just after the hook (a server it stopped
    /// without waiting for its very end).
    #[test]
    fn a_hook_that_waits_for_its_processes_succeeds() {
        let r = run_hook(
            &hook(
                "(sleep 0.2; echo scrubbed) & wait $!; (sleep 0.3; echo late) & echo done",
                30_000,
            ),
            &std::env::temp_dir(),
            "b",
            "k",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.output, "scrubbed\ndone\nlate\n");
    }

    /// A process the hook left that ended by itself within the grace was taken
    /// as a server just exiting, whatever its status: a background scrubber
    /// that failed (or was killed) right after its hook exited 0 had the clone
    /// published half scrubbed. Ending with 0 is still fine (see above).
    #[test]
    fn a_leftover_that_fails_after_its_hook_fails_the_hook() {
        for (job, status) in [("exit 4", "exit code 4"), ("kill -TERM $$", "signal 15")] {
            let cmd =
                format!("setsid sh -c 'sleep 0.3; {job}' </dev/null >/dev/null 2>&1 & echo done");
            let e = run_hook(&hook(&cmd, 30_000), &std::env::temp_dir(), "b", "k")
                .expect_err("a hook whose leftover failed succeeded");
            let msg = e.to_string();
            assert!(
                msg.starts_with("hook 't' ") && msg.contains(status) && msg.ends_with("done\n"),
                "{msg}"
            );
        }
    }

    /// The daemon sees the hook's own end through the relay (see `pid_ns`): a
    /// signal stays a signal, and the relay, a copy of the daemon's memory,
    /// leaves no core file for a core-dumping one.
    #[test]
    fn a_hook_killed_by_a_signal_is_reported_so() {
        let dir = tempfile::tempdir().unwrap();
        for sig in [libc::SIGTERM, libc::SIGSEGV] {
            let e = run_hook(
                &hook(&format!("echo dying; kill -{sig} $$"), 10_000),
                dir.path(),
                "b",
                "k",
            )
            .unwrap_err();
            match e {
                SanitizeError::HookFailed {
                    exit_code,
                    signal,
                    output,
                    ..
                } => {
                    assert_eq!((exit_code, signal), (None, Some(sig)));
                    assert_eq!(output, "dying\n");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// A daemon killed by SIGKILL runs no cleanup: its hook kept running (as root,
    /// on a clone that will never be published) until its own timeout, and what
    /// the hook had daemonized (a database server) ran on even once the hook was
    /// made to die with the daemon. This test runs
    /// `hook_of_a_daemon_about_to_be_killed` in a child process standing in for
    /// the daemon, kills that child once the hook runs, and expects the hook and
    /// its daemonized sleeper to die with it.
    #[test]
    fn a_killed_daemon_takes_its_hook_and_what_it_started_along() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("hook.pid");
        let sleeper = dir.path().join("sleeper");
        let _kill = KillPids(vec![pid_file.clone(), sleeper.clone()]);
        let mut daemon = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "--test-threads=1"])
            .arg("control::sanitize::hook::tests::hook_of_a_daemon_about_to_be_killed")
            .env(PID_FILE_VAR, &pid_file)
            .env(SLEEPER_VAR, &sleeper)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if pid_file.exists() {
                break;
            }
            if Instant::now() > deadline {
                let _ = daemon.kill();
                let _ = daemon.wait();
                panic!("the hook did not start");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(sleeper.exists(), "the hook started its sleeper first");
        assert!(!marked(&pid_file).is_empty(), "the hook runs");
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        assert!(
            gone_within(&pid_file, 5),
            "the hook outlived the daemon that started it"
        );
        assert!(
            gone_within(&sleeper, 5),
            "what the hook daemonized outlived the daemon"
        );
    }

    const PID_FILE_VAR: &str = "COWFS_TEST_HOOK_PID_FILE";
    const SLEEPER_VAR: &str = "COWFS_TEST_HOOK_SLEEPER_FILE";

    /// Is `pid` a live process (not gone, not a zombie waiting for its reaper)?
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().to_string())
            })
            .is_some_and(|rest| !rest.starts_with('Z'))
    }

    /// The "daemon" of `a_killed_daemon_takes_its_hook_and_what_it_started_along`:
    /// runs a hook that daemonizes a sleeper, says it runs (`$PID_FILE`) and
    /// sleeps. Does nothing unless that test runs it.
    #[test]
    #[ignore = "run by a_killed_daemon_takes_its_hook_and_what_it_started_along in a process it kills"]
    fn hook_of_a_daemon_about_to_be_killed() {
        let (Some(pid_file), Some(sleeper)) = (
            std::env::var_os(PID_FILE_VAR),
            std::env::var_os(SLEEPER_VAR),
        ) else {
            return;
        };
        let mut h = daemonizing_hook(
            r#"read -r pid rest < /proc/self/stat; echo $pid > "$PID_FILE.new" && mv "$PID_FILE.new" "$PID_FILE" && exec sleep 60"#,
            120_000,
            Path::new(&sleeper),
        );
        h.env
            .insert("PID_FILE".into(), pid_file.to_string_lossy().into_owned());
        let _ = run_hook(&h, &std::env::temp_dir(), "b", "k");
    }

    const SUBREAPER_VAR: &str = "COWFS_TEST_SUBREAPER_DAEMON";

    /// A daemon that is a container's pid 1 or a child subreaper becomes the
    /// parent of whatever its children orphan. The timeout and cancel kill of a
    /// hook's process group took the relay before it reaped the namespace's
    /// init, which then stayed a zombie of the daemon, one per killed hook.
    /// PR_SET_CHILD_SUBREAPER is per process and would catch the orphans of the
    /// other tests of this binary, so the stand-in daemon
    /// (`hooks_of_a_subreaper_daemon`) is this binary run again.
    #[test]
    fn a_killed_hook_leaves_no_zombie_to_a_subreaper_daemon() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "--test-threads=1", "--nocapture"])
            .arg("control::sanitize::hook::tests::hooks_of_a_subreaper_daemon")
            .env(SUBREAPER_VAR, "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the stand-in daemon did not run"
        );
    }

    /// The stand-in daemon of `a_killed_hook_leaves_no_zombie_to_a_subreaper_daemon`:
    /// a child subreaper that has a hook time out and another cancelled, and
    /// then must have no child left, zombie or not. Does nothing unless that
    /// test runs it.
    #[test]
    #[ignore = "run by a_killed_hook_leaves_no_zombie_to_a_subreaper_daemon in a process of its own"]
    fn hooks_of_a_subreaper_daemon() {
        if std::env::var_os(SUBREAPER_VAR).is_none() {
            return;
        }
        // SAFETY: prctl on this process only, which runs this test alone.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) };
        assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
        let e = run_hook(&hook("sleep 30", 300), &std::env::temp_dir(), "b", "k").unwrap_err();
        assert!(matches!(e, SanitizeError::HookTimeout { .. }), "{e:?}");
        assert_no_child_within("the timeout", Duration::from_secs(2));
        let cancel = AtomicBool::new(false);
        let e = std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                cancel.store(true, Ordering::Relaxed);
            });
            run_hook_cancellable(
                &hook("sleep 30", 60_000),
                &std::env::temp_dir(),
                "b",
                "k",
                &cancel,
            )
            .unwrap_err()
        });
        assert!(matches!(e, SanitizeError::Cancelled), "{e:?}");
        assert_no_child_within("the cancel", Duration::from_secs(2));
    }

    /// Fails if a child of this process ends (or has ended) unreaped within
    /// `wait`: an orphan handed to it that nobody waits for.
    fn assert_no_child_within(after: &str, wait: Duration) {
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: waitid writes into the zeroed `info`; WNOWAIT leaves a
            // zombie as it is.
            let (r, pid) = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                let r = libc::waitid(
                    libc::P_ALL,
                    0,
                    &mut info,
                    libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                );
                (r, info.si_pid())
            };
            assert!(
                r != 0 || pid == 0,
                "after {after}: process {pid} was left a zombie of this subreaper"
            );
            if Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The hooks' PATH keeps the daemon's absolute entries, in order.
    #[test]
    fn relative_and_empty_path_entries_are_dropped() {
        let p = absolute_entries(OsStr::new(".:/usr/bin::bin:/opt/x/bin:"));
        assert_eq!(p, "/usr/bin:/opt/x/bin");
        assert_eq!(absolute_entries(OsStr::new(".::")), DEFAULT_PATH);
        assert_eq!(absolute_entries(OsStr::new("")), DEFAULT_PATH);
    }

    /// Lookup skips what exec would skip: missing names, non-executable files and
    /// directories.
    #[test]
    fn find_program_takes_the_first_executable() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, c) = (d.path().join("a"), d.path().join("b"), d.path().join("c"));
        for dir in [&a, &b, &c] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(a.join("prog"), "").unwrap();
        std::fs::create_dir(b.join("prog")).unwrap();
        std::fs::write(c.join("prog"), "").unwrap();
        std::fs::set_permissions(c.join("prog"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([&a, &b, &c]).unwrap();
        assert_eq!(find_program("prog", &path), Some(c.join("prog")));
        assert_eq!(find_program("other", &path), None);
    }

    const PLANTED: &str = "cowfs-test-planted-program";
    /// What the planted program prints.
    const PLANTED_RAN: &str = "the clone's program ran";
    const CLONE_VAR: &str = "COWFS_TEST_PLANTED_CLONE";

    /// A daemon whose PATH holds `.` or an empty entry (both: the working
    /// directory, for hooks the clone) ran a program planted in the clone's data,
    /// as root, for a hook program given by bare name and for a command its
    /// shell string runs. The daemon's PATH is process-wide, so the stand-in
    /// daemon is this test binary run again with that PATH
    /// (`hooks_of_a_daemon_with_a_relative_path_entry`).
    #[test]
    fn a_relative_path_entry_does_not_run_the_clones_program() {
        let clone = tempfile::tempdir().unwrap();
        let planted = clone.path().join(PLANTED);
        std::fs::write(&planted, format!("#!/bin/sh\necho \"{PLANTED_RAN}\"\n")).unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
        for path in [".:/usr/bin:/bin", "/usr/bin:/bin:"] {
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "--test-threads=1"])
                .arg("control::sanitize::hook::tests::hooks_of_a_daemon_with_a_relative_path_entry")
                .env("PATH", path)
                .env(CLONE_VAR, clone.path())
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "PATH={path}:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }

    /// The stand-in daemon of `a_relative_path_entry_does_not_run_the_clones_program`.
    /// Does nothing unless that test runs it.
    #[test]
    #[ignore = "run by a_relative_path_entry_does_not_run_the_clones_program with its own PATH"]
    fn hooks_of_a_daemon_with_a_relative_path_entry() {
        use super::super::config::SanitizeConfig;
        let Ok(clone) = std::env::var(CLONE_VAR) else {
            return;
        };
        let clone = Path::new(&clone);
        let output = |r: Result<HookReport, SanitizeError>| match r {
            Ok(r) => r.output,
            Err(SanitizeError::HookFailed { output, .. }) => output,
            Err(e) => e.to_string(),
        };
        let text = format!("[[profiles.p.hooks]]\nname = \"h\"\ncommand = [\"{PLANTED}\"]\n");
        match SanitizeConfig::parse(&text, Path::new("/etc/cowfs")) {
            Ok(cfg) => panic!(
                "a bare name found only in the clone was accepted; the hook said: {}",
                output(run_hook(&cfg.profiles["p"].hooks[0], clone, "b", "k"))
            ),
            Err(e) => assert!(e.to_string().contains("not in the daemon's PATH"), "{e}"),
        }
        let out = output(run_hook(&hook(PLANTED, 10_000), clone, "b", "k"));
        assert!(
            !out.contains(PLANTED_RAN),
            "the shell ran the clone's program: {out}"
        );
    }

    /// CAP_SYS_ADMIN out of this thread's effective capabilities until dropped
    /// (capabilities are per thread, and a child gets its forking thread's): a
    /// daemon that may not create PID namespaces, as in a container that
    /// refuses them.
    struct WithoutSysAdmin([CapData; 2]);

    /// `struct __user_cap_data_struct` (linux/capability.h).
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }

    /// `struct __user_cap_header_struct`, version 3, this thread.
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }

    const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    const CAP_SYS_ADMIN: u32 = 21;

    fn set_caps(data: &[CapData; 2]) {
        let mut h = CapHeader {
            version: CAPABILITY_VERSION_3,
            pid: 0,
        };
        // SAFETY: capset reads the header and two data structs, all live.
        let r = unsafe { libc::syscall(libc::SYS_capset, &mut h, data.as_ptr()) };
        assert_eq!(r, 0, "capset: {}", std::io::Error::last_os_error());
    }

    impl WithoutSysAdmin {
        fn new() -> WithoutSysAdmin {
            let mut h = CapHeader {
                version: CAPABILITY_VERSION_3,
                pid: 0,
            };
            let mut saved = [CapData::default(); 2];
            // SAFETY: capget writes the header and two data structs, all live.
            let r = unsafe { libc::syscall(libc::SYS_capget, &mut h, saved.as_mut_ptr()) };
            assert_eq!(r, 0, "capget: {}", std::io::Error::last_os_error());
            let mut less = saved;
            less[0].effective &= !(1 << CAP_SYS_ADMIN);
            set_caps(&less);
            WithoutSysAdmin(saved)
        }
    }

    impl Drop for WithoutSysAdmin {
        fn drop(&mut self) {
            set_caps(&self.0);
        }
    }

    /// Where the kernel refuses a PID namespace (no CAP_SYS_ADMIN; a container's
    /// seccomp policy; /proc/sys/user/max_pid_namespaces reached) the hook
    /// cannot run, and the error must say so: it said "cannot run /bin/sh:
    /// Operation not permitted", blaming the hook's program.
    #[test]
    fn a_refused_pid_namespace_is_named_as_the_cause() {
        let e = {
            let _no_admin = WithoutSysAdmin::new();
            run_hook(&hook("echo ran", 10_000), &std::env::temp_dir(), "b", "k").unwrap_err()
        };
        let msg = e.to_string();
        assert!(
            msg.contains("PID namespace")
                && msg.contains("unshare(CLONE_NEWPID)")
                && msg.contains("CAP_SYS_ADMIN")
                && msg.contains("max_pid_namespaces"),
            "{msg}"
        );
        assert!(!msg.contains("cannot run"), "{msg}");
        // The thread's capabilities are back: hooks run again.
        run_hook(&hook("echo ran", 10_000), &std::env::temp_dir(), "b", "k").unwrap();
    }

    /// The program's own exec error comes from the hook's process, two forks
    /// below the daemon's child: it still fails the spawn, at once, naming the
    /// program and not the namespace.
    #[test]
    fn a_program_that_cannot_run_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = hook("", 10_000);
        h.argv = vec![dir.path().join("gone").to_string_lossy().into_owned()];
        let start = Instant::now();
        let e = run_hook(&h, dir.path(), "b", "k").unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(5));
        match &e {
            SanitizeError::HookSpawn {
                program, source, ..
            } => {
                assert_eq!(program, &h.argv[0]);
                assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
            }
            other => panic!("{other:?}"),
        }
    }

    /// A hook runs on content a token may have written: by default neither it
    /// nor what it starts can open a connection to a service on the host (here a
    /// listener on the host's 127.0.0.1) or beyond; with `network = true` it can.
    #[test]
    fn a_hook_has_no_network_unless_its_profile_says_so() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut h = hook("", 10_000);
        // bash: /dev/tcp is its own; /bin/sh may be dash.
        h.argv = vec![
            "/bin/bash".into(),
            "-c".into(),
            format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
        ];
        let e = run_hook(&h, &std::env::temp_dir(), "b", "k").unwrap_err();
        let msg = e.to_string();
        assert!(
            matches!(e, SanitizeError::HookFailed { .. }) && !msg.contains("connected"),
            "{msg}"
        );
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "the hook reached the host's listener"
        );

        h.network = true;
        let r = run_hook(&h, &std::env::temp_dir(), "b", "k").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.output, "connected\n");
        assert!(listener.accept().is_ok(), "the connection arrived");
    }

    #[test]
    fn output_is_bounded() {
        let r = run_hook(
            &hook("head -c 300000 /dev/zero | tr '\\0' a; echo END", 10_000),
            &std::env::temp_dir(),
            "b",
            "k",
        )
        .unwrap();
        assert!(r.output.len() <= MAX_OUTPUT + 64 && r.output.ends_with("END\n"));
        assert!(r.output.starts_with("[earlier output dropped]"));
    }
}
