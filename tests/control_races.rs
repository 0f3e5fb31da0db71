//! Control requests of several clients at once: a request either succeeds
//! completely or fails and changes nothing, whatever another client does
//! meanwhile; nothing is left mounted or half-created, and fsck is clean.
//!
//! Needs root and /dev/fuse (real mounts, hooks on private mounts).

mod control_support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control_support::*;
use cowfs::fs::Owner;
use cowfs::pool::FsckOptions;
use cowfs_ctl::proto::{ErrorKind, MountSpec};
use cowfs_ctl::{Client, ClientError};

const MIB: u64 = 1 << 20;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// A profile whose hook waits until the file `gate` exists (and says it started
/// by creating `gate.started`), so that a test acts while a clone is sanitized.
fn gate_config(gate: &Path, scratch: &Path) -> String {
    format!(
        r#"
[sanitize]
scratch_dir = "{scratch}"

[[profiles.gate.hooks]]
name = "gate"
command = "touch \"$GATE.started\"; while [ ! -e \"$GATE\" ]; do sleep 0.05; done"
env = {{ GATE = "{gate}" }}
timeout_secs = 60
"#,
        scratch = scratch.display(),
        gate = gate.display(),
    )
}

/// Opens the gate when dropped, so that a failing test does not leave a hook
/// waiting (the daemon's stop would wait for it).
struct Gate(PathBuf);

impl Gate {
    fn started(&self) -> PathBuf {
        let mut p = self.0.clone().into_os_string();
        p.push(".started");
        PathBuf::from(p)
    }

    fn wait_started(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.started().exists() {
            assert!(Instant::now() < deadline, "the gate hook never started");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn open(&self) {
        std::fs::write(&self.0, b"").expect("open the gate");
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.0, b"");
    }
}

/// Branch `prod` holding 8 MiB of its own data, with a 64 MiB quota. Written
/// through the pool rather than a mount: unmounting right after writing there
/// was seen answering `busy` once in 20 runs while the other test of this file
/// ran (not investigated here), which would make this test flaky.
fn prod_with_quota(d: &Daemon, admin: &mut Client) {
    admin.branch_create("prod", "main", None).expect("prod");
    let b = d.pool.branch_id("prod").expect("prod id");
    let f = d
        .pool
        .mknod(b, 1, b"data", libc::S_IFREG | 0o644, 0, Owner::default())
        .expect("mknod");
    let chunk = vec![0x5au8; MIB as usize];
    for i in 0..8 {
        d.pool.write_file(b, f.ino, i * MIB, &chunk).expect("write");
    }
    d.pool.commit().expect("commit");
    admin.quota_set("prod", Some(64 * MIB), 0).expect("quota");
}

fn quota_used(admin: &mut Client, name: &str) -> u64 {
    admin
        .quota_list()
        .expect("quota list")
        .into_iter()
        .find(|q| q.name == name)
        .expect("quota listed")
        .used_bytes
}

fn names(admin: &mut Client) -> Vec<String> {
    admin
        .list()
        .expect("list")
        .into_iter()
        .map(|b| b.name)
        .collect()
}

/// The error kind of a reply; `None` for a success.
fn refusal<T>(r: Result<T, ClientError>) -> Option<ErrorKind> {
    match r {
        Ok(_) => None,
        Err(ClientError::Server(e)) => Some(e.kind),
        Err(e) => panic!("expected a reply, got {e}"),
    }
}

fn assert_fsck_clean(d: &Daemon) {
    let r = d
        .pool
        .fsck(&FsckOptions { verify_data: true })
        .expect("fsck");
    assert!(r.is_clean(), "{r}");
}

/// Review finding: a branch created with a mount that then failed was deleted
/// again, but its parent's quota figure stayed at what creating it set (0: all
/// shared), so the parent could write past its quota by what it held. Here the
/// mount fails because another client mounted something on the directory while
/// the clone was sanitized (and, without sanitizing, because it was taken
/// already): either way the failed request leaves the parent's figure as it was.
#[test]
fn a_create_whose_mount_fails_leaves_the_parents_quota_as_it_was() {
    let gates = tempfile::tempdir().expect("tempdir");
    let gate = Gate(gates.path().join("gate"));
    let config = gate_config(&gate.0, &gates.path().join("scratch"));
    std::fs::create_dir(gates.path().join("scratch")).expect("scratch");
    let d = Daemon::start_with(Some(&config), 256 * MIB);
    let mut admin = d.admin_client();
    prod_with_quota(&d, &mut admin);
    let before = quota_used(&mut admin, "prod");
    assert!(before >= 8 * MIB, "prod alone holds its data: {before}");
    admin.branch_create("other", "main", None).expect("other");
    let m = d.dir("taken");

    // Sanitized: the directory is taken while the hook runs.
    let (socket, secret, dir) = (d.socket.clone(), d.admin.clone(), s(&m).to_string());
    let creator = std::thread::spawn(move || {
        let mut c = Client::connect(&socket, &secret).expect("connect");
        let mount = MountSpec {
            dir,
            read_only: false,
        };
        c.branch_create_with("clone", "prod", Some(mount), Some("gate"), None)
    });
    gate.wait_started();
    admin.mount("other", s(&m), false).expect("mount other");
    gate.open();
    let r = creator.join().expect("creator thread");
    assert_eq!(kind(r), ErrorKind::Exists);
    assert!(!names(&mut admin).contains(&"clone".to_string()));
    assert_eq!(
        quota_used(&mut admin, "prod"),
        before,
        "after the sanitized create"
    );

    // Not sanitized: the directory is taken already.
    let mount = MountSpec {
        dir: s(&m).to_string(),
        read_only: false,
    };
    assert_eq!(
        kind(admin.branch_create("plain", "prod", Some(mount))),
        ErrorKind::Exists
    );
    assert!(!names(&mut admin).contains(&"plain".to_string()));
    assert_eq!(
        quota_used(&mut admin, "prod"),
        before,
        "after the plain create"
    );

    admin.unmount(s(&m)).expect("unmount other");
    assert_fsck_clean(&d);
}

/// Holds the operation lock for about a second, from another connection: an
/// unmount of a mount detached from outside (`umount -l`) while a file is open
/// there waits that long for its session to end, then answers `busy`.
struct LockHolder {
    /// The open file that keeps the detached mount's session running.
    _open: File,
    unmount: std::thread::JoinHandle<Instant>,
}

impl LockHolder {
    fn start(d: &Daemon, admin: &mut Client, branch: &str) -> LockHolder {
        let m = d.dir(&format!("held-{branch}"));
        admin.mount(branch, s(&m), false).expect("mount");
        let open = File::create(m.join("open")).expect("open a file there");
        let st = std::process::Command::new("umount")
            .arg("-l")
            .arg(&m)
            .status()
            .expect("umount -l");
        assert!(st.success(), "umount -l");
        let (socket, secret, dir) = (d.socket.clone(), d.admin.clone(), s(&m).to_string());
        let unmount = std::thread::spawn(move || {
            let mut c = Client::connect(&socket, &secret).expect("connect");
            assert_eq!(kind(c.unmount(&dir)), ErrorKind::Busy);
            Instant::now()
        });
        LockHolder {
            _open: open,
            unmount,
        }
    }

    /// When the holder's request ended.
    fn join(self) -> Instant {
        self.unmount.join().expect("lock holder thread")
    }
}

/// Review finding: a request was checked against revocation when it arrived,
/// then waited for the operation lock; a revoke that took the lock first did not
/// stop it, so the revoked token still created a branch and mounted one (its
/// agent kept writing there). Here the agent's requests arrive while an admin's
/// revoke of it waits for the lock: they must be refused.
#[test]
fn requests_queued_behind_a_revoke_of_their_token_are_refused() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    admin.branch_create("held", "main", None).expect("held");
    admin.branch_create("work", "main", None).expect("work");
    let agent = d.token(
        "agent",
        &["branch:main", "read:*", "write:work", "mount:work"],
    );
    let second_admin = d.token("admin2", &["admin:*"]);
    let mut creator = d.client(&agent);
    let mut mounter = d.client(&agent);
    let mut revoker = d.client(&second_admin);
    let m = d.dir("agent-work");

    let holder = LockHolder::start(&d, &mut admin, "held");
    std::thread::sleep(Duration::from_millis(150));
    let revoke = std::thread::spawn(move || revoker.token_revoke("agent"));
    std::thread::sleep(Duration::from_millis(150));
    let sent = Instant::now();
    let create = std::thread::spawn(move || creator.branch_create("late", "main", None));
    let dir = s(&m).to_string();
    let mount = std::thread::spawn(move || mounter.mount("work", &dir, false));
    std::thread::sleep(Duration::from_millis(150));
    let held_until = holder.join();
    assert!(
        held_until > sent + Duration::from_millis(100),
        "the lock was not held while the requests arrived: the test proves nothing"
    );
    revoke.join().expect("revoke thread").expect("revoke");
    let created = create.join().expect("create thread");
    let mounted = mount.join().expect("mount thread");

    // Each of them alone is the defect: seen together in one assertion.
    let late = names(&mut admin).contains(&"late".to_string());
    assert_eq!(
        (refusal(created), late, refusal(mounted), is_mountpoint(&m)),
        (
            Some(ErrorKind::Unauthenticated),
            false,
            Some(ErrorKind::Unauthenticated),
            false
        ),
        "(create's reply, 'late' exists, mount's reply, mounted) for a revoked token"
    );
    assert_fsck_clean(&d);
}

/// Review finding: `diff` flushes a mounted branch (syncfs, which holds the
/// mount's directory open) without the operation lock, so an unmount at that
/// moment failed with `busy`, "files are open on this mount", although nobody
/// had a file open there (16 times in 100 here). Each round writes a file (closed
/// again), then diffs the branch while another client unmounts it: both must
/// succeed, whichever comes first.
#[test]
fn unmount_racing_a_diff_of_the_branch_is_not_busy() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    admin.branch_create("x", "main", None).expect("x");
    let m = d.dir("x");
    let dir = s(&m).to_string();
    let mut refused = Vec::new();
    for round in 0..100u64 {
        admin.mount("x", &dir, false).expect("mount");
        std::fs::write(m.join(format!("f{round}")), vec![7u8; MIB as usize]).expect("write");
        let (socket, secret) = (d.socket.clone(), d.admin.clone());
        let differ = std::thread::spawn(move || {
            let mut c = Client::connect(&socket, &secret).expect("connect");
            refusal(c.diff("x", "main"))
        });
        // Vary where the unmount lands in the diff's flush.
        std::thread::sleep(Duration::from_micros((round % 10) * 100));
        let unmounted = refusal(admin.unmount(&dir));
        let diffed = differ.join().expect("differ thread");
        if unmounted.is_some() || diffed.is_some() {
            refused.push((round, unmounted, diffed));
        }
        if is_mountpoint(&m) {
            admin.unmount(&dir).expect("unmount after a refusal");
        }
    }
    assert!(
        refused.is_empty(),
        "(round, unmount, diff) refused: {refused:?}"
    );
    assert_fsck_clean(&d);
}
