//! Where a branch may be mounted (the daemon mounts as root with `allow_other`):
//! a token without `admin:*` only strictly below a mount root (default
//! `POOL.mnt`), symlinks resolved, never on or inside another mount; no token,
//! admin included, inside a cowfs mount of the pool; a token without `admin:*`
//! only on a directory the requesting process's user may write (and owns, if it
//! is sticky), as fusermount requires. Every refusal is `forbidden` and leaves
//! the host directory and the pool as they were.
//!
//! Needs root and /dev/fuse.

mod control_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use control_support::*;
use cowfs_ctl::proto::{ErrorKind, MountSpec};
use cowfs_ctl::ClientError;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8")
}

/// A thread exchanging two paths (RENAME_EXCHANGE) over and over until dropped;
/// it fails (EBUSY) while either is a mount point. `pause` holds it off while a
/// test looks at a mount: an exchange racing with the mount can leave it on the
/// directory's new name.
struct Swapper {
    paused: std::sync::Arc<std::sync::Mutex<()>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swapper {
    fn start(a: &Path, b: &Path) -> Swapper {
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).expect("path");
        let (ca, cb) = (c(a), c(b));
        let paused = std::sync::Arc::new(std::sync::Mutex::new(()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (stop, paused) = (stop.clone(), paused.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _g = paused.lock().expect("lock");
                    // SAFETY: two valid NUL-terminated paths.
                    unsafe {
                        libc::renameat2(
                            libc::AT_FDCWD,
                            ca.as_ptr(),
                            libc::AT_FDCWD,
                            cb.as_ptr(),
                            libc::RENAME_EXCHANGE,
                        )
                    };
                }
            })
        };
        Swapper {
            paused,
            stop,
            thread: Some(thread),
        }
    }

    fn pause(&self) -> std::sync::MutexGuard<'_, ()> {
        self.paused.lock().expect("lock")
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("swapper");
        }
    }
}

/// Where this pool's `branch` is mounted: other tests of this file mount a
/// branch of that name of their own pool meanwhile, which must not be seen
/// (nor unmounted).
fn mounts_of(d: &Daemon, branch: &str) -> Vec<PathBuf> {
    let source = format!("{}:{branch} ", d.pool_path.display());
    let all = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    all.lines()
        .filter(|l| l.contains(&source))
        .filter_map(|l| l.split_whitespace().nth(4).map(PathBuf::from))
        .collect()
}

/// Detach mounts of `branch` from outside (`umount -l`) and wait until the
/// daemon, once their sessions end, lists none.
fn detach(agent: &mut cowfs_ctl::Client, branch: &str, points: &[PathBuf]) {
    for p in points {
        let st = Command::new("umount").arg("-l").arg(p).status();
        assert!(
            st.expect("umount -l").success(),
            "umount -l {}",
            p.display()
        );
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !agent.info(branch).expect("info").mounts.is_empty() {
        assert!(std::time::Instant::now() < deadline, "still mounted");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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
    let swapper = Swapper::start(&m, &alt);
    let (mut landed, mut refused, mut on_victim) = (0, 0, false);
    for _ in 0..1000 {
        let r = agent.mount("a1", s(&m), false);
        let _g = swapper.pause();
        if r.is_err() {
            refused += 1;
            continue;
        }
        landed += 1;
        let points = mounts_of(&d, "a1");
        on_victim = points.contains(&victim);
        if on_victim {
            break;
        }
        if points == [m.clone()] {
            agent.unmount(s(&m)).expect("unmount");
            continue;
        }
        // On the directory's new name (`alt`, still below the root): the
        // exchange raced with the mount.
        detach(&mut agent, "a1", &points);
    }
    drop(swapper);
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

/// A client whose connection the kernel records as made by `uid`, `gid` and
/// `groups`: connected by a thread that takes those credentials with raw
/// syscalls (they change this thread's only, and the daemon reads the
/// connecting thread's, `SO_PEERCRED`). The thread ends with them.
fn connect_as(d: &Daemon, secret: &str, uid: u32, gid: u32, groups: &[u32]) -> cowfs_ctl::Client {
    let (socket, secret, groups) = (d.socket.clone(), secret.to_string(), groups.to_vec());
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on values this closure owns; nothing in this
        // thread needs root afterwards.
        unsafe {
            let r = libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr());
            assert_eq!(r, 0, "setgroups: {}", std::io::Error::last_os_error());
            let r = libc::syscall(libc::SYS_setresgid, gid, gid, gid);
            assert_eq!(r, 0, "setresgid: {}", std::io::Error::last_os_error());
            let r = libc::syscall(libc::SYS_setresuid, uid, uid, uid);
            assert_eq!(r, 0, "setresuid: {}", std::io::Error::last_os_error());
        }
        cowfs_ctl::Client::connect(&socket, &secret).expect("connect as another user")
    })
    .join()
    .expect("connecting thread")
}

/// Security review: a token without `admin:*` could mount its branch on any
/// unmounted directory below a mount root, such as the data directory another
/// agent's database uses (as another Unix user) while that agent's branch is
/// unmounted: that database then ran on the first agent's data. Now, as
/// fusermount requires, the requesting process's user must be able to write
/// the mount point, and own it if it is sticky; root and admin tokens are not
/// restricted. Users and groups here have no passwd entries.
#[test]
fn a_token_mounts_only_where_its_user_may_write() {
    use std::os::unix::fs::{chown, PermissionsExt};

    const UID: u32 = 4001;
    const GID: u32 = 4001;
    // A supplementary group of the client, and another user.
    const GROUP: u32 = 4242;
    const OTHER: u32 = 4002;
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };

    let d = Daemon::start();
    // The socket is 0660 root:root: reached through the supplementary group 0.
    mode(d.tmp.path(), 0o750);
    let agent_s = d.token("agent", &["branch:main"]);
    let mut agent = connect_as(&d, &agent_s, UID, GID, &[0, GROUP]);
    agent.branch_create("a1", "main", None).expect("branch");

    // Another user's directory, as a service's data directory would be.
    let theirs = d.dir("theirs");
    chown(&theirs, Some(OTHER), Some(OTHER)).expect("chown");
    for m in [0o755, 0o700] {
        mode(&theirs, m);
        forbidden(
            &format!("mount on another user's directory ({m:o})"),
            agent.mount("a1", s(&theirs), false),
            &format!(
                "mount point {} is not writable by uid {UID} (the requesting process)",
                theirs.display()
            ),
        );
        assert!(!is_mountpoint(&theirs));
    }
    // `branch create --mount` checks before it creates anything.
    forbidden(
        "create --mount on another user's directory",
        agent.branch_create_with(
            "a2",
            "main",
            Some(MountSpec {
                dir: s(&theirs).into(),
                read_only: false,
            }),
            None,
            None,
        ),
        "not writable by uid 4001",
    );
    assert_eq!(
        kind(agent.info("a2")),
        ErrorKind::NotFound,
        "nothing created"
    );
    // Writable by everyone but sticky and someone else's (as /tmp).
    let sticky = d.dir("sticky");
    mode(&sticky, 0o1777);
    forbidden(
        "mount on a sticky directory of another user",
        agent.mount("a1", s(&sticky), false),
        &format!("is sticky and owned by uid 0, not by uid {UID}"),
    );
    // Group bits count for a supplementary group, and by the kernel's rules:
    // the group's bits, not the others', apply to a member.
    chown(&theirs, Some(OTHER), Some(GROUP)).expect("chown");
    mode(&theirs, 0o707);
    forbidden(
        "mount where the group's bits deny",
        agent.mount("a1", s(&theirs), false),
        "not writable by uid 4001",
    );
    mode(&theirs, 0o770);
    agent
        .mount("a1", s(&theirs), false)
        .expect("mount where a supplementary group may write");
    agent.unmount(s(&theirs)).expect("unmount");

    // Its own directory, sticky or not.
    let own = d.dir("own");
    chown(&own, Some(UID), Some(GID)).expect("chown");
    for m in [0o755, 0o1755] {
        mode(&own, m);
        agent
            .mount("a1", s(&own), false)
            .expect("mount on its own directory");
        agent.unmount(s(&own)).expect("unmount");
    }
    agent
        .branch_create_with(
            "a2",
            "main",
            Some(MountSpec {
                dir: s(&own).into(),
                read_only: false,
            }),
            None,
            None,
        )
        .expect("create --mount on its own directory");
    agent.unmount(s(&own)).expect("unmount");

    // Root passes, as with fusermount; so does an admin token of any user.
    mode(&theirs, 0o700);
    let mut as_root = d.client(&agent_s);
    as_root
        .mount("a1", s(&theirs), false)
        .expect("a process of root mounts anywhere below the roots");
    as_root.unmount(s(&theirs)).expect("unmount");
    let mut admin = connect_as(&d, &d.admin, UID, GID, &[0]);
    admin
        .mount("a1", s(&theirs), false)
        .expect("an admin token is not restricted");
    admin.unmount(s(&theirs)).expect("unmount");
}

/// The write check and the mount see the same directory: a thread exchanges
/// the agent's own directory with another user's, as fast as it can, while the
/// agent mounts on the path of its own again and again. Checked by path and
/// mounted by path again, one of its mounts could land on the other user's
/// directory; checked on the directory held open, none can.
#[test]
fn a_directory_swapped_in_after_the_write_check_is_never_mounted_on() {
    use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};

    const UID: u32 = 4001;
    let d = Daemon::start();
    std::fs::set_permissions(d.tmp.path(), std::fs::Permissions::from_mode(0o750))
        .expect("chmod tmp");
    let agent_s = d.token("agent", &["branch:main"]);
    let mut agent = connect_as(&d, &agent_s, UID, UID, &[0]);
    agent.branch_create("a1", "main", None).expect("branch");
    // `m` and `alt`: the agent's directory and root's (0755), in either order.
    let (m, alt) = (d.dir("m"), d.dir("alt"));
    chown(&m, Some(UID), Some(UID)).expect("chown");
    let swapper = Swapper::start(&m, &alt);
    let (mut landed, mut refused, mut on_theirs) = (0, 0, None);
    for _ in 0..1000 {
        let r = agent.mount("a1", s(&m), false);
        let _g = swapper.pause();
        if r.is_err() {
            refused += 1;
            continue;
        }
        landed += 1;
        let points = mounts_of(&d, "a1");
        assert_eq!(points.len(), 1, "{points:?}");
        // The directory mounted on is hidden; the other one, not mounted on,
        // tells which it is.
        let other = if points[0] == m { &alt } else { &m };
        if std::fs::metadata(other).expect("stat").uid() == UID {
            on_theirs = Some(points[0].clone());
        }
        if points[0] == m {
            agent.unmount(s(&m)).expect("unmount");
        } else {
            // On the directory's new name: an exchange raced with the mount.
            detach(&mut agent, "a1", &points);
        }
        if on_theirs.is_some() {
            break;
        }
    }
    drop(swapper);
    assert_eq!(
        on_theirs, None,
        "the branch was mounted on root's directory (after {landed} mounts, {refused} refusals)"
    );
    assert!(
        landed > 0,
        "no mount went through at all ({refused} refusals)"
    );
}

/// Review finding: the daemon resolved the mount point of a token without
/// `admin:*` as root, so its replies told a user what the user could not see
/// itself: whether a directory exists inside one it may not enter (a
/// refusal naming the mount roots, or the write check's, against
/// `not_a_directory` for a missing one), and where a symlink there points (the
/// refusal named the resolved path). The mount point is now resolved as the
/// requesting user: what that user cannot reach is answered exactly as a
/// missing directory.
#[test]
fn a_mount_point_is_resolved_as_the_requesting_user() {
    use std::os::unix::fs::PermissionsExt;

    const UID: u32 = 4001;
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod")
    };
    let d = Daemon::start();
    // The socket is 0660 root:root: reached through the supplementary group 0.
    mode(d.tmp.path(), 0o750);
    let agent_s = d.token("agent", &["branch:main"]);
    let mut agent = connect_as(&d, &agent_s, UID, UID, &[0]);
    agent.branch_create("a1", "main", None).expect("branch");

    // Root's private directories, one outside the mount roots and one inside,
    // each holding a directory and a symlink to one the user may see.
    let target = d.tmp.path().join("elsewhere");
    std::fs::create_dir(&target).expect("mkdir");
    let outside = d.tmp.path().join("private");
    let inside = d.dir("private");
    for p in [&outside, &inside] {
        std::fs::create_dir_all(p.join("dir")).expect("mkdir");
        std::os::unix::fs::symlink(&target, p.join("link")).expect("symlink");
        mode(p, 0o700);
    }
    for p in [&outside, &inside] {
        let missing = reply_to(agent.mount("a1", s(&p.join("nosuch")), false));
        assert_eq!(missing.kind, ErrorKind::NotADirectory, "{missing}");
        for name in ["dir", "link"] {
            let e = reply_to(agent.mount("a1", s(&p.join(name)), false));
            assert_eq!(
                (e.kind, e.message.clone()),
                (missing.kind, missing.message.replace("nosuch", name)),
                "{}/{name} is told apart from a missing directory",
                p.display()
            );
            assert!(!e.message.contains(s(&target)), "{e}");
        }
    }
    // Root, and an admin token, still resolve what they may see.
    let mut as_root = d.client(&agent_s);
    forbidden(
        "root's process mounts on root's directory outside the roots",
        as_root.mount("a1", s(&outside.join("dir")), false),
        "must be under",
    );
    let mut admin = connect_as(&d, &d.admin, UID, UID, &[0]);
    admin
        .mount("a1", s(&inside.join("dir")), false)
        .expect("an admin token mounts where it names");
    admin.unmount(s(&inside.join("dir"))).expect("unmount");
}

fn reply_to<T: std::fmt::Debug>(r: Result<T, ClientError>) -> cowfs_ctl::proto::ErrorReply {
    match r {
        Err(ClientError::Server(e)) => e,
        other => panic!("expected an error reply, got {other:?}"),
    }
}
