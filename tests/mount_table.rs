//! The mount table the control plane drives (`cowfs::fuse::MountTable`), used in
//! process: mount a branch, sync it and branch it while a file is open-unlinked,
//! mount the branch read-write elsewhere, and check isolation, busy unmounts,
//! orphans on both sides, and that nothing leaks (fsck clean).

mod mount;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use cowfs::fuse::{MountError, MountTable};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use mount::{is_mounted, lazy_umount};

/// Unmounts everything the table holds, also when the test fails.
struct Guard {
    table: Arc<MountTable>,
    dirs: Vec<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.table.unmount_all();
        // Mounts may be stacked on a directory (a test's tmpfs on a branch).
        for d in &self.dirs {
            for _ in 0..4 {
                lazy_umount(d);
            }
        }
    }
}

#[test]
fn branch_while_mounted_with_an_open_unlinked_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("canonical");
    let (a, b) = (base.join("a"), base.join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let opts = PoolOptions {
        capacity_bytes: Some(1 << 30),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create(&base.join("pool"), &opts).unwrap());
    let table = MountTable::new(pool.clone());
    let g = Guard {
        table: table.clone(),
        dirs: vec![a.clone(), b.clone()],
    };

    table.mount("main", &a, false).unwrap();
    assert!(is_mounted(&a));
    assert!(matches!(
        table.mount("main", &a, false),
        Err(MountError::AlreadyMounted(_))
    ));
    assert!(matches!(
        table.mount("nope", &b, false),
        Err(MountError::Pool(_))
    ));
    // One writer per branch: no second mount while it is mounted read-write.
    for ro in [false, true] {
        assert!(matches!(
            table.mount("main", &b, ro),
            Err(MountError::BranchMounted { .. })
        ));
    }
    fs::write(a.join("kept"), b"before the branch").unwrap();
    let mut ghost = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(a.join("ghost"))
        .unwrap();
    ghost.write_all(&vec![5u8; 200_000]).unwrap();
    fs::remove_file(a.join("ghost")).unwrap();

    // Everything written before sync_branch is in the branch.
    table.sync_branch("main").unwrap();
    pool.branch_create("dev", "main").unwrap();
    table.mount("dev", &b, false).unwrap();
    assert!(table.is_mounted("dev"));
    let mut listed: Vec<(String, PathBuf, bool)> = table
        .list()
        .into_iter()
        .map(|m| (m.branch, m.dir, m.read_only))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("dev".to_string(), b.clone(), false),
            ("main".to_string(), a.clone(), false)
        ]
    );
    assert_eq!(fs::read(b.join("kept")).unwrap(), b"before the branch");
    assert!(!b.join("ghost").exists());

    // Each mount sees only its own writes.
    fs::write(a.join("kept"), b"main's").unwrap();
    fs::write(b.join("kept"), b"dev's").unwrap();
    fs::write(b.join("only-dev"), b"x").unwrap();
    assert_eq!(fs::read(a.join("kept")).unwrap(), b"main's");
    assert_eq!(fs::read(b.join("kept")).unwrap(), b"dev's");
    assert!(!a.join("only-dev").exists());

    // The open-unlinked file is still whole on main.
    ghost.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    ghost.read_to_end(&mut back).unwrap();
    assert_eq!(back, vec![5u8; 200_000]);

    // A busy mount is not unmounted; closing the file frees it.
    let cwd_holder = File::open(a.join("kept")).unwrap();
    assert!(matches!(table.unmount(&a), Err(MountError::Busy(_))));
    assert!(is_mounted(&a));
    drop((cwd_holder, ghost));
    table.unmount(&a).unwrap();
    table.unmount(&b).unwrap();
    assert!(!is_mounted(&a) && !is_mounted(&b));
    assert!(matches!(table.unmount(&a), Err(MountError::NotMounted(_))));
    assert!(table.list().is_empty());

    // Snapshots mount read-only whatever was asked.
    pool.snapshot_create("snap", "dev").unwrap();
    table.mount("snap", &a, false).unwrap();
    assert!(table.list()[0].read_only);
    table.mount("snap", &b, true).unwrap();
    assert_eq!(
        table.list().len(),
        2,
        "read-only mounts of a snapshot share it"
    );
    assert_eq!(fs::read(b.join("kept")).unwrap(), b"dev's");
    table.unmount(&b).unwrap();
    assert_eq!(fs::read(a.join("kept")).unwrap(), b"dev's");
    let e = fs::write(a.join("kept"), b"no").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    drop(g);
    assert!(!is_mounted(&a) && !is_mounted(&b));

    // Dropping the table unmounts what it still holds.
    let table = MountTable::new(pool.clone());
    table.mount("dev", &a, false).unwrap();
    assert!(is_mounted(&a));
    drop(table);
    assert!(!is_mounted(&a));

    let r = pool.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{r}");
}

/// Runs `f` on a thread; its result if it returns within `secs`, else None (the
/// thread is left blocked: the caller's guard must unblock it).
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs)).ok()
}

/// `umount -l DIR` from outside while a file is open there only detaches the mount:
/// its session serves that file until it is closed. Unmounting it (cowfs-ctl
/// unmount, a sanitize hook's cleanup) and the daemon's shutdown then waited for
/// that session, i.e. for the file to be closed: an unmount request hung with the
/// control plane's lock held, and SIGTERM did not stop the daemon. Now the unmount
/// is refused at once (`Detached`, the mount stays listed until its files are closed)
/// and shutdown leaves the detached mount to die with the daemon.
#[test]
fn a_mount_detached_from_outside_with_open_files_blocks_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("canonical");
    let a = base.join("a");
    fs::create_dir(&a).unwrap();
    let opts = PoolOptions {
        capacity_bytes: Some(1 << 30),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create(&base.join("pool"), &opts).unwrap());
    let table = MountTable::new(pool.clone());
    let g = Guard {
        table: table.clone(),
        dirs: vec![a.clone()],
    };
    table.mount("main", &a, false).unwrap();
    let mut held = File::create(a.join("held")).unwrap();
    held.write_all(b"x").unwrap();
    lazy_umount(&a);
    assert!(!is_mounted(&a), "detached from the namespace");

    let t = table.clone();
    let dir = a.clone();
    let r = within(10, move || t.unmount(&dir)).expect("unmount returns");
    assert!(matches!(r, Err(MountError::Detached(_))), "{r:?}");
    assert_eq!(table.list().len(), 1, "still served, so still listed");
    let t = table.clone();
    assert!(
        within(10, move || t.unmount_all()).is_some(),
        "shutdown does not wait for the detached mount's files"
    );
    drop(held);
    drop(g);
}

/// A tmpfs mounted on `dir`, as an admin might mount something on a directory a
/// branch was mounted on.
fn mount_tmpfs(dir: &Path) {
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "cowfs-test-tmpfs"])
        .arg(dir)
        .status()
        .expect("mount tmpfs");
    assert!(st.success(), "mount tmpfs on {}", dir.display());
}

/// Is the mount on top of `dir` the tmpfs of `mount_tmpfs`?
fn tmpfs_on_top(dir: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let top = info
        .lines()
        .rev()
        .find(|l| l.split(' ').nth(4) == dir.to_str())
        .map(|l| l.contains(" - tmpfs cowfs-test-tmpfs "));
    top == Some(true)
}

/// Waits until the table no longer lists `dir`: its session ended (and was reaped).
fn wait_unlisted(table: &MountTable, dir: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while table.list().iter().any(|m| m.dir == dir) {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

/// Review finding: unmounting was `umount2(DIR)`, whatever was mounted on DIR by
/// then, and fuser's session did the same by path when it ended. After an outside
/// `umount -l DIR` (files still open on the detached mount) and another
/// filesystem mounted on DIR, `cowfs-ctl unmount DIR`, the daemon's shutdown and
/// the session ending once the files were closed each unmounted that other
/// filesystem; so did an unmount while another filesystem covered the branch's
/// mount. Now the mount is made by cowfs (fuser never unmounts) and unmounted only
/// while the mount on top of DIR is the one it made (mount id and device). The
/// syncfs before a branch is taken of a mounted branch has the same rule: it
/// synced whatever was on DIR.
#[test]
fn unmount_touches_only_the_mount_it_made() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("canonical");
    let (a, b, c) = (base.join("a"), base.join("b"), base.join("c"));
    for d in [&a, &b, &c] {
        fs::create_dir(d).unwrap();
    }
    let opts = PoolOptions {
        capacity_bytes: Some(1 << 30),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create(&base.join("pool"), &opts).unwrap());
    pool.branch_create("dev", "main").unwrap();
    pool.branch_create("ops", "main").unwrap();
    let table = MountTable::new(pool.clone());
    let g = Guard {
        table: table.clone(),
        dirs: vec![a.clone(), b.clone(), c.clone()],
    };

    // Detached from outside, with a file open, then a tmpfs on the directory.
    table.mount("main", &a, false).unwrap();
    let held = File::create(a.join("held")).unwrap();
    lazy_umount(&a);
    mount_tmpfs(&a);
    let t = table.clone();
    let dir = a.clone();
    let r = within(10, move || t.unmount(&dir));
    assert!(tmpfs_on_top(&a), "unmount took the tmpfs mounted since");
    let r = r.expect("unmount returns");
    assert!(matches!(r, Err(MountError::Detached(_))), "{r:?}");
    // Nor is the branch synced through the tmpfs (a branch taken of it would
    // miss the detached mount's dirty pages).
    let r = table.sync_branch("main");
    assert!(matches!(r, Err(MountError::Detached(_))), "sync: {r:?}");
    // Closing the file ends the detached mount's session.
    drop(held);
    assert!(wait_unlisted(&table, &a), "the session ends with its files");
    assert!(tmpfs_on_top(&a), "the ending session took the tmpfs");

    // The same at shutdown.
    table.mount("dev", &b, false).unwrap();
    let held = File::create(b.join("held")).unwrap();
    lazy_umount(&b);
    mount_tmpfs(&b);
    let t = table.clone();
    assert!(within(10, move || t.unmount_all()).is_some(), "shutdown");
    assert!(tmpfs_on_top(&b), "shutdown took the tmpfs mounted since");
    drop(held);

    // A tmpfs over a live mount: refused, both stay.
    table.mount("ops", &c, false).unwrap();
    mount_tmpfs(&c);
    let t = table.clone();
    let dir = c.clone();
    let r = within(10, move || t.unmount(&dir));
    assert!(tmpfs_on_top(&c), "unmount took the tmpfs on top");
    let r = r.expect("unmount returns");
    assert!(matches!(r, Err(MountError::Covered(_))), "{r:?}");
    let r = table.sync_branch("ops");
    assert!(matches!(r, Err(MountError::Covered(_))), "sync: {r:?}");
    lazy_umount(&c);
    table.sync_branch("ops").expect("sync once uncovered");
    table.unmount(&c).expect("unmount once uncovered");
    assert!(!is_mounted(&c));
    drop(g);
}

/// A mount on a directory above one of the table's would hide it from whoever
/// reaches it by its path (a sanitize hook's clone): refused under the table's
/// lock, so also for a mount that appeared after the control plane checked.
#[test]
fn no_mount_above_a_mount_of_the_table() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().canonicalize().expect("canonical");
    let (above, inner) = (base.join("above"), base.join("above/inner"));
    fs::create_dir_all(&inner).unwrap();
    let opts = PoolOptions {
        capacity_bytes: Some(1 << 30),
        ..Default::default()
    };
    let pool = Arc::new(Pool::create(&base.join("pool"), &opts).unwrap());
    pool.branch_create("other", "main").unwrap();
    let table = MountTable::new(pool.clone());
    let _g = Guard {
        table: table.clone(),
        dirs: vec![inner.clone(), above.clone()],
    };
    table.mount("main", &inner, false).unwrap();
    let r = table.mount("other", &above, false);
    assert!(matches!(r, Err(MountError::WouldHide { .. })), "{r:?}");
    assert!(!is_mounted(&above));
    table.unmount(&inner).unwrap();
}
