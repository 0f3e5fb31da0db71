//! POSIX behaviour of a real cowfs mount (the `cowfs` binary on a pool file):
//! permissions and ownership as root and as an unprivileged user, times, link
//! counts, every rename case, long names, sparse files, xattrs, locks between
//! processes, mmap, open-unlinked files, error codes, read-only mounts and fsync
//! durability across a kill -9 of the daemon.

mod mount;

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use mount::*;

fn write_file(p: &Path, data: &[u8]) {
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn errno(r: std::io::Result<impl std::fmt::Debug>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => errno_of(&e),
    }
}

#[test]
fn permissions_and_ownership() {
    let fx = Fixture::new();
    let m = fx.mount();
    let root = &m.mnt;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let secret = root.join("secret");
    write_file(&secret, b"root only");
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    let public = root.join("public");
    write_file(&public, b"everyone");
    fs::set_permissions(&public, fs::Permissions::from_mode(0o644)).unwrap();
    let shared = root.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    write_file(&shared.join("roots"), b"x");
    let owned = root.join("owned");
    fs::create_dir(&owned).unwrap();
    std::os::unix::fs::chown(&owned, Some(NOBODY), Some(NOBODY)).unwrap();
    assert_eq!(fs::metadata(&owned).unwrap().uid(), NOBODY);

    let r = root.display();
    // Modes and ownership are enforced by the kernel (default_permissions).
    let (ok, out) = as_nobody(&format!("cat {r}/secret"));
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, out) = as_nobody(&format!("cat {r}/public"));
    assert!(ok && out == "everyone", "{out}");
    let (ok, out) = as_nobody(&format!("echo x >> {r}/public"));
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, out) = as_nobody(&format!("touch {r}/newfile"));
    assert!(!ok && out.contains("Permission denied"), "{out}");
    let (ok, out) = as_nobody(&format!("chmod 666 {r}/public"));
    assert!(!ok && out.contains("not permitted"), "{out}");
    // Sticky directory: others' files cannot be removed.
    let (ok, out) = as_nobody(&format!("rm -f {r}/shared/roots"));
    assert!(!ok && out.contains("not permitted"), "{out}");
    // A service user owns what it creates, in its own directory and in /tmp-like ones.
    let (ok, out) = as_nobody(&format!(
        "echo mine > {r}/owned/f && mkdir {r}/owned/d && echo t > {r}/shared/t && \
         chmod 600 {r}/owned/f && cat {r}/owned/f"
    ));
    assert!(ok && out == "mine\n", "{out}");
    for p in [owned.join("f"), owned.join("d"), shared.join("t")] {
        let md = fs::metadata(&p).unwrap();
        assert_eq!((md.uid(), md.gid()), (NOBODY, NOBODY), "{}", p.display());
    }
    assert_eq!(
        fs::metadata(owned.join("f")).unwrap().mode() & 0o7777,
        0o600
    );
    // Not even the owner may give a file away.
    let (ok, out) = as_nobody(&format!("chown 0 {r}/owned/f"));
    assert!(!ok && out.contains("not permitted"), "{out}");
    // Root may read anything and chown anything.
    assert_eq!(fs::read(owned.join("f")).unwrap(), b"mine\n");
    std::os::unix::fs::chown(owned.join("f"), Some(0), Some(0)).unwrap();
    assert_eq!(fs::metadata(owned.join("f")).unwrap().uid(), 0);
    // The set-group-ID bit of a directory hands its group down.
    let sgid = root.join("sgid");
    fs::create_dir(&sgid).unwrap();
    std::os::unix::fs::chown(&sgid, None, Some(4242)).unwrap();
    fs::set_permissions(&sgid, fs::Permissions::from_mode(0o2777)).unwrap();
    write_file(&sgid.join("f"), b"g");
    fs::create_dir(sgid.join("sub")).unwrap();
    assert_eq!(fs::metadata(sgid.join("f")).unwrap().gid(), 4242);
    let sub = fs::metadata(sgid.join("sub")).unwrap();
    assert_eq!(sub.gid(), 4242);
    assert_ne!(
        sub.mode() & libc::S_ISGID,
        0,
        "subdirectory inherits setgid"
    );

    // Ownership and modes survive a remount.
    m.stop();
    let m = fx.mount();
    let md = fs::metadata(m.mnt.join("secret")).unwrap();
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o600, 0));
    assert_eq!(fs::metadata(m.mnt.join("owned")).unwrap().uid(), NOBODY);
    m.stop();
    fx.assert_fsck_clean();
}

/// poll(2) finds a file ready to read and to write at once, as on a disk file
/// system, and the daemon answers the kernel's POLL without logging a fault.
#[test]
fn poll_finds_files_ready() {
    let fx = Fixture::new();
    let m = fx.mount();
    let path = m.mnt.join("polled");
    write_file(&path, b"data");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    for _ in 0..2 {
        let mut fds = [libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN | libc::POLLOUT,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, a timeout of 0 (no wait).
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        assert_eq!(n, 1, "poll: {}", std::io::Error::last_os_error());
        assert_eq!(fds[0].revents, libc::POLLIN | libc::POLLOUT);
    }
    let log = m.log_text();
    assert!(!log.contains("Not Implemented"), "daemon log:\n{log}");
}

#[test]
fn times() {
    let fx = Fixture::new();
    let m = fx.mount();
    let f = m.mnt.join("t");
    write_file(&f, b"one");
    let md0 = fs::metadata(&f).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    OpenOptions::new()
        .append(true)
        .open(&f)
        .unwrap()
        .write_all(b"two")
        .unwrap();
    let md1 = fs::metadata(&f).unwrap();
    assert!(md1.mtime_nsec() != md0.mtime_nsec() || md1.mtime() > md0.mtime());
    assert!((md1.ctime(), md1.ctime_nsec()) > (md0.ctime(), md0.ctime_nsec()));
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::set_permissions(&f, fs::Permissions::from_mode(0o640)).unwrap();
    let md2 = fs::metadata(&f).unwrap();
    assert_eq!(
        (md2.mtime(), md2.mtime_nsec()),
        (md1.mtime(), md1.mtime_nsec()),
        "chmod leaves mtime"
    );
    assert!((md2.ctime(), md2.ctime_nsec()) > (md1.ctime(), md1.ctime_nsec()));
    // A directory's mtime moves when an entry is added.
    let d0 = fs::metadata(&m.mnt).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_file(&m.mnt.join("other"), b"");
    let d1 = fs::metadata(&m.mnt).unwrap();
    assert!((d1.mtime(), d1.mtime_nsec()) > (d0.mtime(), d0.mtime_nsec()));
    // Link, rename and unlink change the inode's ctime; reading leaves atime
    // alone (noatime).
    let ct = |p: &Path| {
        let md = fs::metadata(p).unwrap();
        (md.ctime(), md.ctime_nsec())
    };
    let c0 = ct(&f);
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::hard_link(&f, m.mnt.join("t2")).unwrap();
    let c1 = ct(&f);
    assert!(c1 > c0, "link updates ctime");
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::rename(m.mnt.join("t2"), m.mnt.join("t3")).unwrap();
    let c2 = ct(&f);
    assert!(c2 > c1, "rename updates ctime");
    std::thread::sleep(std::time::Duration::from_millis(20));
    fs::remove_file(m.mnt.join("t3")).unwrap();
    assert!(ct(&f) > c2, "unlink updates ctime");
    let a0 = fs::metadata(&f).unwrap();
    fs::read(&f).unwrap();
    let a1 = fs::metadata(&f).unwrap();
    assert_eq!((a0.atime(), a0.atime_nsec()), (a1.atime(), a1.atime_nsec()));
    // utimensat with explicit times, nanoseconds included.
    utimens(&f, (1_000_000_000, 5), (1_234_567_890, 123_456_789)).unwrap();
    let md3 = fs::metadata(&f).unwrap();
    assert_eq!((md3.atime(), md3.atime_nsec()), (1_000_000_000, 5));
    assert_eq!(
        (md3.mtime(), md3.mtime_nsec()),
        (1_234_567_890, 123_456_789)
    );
    // Before 1970 with a fraction of a second (timespec (-3, 999999999) is
    // 2.000000001 s before the epoch).
    let old = m.mnt.join("old");
    write_file(&old, b"");
    utimens(&old, (-2, 500_000_000), (-3, 999_999_999)).unwrap();
    m.stop();
    let m = fx.mount();
    let md5 = fs::metadata(m.mnt.join("old")).unwrap();
    assert_eq!((md5.atime(), md5.atime_nsec()), (-2, 500_000_000));
    assert_eq!((md5.mtime(), md5.mtime_nsec()), (-3, 999_999_999));
    let md4 = fs::metadata(m.mnt.join("t")).unwrap();
    assert_eq!(
        (md4.mtime(), md4.mtime_nsec()),
        (1_234_567_890, 123_456_789)
    );
    assert_eq!((md4.atime(), md4.atime_nsec()), (1_000_000_000, 5));
    m.stop();
}

#[test]
fn link_counts() {
    let fx = Fixture::new();
    let m = fx.mount();
    let a = m.mnt.join("a");
    write_file(&a, b"data");
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 1);
    fs::hard_link(&a, m.mnt.join("b")).unwrap();
    fs::create_dir(m.mnt.join("d")).unwrap();
    fs::hard_link(&a, m.mnt.join("d/c")).unwrap();
    assert_eq!(fs::metadata(&a).unwrap().nlink(), 3);
    assert_eq!(
        fs::metadata(&a).unwrap().ino(),
        fs::metadata(m.mnt.join("d/c")).unwrap().ino()
    );
    fs::remove_file(&a).unwrap();
    assert_eq!(fs::metadata(m.mnt.join("b")).unwrap().nlink(), 2);
    assert_eq!(fs::read(m.mnt.join("d/c")).unwrap(), b"data");
    // Directories: 2 + one per subdirectory.
    let d = m.mnt.join("d");
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
    fs::create_dir(d.join("s1")).unwrap();
    fs::create_dir(d.join("s2")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 4);
    fs::remove_dir(d.join("s1")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 3);
    fs::rename(d.join("s2"), m.mnt.join("s2")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
    // A hard link to a directory is refused.
    assert_eq!(errno(fs::hard_link(&d, m.mnt.join("dl"))), libc::EPERM);
    m.stop();
    let m = fx.mount();
    assert_eq!(fs::metadata(m.mnt.join("b")).unwrap().nlink(), 2);
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn renames() {
    let fx = Fixture::new();
    let m = fx.mount();
    let p = |n: &str| m.mnt.join(n);
    write_file(&p("a"), b"A");
    write_file(&p("b"), b"B");
    // Plain rename over an existing file replaces it.
    fs::rename(p("a"), p("b")).unwrap();
    assert_eq!(fs::read(p("b")).unwrap(), b"A");
    assert_eq!(errno(fs::metadata(p("a"))), libc::ENOENT);
    // NOREPLACE.
    write_file(&p("c"), b"C");
    assert_eq!(
        errno(renameat2(&p("c"), &p("b"), libc::RENAME_NOREPLACE)),
        libc::EEXIST
    );
    renameat2(&p("c"), &p("c2"), libc::RENAME_NOREPLACE).unwrap();
    assert_eq!(fs::read(p("c2")).unwrap(), b"C");
    // EXCHANGE swaps two names, also a file with a directory.
    renameat2(&p("b"), &p("c2"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(p("b")).unwrap(), b"C");
    assert_eq!(fs::read(p("c2")).unwrap(), b"A");
    fs::create_dir(p("dir")).unwrap();
    write_file(&p("dir/inside"), b"I");
    renameat2(&p("b"), &p("dir"), libc::RENAME_EXCHANGE).unwrap();
    assert_eq!(fs::read(p("b/inside")).unwrap(), b"I");
    assert_eq!(fs::read(p("dir")).unwrap(), b"C");
    assert_eq!(
        errno(renameat2(&p("b"), &p("missing"), libc::RENAME_EXCHANGE)),
        libc::ENOENT
    );
    // Directories.
    fs::create_dir_all(p("x/y/z")).unwrap();
    assert_eq!(errno(fs::rename(p("x"), p("x/y/z/x"))), libc::EINVAL);
    fs::create_dir(p("full")).unwrap();
    write_file(&p("full/f"), b"");
    assert_eq!(errno(fs::rename(p("x"), p("full"))), libc::ENOTEMPTY);
    fs::create_dir(p("empty")).unwrap();
    fs::rename(p("x"), p("empty")).unwrap();
    assert!(p("empty/y/z").is_dir());
    assert_eq!(errno(fs::rename(p("c2"), p("empty"))), libc::EISDIR);
    assert_eq!(errno(fs::rename(p("empty"), p("c2"))), libc::ENOTDIR);
    // Across directories, and onto itself.
    fs::rename(p("c2"), p("empty/y/moved")).unwrap();
    assert_eq!(fs::read(p("empty/y/moved")).unwrap(), b"A");
    fs::rename(p("empty/y/moved"), p("empty/y/moved")).unwrap();
    // A renamed directory's ".." follows it.
    fs::rename(p("empty/y"), p("y")).unwrap();
    assert_eq!(
        fs::metadata(p("y/..")).unwrap().ino(),
        fs::metadata(&m.mnt).unwrap().ino()
    );
    let mut names: Vec<String> = fs::read_dir(&m.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["b", "dir", "empty", "full", "y"]);
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn long_names() {
    let fx = Fixture::new();
    let m = fx.mount();
    let ok = "n".repeat(255);
    write_file(&m.mnt.join(&ok), b"long");
    assert_eq!(fs::read(m.mnt.join(&ok)).unwrap(), b"long");
    fs::create_dir(m.mnt.join(format!("d{}", "x".repeat(254)))).unwrap();
    let bad = "n".repeat(256);
    assert_eq!(errno(File::create(m.mnt.join(&bad))), libc::ENAMETOOLONG);
    assert_eq!(errno(fs::create_dir(m.mnt.join(&bad))), libc::ENAMETOOLONG);
    assert_eq!(errno(fs::metadata(m.mnt.join(&bad))), libc::ENAMETOOLONG);
    assert_eq!(
        errno(fs::rename(m.mnt.join(&ok), m.mnt.join(&bad))),
        libc::ENAMETOOLONG
    );
    let found = fs::read_dir(&m.mnt)
        .unwrap()
        .any(|e| e.unwrap().file_name().len() == 255);
    assert!(found);
    m.stop();
}

/// A write the kernel accepts is one the engine keeps: the kernel takes writes up
/// to its own size limit (2^63-1 for FUSE) into the page cache, so a lower limit
/// in the engine turned them into a failed writeback after write(2) had succeeded.
#[test]
fn writes_at_huge_offsets_are_kept() {
    let fx = Fixture::new();
    let offsets = [1u64 << 51, 1u64 << 62];
    {
        let m = fx.mount();
        for (n, off) in offsets.iter().enumerate() {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(m.mnt.join(format!("huge{n}")))
                .unwrap();
            f.write_all_at(b"0123456789", *off).unwrap();
            f.sync_all().unwrap();
        }
        m.stop();
    }
    let m = fx.mount();
    for (n, off) in offsets.iter().enumerate() {
        let f = File::open(m.mnt.join(format!("huge{n}"))).unwrap();
        assert_eq!(f.metadata().unwrap().len(), off + 10, "size after remount");
        let mut back = [0u8; 10];
        f.read_exact_at(&mut back, *off).unwrap();
        assert_eq!(&back, b"0123456789");
    }
    m.stop();
    fx.assert_fsck_clean();
}

/// On a writable mount, written pages the kernel has not yet handed to the daemon
/// are data to SEEK_DATA and SEEK_HOLE too: the kernel asks without writing them
/// back first, so the daemon must not answer from its extents (a sparse-aware copy
/// would skip the fresh data as a hole).
#[test]
fn seek_data_and_hole_see_unflushed_writes() {
    let fx = Fixture::new();
    let m = fx.mount();
    let path = m.mnt.join("dirty");
    fs::write(&path, [1u8; 4096]).unwrap();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    f.write_all_at(&[2u8; 8192], 4096).unwrap();
    let fd = f.as_raw_fd();
    assert_eq!(lseek(fd, 0, libc::SEEK_HOLE).unwrap(), 12288);
    assert_eq!(lseek(fd, 4096, libc::SEEK_DATA).unwrap(), 4096);
    assert_eq!(errno(lseek(fd, 12288, libc::SEEK_DATA)), libc::ENXIO);
    drop(f);
    m.stop();
}

/// A read-only mount has no writeback cache, so the engine's extents are exact
/// there: holes and punched ranges are reported (backups read snapshots).
#[test]
fn seek_data_and_hole_find_holes_on_read_only_mount() {
    let fx = Fixture::new();
    let mib = 1u64 << 20;
    let size = 10 * mib + 8192;
    {
        let m = fx.mount();
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(m.mnt.join("sparse"))
            .unwrap();
        f.write_all_at(&[7u8; 4096], 0).unwrap();
        f.write_all_at(&[9u8; 8192], 10 * mib).unwrap();
        fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            (10 * mib) as i64,
            4096,
        )
        .unwrap();
        f.sync_all().unwrap();
        drop(f);
        m.stop();
    }
    let m = fx.mount_ro();
    let f = File::open(m.mnt.join("sparse")).unwrap();
    let fd = f.as_raw_fd();
    assert_eq!(lseek(fd, 0, libc::SEEK_DATA).unwrap(), 0);
    assert_eq!(lseek(fd, 0, libc::SEEK_HOLE).unwrap(), 4096);
    assert_eq!(
        lseek(fd, 4096, libc::SEEK_DATA).unwrap(),
        (10 * mib + 4096) as i64
    );
    assert_eq!(
        lseek(fd, (10 * mib + 4096) as i64, libc::SEEK_HOLE).unwrap(),
        size as i64
    );
    assert_eq!(errno(lseek(fd, size as i64, libc::SEEK_DATA)), libc::ENXIO);
    drop(f);
    m.stop();
}

#[test]
fn sparse_files_and_fallocate() {
    let fx = Fixture::new();
    let m = fx.mount();
    let path = m.mnt.join("sparse");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    let mib = 1u64 << 20;
    f.write_all(&[7u8; 4096]).unwrap();
    f.seek(SeekFrom::Start(10 * mib)).unwrap();
    f.write_all(&[9u8; 8192]).unwrap();
    f.sync_all().unwrap();
    let fd = f.as_raw_fd();
    let size = 10 * mib + 8192;
    assert_eq!(f.metadata().unwrap().len(), size);
    let blocks = f.metadata().unwrap().blocks();
    assert!(
        blocks * 512 <= 64 * 1024,
        "sparse file uses {blocks} blocks"
    );
    // The hole reads as zeros.
    let mut buf = vec![1u8; 4096];
    f.seek(SeekFrom::Start(5 * mib)).unwrap();
    f.read_exact(&mut buf).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    // Punch a hole in the data: it reads as zeros.
    fallocate(
        fd,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        (10 * mib) as i64,
        4096,
    )
    .unwrap();
    assert_eq!(f.metadata().unwrap().len(), size);
    f.seek(SeekFrom::Start(10 * mib)).unwrap();
    let mut back = vec![1u8; 8192];
    f.read_exact(&mut back).unwrap();
    assert!(back[..4096].iter().all(|b| *b == 0));
    assert!(back[4096..].iter().all(|b| *b == 9));
    // Preallocation: default mode grows the file, KEEP_SIZE does not.
    fallocate(fd, 0, 0, (12 * mib) as i64).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 12 * mib);
    fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, (16 * mib) as i64).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 12 * mib);
    assert!(f.metadata().unwrap().blocks() * 512 >= 12 * mib);
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut head = vec![0u8; 4096];
    f.read_exact(&mut head).unwrap();
    assert!(head.iter().all(|b| *b == 7), "preallocation kept the data");
    // Unsupported modes are refused, not ignored.
    assert_eq!(
        errno(fallocate(fd, libc::FALLOC_FL_COLLAPSE_RANGE, 0, 4096)),
        libc::EOPNOTSUPP
    );
    drop(f);
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn xattrs() {
    let fx = Fixture::new();
    let m = fx.mount();
    let f = m.mnt.join("x");
    write_file(&f, b"");
    setxattr(&f, "user.one", b"1", 0).unwrap();
    setxattr(&f, "user.two", &[0u8, 1, 2, 255], 0).unwrap();
    let big = vec![b'v'; 1900];
    setxattr(&f, "user.big", &big, 0).unwrap();
    assert_eq!(getxattr(&f, "user.one").unwrap(), b"1");
    assert_eq!(getxattr(&f, "user.two").unwrap(), [0u8, 1, 2, 255]);
    assert_eq!(getxattr(&f, "user.big").unwrap(), big);
    let mut names = listxattr(&f).unwrap();
    names.sort();
    assert_eq!(names, ["user.big", "user.one", "user.two"]);
    assert_eq!(
        errno(setxattr(&f, "user.one", b"x", libc::XATTR_CREATE)),
        libc::EEXIST
    );
    assert_eq!(
        errno(setxattr(&f, "user.none", b"x", libc::XATTR_REPLACE)),
        libc::ENODATA
    );
    setxattr(&f, "user.one", b"uno", libc::XATTR_REPLACE).unwrap();
    assert_eq!(getxattr(&f, "user.one").unwrap(), b"uno");
    removexattr(&f, "user.two").unwrap();
    assert_eq!(errno(getxattr(&f, "user.two")), libc::ENODATA);
    assert_eq!(errno(removexattr(&f, "user.two")), libc::ENODATA);
    // Names outside the four namespaces are refused, as on ext4.
    for name in ["foo", "bogus.foo", "user"] {
        assert_eq!(
            errno(setxattr(&f, name, b"v", 0)),
            libc::EOPNOTSUPP,
            "{name}"
        );
        assert_eq!(errno(getxattr(&f, name)), libc::EOPNOTSUPP, "{name}");
    }
    // Directories carry xattrs too; an unprivileged user cannot write trusted.*.
    setxattr(&m.mnt, "user.dir", b"d", 0).unwrap();
    assert_eq!(getxattr(&m.mnt, "user.dir").unwrap(), b"d");
    let (ok, out) = as_nobody(&format!("cat {}/x >/dev/null && echo ok", m.mnt.display()));
    assert!(ok, "{out}");
    m.stop();
    let m = fx.mount();
    assert_eq!(getxattr(&m.mnt.join("x"), "user.one").unwrap(), b"uno");
    assert_eq!(getxattr(&m.mnt.join("x"), "user.big").unwrap(), big);
    m.stop();
    fx.assert_fsck_clean();
}

/// Bytes that differ along the value, so a misplaced piece shows.
fn xattr_value(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i / 7) as u8 ^ seed).collect()
}

#[test]
fn large_xattrs() {
    let fx = Fixture::new();
    let m = fx.mount();
    let f = m.mnt.join("x");
    write_file(&f, b"");
    // Up to the kernel's XATTR_SIZE_MAX, as on xfs and btrfs.
    let max = xattr_value(65536, 1);
    setxattr(&f, "user.max", &max, 0).unwrap();
    assert_eq!(getxattr(&f, "user.max").unwrap(), max);
    // One byte more is refused by the kernel itself, here as on ext4.
    let native = fx.native_dir("native").join("x");
    write_file(&native, b"");
    let over = vec![0u8; 65537];
    assert_eq!(errno(setxattr(&native, "user.over", &over, 0)), libc::E2BIG);
    assert_eq!(errno(setxattr(&f, "user.over", &over, 0)), libc::E2BIG);
    // Large to small and back.
    setxattr(&f, "user.v", &xattr_value(40000, 2), 0).unwrap();
    setxattr(&f, "user.v", b"small", 0).unwrap();
    assert_eq!(getxattr(&f, "user.v").unwrap(), b"small");
    let v = xattr_value(30000, 3);
    setxattr(&f, "user.v", &v, 0).unwrap();
    assert_eq!(getxattr(&f, "user.v").unwrap(), v);
    // A removed file gives back what its values held.
    let g = m.mnt.join("g");
    write_file(&g, b"");
    let before = statvfs(&m.mnt).f_bfree;
    for i in 0..16 {
        setxattr(&g, &format!("user.{i}"), &xattr_value(65536, i), 0).unwrap();
    }
    let held = before - statvfs(&m.mnt).f_bfree;
    assert!(held >= 16 * 8, "16 values of 64 KiB took {held} blocks");
    fs::remove_file(&g).unwrap();
    // The kernel sends the RELEASE of the create's handle in the background; until
    // it arrives the unlinked file is open and kept.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while statvfs(&m.mnt).f_bfree < before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let after = statvfs(&m.mnt).f_bfree;
    assert!(after >= before, "free {before} -> {after} (held {held})");
    m.stop();
    fx.assert_fsck_clean();
    let m = fx.mount();
    assert_eq!(getxattr(&f, "user.max").unwrap(), max);
    assert_eq!(getxattr(&f, "user.v").unwrap(), v);
    m.stop();
    fx.assert_fsck_clean();

    // A branch's change to a large value leaves its parent's alone.
    let pool = cowfs::pool::Pool::open(&fx.pool, &Default::default()).unwrap();
    pool.branch_create("child", "main").unwrap();
    drop(pool);
    let m = Mounted::start(&fx.pool, "child", &fx.mnt, false);
    setxattr(&f, "user.max", &xattr_value(50000, 4), 0).unwrap();
    assert_eq!(getxattr(&f, "user.max").unwrap(), xattr_value(50000, 4));
    m.stop();
    let m = fx.mount();
    assert_eq!(getxattr(&f, "user.max").unwrap(), max);
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn xattr_names_list_is_capped_at_the_kernel_limit() {
    let fx = Fixture::new();
    let m = fx.mount();
    let f = m.mnt.join("x");
    write_file(&f, b"");
    // 256 names of 255 bytes, each with its NUL: XATTR_LIST_MAX exactly.
    let name = |i: usize| format!("user.{i:03}{}", "n".repeat(247));
    for i in 0..256 {
        setxattr(&f, &name(i), b"v", 0).unwrap();
    }
    // One more would make the list unreadable for everyone (listxattr says E2BIG
    // past 64 KiB): refused as a full xattr space is on ext4, nothing changed.
    assert_eq!(errno(setxattr(&f, "user.more", b"v", 0)), libc::ENOSPC);
    assert_eq!(errno(getxattr(&f, "user.more")), libc::ENODATA);
    let names = listxattr(&f).unwrap();
    assert_eq!(names.len(), 256);
    assert_eq!(getxattr(&f, &name(9)).unwrap(), b"v");
    m.stop();
    fx.assert_fsck_clean();
}

#[derive(Clone, Copy, PartialEq)]
enum LockKind {
    Fcntl,
    Flock,
}

/// A forked child that takes a lock on `path` and holds it until told to go.
struct LockHolder {
    pid: libc::pid_t,
    go: i32,
}

impl LockHolder {
    fn start(path: &Path, kind: LockKind) -> LockHolder {
        let c = cpath(path);
        let mut ready = [0i32; 2];
        let mut go = [0i32; 2];
        // Close-on-exec, so that processes other tests spawn meanwhile do not
        // hold the pipes open.
        // SAFETY: pipe2(2) fills two descriptors into the array.
        assert_eq!(
            unsafe { libc::pipe2(ready.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        // SAFETY: as above.
        assert_eq!(unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: the child only makes async-signal-safe system calls, then _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: child side, raw system calls only.
            unsafe {
                libc::close(ready[0]);
                libc::close(go[1]);
                let fd = libc::open(c.as_ptr(), libc::O_RDWR);
                let r = match kind {
                    LockKind::Fcntl => {
                        let mut fl: libc::flock = std::mem::zeroed();
                        fl.l_type = libc::F_WRLCK as i16;
                        fl.l_whence = libc::SEEK_SET as i16;
                        fl.l_start = 0;
                        fl.l_len = 100;
                        libc::fcntl(fd, libc::F_SETLK, &fl)
                    }
                    LockKind::Flock => libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB),
                };
                let ok: u8 = u8::from(fd >= 0 && r == 0);
                libc::write(ready[1], (&ok as *const u8).cast(), 1);
                let mut b = 0u8;
                libc::read(go[0], (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        let mut ok = 0u8;
        // SAFETY: parent side; closing our copies of the child's ends and reading
        // one byte into a local.
        unsafe {
            libc::close(ready[1]);
            libc::close(go[0]);
            assert_eq!(libc::read(ready[0], (&mut ok as *mut u8).cast(), 1), 1);
            libc::close(ready[0]);
        }
        assert_eq!(ok, 1, "child could not take the lock");
        LockHolder { pid, go: go[1] }
    }

    fn release(self) {
        let mut st = 0;
        let b = 1u8;
        // SAFETY: one byte down the pipe wakes the child; waitpid reaps it.
        unsafe {
            libc::write(self.go, (&b as *const u8).cast(), 1);
            libc::close(self.go);
            libc::waitpid(self.pid, &mut st, 0);
        }
        std::mem::forget(self);
    }
}

impl Drop for LockHolder {
    fn drop(&mut self) {
        let mut st = 0;
        // SAFETY: kill and reap our own child.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            libc::close(self.go);
            libc::waitpid(self.pid, &mut st, 0);
        }
    }
}

fn fcntl_lock(fd: i32, cmd: i32, ty: i32) -> std::io::Result<libc::flock> {
    // SAFETY: a zeroed flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = ty as i16;
    fl.l_whence = libc::SEEK_SET as i16;
    fl.l_start = 0;
    fl.l_len = 100;
    // SAFETY: fcntl with a pointer to a live flock struct.
    if unsafe { libc::fcntl(fd, cmd, &mut fl) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(fl)
}

fn flock(fd: i32, op: i32) -> std::io::Result<()> {
    // SAFETY: flock takes plain integers.
    if unsafe { libc::flock(fd, op) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn locks_between_processes() {
    let fx = Fixture::new();
    let m = fx.mount();
    let path = m.mnt.join("locked");
    write_file(&path, &[0u8; 200]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fd = f.as_raw_fd();

    let holder = LockHolder::start(&path, LockKind::Fcntl);
    let e = errno(fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK));
    assert!(e == libc::EAGAIN || e == libc::EACCES, "errno {e}");
    let seen = fcntl_lock(fd, libc::F_GETLK, libc::F_WRLCK).unwrap();
    assert_eq!(i32::from(seen.l_type), libc::F_WRLCK);
    assert_eq!(seen.l_pid, holder.pid);
    holder.release();
    fcntl_lock(fd, libc::F_SETLK, libc::F_WRLCK).unwrap();
    fcntl_lock(fd, libc::F_SETLK, libc::F_UNLCK).unwrap();

    let holder = LockHolder::start(&path, LockKind::Flock);
    assert_eq!(
        errno(flock(fd, libc::LOCK_EX | libc::LOCK_NB)),
        libc::EWOULDBLOCK
    );
    holder.release();
    flock(fd, libc::LOCK_EX | libc::LOCK_NB).unwrap();
    flock(fd, libc::LOCK_UN).unwrap();
    drop(f);
    m.stop();
}

fn mmap_write(path: &Path, len: usize, fill: impl Fn(usize) -> u8) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: a fresh shared mapping of `len` bytes of an open file; we write
    // only within it, msync it and unmap it before the file is closed.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            p,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        let s = std::slice::from_raw_parts_mut(p.cast::<u8>(), len);
        assert!(s[..4096].iter().all(|b| *b == b'r'), "mmap reads file data");
        for (i, b) in s.iter_mut().enumerate() {
            *b = fill(i);
        }
        assert_eq!(libc::msync(p, len, libc::MS_SYNC), 0);
        assert_eq!(libc::munmap(p, len), 0);
    }
}

#[test]
fn mmap_read_write() {
    let fx = Fixture::new();
    let m = fx.mount();
    let path = m.mnt.join("mapped");
    let len = 256 * 1024;
    write_file(&path, &vec![b'r'; len]);
    let fill = |i: usize| (i % 251) as u8;
    mmap_write(&path, len, fill);
    let want: Vec<u8> = (0..len).map(fill).collect();
    assert_eq!(fs::read(&path).unwrap(), want);
    m.stop();
    let m = fx.mount();
    assert_eq!(fs::read(m.mnt.join("mapped")).unwrap(), want);
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn open_unlinked_file_keeps_its_data() {
    let fx = Fixture::new();
    let m = fx.mount();
    let path = m.mnt.join("ghost");
    let data = vec![42u8; 300_000];
    write_file(&path, &data);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    fs::remove_file(&path).unwrap();
    assert_eq!(errno(fs::metadata(&path)), libc::ENOENT);
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back, data);
    f.write_all(b"more").unwrap();
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(300_000)).unwrap();
    let mut tail = [0u8; 4];
    f.read_exact(&mut tail).unwrap();
    assert_eq!(&tail, b"more");
    // A new file with the same name is a different file.
    write_file(&path, b"new");
    assert_eq!(f.metadata().unwrap().len(), 300_004);
    drop(f);
    m.stop();
    // Closed and unmounted: nothing leaked.
    fx.assert_fsck_clean();

    // Crash while an unlinked file is open: the next mount frees the orphan.
    let m = fx.mount();
    let path = m.mnt.join("orphan");
    write_file(&path, &vec![1u8; 1 << 20]);
    let f = File::open(&path).unwrap();
    fs::remove_file(&path).unwrap();
    let dir = File::open(&m.mnt).unwrap();
    fsync(dir.as_raw_fd()).unwrap();
    drop(dir);
    m.crash();
    drop(f);
    let m = fx.mount();
    assert_eq!(fs::read(m.mnt.join("ghost")).unwrap(), b"new");
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn error_codes() {
    let fx = Fixture::new();
    let m = fx.mount();
    let p = |n: &str| m.mnt.join(n);
    write_file(&p("file"), b"f");
    fs::create_dir(p("dir")).unwrap();
    write_file(&p("dir/inner"), b"i");
    assert_eq!(errno(File::open(p("missing"))), libc::ENOENT);
    assert_eq!(errno(fs::remove_file(p("missing"))), libc::ENOENT);
    assert_eq!(
        errno(
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(p("file"))
        ),
        libc::EEXIST
    );
    assert_eq!(errno(fs::create_dir(p("dir"))), libc::EEXIST);
    assert_eq!(
        errno(fs::hard_link(p("file"), p("dir/inner"))),
        libc::EEXIST
    );
    assert_eq!(
        errno(std::os::unix::fs::symlink("x", p("file"))),
        libc::EEXIST
    );
    assert_eq!(errno(File::open(p("file/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs::create_dir(p("file/x"))), libc::ENOTDIR);
    assert_eq!(errno(fs::read_dir(p("file"))), libc::ENOTDIR);
    assert_eq!(errno(fs::remove_dir(p("file"))), libc::ENOTDIR);
    assert_eq!(
        errno(OpenOptions::new().write(true).open(p("dir"))),
        libc::EISDIR
    );
    assert_eq!(errno(fs::remove_file(p("dir"))), libc::EISDIR);
    assert_eq!(errno(fs::remove_dir(p("dir"))), libc::ENOTEMPTY);
    assert_eq!(errno(fs::read_link(p("file"))), libc::EINVAL);
    m.stop();

    // A read-only mount refuses every change with EROFS and still reads.
    let m = fx.mount_ro();
    let p = |n: &str| m.mnt.join(n);
    assert_eq!(fs::read(p("file")).unwrap(), b"f");
    let rofs = |e: i32, what: &str| assert_eq!(e, libc::EROFS, "{what}");
    rofs(errno(File::create(p("new"))), "create");
    rofs(
        errno(OpenOptions::new().write(true).open(p("file"))),
        "open for writing",
    );
    rofs(errno(fs::create_dir(p("d2"))), "mkdir");
    rofs(errno(fs::remove_file(p("file"))), "unlink");
    rofs(errno(fs::rename(p("file"), p("f2"))), "rename");
    rofs(
        errno(fs::set_permissions(
            p("file"),
            fs::Permissions::from_mode(0o600),
        )),
        "chmod",
    );
    rofs(errno(setxattr(&p("file"), "user.a", b"1", 0)), "setxattr");
    rofs(errno(std::os::unix::fs::symlink("file", p("l"))), "symlink");
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn open_flags_copy_range_and_statfs() {
    let fx = Fixture::new();
    let m = fx.mount();
    let p = |n: &str| m.mnt.join(n);
    // O_APPEND from two handles interleaves, never overwrites.
    let mut a = OpenOptions::new()
        .create(true)
        .append(true)
        .open(p("log"))
        .unwrap();
    let mut b = OpenOptions::new().append(true).open(p("log")).unwrap();
    a.write_all(b"one\n").unwrap();
    b.write_all(b"two\n").unwrap();
    a.write_all(b"three\n").unwrap();
    drop((a, b));
    assert_eq!(fs::read(p("log")).unwrap(), b"one\ntwo\nthree\n");
    // O_TRUNC.
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p("log"))
        .unwrap()
        .write_all(b"x")
        .unwrap();
    assert_eq!(fs::read(p("log")).unwrap(), b"x");
    // O_DIRECT with aligned buffers.
    let layout = std::alloc::Layout::from_size_align(8192, 4096).unwrap();
    let mut d = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(p("direct"))
        .unwrap();
    // SAFETY: the layout has a non-zero size; the buffer is freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    assert!(!buf.is_null());
    // SAFETY: `buf` points to 8192 writable bytes owned by this function.
    let s = unsafe { std::slice::from_raw_parts_mut(buf, 8192) };
    s.fill(b'd');
    d.write_all(s).unwrap();
    s.fill(0);
    d.seek(SeekFrom::Start(0)).unwrap();
    d.read_exact(s).unwrap();
    assert!(s.iter().all(|c| *c == b'd'));
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    drop(d);

    // copy_file_range shares extents: 32 MiB copied without 32 MiB more space.
    let mib = 1 << 20;
    let src_data: Vec<u8> = (0..32 * mib).map(|i| (i / 4096 % 253) as u8).collect();
    write_file(&p("src"), &src_data);
    let src = File::open(p("src")).unwrap();
    src.sync_all().unwrap();
    let before = statvfs(&m.mnt);
    let dst = File::create(p("dst")).unwrap();
    let mut left = src_data.len();
    while left > 0 {
        let n = copy_file_range(src.as_raw_fd(), dst.as_raw_fd(), left).unwrap();
        assert!(n > 0);
        left -= n;
    }
    dst.sync_all().unwrap();
    drop((src, dst));
    assert_eq!(fs::read(p("dst")).unwrap(), src_data);
    let after = statvfs(&m.mnt);
    let used = (before.f_bfree - after.f_bfree) * before.f_frsize;
    assert!(used < 4 * mib as u64, "the copy used {used} bytes");
    // statfs reports the pool: 4 GiB, minus what is used.
    assert_eq!(after.f_blocks * after.f_frsize, 4 << 30);
    assert!(after.f_bfree < after.f_blocks);
    assert_eq!(after.f_namemax, 255);
    // Writing to the copy leaves the source alone.
    fs::OpenOptions::new()
        .write(true)
        .open(p("dst"))
        .unwrap()
        .write_all(b"changed")
        .unwrap();
    assert_eq!(fs::read(p("src")).unwrap(), src_data);
    m.stop();
    fx.assert_fsck_clean();
}

fn statvfs(p: &Path) -> libc::statvfs {
    let c = cpath(p);
    // SAFETY: a zeroed statvfs is a valid plain C struct; the call fills it.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a pointer to a live struct.
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
    s
}

#[test]
fn fsync_survives_kill_9() {
    let fx = Fixture::new();
    let m = fx.mount();
    let p = |n: &str| m.mnt.join(n);
    fs::create_dir(p("db")).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let mut f = File::create(p("db/table")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    let dir = File::open(p("db")).unwrap();
    fsync(dir.as_raw_fd()).unwrap();
    // Overwrite in place and fdatasync.
    f.seek(SeekFrom::Start(1000)).unwrap();
    f.write_all(b"COMMITTED").unwrap();
    f.sync_data().unwrap();
    drop((f, dir));
    // O_DSYNC: each write is durable when it returns, without an fsync call.
    let mut w = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DSYNC)
        .open(p("db/table"))
        .unwrap();
    w.seek(SeekFrom::Start(2000)).unwrap();
    w.write_all(b"DSYNC").unwrap();
    m.crash();
    drop(w);
    assert!(!is_mounted(&fx.mnt));
    fx.assert_fsck_clean();
    let m = fx.mount();
    let mut want = data.clone();
    want[1000..1009].copy_from_slice(b"COMMITTED");
    want[2000..2005].copy_from_slice(b"DSYNC");
    assert_eq!(fs::read(m.mnt.join("db/table")).unwrap(), want);
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn second_daemon_is_refused() {
    let fx = Fixture::new();
    let m = fx.mount();
    let other = fx.native_dir("other");
    let out = std::process::Command::new(cowfs_bin())
        .arg("mount")
        .arg(&fx.pool)
        .arg("main")
        .arg(&other)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("in use by another cowfs process"), "{msg}");
    assert!(!is_mounted(&other));
    let e = fx.fsck();
    assert_eq!(e.0, 1, "fsck refuses a pool in use: {}", e.1);
    assert_eq!(
        fs::read_dir(&m.mnt)
            .map(|d| d.count())
            .unwrap_or(usize::MAX),
        0
    );
    m.stop();
}

/// A POSIX ACL xattr blob: version 2, then (tag, perm, id) entries.
fn acl_blob(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut b = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&perm.to_le_bytes());
        b.extend_from_slice(&id.to_le_bytes());
    }
    b
}

const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;

#[test]
fn posix_acls() {
    let fx = Fixture::new();
    let m = fx.mount();
    let r = m.mnt.display().to_string();
    let f = m.mnt.join("acl-file");
    write_file(&f, b"for nobody");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, _) = as_nobody(&format!("cat {r}/acl-file"));
    assert!(!ok, "mode 0600 keeps nobody out");
    // An access ACL granting nobody read: enforced, and the mode shows the mask.
    let access = acl_blob(&[
        (ACL_USER_OBJ, 6, 0),
        (ACL_USER, 4, NOBODY),
        (ACL_GROUP_OBJ, 0, 0),
        (ACL_MASK, 4, 0),
        (ACL_OTHER, 0, 0),
    ]);
    setxattr(&f, "system.posix_acl_access", &access, 0).unwrap();
    assert_eq!(fs::metadata(&f).unwrap().mode() & 0o777, 0o640);
    let (ok, out) = as_nobody(&format!("cat {r}/acl-file"));
    assert!(ok && out == "for nobody", "{out}");
    let (ok, _) = as_nobody(&format!("echo x >> {r}/acl-file"));
    assert!(!ok, "the ACL grants read only");
    // chmod rewrites the mask: nobody is out again.
    fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, _) = as_nobody(&format!("cat {r}/acl-file"));
    assert!(!ok, "chmod 600 masks the named entry");
    // Setting an access ACL drops set-group-ID when the caller is outside the
    // file's group and lacks CAP_FSETID (Linux's posix_acl_update_mode); root keeps it.
    let acl = acl_blob(&[
        (ACL_USER_OBJ, 7, 0),
        (ACL_USER, 5, 0),
        (ACL_GROUP_OBJ, 5, 0),
        (ACL_MASK, 5, 0),
        (ACL_OTHER, 5, 0),
    ]);
    let hex: String = acl.iter().map(|b| format!("{b:02x}")).collect();
    for (name, by_nobody, want) in [("sgid-nobody", true, 0o0755), ("sgid-root", false, 0o2755)] {
        let p = m.mnt.join(name);
        write_file(&p, b"");
        std::os::unix::fs::chown(&p, Some(NOBODY), Some(0)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o2775)).unwrap();
        if by_nobody {
            let (ok, out) = as_nobody(&format!(
                "python3 -c \"import os; os.setxattr('{}', 'system.posix_acl_access', bytes.fromhex('{hex}'))\"",
                p.display()
            ));
            assert!(ok, "{out}");
        } else {
            setxattr(&p, "system.posix_acl_access", &acl, 0).unwrap();
        }
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, want, "{name}");
    }
    // Malformed ACLs are refused.
    assert_eq!(
        errno(setxattr(&f, "system.posix_acl_access", &[2, 0, 0, 0, 1], 0)),
        libc::EINVAL
    );
    // Default ACLs are inherited by new files and directories.
    let d = m.mnt.join("acl-dir");
    fs::create_dir(&d).unwrap();
    // The kernel reports the id of unnamed entries as ACL_UNDEFINED_ID.
    let undef = u32::MAX;
    let def = acl_blob(&[
        (ACL_USER_OBJ, 7, undef),
        (ACL_USER, 7, NOBODY),
        (ACL_GROUP_OBJ, 5, undef),
        (ACL_MASK, 7, undef),
        (ACL_OTHER, 0, undef),
    ]);
    setxattr(&d, "system.posix_acl_default", &def, 0).unwrap();
    setxattr(&d, "system.posix_acl_access", &def, 0).unwrap();
    let (ok, out) = as_nobody(&format!(
        "echo made > {r}/acl-dir/by-nobody && cat {r}/acl-dir/by-nobody"
    ));
    assert!(ok && out == "made\n", "{out}");
    write_file(&d.join("by-root"), b"inherited");
    assert!(getxattr(&d.join("by-root"), "system.posix_acl_access").is_ok());
    assert_eq!(fs::metadata(d.join("by-root")).unwrap().mode() & 0o007, 0);
    // A default ACL replaces the umask; elsewhere the umask applies.
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 077 && touch {r}/acl-dir/u && touch {r}/plain"
        ))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        fs::metadata(d.join("u")).unwrap().mode() & 0o777,
        0o660,
        "default ACL: 0666 narrowed by the ACL, not by umask 077"
    );
    assert_eq!(
        fs::metadata(m.mnt.join("plain")).unwrap().mode() & 0o777,
        0o600
    );
    let (ok, out) = as_nobody(&format!("cat {r}/acl-dir/by-root"));
    assert!(ok && out == "inherited", "{out}");
    fs::create_dir(d.join("sub")).unwrap();
    assert_eq!(
        getxattr(&d.join("sub"), "system.posix_acl_default").unwrap(),
        def
    );
    m.stop();
    let m = fx.mount();
    let (ok, out) = as_nobody(&format!("cat {}/acl-dir/by-root", m.mnt.display()));
    assert!(ok && out == "inherited", "after remount: {out}");
    m.stop();
    fx.assert_fsck_clean();
}

fn mknod(p: &Path, mode: u32, dev: u64) -> std::io::Result<()> {
    let c = cpath(p);
    // SAFETY: a valid path; mknod takes plain integers otherwise.
    if unsafe { libc::mknod(c.as_ptr(), mode, dev) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn special_files() {
    use std::os::unix::fs::FileTypeExt;
    let fx = Fixture::new();
    let m = fx.mount();
    let p = |n: &str| m.mnt.join(n);
    mknod(&p("fifo"), libc::S_IFIFO | 0o640, 0).unwrap();
    let null = libc::makedev(1, 3);
    mknod(&p("null"), libc::S_IFCHR | 0o666, null).unwrap();
    mknod(&p("blk"), libc::S_IFBLK | 0o600, libc::makedev(7, 42)).unwrap();
    let sock = std::os::unix::net::UnixListener::bind(p("sock")).unwrap();
    std::os::unix::fs::symlink("fifo", p("link")).unwrap();
    let check = |root: &Path| {
        let md = |n: &str| fs::symlink_metadata(root.join(n)).unwrap();
        assert!(md("fifo").file_type().is_fifo());
        assert_eq!(md("fifo").mode() & 0o777, 0o640);
        assert!(md("null").file_type().is_char_device());
        assert_eq!(md("null").rdev(), null);
        assert!(md("blk").file_type().is_block_device());
        assert_eq!(md("blk").rdev(), libc::makedev(7, 42));
        assert!(md("sock").file_type().is_socket());
        assert!(md("link").file_type().is_symlink());
        assert_eq!(fs::read_link(root.join("link")).unwrap(), Path::new("fifo"));
    };
    check(&m.mnt);
    // A fifo on cowfs works as a pipe; a device node opens the real device.
    let fifo = p("fifo");
    let writer = std::thread::spawn(move || fs::write(fifo, b"through the fifo"));
    assert_eq!(fs::read(p("fifo")).unwrap(), b"through the fifo");
    writer.join().unwrap().unwrap();
    assert_eq!(fs::read(p("null")).unwrap(), b"");
    drop(sock);
    m.stop();
    let m = fx.mount();
    check(&m.mnt);
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn syncfs_is_durable_after_the_periodic_commit() {
    let fx = Fixture::new();
    let m = fx.mount();
    let f = m.mnt.join("unsynced");
    write_file(&f, b"no fsync, only syncfs");
    let file = File::open(&f).unwrap();
    // SAFETY: syncfs takes an open descriptor.
    assert_eq!(unsafe { libc::syncfs(file.as_raw_fd()) }, 0);
    drop(file);
    // The daemon commits every 5 s; give it one period and some slack.
    std::thread::sleep(std::time::Duration::from_millis(6500));
    m.crash();
    let m = fx.mount();
    assert_eq!(
        fs::read(m.mnt.join("unsynced")).unwrap(),
        b"no fsync, only syncfs"
    );
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn umount_from_outside_ends_the_daemon_cleanly() {
    let fx = Fixture::new();
    let m = fx.mount();
    write_file(&m.mnt.join("left"), b"written, never fsynced");
    let st = std::process::Command::new("umount")
        .arg(&m.mnt)
        .status()
        .unwrap();
    assert!(st.success());
    let exit = m.wait_exit();
    assert!(
        exit.is_some_and(|s| s.success()),
        "cowfs mount exits 0 once its mount is gone: {exit:?}"
    );
    fx.assert_fsck_clean();
    let m = fx.mount();
    assert_eq!(
        fs::read(m.mnt.join("left")).unwrap(),
        b"written, never fsynced"
    );
    m.stop();
}

/// Run `f` in a forked child that has dropped to uid/gid 65534 (setgroups,
/// setgid, setuid via libc) and return the errno it reports (0 for success).
/// `f` runs after fork in a multi-threaded process: it must only make raw
/// system calls on values prepared before the fork.
fn errno_as_nobody(f: &dyn Fn() -> i32) -> i32 {
    let mut pipe = [0i32; 2];
    // SAFETY: pipe2(2) fills two descriptors into the array.
    assert_eq!(
        unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
        0
    );
    // SAFETY: the child makes raw system calls only, then _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: child side; raw system calls on prepared values.
        unsafe {
            let dropped = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(NOBODY) == 0
                && libc::setuid(NOBODY) == 0;
            let e: i32 = if dropped { f() } else { -1 };
            libc::write(pipe[1], (&e as *const i32).cast(), 4);
            libc::_exit(0);
        }
    }
    let mut e = -2i32;
    let mut st = 0;
    // SAFETY: parent side: close our write end, read 4 bytes into a local, reap.
    unsafe {
        libc::close(pipe[1]);
        assert_eq!(libc::read(pipe[0], (&mut e as *mut i32).cast(), 4), 4);
        libc::close(pipe[0]);
        libc::waitpid(pid, &mut st, 0);
    }
    assert_ne!(e, -1, "could not drop privileges");
    e
}

/// errno after a libc call that returned `r` (0 when it succeeded).
fn last_errno(r: i64) -> i32 {
    if r < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-3)
    } else {
        0
    }
}

#[test]
fn unprivileged_error_codes() {
    let fx = Fixture::new();
    let m = fx.mount();
    let p = |n: &str| m.mnt.join(n);
    write_file(&p("secret"), b"s");
    fs::set_permissions(p("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    write_file(&p("public"), b"p");
    fs::set_permissions(p("public"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::create_dir(p("sticky")).unwrap();
    fs::set_permissions(p("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    write_file(&p("sticky/roots"), b"r");
    fs::create_dir(p("mine")).unwrap();
    std::os::unix::fs::chown(p("mine"), Some(NOBODY), Some(NOBODY)).unwrap();
    let (secret, public, roots) = (
        cpath(&p("secret")),
        cpath(&p("public")),
        cpath(&p("sticky/roots")),
    );
    let (newfile, minefile) = (cpath(&p("newfile")), cpath(&p("mine/f")));

    // SAFETY (all closures below): raw libc calls on CStrings made before the fork.
    let open_ro = || last_errno(unsafe { libc::open(secret.as_ptr(), libc::O_RDONLY) } as i64);
    assert_eq!(errno_as_nobody(&open_ro), libc::EACCES);
    let open_pub = || last_errno(unsafe { libc::open(public.as_ptr(), libc::O_RDONLY) } as i64);
    assert_eq!(errno_as_nobody(&open_pub), 0);
    let write_pub = || last_errno(unsafe { libc::open(public.as_ptr(), libc::O_WRONLY) } as i64);
    assert_eq!(errno_as_nobody(&write_pub), libc::EACCES);
    let create = || {
        last_errno(
            unsafe { libc::open(newfile.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) } as i64,
        )
    };
    assert_eq!(errno_as_nobody(&create), libc::EACCES);
    let chmod = || last_errno(unsafe { libc::chmod(public.as_ptr(), 0o666) } as i64);
    assert_eq!(errno_as_nobody(&chmod), libc::EPERM);
    let chown = || last_errno(unsafe { libc::chown(public.as_ptr(), NOBODY, NOBODY) } as i64);
    assert_eq!(errno_as_nobody(&chown), libc::EPERM);
    let unlink = || last_errno(unsafe { libc::unlink(roots.as_ptr()) } as i64);
    assert_eq!(errno_as_nobody(&unlink), libc::EPERM, "sticky directory");
    let own = || {
        let fd = unsafe { libc::open(minefile.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o600) };
        if fd < 0 {
            return last_errno(-1);
        }
        unsafe { libc::close(fd) };
        last_errno(unsafe { libc::chmod(minefile.as_ptr(), 0o640) } as i64)
    };
    assert_eq!(errno_as_nobody(&own), 0);
    let md = fs::metadata(p("mine/f")).unwrap();
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o777),
        (NOBODY, NOBODY, 0o640)
    );
    m.stop();
}

/// The system.* namespace holds only POSIX ACLs here. The kernel leaves every
/// other system.* name to the filesystem without a permission check, so storing
/// them let any user attach and remove attributes (and bump the ctime) of files
/// it may not write; ext4 and tmpfs refuse such names with EOPNOTSUPP.
#[test]
fn system_namespace_holds_only_acls() {
    let fx = Fixture::new();
    let m = fx.mount();
    let f = m.mnt.join("roots");
    write_file(&f, b"r");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    for name in ["system.foo", "system.posix_acl", "system.posix_acl_accessx"] {
        assert_eq!(
            errno(setxattr(&f, name, b"v", 0)),
            libc::EOPNOTSUPP,
            "{name}"
        );
        assert_eq!(errno(getxattr(&f, name)), libc::EOPNOTSUPP, "{name}");
        assert_eq!(errno(removexattr(&f, name)), libc::EOPNOTSUPP, "{name}");
    }
    let ctime = fs::metadata(&f).unwrap().ctime_nsec();
    let (path, name) = (cpath(&f), std::ffi::CString::new("system.foo").unwrap());
    // SAFETY: a raw libc call on CStrings made before the fork.
    let set = || {
        last_errno(unsafe {
            libc::setxattr(path.as_ptr(), name.as_ptr(), c"v".as_ptr().cast(), 1, 0)
        } as i64)
    };
    assert_eq!(
        errno_as_nobody(&set),
        libc::EOPNOTSUPP,
        "nobody on root's file"
    );
    assert!(listxattr(&f).unwrap().is_empty());
    assert_eq!(fs::metadata(&f).unwrap().ctime_nsec(), ctime);
    // The ACL names still work (unnamed entries carry ACL_UNDEFINED_ID).
    let undef = u32::MAX;
    let acl = acl_blob(&[
        (ACL_USER_OBJ, 6, undef),
        (ACL_USER, 4, 0),
        (ACL_GROUP_OBJ, 4, undef),
        (ACL_MASK, 4, undef),
        (ACL_OTHER, 4, undef),
    ]);
    setxattr(&f, "system.posix_acl_access", &acl, 0).unwrap();
    assert_eq!(getxattr(&f, "system.posix_acl_access").unwrap(), acl);
    m.stop();
    fx.assert_fsck_clean();
}

/// trusted.* names are listed only to callers with CAP_SYS_ADMIN, as on ext4, xfs,
/// btrfs and tmpfs: the kernel already hides their values (getxattr is ENODATA for
/// others), but FUSE hands listxattr the whole list, so an unprivileged `cp -a` or
/// `rsync -X` saw names it could not read.
#[test]
fn trusted_xattrs_are_listed_only_to_privileged_callers() {
    let fx = Fixture::new();
    let m = fx.mount();
    let f = m.mnt.join("labelled");
    write_file(&f, b"x");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
    setxattr(&f, "trusted.secret", b"t", 0).unwrap();
    setxattr(&f, "user.pub", b"u", 0).unwrap();
    let mut names = listxattr(&f).unwrap();
    names.sort();
    assert_eq!(names, ["trusted.secret", "user.pub"], "root sees both");

    let path = cpath(&f);
    let want = b"user.pub\0";
    let mut buf = [0u8; 64];
    let buf_ptr = buf.as_mut_ptr();
    // SAFETY: raw libc calls on a CString and a buffer made before the fork (the
    // child writes only into its own copy of `buf`). Returns 0 when both the size
    // query and the listing are exactly `want`, else the size seen or the errno.
    let list = || unsafe {
        let size = libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0);
        if size != want.len() as isize {
            return if size < 0 {
                last_errno(-1)
            } else {
                size as i32
            };
        }
        let n = libc::listxattr(path.as_ptr(), buf_ptr.cast(), buf.len());
        if n < 0 {
            return last_errno(-1);
        }
        let got = std::slice::from_raw_parts(buf_ptr, n as usize);
        if got == want {
            0
        } else {
            n as i32
        }
    };
    assert_eq!(errno_as_nobody(&list), 0, "nobody lists only user.pub");
    m.stop();
}

/// Removing an ACL that is not there succeeds, as on ext4, xfs and tmpfs (the
/// kernel makes it "set no ACL"); other absent attributes are still ENODATA.
#[test]
fn removing_an_absent_acl_succeeds() {
    let fx = Fixture::new();
    let m = fx.mount();
    let d = m.mnt.join("dir");
    fs::create_dir(&d).unwrap();
    let undef = u32::MAX;
    let def = acl_blob(&[
        (ACL_USER_OBJ, 7, undef),
        (ACL_GROUP_OBJ, 5, undef),
        (ACL_OTHER, 5, undef),
    ]);
    setxattr(&d, "system.posix_acl_default", &def, 0).unwrap();
    removexattr(&d, "system.posix_acl_default").unwrap();
    assert_eq!(
        errno(getxattr(&d, "system.posix_acl_default")),
        libc::ENODATA
    );
    removexattr(&d, "system.posix_acl_default").unwrap();
    removexattr(&d, "system.posix_acl_access").unwrap();
    assert_eq!(errno(removexattr(&d, "user.absent")), libc::ENODATA);
    m.stop();
    fx.assert_fsck_clean();
}

/// A directory removed (by rmdir, or replaced by a rename) while open stays valid
/// through its descriptor, as on Linux filesystems: it lists empty and fstat shows
/// no links. The engine keeps it as an orphan until the kernel lets go.
#[test]
fn removed_directory_stays_valid_through_an_open_handle() {
    let fx = Fixture::new();
    let m = fx.mount();
    let d = m.mnt.join("gone");
    fs::create_dir(&d).unwrap();
    let rd = fs::read_dir(&d).unwrap();
    let held = File::open(&d).unwrap();
    fs::remove_dir(&d).unwrap();
    let left: Vec<_> = rd.collect::<Result<_, _>>().unwrap();
    assert!(left.is_empty());
    let md = held.metadata().expect("fstat of a removed directory");
    assert!(md.is_dir());
    assert_eq!(md.nlink(), 0);
    // Replaced by a rename: the old directory lives on the same way.
    let (a, b) = (m.mnt.join("a"), m.mnt.join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    let old_b = File::open(&b).unwrap();
    fs::rename(&a, &b).unwrap();
    let md = old_b.metadata().expect("fstat of a replaced directory");
    assert_eq!(md.nlink(), 0);
    assert_eq!(fs::metadata(&b).unwrap().nlink(), 2);
    drop((held, old_b));
    m.stop();
    fx.assert_fsck_clean();
}

#[test]
fn large_directory_listing_is_stable_under_changes() {
    use std::collections::HashMap;
    let fx = Fixture::new();
    let m = fx.mount();
    let d = m.mnt.join("big");
    fs::create_dir(&d).unwrap();
    let n = 3000;
    for i in 0..n {
        File::create(d.join(format!("entry-{i:05}-{}", "x".repeat(i % 40)))).unwrap();
    }
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut rd = fs::read_dir(&d).unwrap();
    // Read part of the listing, then change the directory, then read the rest.
    for e in rd.by_ref().take(1000) {
        *seen
            .entry(e.unwrap().file_name().into_string().unwrap())
            .or_default() += 1;
    }
    for i in 0..200 {
        File::create(d.join(format!("new-{i}"))).unwrap();
    }
    let mut removed = Vec::new();
    for i in (0..n).step_by(15) {
        let name = format!("entry-{i:05}-{}", "x".repeat(i % 40));
        fs::remove_file(d.join(&name)).unwrap();
        removed.push(name);
    }
    for e in rd {
        *seen
            .entry(e.unwrap().file_name().into_string().unwrap())
            .or_default() += 1;
    }
    assert!(seen.values().all(|c| *c == 1), "an entry was listed twice");
    for i in 0..n {
        let name = format!("entry-{i:05}-{}", "x".repeat(i % 40));
        if !removed.contains(&name) {
            assert!(seen.contains_key(&name), "{name} was never listed");
        }
    }
    // A fresh listing has exactly what is there.
    let now = fs::read_dir(&d).unwrap().count();
    assert_eq!(now, n - removed.len() + 200);
    m.stop();
    fx.assert_fsck_clean();
}

/// The kernel may write back dirty pages of a file after its last name is gone
/// (syncfs after unlink): the inode must live until the kernel forgets it, so the
/// flush succeeds and nothing leaks once it is forgotten.
#[test]
fn syncfs_after_unlink_of_written_files() {
    let fx = Fixture::new();
    let m = fx.mount();
    let dir = File::open(&m.mnt).unwrap();
    for round in 0..3 {
        let names: Vec<_> = (0..8)
            .map(|i| m.mnt.join(format!("tmp-{round}-{i}")))
            .collect();
        for n in &names {
            write_file(n, &vec![round as u8; 256 * 1024]);
        }
        for n in &names {
            fs::remove_file(n).unwrap();
        }
        // SAFETY: syncfs takes an open descriptor.
        let r = unsafe { libc::syncfs(dir.as_raw_fd()) };
        assert_eq!(
            r,
            0,
            "syncfs after unlink: {}",
            std::io::Error::last_os_error()
        );
    }
    drop(dir);
    m.stop();
    fx.assert_fsck_clean();
}

/// A `security.capability` value (VFS_CAP_REVISION_2, effective, CAP_NET_RAW
/// permitted): the kernel validates the format on setxattr.
fn file_capability() -> Vec<u8> {
    let mut v = Vec::new();
    for word in [0x0200_0001u32, 1 << 13, 0, 0, 0] {
        v.extend_from_slice(&word.to_le_bytes());
    }
    v
}

fn has_xattr(p: &Path, name: &str) -> bool {
    let (c, n) = (cpath(p), std::ffi::CString::new(name).unwrap());
    // SAFETY: valid NUL-terminated strings; a zero-sized query writes nothing.
    unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Writing, truncating or chowning a file drops what it grants: set-user-ID always,
/// set-group-ID when group-executable (by an unprivileged writer; chown always), and
/// file capabilities on any write, as on Linux's native filesystems.
/// A file's permission bits, set-id and sticky bits included.
fn mode_bits(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

/// `dir/name` written with `data`, then given mode `bits` (chmod after the write,
/// which would drop set-id bits).
fn file_with_mode(dir: &Path, name: &str, data: &[u8], bits: u32) -> std::path::PathBuf {
    let p = dir.join(name);
    write_file(&p, data);
    fs::set_permissions(&p, fs::Permissions::from_mode(bits)).unwrap();
    p
}

#[test]
fn write_truncate_and_chown_drop_privileges() {
    let fx = Fixture::new();
    let m = fx.mount();
    let root = &m.mnt;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let setid = |name: &str, bits: u32| {
        let p = file_with_mode(root, name, b"#!/bin/sh\n", bits);
        assert_eq!(mode_bits(&p), bits);
        p
    };
    let r = root.display();

    // An unprivileged write.
    let w = setid("w", 0o6777);
    let (ok, out) = as_nobody(&format!("echo more >> {r}/w"));
    assert!(ok, "{out}");
    assert_eq!(mode_bits(&w), 0o777, "write by nobody keeps set-id bits");
    // Set-group-ID without group execute: see
    // setgid_without_group_execute_stays_only_for_group_members.
    // An unprivileged truncate, and an O_TRUNC open.
    let t = setid("t", 0o6777);
    let (ok, out) = as_nobody(&format!("truncate -s 3 {r}/t"));
    assert!(ok, "{out}");
    assert_eq!(mode_bits(&t), 0o777, "truncate by nobody keeps set-id bits");
    let o = setid("o", 0o4777);
    let (ok, out) = as_nobody(&format!("echo new > {r}/o"));
    assert!(ok, "{out}");
    assert_eq!(
        mode_bits(&o),
        0o777,
        "O_TRUNC open by nobody keeps set-user-ID"
    );
    // Root writing (CAP_FSETID) keeps the bits.
    let k = setid("k", 0o6755);
    OpenOptions::new()
        .append(true)
        .open(&k)
        .unwrap()
        .write_all(b"root\n")
        .unwrap();
    assert_eq!(mode_bits(&k), 0o6755);
    // chown drops set-user-ID even for root, set-group-ID when group-executable.
    std::os::unix::fs::chown(&k, Some(NOBODY), None).unwrap();
    assert_eq!(mode_bits(&k), 0o755);
    let c = setid("c", 0o2750);
    std::os::unix::fs::chown(&c, None, Some(NOBODY)).unwrap();
    assert_eq!(mode_bits(&c), 0o750);

    // File capabilities go with any write, also root's.
    let cap = root.join("cap");
    write_file(&cap, b"binary");
    setxattr(&cap, "security.capability", &file_capability(), 0).unwrap();
    assert!(has_xattr(&cap, "security.capability"));
    OpenOptions::new()
        .append(true)
        .open(&cap)
        .unwrap()
        .write_all(b"patched")
        .unwrap();
    assert!(
        !has_xattr(&cap, "security.capability"),
        "a written file keeps its capabilities"
    );
    drop(m);
    fx.assert_fsck_clean();
}

/// Set-group-ID without group execute marks mandatory locking: a write, truncate or
/// fallocate by a caller without CAP_FSETID keeps it if the caller is in the file's
/// group and drops it otherwise (Linux 6.2 and later, `setattr_should_drop_sgid`;
/// ext4 does so). cowfs kept it for everyone (found by mount_differential).
#[test]
fn setgid_without_group_execute_stays_only_for_group_members() {
    let fx = Fixture::new();
    let m = fx.mount();
    let root = &m.mnt;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let r = root.display();
    let changes = [
        ("write", "echo more >>"),
        ("truncate", "truncate -s 3"),
        ("fallocate", "fallocate -l 16384"),
    ];
    for (what, cmd) in changes {
        for (group, want) in [(NOBODY, 0o2666), (0, 0o666)] {
            let name = format!("{what}-{group}");
            let p = file_with_mode(root, &name, b"data\n", 0o2666);
            std::os::unix::fs::chown(&p, None, Some(group)).unwrap();
            assert_eq!(mode_bits(&p), 0o2666, "chown by root keeps it");
            let (ok, out) = as_nobody(&format!("{cmd} {r}/{name}"));
            assert!(ok, "{what}: {out}");
            assert_eq!(
                mode_bits(&p),
                want,
                "{what} by nobody of a file of group {group}"
            );
        }
    }
    drop(m);
    fx.assert_fsck_clean();
}

/// fallocate FALLOC_FL_ZERO_RANGE (`fallocate -z`), as on ext4: the range reads
/// as zeros, data around it stays, its blocks count in st_blocks, the file grows to
/// its end unless KEEP_SIZE, and all of it persists. Also over bytes still in the
/// writeback cache (the kernel writes the range back before sending the request).
#[test]
fn fallocate_zero_range() {
    let fx = Fixture::new();
    let m = fx.mount();
    let path = m.mnt.join("z");
    let pattern: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8 + 1).collect();
    write_file(&path, &pattern);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let fd = f.as_raw_fd();
    // Unaligned inside the file, over data the kernel may not have sent yet.
    f.write_all_at(&[b'c'; 8192], 30_000).unwrap();
    let mut want = pattern.clone();
    want[30_000..38_192].fill(b'c');
    fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 1000, 36_000).unwrap();
    want[1000..37_000].fill(0);
    assert_eq!(f.metadata().unwrap().len(), 65536);
    // Past the end: the file grows to the range's end.
    fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 60_000, 100_000).unwrap();
    want[60_000..].fill(0);
    want.resize(160_000, 0);
    assert_eq!(f.metadata().unwrap().len(), 160_000);
    let blocks = f.metadata().unwrap().blocks();
    assert!(blocks * 512 >= 160_000, "{blocks} blocks for 160,000 bytes");
    // KEEP_SIZE: the size stays, the blocks are reserved.
    let keep = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    fallocate(fd, keep, 163_840, 65536).unwrap();
    let md = f.metadata().unwrap();
    assert_eq!(md.len(), 160_000);
    assert_eq!(md.blocks(), blocks + 128, "16 blocks of 4 KiB reserved");
    let mut got = vec![0u8; 200_000];
    let n = f.read_at(&mut got, 0).unwrap();
    assert_eq!(n, 160_000);
    assert!(got[..n] == want[..], "content after zero range");
    drop(f);
    m.stop();
    let m = fx.mount();
    assert!(fs::read(&path).unwrap() == want, "content after a remount");
    assert_eq!(fs::metadata(&path).unwrap().blocks(), blocks + 128);
    m.stop();
    fx.assert_fsck_clean();
}

/// fallocate (every mode) and copy_file_range change a file as a write does: by a
/// caller without CAP_FSETID they drop set-user-ID, and set-group-ID when
/// group-executable, as ext4 does (`file_modified`). With
/// FUSE_HANDLE_KILLPRIV_V2 the kernel leaves this to the filesystem, and these
/// requests carry no flag for it; a caller with CAP_FSETID keeps the bits.
#[test]
fn fallocate_and_copy_range_drop_privileges() {
    let fx = Fixture::new();
    let m = fx.mount();
    let root = &m.mnt;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
    let setid = |name: &str, bits: u32| file_with_mode(root, name, &[b'x'; 8192], bits);
    write_file(&root.join("src"), &[b's'; 8192]);
    let src = File::open(root.join("src")).unwrap();
    let src_fd = src.as_raw_fd();
    // SAFETY (all closures below): raw libc calls on descriptors of the child.
    let falloc = |mode: i32| {
        move |fd: i32| last_errno(unsafe { libc::fallocate(fd, mode, 0, 16384) } as i64)
    };
    let copy = |fd: i32| {
        last_errno(unsafe {
            libc::copy_file_range(
                src_fd,
                std::ptr::null_mut(),
                fd,
                std::ptr::null_mut(),
                4096,
                0,
            )
        } as i64)
    };
    let cases: [(&str, &dyn Fn(i32) -> i32); 5] = [
        ("allocate", &falloc(0)),
        ("keep size", &falloc(libc::FALLOC_FL_KEEP_SIZE)),
        (
            "punch hole",
            &falloc(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE),
        ),
        ("zero range", &falloc(libc::FALLOC_FL_ZERO_RANGE)),
        ("copy_file_range", &copy),
    ];
    for (n, (what, op)) in cases.iter().enumerate() {
        let p = setid(&format!("f{n}"), 0o6777);
        let c = cpath(&p);
        // SAFETY: open and close on a CString made before the fork.
        let run = || unsafe {
            let fd = libc::open(c.as_ptr(), libc::O_RDWR);
            if fd < 0 {
                return last_errno(-1);
            }
            let e = op(fd);
            libc::close(fd);
            e
        };
        assert_eq!(errno_as_nobody(&run), 0, "{what} by nobody");
        assert_eq!(mode_bits(&p), 0o777, "{what} by nobody keeps set-id bits");
    }
    // Root (CAP_FSETID) keeps them.
    let k = setid("k", 0o6755);
    let f = OpenOptions::new().write(true).open(&k).unwrap();
    fallocate(f.as_raw_fd(), 0, 0, 16384).unwrap();
    copy_file_range(src_fd, f.as_raw_fd(), 4096).unwrap();
    assert_eq!(mode_bits(&k), 0o6755);
    drop((f, src));
    drop(m);
    fx.assert_fsck_clean();
}

/// A truncate drops set-id bits unless the caller holds CAP_FSETID, whatever its
/// uid: root without the capability (a container or service that dropped it)
/// loses them as on ext4, root with it keeps them. The kernel's kill flag for
/// truncates does not reach the daemon (fuser 0.18), so it asks the caller.
#[test]
fn truncate_without_cap_fsetid_drops_setid_even_for_root() {
    let fx = Fixture::new();
    let m = fx.mount();
    let setid = |name: &str| file_with_mode(&m.mnt, name, b"#!/bin/sh\n", 0o6777);
    let dropped = setid("dropped");
    let (st, out) = run_text(
        std::process::Command::new("setpriv")
            .args([
                "--inh-caps=-fsetid",
                "--bounding-set=-fsetid",
                "truncate",
                "-s",
                "3",
            ])
            .arg(&dropped),
    );
    assert!(st.success(), "{out}");
    assert_eq!(fs::metadata(&dropped).unwrap().len(), 3);
    assert_eq!(
        mode_bits(&dropped),
        0o777,
        "root without CAP_FSETID keeps set-id bits"
    );
    let kept = setid("kept");
    OpenOptions::new()
        .write(true)
        .open(&kept)
        .unwrap()
        .set_len(3)
        .unwrap();
    assert_eq!(
        mode_bits(&kept),
        0o6777,
        "root with CAP_FSETID loses set-id bits"
    );
    m.stop();
}

/// A file's (mtime, mtime_nsec, ctime, ctime_nsec).
fn file_times(p: &Path) -> (i64, i64, i64, i64) {
    let md = fs::metadata(p).unwrap();
    (md.mtime(), md.mtime_nsec(), md.ctime(), md.ctime_nsec())
}

/// With the writeback cache the kernel keeps a file's mtime and ctime and sends
/// them itself (SETATTR) when it changes them. The daemon stamped its own clock on
/// every page written back as well, a little later than the kernel's time, so a
/// file written right after its create (the kernel's times left clean) showed one
/// mtime, and another once the kernel had forgotten the inode (remount, memory
/// pressure) although nothing had changed it.
#[test]
fn times_of_written_files_survive_a_remount() {
    let fx = Fixture::new();
    let m = fx.mount();
    // Inline bytes and extents, written right after the create; and a rewrite
    // later, whose times the kernel changes and sends.
    let mut files = Vec::new();
    for n in 0..8 {
        let p = m.mnt.join(format!("f{n}"));
        write_file(&p, &vec![b'x'; if n % 2 == 0 { 100 } else { 10_000 }]);
        files.push(p);
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    let rewritten = &files[1];
    let f = OpenOptions::new().write(true).open(rewritten).unwrap();
    f.write_all_at(b"again", 4096).unwrap();
    drop(f);
    let before: Vec<_> = files.iter().map(|p| file_times(p)).collect();
    m.stop();
    let m = fx.mount();
    for (p, want) in files.iter().zip(&before) {
        assert_eq!(
            file_times(p),
            *want,
            "{}: times after a remount",
            p.display()
        );
    }
    m.stop();
}

/// fallocate and copy_file_range leave the times to the kernel too: with the
/// writeback cache it stamps them itself (`file_modified`) and sends them, so a
/// stamp of the daemon's, later than the kernel's, showed up as a new mtime after
/// a remount (`cp` creates a file and copy_file_range's into it at once).
#[test]
fn times_after_fallocate_and_copy_range_survive_a_remount() {
    let fx = Fixture::new();
    let m = fx.mount();
    write_file(&m.mnt.join("src"), &[b's'; 65536]);
    let src = File::open(m.mnt.join("src")).unwrap();
    type Op<'a> = &'a dyn Fn(i32) -> std::io::Result<()>;
    let cases: [(&str, Op); 6] = [
        ("copy bytes", &|fd| {
            copy_file_range(src.as_raw_fd(), fd, 100).map(drop)
        }),
        ("copy extents", &|fd| {
            copy_file_range(src.as_raw_fd(), fd, 65536).map(drop)
        }),
        ("allocate", &|fd| fallocate(fd, 0, 0, 8192)),
        ("keep size", &|fd| {
            fallocate(fd, libc::FALLOC_FL_KEEP_SIZE, 0, 8192)
        }),
        ("punch hole", &|fd| {
            let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            fallocate(fd, punch, 0, 4096)
        }),
        ("zero range", &|fd| {
            fallocate(fd, libc::FALLOC_FL_ZERO_RANGE, 100, 8192)
        }),
    ];
    let mut before = Vec::new();
    for (n, (what, op)) in cases.iter().enumerate() {
        let p = m.mnt.join(format!("f{n}"));
        let f = File::create(&p).unwrap();
        // SAFETY: lseek on a descriptor of ours: each copy starts at the source's start.
        unsafe { libc::lseek(src.as_raw_fd(), 0, libc::SEEK_SET) };
        op(f.as_raw_fd()).unwrap_or_else(|e| panic!("{what}: {e}"));
        drop(f);
        before.push((p.clone(), *what, file_times(&p)));
    }
    drop(src);
    m.stop();
    let m = fx.mount();
    for (p, what, want) in &before {
        assert_eq!(file_times(p), *want, "{what}: times after a remount");
    }
    m.stop();
}

/// truncate(2) to the file's own size changes nothing, times included (POSIX: "if
/// the file size is changed"; xfs and btrfs). The kernel sends such a SETATTR
/// without times and keeps the ones it has cached, while the engine stamped new
/// ones: `stat` showed the old mtime until a remount showed the new one.
/// (ftruncate(2) always asks for new times, and gets them.)
#[test]
fn truncate_to_the_same_size_keeps_the_times() {
    let fx = Fixture::new();
    // Inline bytes and extents.
    let files = [("inline", 100usize), ("extents", 10_000)];
    let mut before = Vec::new();
    let m = fx.mount();
    for (name, len) in files {
        let p = m.mnt.join(name);
        write_file(&p, &vec![b'x'; len]);
        before.push(file_times(&p));
    }
    std::thread::sleep(std::time::Duration::from_millis(20));
    for ((name, len), want) in files.iter().zip(&before) {
        let p = m.mnt.join(name);
        let c = cpath(&p);
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(
            unsafe { libc::truncate(c.as_ptr(), *len as libc::off_t) },
            0
        );
        assert_eq!(fs::metadata(&p).unwrap().len(), *len as u64);
        assert_eq!(file_times(&p), *want, "{name}: times after the truncate");
    }
    m.stop();
    let m = fx.mount();
    for ((name, _), want) in files.iter().zip(&before) {
        assert_eq!(
            file_times(&m.mnt.join(name)),
            *want,
            "{name}: times after a remount"
        );
    }
    m.stop();
}

/// Terminal ioctls on a file fail with ENOTTY, as on any regular file (isatty).
#[test]
fn terminal_ioctl_on_a_file_is_enotty() {
    let fx = Fixture::new();
    let m = fx.mount();
    let p = m.mnt.join("f");
    write_file(&p, b"x");
    let f = File::open(&p).unwrap();
    // SAFETY: TCGETS writes a termios into the zeroed buffer we pass.
    let (r, e) = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        let r = libc::ioctl(f.as_raw_fd(), libc::TCGETS, &mut t);
        (r, std::io::Error::last_os_error().raw_os_error())
    };
    assert_eq!((r, e), (-1, Some(libc::ENOTTY)));
}

/// Lookups of missing names are cached by the kernel (negative entries): a name
/// probed (twice, so the second answer comes from the cache) and then made by any
/// call is seen at once, and so is its removal, in the name's directory and across
/// a rename from another one.
#[test]
fn probed_missing_names_appear_when_made() {
    let fx = Fixture::new();
    let m = fx.mount();
    let d = m.mnt.join("d");
    let other = m.mnt.join("other");
    fs::create_dir(&d).unwrap();
    fs::create_dir(&other).unwrap();
    write_file(&other.join("src"), b"moved");
    let p = d.join("name");
    let probe_missing = |why: &str| {
        for _ in 0..2 {
            let e = fs::symlink_metadata(&p).expect_err(why);
            assert_eq!(errno_of(&e), libc::ENOENT, "{why}");
        }
    };
    let listed = || {
        fs::read_dir(&d)
            .unwrap()
            .any(|e| e.unwrap().file_name() == "name")
    };
    type Make<'a> = (&'a str, Box<dyn Fn() + 'a>, Box<dyn Fn() + 'a>);
    let makes: Vec<Make> = vec![
        (
            "create",
            Box::new(|| write_file(&p, b"created")),
            Box::new(|| fs::remove_file(&p).unwrap()),
        ),
        (
            "O_EXCL create",
            Box::new(|| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&p)
                    .unwrap();
            }),
            Box::new(|| fs::remove_file(&p).unwrap()),
        ),
        (
            "mkdir",
            Box::new(|| fs::create_dir(&p).unwrap()),
            Box::new(|| fs::remove_dir(&p).unwrap()),
        ),
        (
            "symlink",
            Box::new(|| std::os::unix::fs::symlink("target", &p).unwrap()),
            Box::new(|| fs::remove_file(&p).unwrap()),
        ),
        (
            "hard link",
            Box::new(|| fs::hard_link(other.join("src"), &p).unwrap()),
            Box::new(|| fs::remove_file(&p).unwrap()),
        ),
        (
            "fifo",
            Box::new(|| mknod(&p, libc::S_IFIFO | 0o644, 0).unwrap()),
            Box::new(|| fs::remove_file(&p).unwrap()),
        ),
        (
            "rename from another directory",
            Box::new(|| fs::rename(other.join("src"), &p).unwrap()),
            Box::new(|| fs::rename(&p, other.join("src")).unwrap()),
        ),
    ];
    for (what, make, remove) in &makes {
        probe_missing(&format!("before {what}"));
        make();
        assert!(
            fs::symlink_metadata(&p).is_ok(),
            "{what}: the new name is not seen"
        );
        assert!(listed(), "{what}: the new name is not listed");
        remove();
        probe_missing(&format!("after {what} was undone"));
        assert!(!listed(), "{what}: the removed name is still listed");
    }
    assert_eq!(fs::read(other.join("src")).unwrap(), b"moved");
    // The same answers from the pool itself, through a fresh mount (SIGTERM commits).
    m.stop();
    let m = fx.mount();
    assert!(fs::symlink_metadata(m.mnt.join("d/name")).is_err());
    assert_eq!(fs::read(m.mnt.join("other/src")).unwrap(), b"moved");
    m.stop();
    fx.assert_fsck_clean();
}
