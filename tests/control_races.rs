//! Control requests of several clients at once: a request either succeeds
//! completely or fails and changes nothing, whatever another client does
//! meanwhile; nothing is left mounted or half-created, and fsck is clean.
//!
//! Needs root and /dev/fuse (real mounts, hooks on private mounts).

mod control_support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use control_support::*;
use cowfs::fs::Owner;
use cowfs::pool::FsckOptions;
use cowfs_ctl::proto::{ErrorKind, MountSpec};
use cowfs_ctl::Client;

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
