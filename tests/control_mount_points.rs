//! Where a branch may be mounted (the daemon mounts as root with `allow_other`):
//! a token without `admin:*` only strictly below a mount root (default
//! `POOL.mnt`), symlinks resolved, never on or inside another mount; no token,
//! admin included, inside a cowfs mount of the pool. Every refusal is `forbidden`
//! and leaves the host directory and the pool as they were.
//!
//! Needs root and /dev/fuse.

mod control_support;

use std::path::Path;
use std::process::Command;

use control_support::*;
use cowfs_ctl::proto::{ErrorKind, MountSpec};
use cowfs_ctl::ClientError;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

fn forbidden<T: std::fmt::Debug>(what: &str, r: Result<T, ClientError>, says: &str) {
    match r {
        Err(ClientError::Server(e)) => {
            assert_eq!(e.kind, ErrorKind::Forbidden, "{what}: {e}");
            assert!(e.message.contains(says), "{what}: {e}");
        }
        other => panic!("{what}: expected forbidden, got {other:?}"),
    }
}

/// A tmpfs mounted by the test, unmounted on drop.
struct Tmpfs<'a>(&'a Path);

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn mounts_stay_under_the_mount_roots_and_outside_other_mounts() {
    let d = Daemon::start();
    let root = d.mount_root();
    let mut admin = d.admin_client();
    let agent_s = d.token("agent", &["branch:main"]);
    let mut agent = d.client(&agent_s);
    let owned = |c: &mut cowfs_ctl::Client, n: &str| {
        c.branch_create(n, "main", None).expect("branch create");
    };

    // A host directory outside the roots: its files must stay visible.
    let victim = d.tmp.path().canonicalize().expect("tmp").join("victim");
    std::fs::create_dir(&victim).expect("victim");
    std::fs::write(victim.join("keep"), "host file").expect("host file");
    forbidden(
        "create --mount on a host directory",
        agent.branch_create_with(
            "a1",
            "main",
            Some(MountSpec {
                dir: s(&victim).into(),
                read_only: false,
            }),
            None,
            None,
        ),
        &format!("must be under {}", root.display()),
    );
    assert_eq!(
        kind(agent.info("a1")),
        ErrorKind::NotFound,
        "nothing created"
    );
    owned(&mut agent, "a1");
    forbidden(
        "mount on a host directory",
        agent.mount("a1", s(&victim), false),
        "must be under",
    );
    // The root itself, and a symlink under the root that leads outside.
    forbidden(
        "mount on the root",
        agent.mount("a1", s(&root), false),
        "must be under",
    );
    let link = root.join("link");
    std::os::unix::fs::symlink(&victim, &link).expect("symlink");
    forbidden(
        "mount through a symlink",
        agent.mount("a1", s(&link), false),
        "must be under",
    );
    assert!(!is_mountpoint(&victim) && victim.join("keep").exists());

    // Another filesystem mounted under the root: neither on it nor inside it.
    let other = d.dir("other-fs");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&other)
        .status()
        .expect("mount tmpfs");
    assert!(st.success());
    let _tmpfs = Tmpfs(&other);
    std::fs::create_dir(other.join("in")).expect("mkdir");
    forbidden(
        "mount on another mount",
        agent.mount("a1", s(&other), false),
        "another mount",
    );
    forbidden(
        "mount inside another mount",
        agent.mount("a1", s(&other.join("in")), false),
        "another mount",
    );

    // Inside a cowfs mount of the pool: refused to everyone, admin included, and
    // the admin's unmount of main is not pinned.
    let main_mnt = d.dir("main");
    admin
        .mount("main", s(&main_mnt), false)
        .expect("mount main");
    std::fs::create_dir(main_mnt.join("etc")).expect("mkdir in main");
    forbidden(
        "agent mounts inside main's mount",
        agent.mount("a1", s(&main_mnt.join("etc")), false),
        "inside the mount of branch 'main'",
    );
    admin.branch_create("a2", "main", None).expect("a2");
    forbidden(
        "admin mounts inside main's mount",
        admin.mount("a2", s(&main_mnt.join("etc")), false),
        "inside the mount of branch 'main'",
    );
    admin
        .unmount(s(&main_mnt))
        .expect("unmount main is not busy");

    // Below the root: allowed. An admin may still mount outside the roots.
    let ok = d.dir("a1");
    agent
        .mount("a1", s(&ok), false)
        .expect("mount under the root");
    agent.unmount(s(&ok)).expect("unmount");
    let elsewhere = d.tmp.path().canonicalize().expect("tmp").join("admin-dir");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    admin
        .mount("a2", s(&elsewhere), false)
        .expect("admin mounts anywhere");
    admin.unmount(s(&elsewhere)).expect("unmount");
}

/// Review finding: `unmount` after an outside `umount -l` (files still open on
/// the detached mount) unmounted whatever had been mounted on the directory
/// since. Now it answers `busy` and leaves that mount alone, also once the files
/// are closed and the detached mount is forgotten.
#[test]
fn unmount_after_an_outside_lazy_unmount_leaves_the_new_mount_alone() {
    let d = Daemon::start();
    let mut admin = d.admin_client();
    let dir = d.dir("a");
    admin.mount("main", s(&dir), false).expect("mount");
    let held = std::fs::File::create(dir.join("held")).expect("open a file there");
    let st = Command::new("umount").arg("-l").arg(&dir).status();
    assert!(st.expect("umount -l").success());
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(&dir)
        .status()
        .expect("mount tmpfs");
    assert!(st.success());
    let _tmpfs = Tmpfs(&dir);
    std::fs::write(dir.join("tmpfs-file"), b"x").expect("write to the tmpfs");

    // On a thread: the unmount used to wait for the held file (its session).
    let (tx, rx) = std::sync::mpsc::channel();
    let (mut c, d2) = (d.admin_client(), dir.clone());
    std::thread::spawn(move || {
        let _ = tx.send(c.unmount(s(&d2)).map_err(|e| match e {
            ClientError::Server(e) => Some(e.kind),
            _ => None,
        }));
    });
    let r = rx.recv_timeout(std::time::Duration::from_secs(10));
    assert!(dir.join("tmpfs-file").exists(), "unmount took the tmpfs");
    let r = r.expect("unmount answers");
    assert_eq!(r, Err(Some(ErrorKind::Busy)));
    drop(held);
    // Once its files are closed, the detached mount ends and is forgotten
    // (by this unmount, or already when its session ended).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match admin.unmount(s(&dir)) {
            Ok(_) => break,
            Err(ClientError::Server(e)) if e.kind == ErrorKind::NotMounted => break,
            Err(ClientError::Server(e)) if e.kind == ErrorKind::Busy => {}
            other => panic!("unmount once the files are closed: {other:?}"),
        }
        assert!(std::time::Instant::now() < deadline, "still served");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(dir.join("tmpfs-file").exists(), "the tmpfs is gone");
}

/// Review finding: the mount point was checked by path (symlinks resolved,
/// under a mount root) and then resolved again for mount(2), so a token holder
/// who can write below a mount root (the directory it mounts in) could swap a
/// directory it had checked for a symlink to any host directory in between,
/// and the daemon (root, `allow_other`) mounted the branch there. A thread here
/// exchanges such a directory with a symlink to a host directory outside the
/// roots, as fast as it can, while the agent mounts on the directory again and
/// again: the host directory must never get the mount.
#[test]
fn a_mount_point_swapped_for_a_symlink_after_the_check_is_never_followed() {
    use std::os::unix::ffi::OsStrExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let d = Daemon::start();
    let agent_s = d.token("agent", &["branch:main"]);
    let mut agent = d.client(&agent_s);
    agent.branch_create("a1", "main", None).expect("branch");
    let victim = d.tmp.path().canonicalize().expect("tmp").join("victim");
    std::fs::create_dir(&victim).expect("victim");
    // The agent's own directory under the root: `m` is a directory or a symlink
    // to the victim, `alt` the other one.
    let own = d.dir("agent");
    let (m, alt) = (own.join("m"), own.join("alt"));
    std::fs::create_dir(&m).expect("mkdir m");
    std::os::unix::fs::symlink(&victim, &alt).expect("symlink");
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
    let (cm, calt) = (c(&m), c(&alt));
    let exchange = move || {
        // SAFETY: two valid NUL-terminated paths.
        unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                cm.as_ptr(),
                libc::AT_FDCWD,
                calt.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        }
    };

    // Held by the swapper for each exchange, by the test while it looks at a
    // mount: an exchange racing with the mount can leave it on the directory's
    // new name.
    let paused = Arc::new(Mutex::new(()));
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (stop, paused) = (stop.clone(), paused.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _g = paused.lock().expect("lock");
                // Fails (EBUSY) while `m` is a mount point.
                exchange();
            }
        })
    };
    let mounted_on = || {
        let all = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        all.lines()
            .filter(|l| l.contains(":a1 "))
            .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
            .collect::<Vec<_>>()
    };
    let (mut landed, mut refused, mut on_victim) = (0, 0, false);
    for _ in 0..1000 {
        let r = agent.mount("a1", s(&m), false);
        let _g = paused.lock().expect("lock");
        if r.is_err() {
            refused += 1;
            continue;
        }
        landed += 1;
        let points = mounted_on();
        on_victim = points.iter().any(|p| Path::new(p) == victim);
        if on_victim {
            break;
        }
        if points == [s(&m)] {
            agent.unmount(s(&m)).expect("unmount");
            continue;
        }
        // On the directory's new name (`alt`, still below the root): the
        // exchange raced with the mount. Detached here, and forgotten by the
        // daemon once its session ends.
        for p in &points {
            let st = Command::new("umount").arg("-l").arg(p).status();
            assert!(st.expect("umount -l").success(), "umount -l {p}");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !agent.info("a1").expect("info").mounts.is_empty() {
            assert!(std::time::Instant::now() < deadline, "still mounted");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().expect("swapper");
    assert!(
        !on_victim && !is_mountpoint(&victim),
        "the branch was mounted on the host directory {} (after {landed} mounts, {refused} refusals)",
        victim.display()
    );
    assert!(
        landed > 0,
        "no mount went through at all ({refused} refusals)"
    );
}
