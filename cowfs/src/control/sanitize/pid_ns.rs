//! A hook and every process it starts live in a PID namespace of their own, so
//! that none of them outlives the hook or the daemon. PR_SET_PDEATHSIG covers
//! one process and is not inherited, and a process group is left by whatever
//! calls setsid (a server that daemonizes, `pg_ctl start`); such a process kept
//! the clone's files open after the daemon was killed. A PID namespace cannot be
//! left, and when its first process (its init) ends, the kernel SIGKILLs every
//! process still in it.
//!
//! `enter` runs between fork and exec of the process the daemon spawns, and
//! makes three processes of it:
//!
//! - the relay: the daemon's child and the leader of the hook's process group.
//!   It dies with the daemon (`die_with_parent`), waits for the init, and ends
//!   as the hook ended (its exit code, or the signal that killed it), so the
//!   daemon sees the hook's status. What an exit status cannot carry, what the
//!   hook left behind (`Leftovers`), it writes to the daemon's `Report` pipe.
//!   Asked to on its `Stop` pipe (a timeout, a cancel), it kills the init and
//!   reaps it before it ends. It never execs.
//! - the init: pid 1 of the new namespace. It dies with the relay (SIGKILL on
//!   parent death again), reaps the orphans the kernel hands it, and ends as
//!   soon as the hook does, taking every process left in the namespace along.
//!   Those it checks first (`leftovers`): a hook that exits without waiting for
//!   what it started (a scrubber in the background) would otherwise have it
//!   killed midway, or failing unseen, and a half-scrubbed clone published, so
//!   the daemon fails the hook instead.
//! - the hook: pid 2, the init's child; `enter` returns in it alone, and it
//!   execs the hook's program.
//!
//! The daemon dying in any way (SIGKILL, OOM killer) thus kills the relay, which
//! kills the init and with it the whole namespace. A timeout or cancel has the
//! relay kill the init (`Stop`) rather than killing the relay: a relay killed
//! before it reaped the init hands the init to the daemon's reaper, and where
//! that is the daemon itself (a container's pid 1, a child subreaper) nothing
//! waited for it: one zombie per killed hook. Inside, pids
//! are the namespace's (`$$`, `$!`, a postmaster.pid agree with each other and
//! with kill), but /proc is still the daemon's: `/proc/self` is right,
//! `/proc/$$` is not. The new namespace needs CAP_SYS_ADMIN, as the clone's
//! mount does.
//!
//! Everything here runs in a child forked from the multi-threaded daemon, before
//! exec: system calls only, no allocation, no locks.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::{c_int, c_uint};

use super::caps;
use super::sandbox::{Sandbox, MAX_STEPS};

/// The relay's exit code when the init ended without a status of the hook
/// (it failed to start it, or was killed), or when the relay could not pass on
/// the init's count of leftovers.
const NO_STATUS: c_int = 127;

/// How long the init lets processes left by the hook end by themselves before
/// it counts and kills them, in `LEFTOVER_TICK`s (one second): a process already
/// on its way out (a server whose pid file `pg_ctl stop -w` saw removed) is not
/// yet reaped the instant the hook exits. Only an exit code of 0 makes such a
/// process a server that was done: one that exits otherwise or is killed by a
/// signal within the grace fails the hook (see `Leftovers`).
const LEFTOVER_TICKS: u32 = 100;
const LEFTOVER_TICK: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: 10_000_000,
};

/// A failed step of the setup reaches the daemon as spawn's error, which
/// carries an errno value and nothing else, as does the hook program's own
/// exec failure. Unmarked, a refused unshare read "cannot run /bin/sh:
/// Operation not permitted". So the step's errors carry this bit (errno values
/// stay below 4096) and the step's number from `STEP_SHIFT` up.
const SETUP_FAILED: c_int = 1 << 30;
const STEP_SHIFT: u32 = 16;
const ERRNO_MASK: c_int = (1 << STEP_SHIFT) - 1;
/// A `Step::Sandbox` error carries the number of the sandbox's step that
/// failed, plus one, in the 10 bits from here (`sandbox::MAX_STEPS`).
const ITEM_SHIFT: u32 = 20;
const STEP_MASK: c_int = (1 << (ITEM_SHIFT - STEP_SHIFT)) - 1;

/// The steps of the setup whose failure `setup_failure` tells apart.
#[derive(Clone, Copy)]
enum Step {
    /// unshare(CLONE_NEWPID) in the relay.
    Unshare = 1,
    /// The relay's pipe and fork of the init.
    Init = 2,
    /// The init's checks and its fork of the hook.
    Hook = 3,
    /// unshare(CLONE_NEWNET) in the relay.
    Network = 4,
    /// Building the hook's mount namespace (`Sandbox::build`) in the init.
    Sandbox = 5,
    /// Dropping the capabilities the hook does not need, in the init.
    Capabilities = 6,
    /// The hook's process joining its memory cgroup (`cgroup`).
    Cgroup = 7,
}

/// `Step`'s error, errno taken from the failed call, marked for
/// `setup_failure`. Builds the io::Error from a number: no allocation.
fn failed(step: Step) -> io::Error {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    failed_with(step, errno)
}

fn failed_with(step: Step, errno: c_int) -> io::Error {
    io::Error::from_raw_os_error(SETUP_FAILED | (step as c_int) << STEP_SHIFT | errno & ERRNO_MASK)
}

/// The sandbox's step `item` failed with `errno`.
fn sandbox_failed(item: usize, errno: c_int) -> io::Error {
    let item = (item.min(MAX_STEPS) as c_int + 1) << ITEM_SHIFT;
    io::Error::from_raw_os_error(
        failed_with(Step::Sandbox, errno)
            .raw_os_error()
            .unwrap_or(0)
            | item,
    )
}

/// A setup step of `enter` that failed, as the daemon learns it from spawn.
#[derive(Debug)]
pub(super) struct SetupFailure {
    /// What failed.
    pub step: String,
    /// What the daemon may need for it (empty if nothing in particular).
    pub hint: &'static str,
    /// The step's own error.
    pub source: io::Error,
}

/// In the daemon, for an error of `Command::spawn` of a hook with `sandbox`:
/// the step of `enter` that failed, or `None` when the error is not one of
/// them (the hook's program could not be executed, its working directory
/// entered, ...).
pub(super) fn setup_failure(e: &io::Error, sandbox: &Sandbox) -> Option<SetupFailure> {
    let raw = e.raw_os_error()?;
    if raw & SETUP_FAILED == 0 {
        return None;
    }
    let source = io::Error::from_raw_os_error(raw & ERRNO_MASK);
    let item = (raw & !SETUP_FAILED) >> ITEM_SHIFT;
    if (raw >> STEP_SHIFT) & STEP_MASK == Step::Sandbox as c_int {
        let what = usize::try_from(item - 1)
            .ok()
            .and_then(|i| sandbox.describe(i))?;
        return Some(SetupFailure {
            step: format!("building its file system view (sandbox): {what}"),
            hint: " (the daemon needs CAP_SYS_ADMIN and a kernel with mount namespaces)",
            source,
        });
    }
    let (step, hint) = match (raw >> STEP_SHIFT) & STEP_MASK {
        s if s == Step::Unshare as c_int => (
            "unshare(CLONE_NEWPID)",
            " (the daemon needs CAP_SYS_ADMIN, a kernel with PID namespaces, and room \
             for one more: /proc/sys/user/max_pid_namespaces, at most 32 levels deep)",
        ),
        s if s == Step::Network as c_int => (
            "unshare(CLONE_NEWNET)",
            " (the daemon needs CAP_SYS_ADMIN and a kernel with network namespaces; \
             a hook that needs the host's network can set `network = true`)",
        ),
        s if s == Step::Capabilities as c_int => (
            "dropping capabilities (PR_CAPBSET_DROP, capset)",
            " (the daemon needs CAP_SETPCAP)",
        ),
        s if s == Step::Cgroup as c_int => (
            "joining its memory cgroup (writing to cgroup.procs)",
            " (the daemon needs root)",
        ),
        s if s == Step::Init as c_int => ("starting the namespace's init", ""),
        s if s == Step::Hook as c_int => ("starting the hook in the namespace", ""),
        _ => return None,
    };
    Some(SetupFailure {
        step: step.to_string(),
        hint,
        source,
    })
}

/// What the hook left behind when it exited, as the init found it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Leftovers {
    /// Processes still running at the end of the grace (`LEFTOVER_TICKS`),
    /// killed since.
    pub killed: u32,
    /// Processes that ended by themselves within the grace, but not with exit
    /// code 0. Nobody else could see how they ended (the init reaped them) and
    /// the hook did not wait for them: a background scrubber that failed or was
    /// killed (the OOM killer, or the hook's own kill that it did not wait out)
    /// left its work undone, which no status tells apart from a clean end. So
    /// they fail the hook, as `killed` ones do: fail closed.
    pub failed: u32,
    /// The wait status of the first of `failed` (0 if none).
    pub first_failure: c_int,
}

/// `Leftovers` as the init and the relay pass them on: three native-endian
/// 32-bit numbers, in one write no larger than PIPE_BUF (atomic).
const LEFTOVERS_LEN: usize = 12;

impl Leftovers {
    fn any(&self) -> bool {
        self.killed != 0 || self.failed != 0
    }

    /// In the init: `status` is the wait status of a process reaped in the grace.
    fn ended(&mut self, status: c_int) {
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            return;
        }
        if self.failed == 0 {
            self.first_failure = status;
        }
        self.failed = self.failed.saturating_add(1);
    }

    fn to_bytes(self) -> [u8; LEFTOVERS_LEN] {
        let mut b = [0u8; LEFTOVERS_LEN];
        b[..4].copy_from_slice(&self.killed.to_ne_bytes());
        b[4..8].copy_from_slice(&self.failed.to_ne_bytes());
        b[8..].copy_from_slice(&self.first_failure.to_ne_bytes());
        b
    }

    fn from_bytes(b: [u8; LEFTOVERS_LEN]) -> Leftovers {
        let [k0, k1, k2, k3, f0, f1, f2, f3, s0, s1, s2, s3] = b;
        Leftovers {
            killed: u32::from_ne_bytes([k0, k1, k2, k3]),
            failed: u32::from_ne_bytes([f0, f1, f2, f3]),
            first_failure: c_int::from_ne_bytes([s0, s1, s2, s3]),
        }
    }
}

/// The pipe on which the relay tells the daemon what the hook left behind
/// (`Leftovers`). The relay's exit status is the hook's, every value of which a
/// hook can produce itself, so this cannot travel in it; the daemon makes the
/// pipe, the relay keeps its write end (`enter`), and the daemon reads it once
/// it has waited for the relay.
pub(super) struct Report(OwnedFd);

impl Report {
    /// The daemon's read end, and the write end to pass to `enter` and close
    /// once the relay is spawned.
    pub(super) fn new() -> io::Result<(Report, OwnedFd)> {
        let mut fds: [c_int; 2] = [-1; 2];
        // Non-blocking: a relay killed before it wrote leaves nothing to wait
        // for, and other children of the daemon may hold the write end for the
        // moment between their fork and their exec (or close_all_but).
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned by nothing else.
        let [read, write] = fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        Ok((Report(read), write))
    }

    /// Once the relay was waited for: what the hook left behind (nothing if
    /// the relay wrote nothing).
    pub(super) fn leftovers(&self) -> Leftovers {
        let mut bytes = [0u8; LEFTOVERS_LEN];
        // SAFETY: read into a live buffer of LEFTOVERS_LEN bytes; the relay's
        // one write of as many is atomic, so this gets all of it or nothing.
        let n = unsafe { libc::read(self.0.as_raw_fd(), bytes.as_mut_ptr().cast(), bytes.len()) };
        if n == LEFTOVERS_LEN as isize {
            Leftovers::from_bytes(bytes)
        } else {
            Leftovers::default()
        }
    }
}

/// The pipe on which the daemon asks the relay to end the hook (a timeout, a
/// cancel): the relay then SIGKILLs the init, which ends the namespace, and
/// reaps it before it ends itself. The daemon keeps the write end; the relay
/// gets the read end (`enter`).
pub(super) struct Stop(OwnedFd);

impl Stop {
    /// The daemon's write end, and the read end to pass to `enter` and close
    /// once the relay is spawned.
    pub(super) fn new() -> io::Result<(Stop, OwnedFd)> {
        let mut fds: [c_int; 2] = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are new and owned by nothing else.
        let [read, write] = fds.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) });
        Ok((Stop(write), read))
    }

    /// Ask the relay to end the hook; the relay then ends by itself.
    pub(super) fn request(&self) {
        // SAFETY: write of one byte from a live buffer into an empty pipe, which
        // neither blocks nor fails short.
        unsafe { libc::write(self.0.as_raw_fd(), [1u8].as_ptr().cast(), 1) };
    }
}

/// Turn the process just forked for a hook into the relay, the init and the
/// hook described above; returns `Ok` in the hook only, which then execs.
/// `daemon` is the daemon's pid, `report` the write end of its `Report`, `stop`
/// the read end of its `Stop`, `cgroup_procs` the `cgroup.procs` of the
/// hook's memory cgroup, which the hook's process joins before it execs (-1:
/// none, the run has no memory cgroup). An
/// error before the relay forks, or in the init before the hook forks, is
/// returned there and fails the spawn with it (see `setup_failure`); otherwise
/// the relay and the init end with `_exit`.
///
/// Only for `pre_exec`.
pub(super) fn enter(
    daemon: libc::pid_t,
    report: c_int,
    stop: c_int,
    own_network: bool,
    sandbox: &Sandbox,
    cgroup_procs: c_int,
) -> io::Result<()> {
    // The relay and the init are copies of the daemon's memory (keys, token
    // secrets): no core dump of them, no ptrace by other users' processes. The
    // hook's exec makes it dumpable again.
    // SAFETY: prctl is a system call that touches none of our memory.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    die_with_parent(daemon)?;
    let mut fds: [c_int; 2] = [-1; 2];
    // SAFETY: unshare and pipe2 are system calls; `fds` is a valid array of two.
    unsafe {
        if libc::unshare(libc::CLONE_NEWPID) != 0 {
            return Err(failed(Step::Unshare));
        }
        // The relay itself enters it, so the init and the hook are born in it:
        // a network namespace of their own has only a loopback interface, and
        // that one down. Unix sockets by path still work (a database server on
        // the clone), TCP and UDP do not, to the host or beyond: what the hook
        // starts on the clone's files cannot reach other services or send the
        // clone's data out. After the PID namespace, so that a daemon without
        // CAP_SYS_ADMIN is told about that one first.
        if own_network && libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(failed(Step::Network));
        }
        if libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
            return Err(failed(Step::Init));
        }
    }
    // The init reports the hook's status through this pipe; while the relay
    // lives, the pipe has a reader, which is how the init tells that it does.
    let [status_r, status_w] = fds;
    // SAFETY: fork in a single-threaded child; each side goes on with system
    // calls only, and closes the end of the pipe it does not use.
    match unsafe { libc::fork() } {
        -1 => {
            let e = failed(Step::Init);
            close(status_r);
            close(status_w);
            Err(e)
        }
        0 => {
            close(status_r);
            init(status_w, sandbox, cgroup_procs)
        }
        init_pid => {
            close(status_w);
            relay(init_pid, status_r, report, stop)
        }
    }
}

/// In the relay: ask the kernel to SIGKILL it when its parent, the daemon,
/// dies. `parent` is the daemon's pid: if it already died between fork and
/// prctl, the signal will never come, so the hook is not started (spawn fails).
/// The kernel sends the signal when the *thread* that forked exits, not the
/// process: `run_hook_cancellable` spawns on the calling thread and does not
/// return before it has waited for the relay, so that thread outlives it.
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: prctl and getppid are system calls that touch none of our memory;
    // building the io::Error from errno does not allocate.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// The init, pid 1 of the new namespace: starts the hook (returning in it) and
/// waits for it; never returns otherwise.
fn init(status_w: c_int, sandbox: &Sandbox, cgroup_procs: c_int) -> io::Result<()> {
    // SAFETY: prctl and poll are system calls; `p` is a valid pollfd.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(failed(Step::Hook));
        }
        // getppid says 0 here (the relay is outside the namespace), so whether
        // the relay died before the prctl shows on the pipe: no reader left. A
        // dying process closes its files before the kernel signals its
        // children, so either this poll sees the relay gone or the signal comes.
        let mut p = libc::pollfd {
            fd: status_w,
            events: 0,
            revents: 0,
        };
        if libc::poll(&mut p, 1, 0) < 0 {
            return Err(failed(Step::Hook));
        }
        if p.revents & libc::POLLERR != 0 {
            return Err(failed_with(Step::Hook, libc::ESRCH));
        }
    }
    // The init, not the relay, builds the hook's mount namespace: /proc shows
    // the PID namespace of the process that mounts it, and only the init and
    // its descendants are in the new one (unshare(CLONE_NEWPID) moved the
    // relay's children, not the relay). Before the hook's fork, so that the
    // hook starts inside; the init, which only waits and kills, may as well
    // live there too. The relay stays in the daemon's mount namespace: it
    // holds nothing of the sandbox, so the namespace (its tmpfs mounts, its
    // bind of the clone) is gone the moment the init and the hook are, before
    // the relay's end tells the daemon to unmount the clone. After the PID
    // and network namespaces, whose errors say what the daemon lacks first.
    if let Err((item, errno)) = sandbox.build() {
        return Err(sandbox_failed(item, errno));
    }
    // Root with every capability could undo what was just built (see `caps`).
    if let Err(errno) = caps::keep_only_what_hooks_need() {
        return Err(failed_with(Step::Capabilities, errno));
    }
    // SAFETY: fork in the single-threaded init; see `enter`.
    let hook = unsafe { libc::fork() };
    match hook {
        -1 => Err(failed(Step::Hook)),
        0 => {
            close(status_w);
            // The hook's process alone joins the memory cgroup, before it
            // execs: what it runs is born in it. "0" is the writer itself.
            // SAFETY: write of one byte from a static buffer.
            if cgroup_procs >= 0
                && unsafe { libc::write(cgroup_procs, b"0".as_ptr().cast(), 1) } != 1
            {
                return Err(failed(Step::Cgroup));
            }
            // What the daemon holds without FD_CLOEXEC (what it inherited from
            // whatever started it) would pass through the exec to the hook and
            // the server it starts: a descriptor on a host file is a way
            // around the sandbox. Marked rather than closed: spawn's own pipe,
            // which reports a failed exec, is among them (and closes at exec).
            cloexec_from(3);
            Ok(())
        }
        _ => {
            // The hook holds what it needs (its stdio and spawn's error pipe);
            // kept here, they would stay open after it ends.
            close_all_but(&[status_w]);
            let status = wait_for(hook);
            if let Some(st) = status {
                let mut bytes = [0u8; INIT_REPORT_LEN];
                bytes[..4].copy_from_slice(&st.to_ne_bytes());
                bytes[4..].copy_from_slice(&leftovers().to_bytes());
                // SAFETY: write from a live buffer of INIT_REPORT_LEN bytes; a
                // pipe write this small is atomic.
                unsafe { libc::write(status_w, bytes.as_ptr().cast(), bytes.len()) };
            }
            // Exiting ends the namespace: the kernel kills whatever is left.
            exit(if status.is_some() { 0 } else { NO_STATUS })
        }
    }
}

/// In the init: reap every child until `hook` ends; its wait status.
fn wait_for(hook: libc::pid_t) -> Option<c_int> {
    loop {
        let mut st: c_int = 0;
        // SAFETY: waitpid writes the status into `st`.
        let pid = unsafe { libc::waitpid(-1, &mut st, 0) };
        if pid == hook {
            return Some(st);
        }
        if pid < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

/// What the init writes to the relay once the hook ended: the hook's wait
/// status, then `Leftovers`.
const INIT_REPORT_LEN: usize = 4 + LEFTOVERS_LEN;

/// In the init, once the hook has ended: what it left behind, the processes
/// still running killed (and reaped) now. Every process of the namespace
/// descends from the init or was handed to it as an orphan, so while any runs,
/// the init has a child that is not yet a zombie: waitpid(WNOHANG) says 0
/// instead of ECHILD. Those that end within the grace are checked (`ended`);
/// those that ended while the hook ran are not: the hook was there to wait for
/// them and check their work.
fn leftovers() -> Leftovers {
    let mut found = Leftovers::default();
    let mut ticks = 0;
    loop {
        let mut st: c_int = 0;
        // SAFETY: waitpid writes the status into `st`.
        match unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG) } {
            0 if ticks < LEFTOVER_TICKS => {
                ticks += 1;
                // SAFETY: nanosleep reads the live `LEFTOVER_TICK`.
                unsafe { libc::nanosleep(&LEFTOVER_TICK, std::ptr::null_mut()) };
            }
            0 => break,
            pid if pid > 0 => found.ended(st),
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return found,
        }
    }
    // kill(-1) from a namespace's init signals every other process in it (and
    // in namespaces below it). Their orphaned children come to the init, so it
    // reaps all of them, which counts them.
    // SAFETY: kill and waitpid are system calls; no memory is written.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    loop {
        // SAFETY: waitpid with a null status pointer writes nothing.
        match unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } {
            pid if pid > 0 => found.killed = found.killed.saturating_add(1),
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return found,
        }
    }
}

/// The relay: wait for the init (killing it first if the daemon asks on
/// `stop`), pass on to the daemon (on `report`) what the hook left behind, then
/// end as the hook did.
fn relay(init: libc::pid_t, status_r: c_int, report: c_int, stop: c_int) -> ! {
    // Its copies of the daemon's descriptors (its FUSE connections, sockets, the
    // pipe spawn waits on to see the exec) are not the relay's to keep open.
    let mut keep = [status_r, report, stop];
    keep.sort_unstable();
    close_all_but(&keep);
    let mut bytes = [0u8; INIT_REPORT_LEN];
    let mut got = 0;
    let mut polled = [
        libc::pollfd {
            fd: status_r,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // Both until the daemon asks to stop, then the init's pipe alone.
    let mut watched: libc::nfds_t = 2;
    while got < bytes.len() {
        // SAFETY: poll reads and writes the first `watched` entries of `polled`.
        if unsafe { libc::poll(polled.as_mut_ptr(), watched, -1) } < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            break;
        }
        if watched == 2 && polled[1].revents != 0 {
            // The init is not reaped before this loop ends, so its pid is still
            // its own. Its end takes the namespace along; the loop then reads
            // its pipe's end and the wait below reaps it.
            // SAFETY: kill is a system call; no memory is involved.
            unsafe { libc::kill(init, libc::SIGKILL) };
            watched = 1;
        }
        if polled[0].revents == 0 {
            continue;
        }
        // SAFETY: read into the unfilled rest of `bytes`.
        let n = unsafe {
            libc::read(
                status_r,
                bytes[got..].as_mut_ptr().cast(),
                bytes.len() - got,
            )
        };
        match n {
            n if n > 0 => got += n as usize,
            0 => break,
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => break,
        }
    }
    let mut init_status: c_int = 0;
    loop {
        // SAFETY: waitpid writes the status into `init_status`.
        let r = unsafe { libc::waitpid(init, &mut init_status, 0) };
        if r >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
    // Without a report, the init's own end stands for the hook's (SIGKILL at the
    // daemon's request, or its failure to start the hook).
    let (st, left) = if got == bytes.len() {
        let [a, b, c, d, rest @ ..] = bytes;
        (
            c_int::from_ne_bytes([a, b, c, d]),
            Leftovers::from_bytes(rest),
        )
    } else {
        (init_status, Leftovers::default())
    };
    if left.any() {
        let left = left.to_bytes();
        // SAFETY: write from a live buffer to the daemon's pipe, empty and with
        // its reader alive (the relay dies with the daemon).
        let n = unsafe { libc::write(report, left.as_ptr().cast(), left.len()) };
        if n != LEFTOVERS_LEN as isize {
            // Unreported, the leftovers would pass for none: fail instead.
            exit(NO_STATUS);
        }
    }
    if libc::WIFSIGNALED(st) {
        die_by(libc::WTERMSIG(st));
    }
    exit(if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else {
        NO_STATUS
    })
}

/// End the relay by the signal `sig`, as the hook ended.
fn die_by(sig: c_int) -> ! {
    // SAFETY: system calls on this process only; `dfl` and `set` are valid
    // structures initialised by sigemptyset before use.
    unsafe {
        // The relay is a copy of the daemon's memory (keys, token secrets): a
        // core-dumping signal must not write it out. `enter` made it
        // undumpable; fs.suid_dumpable=2 dumps such processes all the same.
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        let mut dfl: libc::sigaction = std::mem::zeroed();
        dfl.sa_sigaction = libc::SIG_DFL;
        libc::sigemptyset(&mut dfl.sa_mask);
        libc::sigaction(sig, &dfl, std::ptr::null_mut());
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::kill(libc::getpid(), sig);
    }
    // A signal whose default is not to end the process: the shell's convention.
    exit(128 + sig)
}

fn exit(code: c_int) -> ! {
    // SAFETY: _exit ends the process without running anything of the daemon's
    // (no atexit handlers, no destructors of its state).
    unsafe { libc::_exit(code) }
}

fn close(fd: c_int) {
    // SAFETY: closes a descriptor this process owns.
    unsafe { libc::close(fd) };
}

/// Close every descriptor but those of `keep` (in ascending order).
fn close_all_but(keep: &[c_int]) {
    let mut first: c_uint = 0;
    for &k in keep {
        let k = k as c_uint;
        if k > first {
            close_range(first, k - 1);
        }
        first = first.max(k + 1);
    }
    close_range(first, c_uint::MAX);
}

/// Mark every descriptor from `first` up close-on-exec.
fn cloexec_from(first: c_uint) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    let flag = libc::CLOSE_RANGE_CLOEXEC;
    if unsafe { libc::syscall(libc::SYS_close_range, first, c_uint::MAX, flag) } == 0 {
        return;
    }
    // Linux before 5.11: one by one, up to the descriptor limit (those not
    // open fail with EBADF).
    for fd in first..=open_limit(c_uint::MAX) {
        // SAFETY: fcntl on a descriptor number only sets its flag.
        unsafe { libc::fcntl(fd as c_int, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
}

/// The highest descriptor number that can be open, at most `last`.
fn open_limit(last: c_uint) -> c_uint {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    // The kernel's default ceiling (fs.nr_open) where the limit is unknown or
    // unlimited: that is not a loop bound.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return last.min((1 << 20) - 1);
    }
    u64::from(last)
        .min(lim.rlim_cur.saturating_sub(1))
        .min((1 << 20) - 1) as c_uint
}

/// Close descriptors `first..=last`.
fn close_range(first: c_uint, last: c_uint) {
    // SAFETY: close_range only closes descriptors, none of which this process
    // uses any more.
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, 0 as c_uint) } == 0 {
        return;
    }
    // Linux before 5.9: one by one, up to the descriptor limit.
    for fd in first..=open_limit(last) {
        close(fd as c_int);
    }
}
