//! Sanitize through the real daemon (`cowfs init`, `cowfs serve --config`): a
//! protected branch that requires a profile gets every non-admin clone sanitized,
//! whatever the request says; a failing hook and a hook past its timeout delete
//! the clone (space returned) and the error carries the exit code or timeout and
//! the output; a clone being sanitized is invisible to non-admin tokens and cannot
//! be mounted, branched, snapshotted or deleted; a daemon killed while sanitizing
//! takes every process its hook started along (daemonized ones included) and
//! leaves nothing after a restart (no clone, no dead mount, no hooks' directory),
//! one stopped with SIGTERM kills the hook and deletes the clone before it exits,
//! and `cowfs fsck` is clean.
//!
//! Needs root and /dev/fuse (real mounts, hooks on private mounts).

mod control_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use control_support::{is_mountpoint, kind, lazy_unmount_under, Served};
use cowfs_ctl::proto::{BranchState, ErrorKind, GroupMember, MountSpec};
use cowfs_ctl::{Client, ClientError};

const BIN: &str = env!("CARGO_BIN_EXE_cowfs");

/// Personal data in the parent; none of it may appear in a sanitized clone.
const EMAILS: [&str; 3] = [
    "alice.martin@example.com",
    "bob.k@mail.example.org",
    "carol+ops@corp.example.net",
];
const PHONES: [&str; 2] = ["+44 20 7946 0958", "(555) 123-4567"];
const CARDS: [&str; 2] = ["4111 1111 1111 1111", "5500005555555559"];
const ENV_SECRET: &str = "DB_PASSWORD=hunter2-prod-only";

fn config(base: &Path) -> String {
    let gates = base.join("gates");
    let gate = gates.join("gate");
    format!(
        r#"
[sanitize]
scratch_dir = "{scratch}"

[[profiles.pii.rules]]
name = "env files"
paths = ["**/.env"]
action = "remove"

[[profiles.pii.rules]]
name = "personal data"
paths = ["**"]
action = "redact"
detectors = ["email", "phone", "card"]
with = "pseudonym"

[[profiles.fails.hooks]]
name = "boom"
command = "head -c 4194304 /dev/urandom > \"$COWFS_CLONE_DIR/big.bin\" && echo boom; exit 3"

[[profiles.slow.hooks]]
name = "sleeper"
command = "echo sleeping; exec sleep 61.25"
timeout_secs = 2

[[profiles.gate.hooks]]
name = "gate"
command = "touch \"$GATE.started\"; while [ ! -e \"$GATE\" ]; do sleep 0.05; done; echo released"
env = {{ GATE = "{gate}" }}
read_write_paths = ["{gates}"]
timeout_secs = 300

[[profiles.scrub.hooks]]
name = "scrub"
command = "touch \"$GATE.started\"; while [ ! -e \"$GATE\" ]; do sleep 0.05; done; rm -rf \"$COWFS_CLONE_DIR/data\"; touch \"$GATE.scrubbed\"; sleep 1"
env = {{ GATE = "{gate}" }}
read_write_paths = ["{gates}"]
timeout_secs = 300

[[profiles.daemonizes.hooks]]
name = "daemonizes"
command = "setsid sh -c 'read -r pid rest < /proc/self/stat; echo $pid > \"$GATE.sleeper\"; exec sleep 1000' </dev/null >/dev/null 2>&1 & while [ ! -s \"$GATE.sleeper\" ]; do sleep 0.05; done; touch \"$GATE.started\"; while [ ! -e \"$GATE\" ]; do sleep 0.05; done"
env = {{ GATE = "{gate}" }}
read_write_paths = ["{gates}"]
timeout_secs = 300
"#,
        scratch = base.join("scratch").display(),
        gate = gate.display(),
        gates = gates.display(),
    )
}

/// A `cowfs serve --config` process; dropping it stops it (SIGTERM, then SIGKILL)
/// and detaches any mount left under the test directory.
/// `cowfs serve` on the test's pool with its config, logging to `daemon.log`.
fn serve(base: &Path) -> Served {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.join("daemon.log"))
        .expect("daemon log");
    let child = Command::new(BIN)
        .arg("serve")
        .arg(base.join("pool"))
        .arg("--socket")
        .arg(base.join("pool.sock"))
        .arg("--config")
        .arg(base.join("cowfs.toml"))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn cowfs serve");
    Served::new(child, base)
}

/// A test's directory: pool (after `cowfs init`), config, scratch dir. Dropped
/// last: kills a gate hook left running and detaches mounts.
struct Env {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    admin: String,
}

impl Env {
    /// `branch create NAME --from prod --sanitize PROFILE` as admin, on a thread
    /// of its own: the test goes on while the daemon sanitizes.
    fn create_in_background(
        &self,
        name: &'static str,
        profile: &'static str,
    ) -> std::thread::JoinHandle<Result<cowfs_ctl::proto::BranchInfo, ClientError>> {
        let socket = self.socket();
        let secret = self.admin.clone();
        std::thread::spawn(move || {
            let mut c = Client::connect(&socket, &secret).expect("connect");
            c.branch_create_with(name, "prod", None, Some(profile), None)
        })
    }

    fn new() -> Env {
        let tmp = tempfile::Builder::new()
            .prefix("cowfs-sanitize-daemon-")
            .tempdir()
            .expect("tempdir");
        let base = tmp.path().canonicalize().expect("canonical");
        std::fs::create_dir(base.join("scratch")).expect("scratch");
        // The gate hooks' files: the one host directory they may write to.
        std::fs::create_dir(base.join("gates")).expect("gates");
        std::fs::write(base.join("cowfs.toml"), config(&base)).expect("config");
        let out = Command::new(BIN)
            .args(["init", "--size", "1G"])
            .arg(base.join("pool"))
            .output()
            .expect("cowfs init");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let admin =
            std::fs::read_to_string(cowfs::control::tokens::secret_path(&base.join("pool")))
                .expect("POOL.token")
                .trim()
                .to_string();
        Env {
            _tmp: tmp,
            base,
            admin,
        }
    }

    fn socket(&self) -> PathBuf {
        self.base.join("pool.sock")
    }

    /// A directory under the default mount root (`POOL.mnt`).
    fn dir(&self, name: &str) -> PathBuf {
        let d = self.base.join("pool.mnt").join(name);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    fn connect(&self, secret: &str) -> Client {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match Client::connect(self.socket(), secret) {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "daemon never answered: {e}; log:\n{}",
                        self.log()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.base.join("daemon.log")).unwrap_or_default()
    }

    fn gate(&self, suffix: &str) -> PathBuf {
        let mut p = self.base.join("gates/gate").into_os_string();
        p.push(suffix);
        PathBuf::from(p)
    }

    /// Wait until the gate hook has started (it is then sanitizing).
    fn wait_gate_started(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.gate(".started").exists() {
            assert!(
                Instant::now() < deadline,
                "gate hook never started; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fsck_clean(&self) {
        let out = Command::new(BIN)
            .arg("fsck")
            .arg(self.base.join("pool"))
            .output()
            .expect("fsck");
        assert!(
            out.status.success(),
            "fsck: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Open the gate and kill a gate hook and what it daemonized if they are
        // still there (killing the hook ends its PID namespace, so whatever else
        // it started too).
        let _ = std::fs::write(self.gate(""), b"");
        for pid in marked(&self.gate("")) {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) on a process the test's hook started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        lazy_unmount_under(&self.base);
    }
}

/// The live processes (host pids) whose environment has a variable set to
/// `file`: the gate hooks (`GATE`) and what they started. Their own pids
/// (/proc/self, `$$`) are those of their PID namespace, their /proc its own.
fn marked(file: &Path) -> Vec<u32> {
    let mut suffix = b"=".to_vec();
    suffix.extend_from_slice(file.as_os_str().as_encoded_bytes());
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| {
                s.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().to_string())
            })
            .is_some_and(|rest| !rest.starts_with('Z'))
    };
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

/// Opens the gate when dropped, so that a failing test does not leave the gate
/// hook (and the daemon's shutdown) waiting.
struct OpenGate(PathBuf);

impl Drop for OpenGate {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("utf-8").to_string()
}

/// The parent's files: (relative path, content).
fn prod_files() -> Vec<(&'static str, String)> {
    let mut csv = String::from("id,email,phone,card\n");
    for i in 0..200 {
        csv.push_str(&format!(
            "{i},{},{},{}\n",
            EMAILS[i % 3],
            PHONES[i % 2],
            CARDS[i % 2]
        ));
    }
    vec![
        ("data/users.csv", csv),
        (
            "data/orders.json",
            format!(
                "[{{\"customer\":\"{}\",\"total\":12}},{{\"customer\":\"{}\",\"total\":7}}]\n",
                EMAILS[0], EMAILS[1]
            ),
        ),
        (
            "logs/app.log",
            format!(
                "2026-11-01 login {} from phone {}\n2026-11-02 charge card {} for {}\n",
                EMAILS[2], PHONES[0], CARDS[1], EMAILS[0]
            ),
        ),
        ("app/.env", format!("{ENV_SECRET}\nADMIN={}\n", EMAILS[1])),
        ("README.txt", "no personal data here\n".to_string()),
    ]
}

/// Every regular file under `dir`, relative path -> bytes.
fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let ft = e.file_type().expect("file type");
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let rel = e
                    .path()
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(e.path()).expect("read")));
            }
        }
    }
    out.sort();
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Admin creates `prod` and writes the personal data through a real mount.
fn make_prod(env: &Env, admin: &mut Client) {
    let m = env.dir("prod-setup");
    admin
        .branch_create(
            "prod",
            "main",
            Some(MountSpec {
                dir: s(&m),
                read_only: false,
            }),
        )
        .expect("prod");
    for (p, content) in prod_files() {
        let f = m.join(p);
        std::fs::create_dir_all(f.parent().expect("parent")).expect("mkdir");
        std::fs::write(f, content).expect("write");
    }
    admin.unmount(&s(&m)).expect("unmount prod");
}

/// A new token `name` with `scopes`, created by `admin`, and a client using it.
fn token_client(env: &Env, admin: &mut Client, name: &str, scopes: &[&str]) -> Client {
    let grants = scopes.iter().map(|g| g.parse().expect("grant")).collect();
    let secret = admin.token_create(name, grants).expect("token").secret;
    env.connect(&secret)
}

fn server_error(r: Result<impl std::fmt::Debug, ClientError>) -> cowfs_ctl::proto::ErrorReply {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(ClientError::Server(e)) => e,
        Err(e) => panic!("expected a server error, got {e}"),
    }
}

#[test]
fn required_profile_is_applied_to_every_agent_clone() {
    let env = Env::new();
    let _served = serve(&env.base);
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let info = admin.protect_with("prod", Some("pii")).expect("protect");
    assert!(info.protected);
    assert_eq!(info.require_sanitize.as_deref(), Some("pii"));
    assert_eq!(
        kind(admin.protect_with("prod", Some("nope"))),
        ErrorKind::UnknownProfile
    );
    let agent = admin
        .token_create(
            "agent",
            vec![
                "branch:prod".parse().expect("grant"),
                "read:prod".parse().expect("grant"),
            ],
        )
        .expect("token")
        .secret;
    let mut a = env.connect(&agent);

    // No profile asked, and another profile asked: `pii` runs both times.
    let c1 = a.branch_create("agent-1", "prod", None).expect("agent-1");
    let summary = c1.sanitized.as_ref().expect("agent-1 was sanitized");
    assert_eq!(summary.profile, "pii");
    assert_eq!(c1.state, BranchState::Ready);
    assert_eq!(c1.owner.as_deref(), Some("agent"));
    let c2 = a
        .branch_create_with("agent-2", "prod", None, Some("fails"), None)
        .expect("agent-2: the required profile replaces the one asked for");
    assert_eq!(
        c2.sanitized.as_ref().map(|s| s.profile.as_str()),
        Some("pii")
    );
    assert!(
        summary.files_removed >= 1 && summary.files_changed >= 3,
        "{summary:?}"
    );

    // Snapshots of prod and groups from it are admin-only now.
    let e = server_error(a.snapshot_create("agent-snap", "prod"));
    assert_eq!(e.kind, ErrorKind::Forbidden, "{e}");
    assert!(e.message.contains("pii"), "{e}");
    assert_eq!(
        kind(a.group_create(vec![GroupMember {
            name: "agent-g".into(),
            from: "prod".into(),
            snapshot: false,
        }])),
        ErrorKind::Forbidden
    );
    // An agent clone cannot be reset to prod's unsanitized content either.
    assert_eq!(kind(a.reset("agent-1", "prod")), ErrorKind::Forbidden);
    // The admin may take an unsanitized snapshot; it keeps the requirement, so
    // a token allowed to branch from it gets its clones sanitized too.
    let snap = admin
        .snapshot_create("prod-snap", "prod")
        .expect("admin snapshot");
    assert!(snap.sanitized.is_none());
    assert_eq!(snap.require_sanitize.as_deref(), Some("pii"));
    let agent_snap = admin
        .token_create(
            "agent-snap",
            vec!["branch:prod-snap".parse().expect("grant")],
        )
        .expect("token")
        .secret;
    let from_snap = env
        .connect(&agent_snap)
        .branch_create("agent-from-snap", "prod-snap", None)
        .expect("clone of the snapshot");
    assert_eq!(
        from_snap.sanitized.as_ref().map(|s| s.profile.as_str()),
        Some("pii")
    );

    // Mount the clones and the parent; byte search every file.
    let originals = prod_files();
    let mut pseudonyms_per_clone = Vec::new();
    for clone in ["agent-1", "agent-2"] {
        let m = env.dir(&format!("m-{clone}"));
        a.mount(clone, &s(&m), true)
            .expect("agent mounts its clone");
        let files = read_tree(&m);
        a.unmount(&s(&m)).expect("unmount");
        assert!(
            !files.iter().any(|(p, _)| p.ends_with(".env")),
            "{clone}: .env removed: {:?}",
            files.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert!(files.iter().any(|(p, _)| p == "data/users.csv"));
        for (p, bytes) in &files {
            for v in EMAILS
                .iter()
                .chain(&PHONES)
                .chain(&CARDS)
                .chain([&ENV_SECRET])
            {
                assert!(!contains(bytes, v), "{clone}/{p} still holds '{v}'");
            }
        }
        let readme = files
            .iter()
            .find(|(p, _)| p == "README.txt")
            .expect("README");
        assert_eq!(readme.1, b"no personal data here\n");
        // Same value, same pseudonym in every file: users.csv row 0 holds the
        // pseudonyms of EMAILS[0], PHONES[0] and CARDS[0].
        let file = |name: &str| {
            let f = files.iter().find(|(p, _)| p == name).expect(name);
            String::from_utf8_lossy(&f.1).into_owned()
        };
        let csv = file("data/users.csv");
        let row0: Vec<&str> = csv.lines().nth(1).expect("row 0").split(',').collect();
        let (email0, phone0, card0) = (row0[1], row0[2], row0[3]);
        let row3: Vec<&str> = csv.lines().nth(4).expect("row 3").split(',').collect();
        assert_eq!(row3[1], email0, "rows with the same email agree");
        assert!(file("data/orders.json").contains(&format!("\"customer\":\"{email0}\"")));
        let log = file("logs/app.log");
        assert!(
            log.contains(&format!("for {email0}")) && log.contains(&format!("phone {phone0}")),
            "{log}"
        );
        // Valid for their kind: an email stays an email, a card 16 Luhn-valid digits.
        let (local, domain) = email0.split_once('@').expect("an email");
        assert!(!local.is_empty() && domain.contains('.'), "{email0}");
        let digits: Vec<u32> = card0.chars().filter_map(|c| c.to_digit(10)).collect();
        assert_eq!(digits.len(), 16, "{card0}");
        let luhn: u32 = digits
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &d)| {
                if i % 2 == 1 {
                    if d * 2 > 9 {
                        d * 2 - 9
                    } else {
                        d * 2
                    }
                } else {
                    d
                }
            })
            .sum();
        assert_eq!(luhn % 10, 0, "{card0} is Luhn-valid");
        pseudonyms_per_clone.push((email0.to_string(), phone0.to_string(), card0.to_string()));
    }
    // ...and in every clone of the pool.
    assert_eq!(pseudonyms_per_clone[0], pseudonyms_per_clone[1]);
    let m = env.dir("m-prod");
    admin.mount("prod", &s(&m), true).expect("mount prod ro");
    let parent = read_tree(&m);
    admin.unmount(&s(&m)).expect("unmount");
    let mut want: Vec<(String, Vec<u8>)> = originals
        .into_iter()
        .map(|(p, c)| (p.to_string(), c.into_bytes()))
        .collect();
    want.sort();
    assert_eq!(parent, want, "the parent is byte-for-byte unchanged");

    // Unprotect drops the requirement: an agent branch is then not sanitized.
    let info = admin.unprotect("prod").expect("unprotect");
    assert_eq!(info.require_sanitize, None);
    let plain = a.branch_create("agent-3", "prod", None).expect("agent-3");
    assert!(plain.sanitized.is_none());
}

#[test]
fn failing_and_timed_out_hooks_delete_the_clone() {
    let env = Env::new();
    let served = serve(&env.base);
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let names = |c: &mut Client| -> Vec<String> {
        c.list()
            .expect("list")
            .into_iter()
            .map(|b| b.name)
            .collect()
    };
    let before = admin.usage().expect("usage").used_bytes;
    let listed = names(&mut admin);

    // Unknown profile: typed error listing the known ones; nothing created.
    let e = server_error(admin.branch_create_with("x", "prod", None, Some("nope"), None));
    assert_eq!(e.kind, ErrorKind::UnknownProfile);
    assert!(
        e.message.contains("fails") && e.message.contains("pii"),
        "{e}"
    );
    assert_eq!(names(&mut admin), listed);

    // Exit 3 after writing 4 MiB into the clone.
    let e = server_error(admin.branch_create_with("bad", "prod", None, Some("fails"), None));
    assert_eq!(e.kind, ErrorKind::SanitizeFailed, "{e}");
    let f = e.sanitize.as_ref().expect("failure details");
    assert_eq!(f.stage, "hook");
    assert_eq!(f.hook.as_deref(), Some("boom"));
    assert_eq!(f.exit_code, Some(3));
    assert!(!f.timed_out);
    assert!(f.output.as_deref().unwrap_or("").contains("boom"), "{f:?}");
    assert!(
        e.message.contains("exit code 3") && e.message.contains("boom"),
        "{e}"
    );
    assert_eq!(kind(admin.info("bad")), ErrorKind::NotFound);
    assert_eq!(names(&mut admin), listed);
    // The 4 MiB the hook wrote are freed; what may remain is catalog metadata
    // the first new entry grew (and it does not grow again, below).
    let after = admin.usage().expect("usage").used_bytes;
    eprintln!("used bytes: before {before}, after a failed clone {after}");
    assert!(
        after <= before + (64 << 10),
        "the clone's space is returned: {before} -> {after}"
    );

    // Past its timeout: killed (with its process group), clone deleted.
    let start = Instant::now();
    let e = server_error(admin.branch_create_with("slow", "prod", None, Some("slow"), None));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::SanitizeFailed, "{e}");
    let f = e.sanitize.as_ref().expect("failure details");
    assert!(f.timed_out, "{f:?}");
    assert_eq!(f.hook.as_deref(), Some("sleeper"));
    assert!(
        f.output.as_deref().unwrap_or("").contains("sleeping"),
        "{f:?}"
    );
    assert_eq!(kind(admin.info("slow")), ErrorKind::NotFound);
    assert_eq!(names(&mut admin), listed);
    assert_eq!(
        admin.usage().expect("usage").used_bytes,
        after,
        "a second failed clone leaves exactly what the first left"
    );
    let sleepers = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| contains(c, "61.25"))
        .count();
    assert_eq!(sleepers, 0, "the timed-out hook was killed");
    // No private mount is left in the scratch directory.
    let left: Vec<_> = std::fs::read_dir(env.base.join("scratch"))
        .expect("scratch")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(admin);
    drop(served);
    env.fsck_clean();
}

/// A hook that exits 0 without waiting for what it started (a scrubber in the
/// background) had it killed midway by the end of its PID namespace, and the
/// half-scrubbed clone was published as sanitized.
#[test]
fn a_hook_that_leaves_a_process_running_fails_and_deletes_the_clone() {
    let env = Env::new();
    let served = serve(&env.base);
    // Open from the start: the hook daemonizes its sleeper and exits 0.
    std::fs::write(env.gate(""), b"").expect("open the gate");
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let e = server_error(admin.branch_create_with("left", "prod", None, Some("daemonizes"), None));
    assert_eq!(e.kind, ErrorKind::SanitizeFailed, "{e}");
    assert!(
        e.message.contains(
            "failed, so the clone was deleted: hook 'daemonizes' exited but left 1 process running; wait for them before exiting"
        ),
        "{e}"
    );
    let f = e.sanitize.as_ref().expect("failure details");
    assert_eq!(
        (f.stage.as_str(), f.hook.as_deref()),
        ("hook", Some("daemonizes"))
    );
    assert_eq!((f.exit_code, f.signal, f.timed_out), (None, None, false));
    assert_eq!(f.processes_left, Some(1));
    assert!(
        env.gate(".sleeper").exists(),
        "the hook started its sleeper"
    );
    assert!(
        gone_within(&env.gate(""), 5),
        "the hook's sleeper outlived it"
    );
    assert_eq!(kind(admin.info("left")), ErrorKind::NotFound);
    let left: Vec<_> = std::fs::read_dir(env.base.join("scratch"))
        .expect("scratch")
        .collect();
    assert!(left.is_empty(), "{left:?}");
    drop(admin);
    drop(served);
    env.fsck_clean();
}

#[test]
fn sanitizing_clone_is_invisible_and_unusable_until_ready() {
    let env = Env::new();
    let _served = serve(&env.base);
    // On failure, open the gate before the daemon is stopped.
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let agent = admin
        .token_create("agent", vec!["branch:prod".parse().expect("grant")])
        .expect("token")
        .secret;
    let socket = env.socket();
    let secret = agent.clone();
    let creator = std::thread::spawn(move || {
        let mut c = Client::connect(&socket, &secret).expect("connect");
        let mut events = Vec::new();
        let r = c.branch_create_with(
            "gated",
            "prod",
            None,
            Some("gate"),
            Some(&mut |ev: &cowfs_ctl::proto::ProgressEvent| events.push(ev.phase.clone())),
        );
        (r, events)
    });
    env.wait_gate_started();

    // The agent (its creator) neither sees nor uses it.
    let mut a = env.connect(&agent);
    assert!(!a.list().expect("list").iter().any(|b| b.name == "gated"));
    assert_eq!(kind(a.info("gated")), ErrorKind::NotFound);
    let m = env.dir("m-gated");
    assert_eq!(kind(a.mount("gated", &s(&m), true)), ErrorKind::NotFound);
    assert!(
        a.mounts().expect("mounts").is_empty(),
        "the hook's mount is hidden"
    );
    assert!(!is_mountpoint(&m));
    // The admin sees it in state `sanitizing` and cannot use it either.
    let listed = admin.list().expect("list");
    let g = listed
        .iter()
        .find(|b| b.name == "gated")
        .expect("admin sees it");
    assert_eq!(g.state, BranchState::Sanitizing);
    assert_eq!(
        kind(admin.mount("gated", &s(&m), true)),
        ErrorKind::Sanitizing
    );
    assert_eq!(
        kind(admin.mount("gated", &s(&m), false)),
        ErrorKind::Sanitizing
    );
    assert!(!is_mountpoint(&m));
    assert_eq!(
        kind(admin.branch_create("child", "gated", None)),
        ErrorKind::Sanitizing
    );
    assert_eq!(
        kind(admin.snapshot_create("child", "gated")),
        ErrorKind::Sanitizing
    );
    assert_eq!(kind(admin.delete("gated")), ErrorKind::Sanitizing);
    assert_eq!(kind(admin.rename("gated", "other")), ErrorKind::Sanitizing);

    // Open the gate: the clone becomes ready and usable by its creator.
    std::fs::write(env.gate(""), b"").expect("open gate");
    let (r, events) = creator.join().expect("creator thread");
    let info = r.expect("gated sanitized");
    assert_eq!(info.state, BranchState::Ready);
    let summary = info.sanitized.expect("summary");
    assert_eq!(summary.hooks.len(), 1);
    assert!(
        events.iter().any(|p| p == "hooks") && events.iter().any(|p| p == "commit"),
        "{events:?}"
    );
    assert!(a.list().expect("list").iter().any(|b| b.name == "gated"));
    a.mount("gated", &s(&m), false).expect("mount once ready");
    assert!(is_mountpoint(&m));
    assert!(m.join("data/users.csv").exists());
    a.unmount(&s(&m)).expect("unmount");
}

/// Review finding: a token revoked while its clone was being sanitized still got
/// the clone when the run ended: owned by the revoked token's id, mounted where
/// it asked, described in the reply, with progress lines (naming the parent's
/// files) until then. Now the daemon checks the token again once the clone is
/// ready: revoked, the clone is deleted and the reply is `unauthenticated`; and
/// progress lines stop once the token is revoked.
#[test]
fn token_revoked_while_sanitizing_gets_no_clone() {
    let env = Env::new();
    let _served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let agent = admin
        .token_create("agent", vec!["branch:prod".parse().expect("grant")])
        .expect("token")
        .secret;
    let m = env.dir("m-revoked");
    let (socket, dir) = (env.socket(), s(&m));
    let creator = std::thread::spawn(move || {
        let mut c = Client::connect(&socket, &agent).expect("connect");
        let mut phases = Vec::new();
        let mount = MountSpec {
            dir,
            read_only: false,
        };
        let r = c.branch_create_with(
            "gated",
            "prod",
            Some(mount),
            Some("gate"),
            Some(&mut |ev: &cowfs_ctl::proto::ProgressEvent| phases.push(ev.phase.clone())),
        );
        let kind = match r {
            Ok(_) => None,
            Err(ClientError::Server(e)) => Some(e.kind),
            Err(e) => panic!("expected a server error, got {e}"),
        };
        (kind, phases)
    });
    env.wait_gate_started();
    admin.token_revoke("agent").expect("revoke");
    std::fs::write(env.gate(""), b"").expect("open gate");
    let (kind, phases) = creator.join().expect("creator thread");

    assert_eq!(kind, Some(ErrorKind::Unauthenticated));
    assert!(!is_mountpoint(&m), "mounted for a revoked token");
    assert!(
        !admin
            .list()
            .expect("list")
            .iter()
            .any(|b| b.name == "gated"),
        "the clone is kept"
    );
    assert!(phases.iter().any(|p| p == "hooks"), "{phases:?}");
    assert!(
        !phases.iter().any(|p| p == "commit"),
        "progress after the revocation: {phases:?}"
    );
}

#[test]
fn daemon_killed_while_sanitizing_leaves_no_clone() {
    let env = Env::new();
    let mut served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let before = admin.usage().expect("usage").used_bytes;
    let creator = env.create_in_background("doomed", "gate");
    env.wait_gate_started();
    let state = std::fs::read_to_string(cowfs::control::sanitizing::state_path(
        &env.base.join("pool"),
    ))
    .expect("state file");
    assert!(state.contains("doomed"), "{state}");
    served.kill();
    assert!(
        matches!(
            creator.join().expect("creator"),
            Err(ClientError::Closed | ClientError::Io(_))
        ),
        "the client sees the daemon go away"
    );
    // The killed daemon had committed the clone: it is in the pool on disk.
    {
        let pool = cowfs::pool::Pool::open(&env.base.join("pool"), &Default::default())
            .expect("open pool");
        assert!(pool.list().iter().any(|b| b.name == "doomed"));
    }
    // Nor does `cowfs mount`, run on the pool file without the daemon, serve it.
    let refusal = mount_without_daemon(&env, "doomed");
    assert!(
        refusal.contains("did not finish") && refusal.contains("sanitize-state"),
        "{refusal}"
    );

    let mut served = serve(&env.base);
    let mut admin = env.connect(&env.admin);
    assert_eq!(kind(admin.info("doomed")), ErrorKind::NotFound);
    assert!(!admin
        .list()
        .expect("list")
        .iter()
        .any(|b| b.name == "doomed"));
    // Everything the clone held is free again; only space-map pages may differ (a
    // restarted daemon sets aside other leaves for metadata: a page or two).
    let after = admin.usage().expect("usage").used_bytes;
    assert!(
        after.abs_diff(before) <= 2 * 4096,
        "used bytes {before} before the clone, {after} after its deletion"
    );
    let state = std::fs::read_to_string(cowfs::control::sanitizing::state_path(
        &env.base.join("pool"),
    ))
    .expect("state file");
    assert!(!state.contains("doomed"), "{state}");
    // The name is free again.
    admin
        .branch_create("doomed", "prod", None)
        .expect("name reusable");
    drop(admin);
    assert_eq!(served.stop(), Some(0));
    env.fsck_clean();
}

/// Run `cowfs mount POOL BRANCH DIR` (in the foreground, as a user would without
/// the daemon) and return what it printed when it refused; a mount that comes up
/// instead is taken down and fails the test.
fn mount_without_daemon(env: &Env, branch: &str) -> String {
    let dir = env.dir("direct");
    std::fs::create_dir_all(&dir).expect("mount point");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cowfs"))
        .arg("mount")
        .arg(env.base.join("pool"))
        .arg(branch)
        .arg(&dir)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cowfs mount");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&dir)
                .status();
            panic!("cowfs mount served '{branch}' (still running after 20 s)");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "cowfs mount of '{branch}' succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A daemon killed (SIGKILL) while a hook ran: the hook died with it, but what
/// the hook had daemonized (as `pg_ctl start` does a server: setsid, out of the
/// hook's process group) ran on, in the clone's mount, as root.
#[test]
fn daemon_killed_during_a_hook_takes_what_the_hook_started_along() {
    let env = Env::new();
    let mut served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let creator = env.create_in_background("doomed", "daemonizes");
    env.wait_gate_started();
    // The hook and its sleeper.
    assert!(
        marked(&env.gate("")).len() >= 2,
        "the hook and its sleeper run"
    );
    served.kill();
    assert!(creator.join().expect("creator").is_err());
    assert!(
        gone_within(&env.gate(""), 5),
        "the hook or what it daemonized outlived the daemon that started it"
    );
}

/// After a daemon killed while a hook ran, the next `cowfs serve` on the pool
/// detaches the hook's dead mount of the clone, removes the hooks' directory in
/// the scratch directory and deletes the unfinished clone.
#[test]
fn next_daemon_removes_what_a_killed_daemons_hook_left() {
    let env = Env::new();
    let mut served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let (creator, private) = gated_victim(&env);
    let mount = private.join("clone");
    served.kill();
    assert!(creator.join().expect("creator").is_err());
    assert!(
        is_mountpoint(&mount),
        "the killed daemon left its dead mount"
    );

    let mut served = serve(&env.base);
    let mut admin = env.connect(&env.admin);
    assert!(!is_mountpoint(&mount), "the dead mount is still there");
    let left: Vec<_> = std::fs::read_dir(env.base.join("scratch"))
        .expect("scratch")
        .map(|e| e.expect("entry").path())
        .collect();
    assert!(left.is_empty(), "left in the scratch directory: {left:?}");
    assert_eq!(kind(admin.info("victim")), ErrorKind::NotFound);
    drop(admin);
    assert_eq!(served.stop(), Some(0));
    env.fsck_clean();
}

#[test]
fn sigterm_while_sanitizing_kills_the_hook_and_deletes_the_clone() {
    let env = Env::new();
    let mut served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let creator = env.create_in_background("stopped", "gate");
    env.wait_gate_started();
    assert!(!marked(&env.gate("")).is_empty(), "the hook runs");
    drop(admin);
    // The gate stays closed: the daemon must stop the hook itself, promptly.
    let start = Instant::now();
    assert_eq!(served.stop(), Some(0), "log:\n{}", env.log());
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    assert!(creator.join().expect("creator").is_err());
    assert!(gone_within(&env.gate(""), 5), "the hook was killed");
    assert!(!env.gate("").exists(), "the gate was never opened");
    // The clone was deleted at shutdown: the state file no longer names it.
    let state = std::fs::read_to_string(cowfs::control::sanitizing::state_path(
        &env.base.join("pool"),
    ))
    .expect("state file");
    assert!(!state.contains("stopped"), "{state}");
    {
        let pool = cowfs::pool::Pool::open(&env.base.join("pool"), &Default::default())
            .expect("open pool");
        assert!(!pool.list().iter().any(|b| b.name == "stopped"));
    }
    env.fsck_clean();
}

/// Start a gated sanitize of `victim` from `prod` by the admin; returns the
/// creator thread and the hooks' private directory once the hook runs.
fn gated_victim(
    env: &Env,
) -> (
    std::thread::JoinHandle<Result<cowfs_ctl::proto::BranchInfo, ClientError>>,
    PathBuf,
) {
    let creator = env.create_in_background("victim", "gate");
    env.wait_gate_started();
    let private = std::fs::read_dir(env.base.join("scratch"))
        .expect("scratch")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains(".cowfs-sanitize-"))
        .expect("the hooks' directory");
    (creator, private)
}

/// The mount point of the clone in the hooks' directory.
fn hook_mount(private: &Path) -> PathBuf {
    if is_mountpoint(private) {
        private.to_path_buf()
    } else {
        private.join("clone")
    }
}

/// The hooks' private mount of a clone (mounted `allow_other`, personal data
/// still in it) is in a directory other local users cannot enter.
#[test]
fn hook_mount_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let _served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let (creator, private) = gated_victim(&env);
    let mode = std::fs::metadata(&private)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{private:?} is private: {mode:o}");
    let csv = hook_mount(&private).join("data/users.csv");
    assert!(csv.exists());
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "cat"])
        .arg(&csv)
        .output()
        .expect("runuser");
    assert!(
        !out.status.success() && !contains(&out.stdout, EMAILS[0]),
        "another user read the unsanitized clone"
    );
    std::fs::write(env.gate(""), b"").expect("open gate");
    creator.join().expect("creator").expect("sanitized");
}

/// Root on the host mounts a tmpfs on `target` while the gated hook waits, then
/// lets the hook run and takes the tmpfs away 1.5 s after (so it is gone before
/// the daemon's busy-unmount retries end). Checks that the clone was not
/// published and failed to sanitize with a message containing `why`; the error.
fn tmpfs_while_the_hook_runs(
    env: &Env,
    admin: &mut Client,
    creator: std::thread::JoinHandle<Result<cowfs_ctl::proto::BranchInfo, ClientError>>,
    target: &Path,
    why: &str,
) -> cowfs_ctl::proto::ErrorReply {
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(target)
        .status()
        .expect("mount tmpfs");
    assert!(st.success());
    std::fs::write(env.gate(""), b"").expect("open gate");
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("umount").arg(target).status();
    let r = creator.join().expect("creator thread");
    let published = admin
        .list()
        .expect("list")
        .iter()
        .any(|b| b.name == "victim");
    assert!(!published, "the clone is not published: {r:?}");
    let e = server_error(r);
    assert_eq!(e.kind, ErrorKind::SanitizeFailed, "{e}");
    assert!(e.message.contains(why), "{e}");
    e
}

/// No token can mount inside the hooks' mount, and a clone whose hook mount had
/// anything mounted inside it (so the hooks may have scrubbed something else) is
/// never published, even if that mount goes away before the daemon unmounts.
#[test]
fn hook_mount_cannot_be_shadowed() {
    let env = Env::new();
    let _served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let agent = admin
        .token_create("agent", vec!["branch:main".parse().expect("grant")])
        .expect("token")
        .secret;
    let mut a = env.connect(&agent);
    a.branch_create("a1", "main", None).expect("a1");
    admin.branch_create("a2", "main", None).expect("a2");
    let (creator, private) = gated_victim(&env);
    let clone = hook_mount(&private);
    for (who, c, b) in [("agent", &mut a, "a1"), ("admin", &mut admin, "a2")] {
        let r = c.mount(b, &s(&clone.join("data")), false);
        let _ = Command::new("umount").arg(clone.join("data")).status();
        let e = server_error(r);
        assert_eq!(e.kind, ErrorKind::Forbidden, "{who}: {e}");
    }

    // Root on the host shadows a directory of the clone while the hook runs and
    // takes it away a moment after the hook ended.
    let logs = clone.join("logs");
    tmpfs_while_the_hook_runs(&env, &mut admin, creator, &logs, "mounted inside");
}

/// Root on the host mounts over the hooks' private directory while the hook
/// runs: `$COWFS_CLONE_DIR` then leads into that mount, not to the clone, so
/// the hooks may have scrubbed another tree. The clone is not published, even
/// though the mount goes away a moment after the hook ended.
#[test]
fn hook_mount_cannot_be_covered_from_above() {
    let env = Env::new();
    let _served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let (creator, private) = gated_victim(&env);
    let e = tmpfs_while_the_hook_runs(&env, &mut admin, creator, &private, "mounts on the path");
    assert!(e.message.contains(&s(&private)), "{e}");
    assert!(!private.exists(), "the hooks' directory is removed");
}

/// Make the test's `scratch_dir` a symlink to a directory beside it, as
/// /var/run is a symlink to /run on most distributions.
fn symlink_scratch(env: &Env) {
    let scratch = env.base.join("scratch");
    std::fs::remove_dir(&scratch).expect("rmdir scratch");
    std::fs::create_dir(env.base.join("scratch-real")).expect("scratch-real");
    std::os::unix::fs::symlink("scratch-real", &scratch).expect("symlink");
}

/// As `hook_mount_cannot_be_shadowed`, with a symlinked `scratch_dir`. The
/// daemon looked for mounts inside the clone's mount under the symlinked path,
/// while mountinfo lists real paths: it found none, the tmpfs went away during
/// the busy-unmount retries, and the clone was published although a hook may
/// have scrubbed the tmpfs instead of the clone's directory.
#[test]
fn hook_mount_cannot_be_shadowed_through_a_symlinked_scratch_dir() {
    let env = Env::new();
    symlink_scratch(&env);
    let _served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let (creator, private) = gated_victim(&env);
    let logs = hook_mount(&private).join("logs");
    tmpfs_while_the_hook_runs(&env, &mut admin, creator, &logs, "mounted inside");
}

/// As `hook_mount_cannot_be_covered_from_above`, with a symlinked `scratch_dir`:
/// the mounts on the path are those of its real path.
#[test]
fn hook_mount_cannot_be_covered_from_above_through_a_symlinked_scratch_dir() {
    let env = Env::new();
    symlink_scratch(&env);
    let _served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let (creator, private) = gated_victim(&env);
    tmpfs_while_the_hook_runs(&env, &mut admin, creator, &private, "mounts on the path");
    assert!(!private.exists(), "the hooks' directory is removed");
}

/// The hooks' private directory, and every directory above it, holds the clone's
/// mount: a branch mounted there would hide the clone from a hook that reaches it
/// by `$COWFS_CLONE_DIR` (which would then scrub that branch instead, and the
/// clone be published unscrubbed). No token, admin included, may mount there.
#[test]
fn no_mount_on_or_above_the_hooks_directory() {
    let env = Env::new();
    let _served = serve(&env.base);
    let _gate = OpenGate(env.gate(""));
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    admin.branch_create("decoy", "main", None).expect("decoy");
    let creator = env.create_in_background("victim", "scrub");
    env.wait_gate_started();
    let private = hooks_dir(&env);
    for dir in [private.clone(), env.base.join("scratch"), env.base.clone()] {
        let r = admin.mount("decoy", &s(&dir), false);
        let _ = admin.unmount(&s(&dir));
        let e = server_error(r);
        assert_eq!(e.kind, ErrorKind::Forbidden, "{}: {e}", dir.display());
        assert!(e.message.contains("would hide"), "{e}");
    }
    std::fs::write(env.gate(""), b"").expect("open gate");
    creator.join().expect("creator").expect("sanitized");
    let m = env.dir("victim");
    admin.mount("victim", &s(&m), true).expect("mount victim");
    let scrubbed = !m.join("data").exists();
    admin.unmount(&s(&m)).expect("unmount victim");
    assert!(scrubbed, "the hook scrubbed the clone");
}

/// The hooks' private directory under the scratch directory, once a hook runs.
fn hooks_dir(env: &Env) -> PathBuf {
    std::fs::read_dir(env.base.join("scratch"))
        .expect("scratch")
        .map(|e| e.expect("entry").path())
        .find(|p| p.to_string_lossy().contains(".cowfs-sanitize-"))
        .expect("the hooks' directory")
}

/// A failing hook's output shows the parent's data: a token that may not read the
/// parent gets the exit status and a pointer to the daemon's log, not the output;
/// one that may read it gets the output; the log has it either way.
#[test]
fn hook_output_only_for_tokens_that_read_the_parent() {
    let env = Env::new();
    let _served = serve(&env.base);
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let mut blind = token_client(&env, &mut admin, "blind", &["branch:prod"]);
    let mut reader = token_client(&env, &mut admin, "reader", &["branch:prod", "read:prod"]);

    let e = server_error(blind.branch_create_with("b1", "prod", None, Some("fails"), None));
    assert_eq!(e.kind, ErrorKind::SanitizeFailed, "{e}");
    let f = e.sanitize.as_ref().expect("failure details");
    assert_eq!((f.hook.as_deref(), f.exit_code), (Some("boom"), Some(3)));
    assert_eq!(f.output, None, "{f:?}");
    assert!(!e.message.contains("boom\n"), "{e}");
    assert!(e.message.contains("daemon's log"), "{e}");

    let e = server_error(reader.branch_create_with("r1", "prod", None, Some("fails"), None));
    let f = e.sanitize.as_ref().expect("failure details");
    assert!(f.output.as_deref().unwrap_or("").contains("boom"), "{f:?}");
    assert!(e.message.contains("boom\n"), "{e}");
    assert!(env.log().matches("boom\n").count() >= 2, "{}", env.log());
}

/// Progress lines name the file being scanned: a path of the parent, names not
/// yet redacted. A token that may not read the parent got them all the same
/// (failure replies already hid paths from it); now its lines carry counts only.
/// The first file scanned is shown at once, so each run has a line with a path.
#[test]
fn progress_names_files_only_for_tokens_that_read_the_parent() {
    let env = Env::new();
    let _served = serve(&env.base);
    let mut admin = env.connect(&env.admin);
    make_prod(&env, &mut admin);
    let mut blind = token_client(&env, &mut admin, "blind", &["branch:prod"]);
    let mut reader = token_client(&env, &mut admin, "reader", &["branch:prod", "read:prod"]);
    let currents = |c: &mut Client, name: &str| {
        let mut seen = Vec::new();
        c.branch_create_with(
            name,
            "prod",
            None,
            Some("pii"),
            Some(&mut |ev: &cowfs_ctl::proto::ProgressEvent| seen.push(ev.current.clone())),
        )
        .expect("sanitized clone");
        seen
    };

    let shown = currents(&mut reader, "r1");
    assert!(
        shown.iter().any(|c| !c.is_empty()),
        "the reader saw no path: {shown:?}"
    );
    let shown = currents(&mut blind, "b1");
    assert!(
        shown.iter().all(String::is_empty),
        "a token that may not read prod saw its paths: {shown:?}"
    );
}

/// A requirement an earlier build recorded on prod alone (it reached only
/// branches created later) leaves prod's older snapshots uncovered: the daemon
/// names each at start, with the command that covers it.
#[test]
fn start_names_descendants_an_earlier_requirement_left_uncovered() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let pool_path = env.base.join("pool");
    {
        let pool = cowfs::pool::Pool::open(&pool_path, &Default::default()).expect("open");
        let prod = pool.branch_create("prod", "main").expect("prod");
        pool.snapshot_create("prod-monday", "prod")
            .expect("prod-monday");
        let state = cowfs::control::sanitizing::state_path(&pool_path);
        let json =
            format!(r#"{{"version": 2, "require": [{{"branch": {prod}, "profile": "pii"}}]}}"#);
        std::fs::write(&state, json).expect("state");
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let _served = serve(&env.base);
    env.connect(&env.admin);
    let log = env.log();
    assert!(
        log.contains(
            "'prod-monday' descends from 'prod', which requires the sanitize profile 'pii'"
        ) && log.contains("cowfs-ctl protect prod --require-sanitize pii"),
        "{log}"
    );
}
