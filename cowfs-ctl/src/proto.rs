//! The control protocol's types: one JSON object per line in each direction.
//! `format-spec/control-protocol.md` is the normative description; these types are
//! its Rust rendering and are shared by the daemon and the client.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line a daemon accepts by default (bytes, newline included).
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Longest reply line the client accepts (a diff of a large change can be long).
pub const MAX_REPLY_BYTES: usize = 256 << 20;

/// Longest branch, snapshot or token name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// A request, as sent on the wire: `{"id": 1, "op": "...", "args": {...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "args", rename_all = "snake_case")]
pub enum Request {
    /// Must be the first request of a connection.
    Hello {
        version: u32,
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        client: Option<String>,
    },
    List {},
    Info {
        name: String,
    },
    BranchCreate {
        name: String,
        from: String,
        #[serde(default)]
        mount: Option<MountSpec>,
        /// Sanitize profile to run on the new branch before anyone may use it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sanitize: Option<String>,
        /// Ask for `progress` lines while the branch is sanitized.
        #[serde(default, skip_serializing_if = "is_false")]
        progress: bool,
    },
    SnapshotCreate {
        name: String,
        from: String,
    },
    GroupCreate {
        members: Vec<GroupMember>,
    },
    Rename {
        old: String,
        new: String,
    },
    Delete {
        name: String,
    },
    Mount {
        name: String,
        dir: String,
        #[serde(default)]
        read_only: bool,
    },
    Unmount {
        dir: String,
    },
    Mounts {},
    Diff {
        a: String,
        b: String,
    },
    Reset {
        branch: String,
        to: String,
    },
    Protect {
        name: String,
        /// Every branch a non-admin token creates from it runs this profile.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        require_sanitize: Option<String>,
        /// End the read-write mounts of tokens without `admin` on the branch
        /// (refused with `mounted` without it).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    Unprotect {
        name: String,
    },
    Usage {},
    QuotaSet {
        name: String,
        #[serde(default)]
        max_bytes: Option<u64>,
        #[serde(default)]
        reserve_bytes: u64,
    },
    QuotaList {},
    TokenCreate {
        name: String,
        scopes: Vec<Grant>,
    },
    TokenList {},
    TokenRevoke {
        name: String,
    },
}

impl Request {
    /// Every operation name, as it appears in the `op` field.
    pub const OPS: &'static [&'static str] = &[
        "hello",
        "list",
        "info",
        "branch_create",
        "snapshot_create",
        "group_create",
        "rename",
        "delete",
        "mount",
        "unmount",
        "mounts",
        "diff",
        "reset",
        "protect",
        "unprotect",
        "usage",
        "quota_set",
        "quota_list",
        "token_create",
        "token_list",
        "token_revoke",
    ];

    /// The `op` field of this request.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::List {} => "list",
            Request::Info { .. } => "info",
            Request::BranchCreate { .. } => "branch_create",
            Request::SnapshotCreate { .. } => "snapshot_create",
            Request::GroupCreate { .. } => "group_create",
            Request::Rename { .. } => "rename",
            Request::Delete { .. } => "delete",
            Request::Mount { .. } => "mount",
            Request::Unmount { .. } => "unmount",
            Request::Mounts {} => "mounts",
            Request::Diff { .. } => "diff",
            Request::Reset { .. } => "reset",
            Request::Protect { .. } => "protect",
            Request::Unprotect { .. } => "unprotect",
            Request::Usage {} => "usage",
            Request::QuotaSet { .. } => "quota_set",
            Request::QuotaList {} => "quota_list",
            Request::TokenCreate { .. } => "token_create",
            Request::TokenList {} => "token_list",
            Request::TokenRevoke { .. } => "token_revoke",
        }
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Mount a branch as part of creating it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    pub dir: String,
    #[serde(default)]
    pub read_only: bool,
}

/// One member of an atomic group: a new branch (or snapshot) and its parent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMember {
    pub name: String,
    pub from: String,
    #[serde(default)]
    pub snapshot: bool,
}

/// A reply line: `{"id":..,"ok":true,"result":..}` or `{"id":..,"ok":false,"error":..}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    #[serde(default)]
    pub id: Option<u64>,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorReply>,
}

/// What went wrong, typed, with a message that says what to do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub kind: ErrorKind,
    pub message: String,
    /// `forbidden`: the scope the token lacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// The branch, snapshot or path the error is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// `sanitize_failed`: which rule or hook failed and how.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitize: Option<Box<SanitizeFailure>>,
}

impl ErrorReply {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            kind,
            message: message.into(),
            scope: None,
            target: None,
            sanitize: None,
        }
    }
    pub fn target(mut self, t: impl Into<String>) -> ErrorReply {
        self.target = Some(t.into());
        self
    }
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The line is not valid JSON, or not a JSON object.
    BadJson,
    /// Valid JSON, but fields are missing or of the wrong type.
    BadRequest,
    UnknownOp,
    UnsupportedVersion,
    /// A request other than `hello` came first.
    HandshakeRequired,
    /// The line exceeded the daemon's frame limit; the connection is closed.
    FrameTooLarge,
    /// No token, or a token the daemon does not know (revoked, mistyped).
    Unauthenticated,
    /// The token lacks a scope; `scope` and `target` say which, on what.
    Forbidden,
    /// The branch is protected; only an admin token may do this.
    Protected,
    InvalidName,
    NotFound,
    Exists,
    Busy,
    /// The operation needs the branch unmounted.
    Mounted,
    NotADirectory,
    NotMounted,
    ReadOnly,
    NoSpace,
    TooManyClients,
    /// No sanitize profile of that name in the daemon's config (the message lists
    /// the known ones).
    UnknownProfile,
    /// A sanitize rule or hook failed or timed out; the clone was deleted. The
    /// error's `sanitize` object says which and how.
    SanitizeFailed,
    /// The branch is being sanitized: it cannot be used until it is ready.
    Sanitizing,
    Io,
    Internal,
    /// A kind this client does not know (sent by a newer daemon).
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::BadJson => "bad_json",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UnknownOp => "unknown_op",
            ErrorKind::UnsupportedVersion => "unsupported_version",
            ErrorKind::HandshakeRequired => "handshake_required",
            ErrorKind::FrameTooLarge => "frame_too_large",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::Protected => "protected",
            ErrorKind::InvalidName => "invalid_name",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Exists => "exists",
            ErrorKind::Busy => "busy",
            ErrorKind::Mounted => "mounted",
            ErrorKind::NotADirectory => "not_a_directory",
            ErrorKind::NotMounted => "not_mounted",
            ErrorKind::ReadOnly => "read_only",
            ErrorKind::NoSpace => "no_space",
            ErrorKind::TooManyClients => "too_many_clients",
            ErrorKind::UnknownProfile => "unknown_profile",
            ErrorKind::SanitizeFailed => "sanitize_failed",
            ErrorKind::Sanitizing => "sanitizing",
            ErrorKind::Io => "io",
            ErrorKind::Internal => "internal",
            ErrorKind::Unknown => "unknown",
        }
    }
}

/// What a token may do on the branches its pattern matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// See it (list, info, usage, diff) and mount it read-only (with `mount`).
    Read,
    /// Mount it (read-only with `read`, read-write with `write`).
    Mount,
    /// Change its content: read-write mounts, reset. Implies `read`.
    Write,
    /// Take branches and snapshots from it.
    Branch,
    /// Delete or rename it.
    Delete,
    /// Everything, including protected branches, protect/unprotect and tokens.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 6] = [
        Scope::Read,
        Scope::Mount,
        Scope::Write,
        Scope::Branch,
        Scope::Delete,
        Scope::Admin,
    ];
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Mount => "mount",
            Scope::Write => "write",
            Scope::Branch => "branch",
            Scope::Delete => "delete",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        Scope::ALL
            .iter()
            .find(|x| x.as_str() == s)
            .copied()
            .ok_or_else(|| {
                format!("unknown scope '{s}' (one of read, mount, write, branch, delete, admin)")
            })
    }
}

/// A scope on the branches whose names match a pattern (`*` matches any run of
/// characters): written `SCOPE:PATTERN`, e.g. `branch:prod`, `read:agent-*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Grant {
    pub scope: Scope,
    pub pattern: String,
}

impl Grant {
    /// Does this grant's pattern match `name`?
    pub fn matches(&self, name: &str) -> bool {
        glob_match(&self.pattern, name)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.scope, self.pattern)
    }
}

impl FromStr for Grant {
    type Err = String;
    fn from_str(s: &str) -> Result<Grant, String> {
        let (scope, pattern) = s
            .split_once(':')
            .ok_or_else(|| format!("scope '{s}' must be written SCOPE:PATTERN, e.g. read:prod"))?;
        if pattern.is_empty() || pattern.len() > MAX_NAME_BYTES || pattern.contains(['/', '\0']) {
            return Err(format!(
                "pattern '{}' must be 1..=255 bytes without '/' or NUL",
                pattern.escape_debug()
            ));
        }
        Ok(Grant {
            scope: scope.parse()?,
            pattern: pattern.to_string(),
        })
    }
}

impl TryFrom<String> for Grant {
    type Error = String;
    fn try_from(s: String) -> Result<Grant, String> {
        s.parse()
    }
}

impl From<Grant> for String {
    fn from(g: Grant) -> String {
        g.to_string()
    }
}

/// Glob match where `*` matches any run of characters and everything else matches
/// itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if name.len() < first.len() + last.len() || !name.starts_with(first) || !name.ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Check a name given to something new (a branch, snapshot or token created, the
/// new name of a rename): `check_lookup_name`, and only ASCII letters, digits,
/// '-', '_' and '.'. Names are shown in `list`, matched by grants and typed into
/// shells, so one must never look like another: a wider set lets "prod\u{200b}",
/// "main\u{202e}", " prod" or a Cyrillic "рrod" pass for "prod"/"main", and telling
/// scripts and confusables apart would take Unicode tables the protocol should
/// not depend on. Returns why not, naming the first offending character.
pub fn check_name(name: &str) -> Result<(), String> {
    check_lookup_name(name)?;
    let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    else {
        return Ok(());
    };
    let what = if c.is_whitespace() {
        "whitespace"
    } else if c.is_ascii() {
        "not a letter, digit, '-', '_' or '.'"
    } else {
        "not ASCII (invisible and lookalike characters are refused)"
    };
    Err(format!("{} is {what}", shown(c)))
}

/// Check a name that refers to an existing branch, snapshot or token: 1..=255
/// bytes, no '/', NUL or control characters, not "." or "..". Looser than
/// `check_name` because names given before its rule stay usable: a lookalike
/// created by an older daemon must still be renamed or deleted.
pub fn check_lookup_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err("longer than 255 bytes".into());
    }
    if let Some(c) = name.chars().find(|&c| c == '/' || c.is_control()) {
        return Err(format!(
            "{} is not allowed ('/', NUL or a control character)",
            shown(c)
        ));
    }
    if name == "." || name == ".." {
        return Err("reserved".into());
    }
    Ok(())
}

/// A character for a message: escaped, with its code point.
fn shown(c: char) -> String {
    format!("character '{}' (U+{:04X})", c.escape_debug(), c as u32)
}

// ---- results ----

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: u32,
    pub server: String,
    /// Name of the token the connection authenticated with.
    pub token: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchKind {
    Branch,
    Snapshot,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    pub branch: String,
    pub dir: String,
    pub read_only: bool,
}

/// Whether a branch can be used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchState {
    #[default]
    Ready,
    /// Being sanitized: invisible to non-admin tokens, not mountable, no children.
    Sanitizing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchInfo {
    pub id: u64,
    pub name: String,
    pub kind: BranchKind,
    /// The branch or snapshot it was taken from, if that still exists.
    pub parent: Option<String>,
    pub created_unix: u64,
    pub protected: bool,
    /// Name of the token that created it, if any.
    pub owner: Option<String>,
    pub mounts: Vec<MountInfo>,
    #[serde(default)]
    pub state: BranchState,
    /// The sanitize profile every branch a non-admin token takes from it runs.
    #[serde(default)]
    pub require_sanitize: Option<String>,
    /// `branch_create` with a profile: what sanitizing did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sanitized: Option<SanitizeSummary>,
}

/// What sanitizing a new branch did (in the result of `branch_create`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanitizeSummary {
    pub profile: String,
    /// Regular files read by `redact` rules.
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    /// Files rewritten because a value was found in them.
    pub files_changed: u64,
    pub files_removed: u64,
    pub files_truncated: u64,
    pub files_replaced: u64,
    pub binary_files_skipped: u64,
    /// Values replaced, by detector or pattern name.
    pub values_replaced: std::collections::BTreeMap<String, u64>,
    /// Entries renamed because their name held a value (absent from older daemons).
    #[serde(default)]
    pub names_changed: u64,
    /// Symlinks recreated because their target held a value.
    #[serde(default)]
    pub symlinks_changed: u64,
    /// `user.*` xattr values rewritten because they held a value.
    #[serde(default)]
    pub xattrs_changed: u64,
    /// Hooks that ran (skipped ones are not listed).
    pub hooks: Vec<HookSummary>,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookSummary {
    pub name: String,
    pub duration_ms: u64,
}

/// Which part of sanitizing failed (in `error.sanitize` of `sanitize_failed`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SanitizeFailure {
    pub profile: String,
    /// "rules", "hook", "commit" or "setup".
    pub stage: String,
    /// The file rule being applied, e.g. "rule 2 ('emails')".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The file (relative to the branch root) the rule failed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// The hook ran past its timeout and was killed.
    #[serde(default)]
    pub timed_out: bool,
    /// The hook exited 0 but left this many processes running, killed since
    /// (absent otherwise, and from daemons older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes_left: Option<u32>,
    /// The hook's output (stdout and stderr, the last 64 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// A `progress` line: `{"id": N, "progress": {...}}`, sent before the reply of a
/// `branch_create` that asked for it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// "files" (file rules), "hooks" or "commit".
    pub phase: String,
    pub files_scanned: u64,
    pub bytes_scanned: u64,
    /// The file being scanned, or the phase's subject.
    #[serde(default)]
    pub current: String,
}

/// A progress line as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressLine {
    #[serde(default)]
    pub id: Option<u64>,
    pub progress: ProgressEvent,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BranchList {
    pub branches: Vec<BranchInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountList {
    pub mounts: Vec<MountInfo>,
}

/// How a mount a revoke (or a forced protect) took away ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountEnd {
    /// Unmounted: nothing was open on it.
    Unmounted,
    /// Files were open on it: they fail from now on (ENOTCONN), and the mount
    /// is detached.
    Detached,
    /// Another filesystem is mounted over it: files on it fail from now on, and
    /// the dead mount stays under that one until the daemon restarts.
    Aborted,
    /// Could not be ended (`error` says why); unmount it by hand.
    Failed,
}

/// A mount a revoke (or a forced protect) took away.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndedMount {
    pub branch: String,
    pub dir: String,
    pub read_only: bool,
    pub how: MountEnd,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The reply of `token_revoke`: every mount made with the token, ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub unmounted: Vec<EndedMount>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Added,
    Removed,
    Modified,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByteRange {
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffEntry {
    /// Absolute path inside the branch, lossily UTF-8.
    pub path: String,
    pub change: Change,
    /// "file", "dir", "symlink" or "other".
    pub file_type: String,
    /// Modified regular files: byte ranges whose content differs (block granular).
    #[serde(default)]
    pub ranges: Vec<ByteRange>,
    /// Modified entries: what changed ("content", "size", "mode", "owner",
    /// "times", "xattrs", "target", "replaced"; see the protocol). Empty for added
    /// and removed entries, and in replies of daemons older than the field.
    /// Names this client does not know are kept as they are.
    #[serde(default)]
    pub aspects: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReply {
    pub a: String,
    pub b: String,
    pub entries: Vec<DiffEntry>,
    /// Tree nodes the daemon visited to compute it (cost follows the difference).
    pub nodes_visited: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEntry {
    pub name: String,
    /// Bytes of metadata and data its tree references.
    pub referenced_bytes: u64,
    /// Bytes only it references: freed if it is deleted.
    pub exclusive_bytes: u64,
    /// referenced - exclusive.
    pub shared_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageReply {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub branches: Vec<UsageEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaInfo {
    pub name: String,
    /// Past it, writes that need new blocks fail with EDQUOT.
    pub max_bytes: Option<u64>,
    /// Free space kept for this branch: other branches get ENOSPC first.
    pub reserve_bytes: u64,
    /// Bytes it alone references, as counted for the quota.
    pub used_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaList {
    pub quotas: Vec<QuotaInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub name: String,
    /// Shown once; the daemon keeps only its SHA-256.
    pub secret: String,
    pub scopes: Vec<Grant>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub name: String,
    pub scopes: Vec<Grant>,
    pub created_unix: u64,
    /// Branches and snapshots it created that still exist.
    pub owns: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// The result of operations that return nothing else.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["prod", "agent-7_b.2", "A", "...", "x".repeat(255).as_str()] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        // Lookalikes of prod/main, each refused naming its character, escaped.
        for (bad, shown) in [
            ("prod\u{200b}", "'\\u{200b}' (U+200B)"), // zero-width space (Cf)
            ("main\u{202e}", "'\\u{202e}' (U+202E)"), // right-to-left override
            ("\u{feff}prod", "'\\u{feff}' (U+FEFF)"), // byte order mark
            ("pro\u{2060}d", "'\\u{2060}' (U+2060)"), // word joiner
            ("\u{440}rod", "'\u{440}' (U+0440)"),     // Cyrillic er
            ("m\u{430}in", "'\u{430}' (U+0430)"),     // Cyrillic a
            ("prod\u{301}", "'\\u{301}' (U+0301)"),   // combining acute
            (" prod", "' ' (U+0020)"),
            ("prod ", "' ' (U+0020)"),
            ("my branch", "' ' (U+0020)"),
            ("prod\u{a0}", "'\\u{a0}' (U+00A0)"), // no-break space
            ("prod\u{3000}", "'\\u{3000}' (U+3000)"), // ideographic space
            ("agent-*", "'*' (U+002A)"),
            ("a=b", "'=' (U+003D)"),
        ] {
            let why = check_name(bad).expect_err(bad);
            assert!(why.contains(shown), "{bad:?}: {why}");
            // Existing branches with such names stay addressable.
            assert_eq!(check_lookup_name(bad), Ok(()), "{bad:?}");
        }
        assert!(check_name(" prod").unwrap_err().contains("whitespace"));
        assert!(check_name("\u{440}rod").unwrap_err().contains("not ASCII"));
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a\0b",
            "tab\there",
            "x".repeat(256).as_str(),
        ] {
            assert!(check_lookup_name(bad).is_err(), "{bad:?}");
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_lookup_name("tab\there")
            .unwrap_err()
            .contains("'\\t' (U+0009)"));
    }

    #[test]
    fn glob() {
        assert!(glob_match("prod", "prod"));
        assert!(!glob_match("prod", "prod2"));
        assert!(glob_match("*", ""));
        assert!(glob_match("agent-*", "agent-1"));
        assert!(!glob_match("agent-*", "xagent-1"));
        assert!(glob_match("a*b*c", "a--b--c"));
        assert!(!glob_match("a*b*c", "a--c--b"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    /// A daemon older than the name, symlink and xattr counts leaves them out.
    #[test]
    fn sanitize_summary_of_an_older_daemon() {
        let old = r#"{"profile": "pii", "files_scanned": 1, "bytes_scanned": 2, "files_changed": 1,
            "files_removed": 0, "files_truncated": 0, "files_replaced": 0,
            "binary_files_skipped": 0, "values_replaced": {"email": 1}, "hooks": [],
            "duration_ms": 3}"#;
        let s: SanitizeSummary = serde_json::from_str(old).unwrap();
        assert_eq!(
            (s.names_changed, s.symlinks_changed, s.xattrs_changed),
            (0, 0, 0)
        );
        assert_eq!(s.values_replaced["email"], 1);
    }

    /// `processes_left` is left out when there is none, and a daemon older
    /// than the field sends none.
    #[test]
    fn sanitize_failure_without_processes_left() {
        let old = r#"{"profile": "pii", "stage": "hook", "hook": "h", "timed_out": false}"#;
        let f: SanitizeFailure = serde_json::from_str(old).unwrap();
        assert_eq!(f.processes_left, None);
        let s = serde_json::to_string(&f).unwrap();
        assert!(!s.contains("processes_left"), "{s}");
        let left = SanitizeFailure {
            processes_left: Some(2),
            ..f
        };
        let s = serde_json::to_string(&left).unwrap();
        assert!(s.contains(r#""processes_left":2"#), "{s}");
        assert_eq!(serde_json::from_str::<SanitizeFailure>(&s).unwrap(), left);
    }

    #[test]
    fn wire_forms() {
        let r = Request::BranchCreate {
            name: "dev".into(),
            from: "main".into(),
            mount: None,
            sanitize: None,
            progress: false,
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(
            s,
            r#"{"op":"branch_create","args":{"name":"dev","from":"main","mount":null}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
        let g: Grant = "read:agent-*".parse().unwrap();
        assert_eq!(serde_json::to_string(&g).unwrap(), r#""read:agent-*""#);
        assert!("bogus:x".parse::<Grant>().is_err());
        assert!("read".parse::<Grant>().is_err());
        for op in Request::OPS {
            let v = serde_json::json!({"op": op, "args": {}});
            // Every listed op is known to the enum (args may be missing fields).
            if let Err(e) = serde_json::from_value::<Request>(v) {
                assert!(e.to_string().contains("missing field"), "{op}: {e}");
            }
        }
        let k: ErrorKind = serde_json::from_str(r#""some_future_kind""#).unwrap();
        assert_eq!(k, ErrorKind::Unknown);
    }
}
