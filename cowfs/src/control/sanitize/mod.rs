//! The sanitize engine: turn a fresh clone into one that holds no personal data.
//!
//! - `config`: profiles from the daemon's TOML config (file rules and hooks)
//! - `detect`: value detectors (email, phone, card, IPv4/IPv6, IBAN, custom regex)
//! - `pseudo`: keyed, deterministic, shape-keeping pseudonyms; masks
//! - `scan`: streaming redaction of one file with a carry between chunks
//! - `apply`: the tree walk applying file rules through the pool API
//! - `hook`: hook commands, with a private mount of the clone
//! - `host_path`: a hook's listed host paths, resolved without symlinks
//! - `pid_ns`: the PID namespace a hook and everything it starts run in
//! - `cgroup`: the memory cgroup that limits a hook and everything it starts
//! - `private_dir`: the directory of that mount, reachable by the daemon alone
//! - `key`: the per-pool pseudonym key beside the pool
//!
//! The control plane calls `run` (file rules) and then `run_hooks` on a clone in
//! state `sanitizing`, and publishes the clone only if both succeed.

mod apply;
mod caps;
mod cgroup;
pub mod config;
pub mod detect;
pub mod hook;
pub mod host_path;
pub mod key;
mod mount_attr;
mod pid_ns;
pub(crate) mod private_dir;
pub mod pseudo;
pub mod sandbox;
pub mod scan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use crate::fs::FsError;
use crate::fuse::MountError;
use crate::pool::{Pool, PoolError};

pub use apply::CHUNK;
pub use config::{Profile, SanitizeConfig};
pub use hook::{run_hook, run_hook_cancellable, run_hooks, run_hooks_cancellable, HookReport};
pub use key::{key_path, load_or_create_key};

/// Progress of a run, reported after every chunk and every file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    /// Path (relative to the branch root) being scanned.
    pub current: String,
}

/// What the file rules did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SanitizeReport {
    /// Regular files read by a `redact` rule (binary ones skipped included).
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    /// Files rewritten because a value was found in them.
    pub files_changed: u64,
    pub files_removed: u64,
    pub files_truncated: u64,
    pub files_replaced: u64,
    /// Files a `redact` rule skipped because they look binary.
    pub binary_files_skipped: u64,
    /// Values replaced, by detector name ("email", "card", a pattern's name...),
    /// in contents, names, symlink targets and xattrs.
    pub values_replaced: BTreeMap<String, u64>,
    /// Entries (files, directories, symlinks...) renamed because their name held a value.
    pub names_changed: u64,
    /// Symlinks recreated because their target held a value.
    pub symlinks_changed: u64,
    /// `user.*` xattr values rewritten because they held a value.
    pub xattrs_changed: u64,
}

/// Errors of the sanitize engine; each names what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SanitizeError {
    #[error("{}sanitize config: {why}", file.as_ref().map(|f| format!("{}: ", f.display())).unwrap_or_default())]
    Config { file: Option<PathBuf>, why: String },
    #[error("no sanitize profile named '{name}' (known: {})", if known.is_empty() { "none".to_string() } else { known.join(", ") })]
    UnknownProfile { name: String, known: Vec<String> },
    #[error("sanitize: branch '{branch}': {source}")]
    Branch { branch: String, source: PoolError },
    #[error("sanitize: {}{what} '{path}': {source}", if rule.is_empty() { String::new() } else { format!("{rule}: ") })]
    File {
        /// The rule(s) being applied ("rule 2 ('emails')"), empty for the walk.
        rule: String,
        path: String,
        what: &'static str,
        source: FsError,
    },
    /// Redacting an entry's name or symlink target gave one that cannot be stored.
    #[error("sanitize: {rule}: '{path}': the redacted {what} {why}")]
    Name {
        rule: String,
        /// The entry's original path.
        path: String,
        /// "name" or "symlink target".
        what: &'static str,
        why: String,
    },
    #[error("sanitize key {path}: {source}")]
    Key {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sanitize key {0}: not a key of 64 hex digits (32 bytes): damaged or cut short; restore the pool's key file (pseudonyms depend on it) or remove it to start a new one")]
    KeyInvalid(PathBuf),
    #[error("sanitize key is shorter than 16 bytes")]
    KeyTooShort,
    #[error("hook '{hook}': cannot run {program}: {source}")]
    HookSpawn {
        hook: String,
        program: String,
        source: std::io::Error,
    },
    /// The hook's PID, network or mount namespace (see `pid_ns`, `sandbox`)
    /// could not be set up.
    #[error("hook '{hook}': cannot start it in namespaces of its own: {step}: {source}{hint}")]
    HookNamespace {
        hook: String,
        step: String,
        hint: &'static str,
        source: std::io::Error,
    },
    #[error("hook '{hook}' failed ({}); its output:\n{output}", exit_status(*exit_code, *signal))]
    HookFailed {
        hook: String,
        exit_code: Option<i32>,
        signal: Option<i32>,
        output: String,
    },
    /// The hook exited 0 but processes it started still ran (killed since):
    /// whatever they were doing to the clone was cut short.
    #[error("hook '{hook}' exited but left {} running; wait for them before exiting (they were killed); its output:\n{output}", processes_left(*processes))]
    HookLeftProcesses {
        hook: String,
        processes: u32,
        output: String,
    },
    /// The hook exited 0 but processes it left running ended within the grace
    /// (see `pid_ns::Leftovers`) other than with exit code 0: whatever they
    /// were doing to the clone may be undone. `exit_code` and `signal` are the
    /// first one's.
    #[error("hook '{hook}' exited but {}; wait for what it starts and check that it succeeded; its output:\n{output}", leftovers_failed(*processes, *exit_code, *signal))]
    HookLeftoverFailed {
        hook: String,
        processes: u32,
        exit_code: Option<i32>,
        signal: Option<i32>,
        output: String,
    },
    /// The hook's memory cgroup (see `cgroup`) could not be made: the hook
    /// was not run, rather than run without its limit.
    #[error("hook '{hook}' was not run: its memory limit (memory_max_mib = {memory_max_mib}) cannot be applied: {}: {why}", cgroup.display())]
    HookMemoryLimit {
        hook: String,
        memory_max_mib: u32,
        cgroup: PathBuf,
        why: String,
    },
    /// The OOM killer killed processes of the hook at its memory limit: what
    /// they were doing to the clone was cut short, whatever the hook's status.
    #[error("hook '{hook}' exceeded its memory limit of {memory_max_mib} MiB (memory_max_mib): the kernel killed {} of it (raise memory_max_mib if it needs more); its output:\n{output}", processes_left(*oom_kills))]
    HookOutOfMemory {
        hook: String,
        memory_max_mib: u32,
        oom_kills: u32,
        output: String,
    },
    #[error("hook '{hook}' timed out after {timeout_secs} s and was killed (raise timeout_secs if it needs longer); its output:\n{output}")]
    HookTimeout {
        hook: String,
        timeout_secs: u64,
        output: String,
    },
    #[error("sanitize: scratch directory {dir}: {source}")]
    Scratch {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("sanitize: private mount of '{branch}' for hooks: {source}")]
    Mount {
        branch: String,
        source: Box<MountError>,
    },
    #[error("sanitize: something was mounted inside the hooks' private mount of the clone ({}), so the hooks did not see the clone; it is not published", mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", "))]
    Shadowed { mounts: Vec<PathBuf> },
    #[error("sanitize: the mounts on the path to the hooks' private mount of the clone changed while the hooks ran (mounted or unmounted at: {}), so the hooks may not have worked on the clone; it is not published", mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", "))]
    PathChanged { mounts: Vec<PathBuf> },
    #[error("sanitize: cancelled (the daemon is stopping)")]
    Cancelled,
}

/// Stands for a path in errors to tokens that may not read the parent.
const PATH_HIDDEN: &str =
    "(a path shown only to tokens that may read the parent, and in the daemon's log)";

/// A process's end, from its exit code or the signal that killed it.
fn exit_status(exit_code: Option<i32>, signal: Option<i32>) -> String {
    match (exit_code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "no exit status".to_string(),
    }
}

/// What `HookLeftoverFailed` says of the processes.
fn leftovers_failed(n: u32, exit_code: Option<i32>, signal: Option<i32>) -> String {
    let status = exit_status(exit_code, signal);
    if n == 1 {
        format!("a process it left running failed right after it ({status})")
    } else {
        format!("{n} processes it left running failed right after it (the first: {status})")
    }
}

fn processes_left(n: u32) -> String {
    if n == 1 {
        "1 process".to_string()
    } else {
        format!("{n} processes")
    }
}

fn rule_prefix(rule: &str) -> String {
    if rule.is_empty() {
        String::new()
    } else {
        format!("{rule}: ")
    }
}

impl SanitizeError {
    /// The error without a hook's output or a path, for clients that may not read
    /// the parent (both show its data); the daemon's log has the whole error.
    pub fn without_output(&self) -> String {
        match self {
            SanitizeError::HookFailed { hook, exit_code, signal, .. } => format!(
                "hook '{hook}' failed ({}); its output is in the daemon's log (only tokens that may read the parent get it)",
                exit_status(*exit_code, *signal)
            ),
            SanitizeError::HookLeftoverFailed { hook, processes, exit_code, signal, .. } => format!(
                "hook '{hook}' exited but {}; wait for what it starts and check that it succeeded; its output is in the daemon's log (only tokens that may read the parent get it)",
                leftovers_failed(*processes, *exit_code, *signal)
            ),
            SanitizeError::HookLeftProcesses { hook, processes, .. } => format!(
                "hook '{hook}' exited but left {} running; wait for them before exiting (they were killed); its output is in the daemon's log (only tokens that may read the parent get it)",
                processes_left(*processes)
            ),
            SanitizeError::HookOutOfMemory { hook, memory_max_mib, oom_kills, .. } => format!(
                "hook '{hook}' exceeded its memory limit of {memory_max_mib} MiB (memory_max_mib): the kernel killed {} of it (raise memory_max_mib if it needs more); its output is in the daemon's log (only tokens that may read the parent get it)",
                processes_left(*oom_kills)
            ),
            SanitizeError::HookTimeout { hook, timeout_secs, .. } => format!(
                "hook '{hook}' timed out after {timeout_secs} s and was killed (raise timeout_secs if it needs longer); its output is in the daemon's log (only tokens that may read the parent get it)"
            ),
            // The path is the parent's: its names may hold the very values the
            // rules redact in the clone.
            SanitizeError::File { rule, what, source, .. } => format!(
                "sanitize: {}{what} {PATH_HIDDEN}: {source}",
                rule_prefix(rule)
            ),
            SanitizeError::Name { rule, what, why, .. } => format!(
                "sanitize: {}{PATH_HIDDEN}: the redacted {what} {why}",
                rule_prefix(rule)
            ),
            other => other.to_string(),
        }
    }
}

/// Apply the file rules of `profile` to `branch` (a writable branch, normally a
/// fresh clone nobody can see yet). Files are streamed in chunks; a file in which
/// nothing is found is not written. Does not commit and does not run hooks.
pub fn run(
    pool: &Pool,
    branch: &str,
    profile: &Profile,
    key: &[u8],
    progress: &mut dyn FnMut(Progress),
) -> Result<SanitizeReport, SanitizeError> {
    run_cancellable(
        pool,
        branch,
        profile,
        key,
        progress,
        &AtomicBool::new(false),
    )
}

/// `run`, stopping with `Cancelled` soon after `cancel` is set (checked before
/// every file and every chunk).
pub fn run_cancellable(
    pool: &Pool,
    branch: &str,
    profile: &Profile,
    key: &[u8],
    progress: &mut dyn FnMut(Progress),
    cancel: &AtomicBool,
) -> Result<SanitizeReport, SanitizeError> {
    let pseudo = pseudo::Pseudonymizer::new(key).ok_or(SanitizeError::KeyTooShort)?;
    let b = pool
        .branch_id(branch)
        .map_err(|source| SanitizeError::Branch {
            branch: branch.to_string(),
            source,
        })?;
    if pool.is_read_only(b).map_err(|e| SanitizeError::Branch {
        branch: branch.to_string(),
        source: PoolError::Fs(e),
    })? {
        return Err(SanitizeError::Branch {
            branch: branch.to_string(),
            source: PoolError::Fs(FsError::Posix(libc::EROFS)),
        });
    }
    let mut w = apply::Walker::new(pool, b, profile, &pseudo, progress, cancel);
    w.run()?;
    Ok(w.report)
}
