//! `reset BRANCH --to SNAPSHOT`: the branch becomes identical to the snapshot again;
//! the snapshot, other snapshots and branches taken meanwhile keep their content;
//! a mounted branch is refused with a clear error until it is unmounted; a snapshot
//! cannot be reset; fsck stays clean and the space of the dropped tree is freed.

mod control_support;

use control_support::*;
use cowfs::fs::Owner;
use cowfs::pool::{BranchId, FsckOptions, Pool};
use cowfs_ctl::proto::ErrorKind;

fn read(p: &Pool, b: BranchId, name: &str) -> Option<Vec<u8>> {
    let a = p.lookup(b, 1, name.as_bytes()).ok()?;
    Some(p.read_file(b, a.ino, 0, 8 << 20).expect("read"))
}

fn write(p: &Pool, b: BranchId, name: &str, data: &[u8]) {
    let ino = match p.lookup(b, 1, name.as_bytes()) {
        Ok(a) => a.ino,
        Err(_) => {
            p.mknod(
                b,
                1,
                name.as_bytes(),
                libc::S_IFREG | 0o644,
                0,
                Owner::default(),
            )
            .expect("mknod")
            .ino
        }
    };
    p.setattr(
        b,
        ino,
        &cowfs::fs::SetAttr {
            size: Some(0),
            ..Default::default()
        },
    )
    .expect("truncate");
    p.write_file(b, ino, 0, data).expect("write");
}

#[test]
fn reset_to_a_snapshot() {
    let d = Daemon::start();
    let p = &d.pool;
    let mut admin = d.admin_client();
    let main = p.branch_id("main").expect("main");
    write(p, main, "a", b"version 1");
    write(p, main, "big", &vec![1u8; 3 << 20]);
    admin.snapshot_create("v1", "main").expect("snapshot v1");
    write(p, main, "a", b"version 2");
    write(p, main, "b", b"new in v2");
    write(p, main, "big", &vec![2u8; 3 << 20]);
    admin.snapshot_create("v2", "main").expect("snapshot v2");
    admin.branch_create("fork", "main", None).expect("fork");
    write(p, main, "a", b"version 3");
    p.commit().expect("commit");
    let used_before = p.used_blocks();

    let info = admin.reset("main", "v1").expect("reset");
    assert_eq!(info.name, "main");
    assert_eq!(read(p, main, "a").as_deref(), Some(&b"version 1"[..]));
    assert_eq!(read(p, main, "b"), None, "files created after v1 are gone");
    assert!(
        read(p, main, "big") == Some(vec![1u8; 3 << 20]),
        "big is v1's"
    );
    // Nothing else changed.
    let v1 = p.branch_id("v1").expect("v1");
    let v2 = p.branch_id("v2").expect("v2");
    let fork = p.branch_id("fork").expect("fork");
    assert_eq!(read(p, v1, "a").as_deref(), Some(&b"version 1"[..]));
    assert_eq!(read(p, v2, "a").as_deref(), Some(&b"version 2"[..]));
    assert_eq!(read(p, v2, "b").as_deref(), Some(&b"new in v2"[..]));
    assert_eq!(read(p, fork, "a").as_deref(), Some(&b"version 2"[..]));
    assert!(
        read(p, fork, "big") == Some(vec![2u8; 3 << 20]),
        "fork keeps v2's big"
    );
    // What only main's old tree held ("version 3") is freed; the rest is shared.
    assert!(
        p.used_blocks() <= used_before,
        "reset must not grow the pool"
    );

    // The branch is writable and independent of the snapshot afterwards.
    write(p, main, "a", b"after reset");
    assert_eq!(read(p, v1, "a").as_deref(), Some(&b"version 1"[..]));
    assert_eq!(admin.diff("v1", "main").expect("diff").entries.len(), 1);

    // A snapshot cannot be reset; a mounted branch is refused until unmounted.
    assert_eq!(kind(admin.reset("v1", "v2")), ErrorKind::ReadOnly);
    let mnt = d.dir("mnt");
    let mnt_s = mnt.to_str().expect("utf-8 path");
    admin.mount("main", mnt_s, false).expect("mount");
    assert!(is_mountpoint(&mnt));
    assert_eq!(
        std::fs::read(mnt.join("a")).expect("read via mount"),
        b"after reset"
    );
    let gen = p.generation();
    assert_eq!(kind(admin.reset("main", "v2")), ErrorKind::Mounted);
    assert_eq!(p.generation(), gen, "a refused reset commits nothing");
    admin.unmount(mnt_s).expect("unmount");
    assert!(!is_mountpoint(&mnt));
    admin.reset("main", "v2").expect("reset after unmount");
    assert_eq!(read(p, main, "b").as_deref(), Some(&b"new in v2"[..]));
    let r = p.fsck(&FsckOptions { verify_data: true }).expect("fsck");
    assert!(r.is_clean(), "{r}");
}
