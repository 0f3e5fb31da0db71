//! `cowfs-ctl`: drive a cowfs daemon from the shell. Readable tables by default,
//! `--json` for machines.

mod table;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use cowfs_ctl::proto::{
    BranchInfo, BranchKind, BranchState, Change, DiffReply, Grant, GroupMember, MountEnd,
    MountSpec, ProgressEvent, QuotaInfo, TokenInfo, UsageReply,
};
use cowfs_ctl::{Client, ClientError};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use table::{bytes, Table};

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the daemon refused or failed the operation, or could not be reached
  2  usage error (bad arguments)";

#[derive(Parser)]
#[command(
    name = "cowfs-ctl",
    version,
    about = "Control a cowfs daemon: branches, snapshots, mounts, diff, reset, tokens",
    after_help = EXIT_CODES
)]
struct Cli {
    /// The daemon's control socket.
    #[arg(long, env = "COWFS_SOCKET", global = true)]
    socket: Option<PathBuf>,
    /// Token secret (prefer --token-file or $COWFS_TOKEN: arguments are visible in ps).
    #[arg(long, global = true)]
    token: Option<String>,
    /// File holding the token secret (e.g. POOL.token written by `cowfs init`).
    /// Without --token or --token-file, $COWFS_TOKEN is used.
    #[arg(long, global = true)]
    token_file: Option<PathBuf>,
    /// Print the daemon's JSON result instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Branches: writable copies of a branch or snapshot, in O(1).
    #[command(subcommand)]
    Branch(BranchCmd),
    /// Snapshots: read-only copies of a branch, in O(1).
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Branches and snapshots this token may read, with their mounts.
    List,
    /// One branch or snapshot.
    Info { name: String },
    /// Rename a branch or snapshot (not while mounted); needs delete and branch on it.
    Rename { old: String, new: String },
    /// Delete a branch or snapshot, freeing what only it references.
    Delete { name: String },
    /// Mount a branch on an existing directory.
    Mount {
        name: String,
        dir: PathBuf,
        /// Read-only (snapshots always are).
        #[arg(long)]
        ro: bool,
    },
    /// Unmount a directory.
    Unmount { dir: PathBuf },
    /// Every mount (of branches this token may read), with its branch.
    Mounts,
    /// Paths added, removed and modified from A to B (with changed byte ranges).
    Diff { a: String, b: String },
    /// Make a branch identical to a snapshot again (unmount it first).
    Reset {
        /// The branch to reset (unmounted).
        branch: String,
        /// The snapshot (or branch) it becomes a copy of.
        #[arg(long)]
        to: String,
    },
    /// Protect a branch: only admin tokens may delete, reset, rename or mount it rw.
    /// Refused while a token without admin on it has it mounted read-write,
    /// unless --force.
    Protect {
        name: String,
        /// Unmount the branch's read-write mounts made by tokens without admin
        /// on it (files still open there fail from now on).
        #[arg(long)]
        force: bool,
        /// Every branch a non-admin token creates from it is sanitized with this
        /// profile, whatever it asks; its snapshots become admin-only.
        #[arg(long, value_name = "PROFILE")]
        require_sanitize: Option<String>,
    },
    /// Remove the protection.
    Unprotect { name: String },
    /// Bytes referenced, exclusive (freed by delete) and shared, per branch.
    Usage,
    /// Quotas and reservations per branch.
    #[command(subcommand)]
    Quota(QuotaCmd),
    /// Tokens (admin:* only).
    #[command(subcommand)]
    Token(TokenCmd),
}

#[derive(Subcommand)]
enum QuotaCmd {
    /// Set a branch's quota (EDQUOT past it) and reservation (space no other branch
    /// may take); without --max and --reserve, clear both. Needs admin on it.
    Set {
        branch: String,
        /// Most bytes the branch may hold alone (suffixes K, M, G, T).
        #[arg(long, value_parser = parse_size)]
        max: Option<u64>,
        /// Bytes of free space kept for the branch (suffixes K, M, G, T).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        reserve: u64,
    },
    /// Branches with a quota or reservation, and what they use.
    List,
}

/// "10G" -> 10737418240.
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix '{c}' (use K, M, G or T)")),
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    num.parse::<u64>()
        .map_err(|_| format!("'{s}' is not a size in bytes"))?
        .checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

#[derive(Subcommand)]
enum BranchCmd {
    /// Create a branch from a branch or snapshot; or, with --group, several at once.
    Create(BranchCreate),
}

#[derive(Args)]
struct BranchCreate {
    /// Name of the new branch.
    #[arg(required_unless_present = "group")]
    name: Option<String>,
    /// Parent branch or snapshot.
    #[arg(long, required_unless_present = "group")]
    from: Option<String>,
    /// Mount the new branch on this existing directory.
    #[arg(long, conflicts_with = "group")]
    mount: Option<PathBuf>,
    /// With --mount: mount read-only.
    #[arg(long, requires = "mount")]
    ro: bool,
    /// NAME=PARENT, repeated: create all of them in one commit (same instant).
    #[arg(long, value_name = "NAME=PARENT", conflicts_with_all = ["name", "from"])]
    group: Vec<String>,
    /// Sanitize the new branch with this profile of the daemon's config before
    /// anyone can use it (a progress bar shows on runs over a second; with
    /// --json, one progress line per event, then the result on one line).
    #[arg(long, value_name = "PROFILE", conflicts_with = "group")]
    sanitize: Option<String>,
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Create a snapshot of a branch.
    Create {
        /// Name of the new snapshot.
        name: String,
        /// The branch (or snapshot) to copy.
        #[arg(long)]
        from: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token; its secret is printed once.
    Create {
        name: String,
        /// SCOPE:PATTERN, repeated; SCOPE is read, mount, write, branch, delete or
        /// admin; PATTERN a branch name where `*` matches anything.
        #[arg(long = "scope", required = true, value_name = "SCOPE:PATTERN")]
        scopes: Vec<Grant>,
    },
    /// Tokens with their scopes and the branches they own.
    List,
    /// Revoke a token: connections using it are refused from now on, and every
    /// mount made with it is unmounted (files still open there fail from now on).
    Revoke { name: String },
}

enum Failure {
    Client(ClientError),
    Usage(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure::Client(e)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("cowfs-ctl: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Client(e)) => {
            if json {
                let err = match e.server() {
                    Some(s) => serde_json::json!({"ok": false, "error": s}),
                    None => {
                        serde_json::json!({"ok": false, "error": {"kind": "client", "message": e.to_string()}})
                    }
                };
                println!("{err}");
            } else {
                eprintln!("cowfs-ctl: {e}");
            }
            ExitCode::from(1)
        }
    }
}

fn token(cli: &Cli) -> Result<String, Failure> {
    if let Some(t) = &cli.token {
        return Ok(t.trim().to_string());
    }
    if let Some(f) = &cli.token_file {
        return std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| Failure::Usage(format!("{}: {e}", f.display())));
    }
    if let Some(t) = std::env::var("COWFS_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Ok(t.trim().to_string());
    }
    Err(Failure::Usage(
        "no token: pass --token-file POOL.token, --token SECRET or set $COWFS_TOKEN".into(),
    ))
}

/// Mount points travel as absolute paths: the daemon does not share our cwd.
fn absolute(dir: &Path) -> Result<String, Failure> {
    let p = match dir.canonicalize() {
        Ok(p) => p,
        Err(_) if dir.is_absolute() => dir.to_path_buf(),
        Err(_) => std::env::current_dir()
            .map_err(|e| Failure::Usage(format!("current directory: {e}")))?
            .join(dir),
    };
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| Failure::Usage(format!("{}: not valid UTF-8", p.display())))
}

fn out<T: Serialize>(json: bool, v: &T, human: impl FnOnce(&T)) {
    if json {
        match serde_json::to_string_pretty(v) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cowfs-ctl: {e}"),
        }
    } else {
        human(v)
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    let socket = cli.socket.clone().ok_or_else(|| {
        Failure::Usage(
            "no daemon socket: pass --socket PATH or set $COWFS_SOCKET (default of `cowfs serve POOL`: \
             POOL.sock beside a pool file, /var/lib/cowfs/<pool id>/pool.sock for a block device)"
                .into(),
        )
    })?;
    let secret = token(&cli)?;
    let mut c = Client::connect(&socket, &secret)?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Branch(BranchCmd::Create(a)) => {
            if !a.group.is_empty() {
                let mut members = Vec::new();
                for g in &a.group {
                    let (name, from) = g.split_once('=').ok_or_else(|| {
                        Failure::Usage(format!("--group '{g}': write NAME=PARENT"))
                    })?;
                    members.push(GroupMember {
                        name: name.into(),
                        from: from.into(),
                        snapshot: false,
                    });
                }
                let v = c.group_create(members)?;
                out(json, &v, |v| branches(v));
            } else {
                let (Some(name), Some(from)) = (a.name, a.from) else {
                    return Err(Failure::Usage("branch create NAME --from PARENT".into()));
                };
                let mount = match &a.mount {
                    Some(d) => Some(MountSpec {
                        dir: absolute(d)?,
                        read_only: a.ro,
                    }),
                    None => None,
                };
                // Progress is always asked for: the parent may require a profile.
                let mut shown = Progress::new(json);
                let r = c.branch_create_with(
                    &name,
                    &from,
                    mount,
                    a.sanitize.as_deref(),
                    Some(&mut |ev: &ProgressEvent| shown.event(ev)),
                );
                shown.finish();
                let v = r?;
                if json {
                    // One line, after the progress lines: a stream of JSON lines.
                    match serde_json::to_string(&v) {
                        Ok(s) => println!("{s}"),
                        Err(e) => eprintln!("cowfs-ctl: {e}"),
                    }
                } else {
                    branches(std::slice::from_ref(&v));
                    if let Some(s) = &v.sanitized {
                        let values: u64 = s.values_replaced.values().sum();
                        println!(
                            "sanitized with '{}': {} files ({}) scanned, {} changed, {} removed, {} names, {} symlinks and {} xattrs changed, {} values replaced, {} hook(s), {:.1} s",
                            s.profile,
                            s.files_scanned,
                            bytes(s.bytes_scanned),
                            s.files_changed,
                            s.files_removed,
                            s.names_changed,
                            s.symlinks_changed,
                            s.xattrs_changed,
                            values,
                            s.hooks.len(),
                            s.duration_ms as f64 / 1000.0
                        );
                    }
                }
            }
        }
        Cmd::Snapshot(SnapshotCmd::Create { name, from }) => {
            let v = c.snapshot_create(&name, &from)?;
            out(json, &v, |v| branches(std::slice::from_ref(v)));
        }
        Cmd::List => {
            let v = c.list()?;
            out(json, &v, |v| branches(v));
        }
        Cmd::Info { name } => {
            let v = c.info(&name)?;
            out(json, &v, info);
        }
        Cmd::Rename { old, new } => {
            let v = c.rename(&old, &new)?;
            out(json, &v, |v| branches(std::slice::from_ref(v)));
        }
        Cmd::Delete { name } => {
            c.delete(&name)?;
            out(json, &serde_json::json!({"deleted": name}), |_| {
                println!("deleted {name}")
            });
        }
        Cmd::Mount { name, dir, ro } => {
            let v = c.mount(&name, &absolute(&dir)?, ro)?;
            out(json, &v, |v| branches(std::slice::from_ref(v)));
        }
        Cmd::Unmount { dir } => {
            let d = absolute(&dir)?;
            c.unmount(&d)?;
            out(json, &serde_json::json!({"unmounted": d}), |_| {
                println!("unmounted {d}")
            });
        }
        Cmd::Mounts => {
            let v = c.mounts()?;
            out(json, &v, |v| {
                let mut t = Table::new(&["DIR", "BRANCH", "MODE"]);
                for m in v {
                    let mode = if m.read_only { "ro" } else { "rw" };
                    t.row(vec![m.dir.clone(), m.branch.clone(), mode.into()]);
                }
                t.print();
            });
        }
        Cmd::Diff { a, b } => {
            let v = c.diff(&a, &b)?;
            out(json, &v, diff);
        }
        Cmd::Reset { branch, to } => {
            let v = c.reset(&branch, &to)?;
            out(json, &v, |v| branches(std::slice::from_ref(v)));
        }
        Cmd::Protect {
            name,
            force,
            require_sanitize,
        } => {
            let v = c.protect_forcing(&name, require_sanitize.as_deref(), force)?;
            out(json, &v, |v| branches(std::slice::from_ref(v)));
        }
        Cmd::Unprotect { name } => {
            let v = c.unprotect(&name)?;
            out(json, &v, |v| branches(std::slice::from_ref(v)));
        }
        Cmd::Usage => {
            let v = c.usage()?;
            out(json, &v, usage);
        }
        Cmd::Quota(QuotaCmd::Set {
            branch,
            max,
            reserve,
        }) => {
            let v = c.quota_set(&branch, max, reserve)?;
            out(json, &v, |v| quotas(std::slice::from_ref(v)));
        }
        Cmd::Quota(QuotaCmd::List) => {
            let v = c.quota_list()?;
            out(json, &v, |v| quotas(v));
        }
        Cmd::Token(TokenCmd::Create { name, scopes }) => {
            let v = c.token_create(&name, scopes)?;
            out(json, &v, |v| {
                println!("token '{}' created; its secret (shown once):", v.name);
                println!("{}", v.secret);
            });
        }
        Cmd::Token(TokenCmd::List) => {
            let v = c.token_list()?;
            out(json, &v, |v| tokens(v));
        }
        Cmd::Token(TokenCmd::Revoke { name }) => {
            let ended = c.token_revoke(&name)?;
            let v = serde_json::json!({"revoked": name, "unmounted": ended});
            out(json, &v, |_| {
                println!("revoked token {name}");
                for m in &ended {
                    let how = match m.how {
                        MountEnd::Unmounted => "unmounted".into(),
                        MountEnd::Detached => "detached (files open there fail from now on)".into(),
                        MountEnd::Aborted => {
                            "cut off (covered by another mount; files there fail)".into()
                        }
                        MountEnd::Failed => {
                            format!("NOT unmounted: {}", m.error.as_deref().unwrap_or("?"))
                        }
                    };
                    println!("  {} ({}): {how}", m.dir, m.branch);
                }
            });
        }
    }
    Ok(())
}

/// Sanitize progress: JSON lines with --json, else a progress bar on stderr once
/// a sanitize run has lasted a second (drawn by indicatif's ticker, so it shows
/// while a long hook runs and no event arrives).
struct Progress {
    json: bool,
    bar: ProgressBar,
    /// A progress event arrived (the branch is being sanitized).
    sanitizing: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
    timer: Option<std::thread::JoinHandle<()>>,
}

/// Runs shorter than this show no bar.
const BAR_AFTER: Duration = Duration::from_secs(1);

impl Progress {
    fn new(json: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} sanitizing [{elapsed}] {pos} files, {msg}")
        {
            bar.set_style(style);
        }
        let sanitizing = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicBool::new(false));
        let timer = (!json).then(|| {
            let (bar, sanitizing, done) = (bar.clone(), sanitizing.clone(), done.clone());
            let start = Instant::now();
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    if start.elapsed() >= BAR_AFTER && sanitizing.load(Ordering::SeqCst) {
                        bar.set_draw_target(ProgressDrawTarget::stderr());
                        bar.enable_steady_tick(Duration::from_millis(120));
                        return;
                    }
                    // Parked, not slept: `finish` unparks, so a create that ends
                    // does not wait out the rest of the interval (it did: 50 ms
                    // added to every `branch create`).
                    std::thread::park_timeout(Duration::from_millis(50));
                }
            })
        });
        Progress {
            json,
            bar,
            sanitizing,
            done,
            timer,
        }
    }

    fn event(&mut self, ev: &ProgressEvent) {
        if self.json {
            println!("{}", serde_json::json!({ "progress": ev }));
            return;
        }
        self.sanitizing.store(true, Ordering::SeqCst);
        self.bar.set_position(ev.files_scanned);
        let what = match ev.phase.as_str() {
            "files" if ev.current.is_empty() => "file rules".to_string(),
            "files" => ev.current.clone(),
            "hooks" => "running hooks".to_string(),
            "commit" => "committing".to_string(),
            other => other.to_string(),
        };
        self.bar
            .set_message(format!("{} scanned, {what}", bytes(ev.bytes_scanned)));
    }

    fn finish(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        if let Some(t) = self.timer.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}

fn kind(b: &BranchInfo) -> &'static str {
    match b.kind {
        BranchKind::Branch => "branch",
        BranchKind::Snapshot => "snapshot",
    }
}

fn mounts(b: &BranchInfo) -> String {
    b.mounts
        .iter()
        .map(|m| format!("{}{}", m.dir, if m.read_only { " (ro)" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ")
}

fn protection(b: &BranchInfo) -> String {
    match (&b.require_sanitize, b.protected) {
        (Some(p), true) => format!("yes (sanitize: {p})"),
        (Some(p), false) => format!("no (sanitize: {p})"),
        (None, true) => "yes".into(),
        (None, false) => "no".into(),
    }
}

fn kind_state(b: &BranchInfo) -> String {
    match b.state {
        BranchState::Ready => kind(b).into(),
        BranchState::Sanitizing => format!("{} (sanitizing)", kind(b)),
    }
}

fn branches(list: &[BranchInfo]) {
    let mut t = Table::new(&["NAME", "KIND", "PARENT", "PROTECTED", "OWNER", "MOUNTS"]);
    for b in list {
        t.row(vec![
            b.name.clone(),
            kind_state(b),
            b.parent.clone().unwrap_or_else(|| "-".into()),
            protection(b),
            b.owner.clone().unwrap_or_else(|| "-".into()),
            mounts(b),
        ]);
    }
    t.print();
}

fn info(b: &BranchInfo) {
    let mut t = Table::new(&["FIELD", "VALUE"]);
    for (k, v) in [
        ("name", b.name.clone()),
        ("id", b.id.to_string()),
        ("kind", kind(b).into()),
        ("parent", b.parent.clone().unwrap_or_else(|| "-".into())),
        ("created (unix)", b.created_unix.to_string()),
        ("state", kind_state(b)),
        ("protected", b.protected.to_string()),
        (
            "requires sanitize",
            b.require_sanitize.clone().unwrap_or_else(|| "-".into()),
        ),
        ("owner", b.owner.clone().unwrap_or_else(|| "-".into())),
        ("mounts", mounts(b)),
    ] {
        t.row(vec![k.into(), v]);
    }
    t.print();
}

fn diff(d: &DiffReply) {
    let mut t = Table::new(&["CHANGE", "TYPE", "PATH", "CHANGED BYTES [WHAT]"]);
    for e in &d.entries {
        let change = match e.change {
            Change::Added => "added",
            Change::Removed => "removed",
            Change::Modified => "modified",
        };
        let mut ranges = e
            .ranges
            .iter()
            .map(|r| format!("{}+{}", r.offset, r.len))
            .collect::<Vec<_>>();
        if !e.aspects.is_empty() {
            ranges.push(format!("[{}]", e.aspects.join(",")));
        }
        let ranges = ranges.join(" ");
        t.row(vec![
            change.into(),
            e.file_type.clone(),
            e.path.clone(),
            ranges,
        ]);
    }
    t.print();
    println!(
        "{} change(s) from {} to {} ({} tree nodes visited)",
        d.entries.len(),
        d.a,
        d.b,
        d.nodes_visited
    );
}

fn usage(u: &UsageReply) {
    let mut t = Table::new(&["NAME", "REFERENCED", "EXCLUSIVE", "SHARED"]);
    for b in &u.branches {
        t.row(vec![
            b.name.clone(),
            bytes(b.referenced_bytes),
            bytes(b.exclusive_bytes),
            bytes(b.shared_bytes),
        ]);
    }
    t.print();
    println!(
        "pool: {} used of {}",
        bytes(u.used_bytes),
        bytes(u.capacity_bytes)
    );
}

fn quotas(list: &[QuotaInfo]) {
    let mut t = Table::new(&["NAME", "MAX", "RESERVE", "USED"]);
    for q in list {
        t.row(vec![
            q.name.clone(),
            q.max_bytes.map_or_else(|| "-".into(), bytes),
            bytes(q.reserve_bytes),
            bytes(q.used_bytes),
        ]);
    }
    t.print();
}

fn tokens(list: &[TokenInfo]) {
    let mut t = Table::new(&["NAME", "SCOPES", "OWNS"]);
    for k in list {
        t.row(vec![
            k.name.clone(),
            k.scopes
                .iter()
                .map(Grant::to_string)
                .collect::<Vec<_>>()
                .join(" "),
            if k.owns.is_empty() {
                "-".into()
            } else {
                k.owns.join(", ")
            },
        ]);
    }
    t.print();
}
