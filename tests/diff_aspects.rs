//! What `Pool::diff` says changed in a modified entry, one aspect at a time, and
//! the cases the randomized cross-check (diff_model) found wrong: every name of a
//! hard-linked file, a changed file under a new name listed once, bytes rewritten
//! unchanged (an identical copy, zeros over a hole, a small file moved out of
//! its inline item, a large xattr set again) not reported.

use std::sync::Arc;

use cowfs::fs::{Owner, SetAttr, Timespec};
use cowfs::pool::diff::{Aspect, PathChangeKind};
use cowfs::pool::{BranchId, Pool, PoolOptions};
use cowfs::store::device::MemDevice;

use Aspect::*;

struct Fx {
    p: Pool,
    b: BranchId,
    snaps: usize,
}

type Row = (String, PathChangeKind, Vec<(u64, u64)>, Vec<Aspect>);

impl Fx {
    fn new() -> Fx {
        let opts = PoolOptions {
            capacity_bytes: Some(256 << 20),
            ..Default::default()
        };
        let p = Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("pool");
        let b = p.branch_id("main").expect("main");
        Fx { p, b, snaps: 0 }
    }

    fn file(&self, name: &str, data: &[u8]) -> u64 {
        let o = Owner::default();
        let ino = self
            .p
            .mknod(self.b, 1, name.as_bytes(), libc::S_IFREG | 0o644, 0, o)
            .expect("mknod")
            .ino;
        self.p.write_file(self.b, ino, 0, data).expect("write");
        ino
    }

    /// Snapshot main, run `change` on it, and diff the snapshot to main.
    fn diff_after(&mut self, change: impl FnOnce(&Pool, BranchId)) -> Vec<Row> {
        self.snaps += 1;
        let snap = format!("s{}", self.snaps);
        self.p.snapshot_create(&snap, "main").expect("snapshot");
        change(&self.p, self.b);
        let r = self.p.diff(&snap, "main").expect("diff");
        r.entries
            .into_iter()
            .map(|c| {
                let path = String::from_utf8_lossy(&c.path).into_owned();
                (path, c.change, c.ranges, c.aspects)
            })
            .collect()
    }
}

fn modified(path: &str, ranges: &[(u64, u64)], aspects: &[Aspect]) -> Row {
    (
        path.into(),
        PathChangeKind::Modified,
        ranges.to_vec(),
        aspects.to_vec(),
    )
}

fn plain(path: &str, change: PathChangeKind) -> Row {
    (path.into(), change, Vec::new(), Vec::new())
}

fn set(p: &Pool, b: BranchId, ino: u64, s: SetAttr) {
    p.setattr(b, ino, &s).expect("setattr");
}

#[test]
fn each_aspect_of_a_file() {
    let mut fx = Fx::new();
    let f = fx.file("f", &[1u8; 10_000]);
    let got = fx.diff_after(|p, b| {
        p.write_file(b, f, 5000, &[2u8; 10]).expect("write");
    });
    assert_eq!(
        got,
        vec![modified("/f", &[(4096, 4096)], &[Content, Times])]
    );
    // An append into the last block rewrites it, the bytes it had unchanged.
    let got = fx.diff_after(|p, b| {
        p.write_file(b, f, 10_000, &[3u8; 100]).expect("append");
    });
    assert_eq!(got, vec![modified("/f", &[(8192, 4096)], &[Size, Times])]);
    // A truncate into the middle of a block rewrites it too.
    let got = fx.diff_after(|p, b| {
        let size = Some(6000);
        set(
            p,
            b,
            f,
            SetAttr {
                size,
                ..Default::default()
            },
        );
    });
    assert_eq!(got, vec![modified("/f", &[(4096, 8192)], &[Size, Times])]);
    let got = fx.diff_after(|p, b| {
        let mode = Some(0o600);
        set(
            p,
            b,
            f,
            SetAttr {
                mode,
                ..Default::default()
            },
        );
    });
    assert_eq!(got, vec![modified("/f", &[], &[Mode])]);
    let got = fx.diff_after(|p, b| {
        let (uid, gid) = (Some(7), Some(8));
        set(
            p,
            b,
            f,
            SetAttr {
                uid,
                gid,
                ..Default::default()
            },
        );
    });
    assert_eq!(got, vec![modified("/f", &[], &[Owner])]);
    let got = fx.diff_after(|p, b| {
        let mtime = Some(Timespec { sec: 1000, nsec: 0 });
        set(
            p,
            b,
            f,
            SetAttr {
                mtime,
                ..Default::default()
            },
        );
    });
    assert_eq!(got, vec![modified("/f", &[], &[Times])]);
    // Access and change times alone are not listed.
    let got = fx.diff_after(|p, b| {
        let t = Some(Timespec { sec: 2000, nsec: 0 });
        set(
            p,
            b,
            f,
            SetAttr {
                atime: t,
                ctime: t,
                ..Default::default()
            },
        );
    });
    assert_eq!(got, vec![]);
    let got = fx.diff_after(|p, b| {
        p.setxattr(b, f, b"user.small", b"v", 0).expect("setxattr");
        p.setxattr(b, f, b"user.big", &[9u8; 5000], 0)
            .expect("setxattr");
    });
    assert_eq!(got, vec![modified("/f", &[], &[Xattrs])]);
    let got = fx.diff_after(|p, b| {
        p.removexattr(b, f, b"user.small").expect("removexattr");
    });
    assert_eq!(got, vec![modified("/f", &[], &[Xattrs])]);
}

#[test]
fn directories_symlinks_and_replaced_names() {
    let mut fx = Fx::new();
    let o = Owner::default();
    let d = fx.p.mkdir(fx.b, 1, b"d", 0o755, o).expect("mkdir").ino;
    fx.p.symlink(fx.b, 1, b"ln", b"old", o).expect("symlink");
    fx.file("x", b"data");
    let got = fx.diff_after(|p, b| {
        let mode = Some(0o700);
        set(
            p,
            b,
            d,
            SetAttr {
                mode,
                ..Default::default()
            },
        );
        p.setxattr(b, d, b"user.a", b"1", 0).expect("setxattr");
        // `ln -sfn new ln`: a new link renamed over the old one.
        p.symlink(b, 1, b"tmp", b"new", o).expect("symlink");
        p.rename(b, 1, b"tmp", 1, b"ln", 0).expect("rename");
        // A file replaced by a directory of the same name.
        p.unlink(b, 1, b"x").expect("unlink");
        p.mkdir(b, 1, b"x", 0o755, o).expect("mkdir");
    });
    assert_eq!(
        got,
        vec![
            modified("/d", &[], &[Mode, Xattrs]),
            modified("/ln", &[], &[Target, Replaced]),
            modified("/x", &[], &[Replaced]),
        ]
    );
    // The same target again: only the link is new.
    let got = fx.diff_after(|p, b| {
        p.symlink(b, 1, b"tmp", b"new", o).expect("symlink");
        p.rename(b, 1, b"tmp", 1, b"ln", 0).expect("rename");
    });
    assert_eq!(got, vec![modified("/ln", &[], &[Replaced])]);
}

#[test]
fn every_name_of_a_hard_linked_file() {
    let mut fx = Fx::new();
    let f = fx.file("a", &[1u8; 100]);
    fx.p.link(fx.b, f, 1, b"b").expect("link");
    let got = fx.diff_after(|p, b| {
        p.write_file(b, f, 0, b"x").expect("write");
    });
    let both = |p| modified(p, &[(0, 100)], &[Content, Times]);
    assert_eq!(got, vec![both("/a"), both("/b")]);
}

#[test]
fn a_changed_file_under_a_new_name_is_listed_once() {
    let mut fx = Fx::new();
    let f = fx.file("old", &[1u8; 100]);
    let g = fx.file("open", &[1u8; 100]);
    let got = fx.diff_after(|p, b| {
        p.rename(b, 1, b"old", 1, b"new", 0).expect("rename");
        p.write_file(b, f, 0, b"x").expect("write");
        // Unlinked while open, then changed: removed, nothing else.
        p.open_inode(b, g);
        p.unlink(b, 1, b"open").expect("unlink");
        p.write_file(b, g, 0, b"x").expect("write");
    });
    assert_eq!(
        got,
        vec![
            plain("/new", PathChangeKind::Added),
            plain("/old", PathChangeKind::Removed),
            plain("/open", PathChangeKind::Removed),
        ]
    );
    // The other way round, the open file's old name is added, not modified too.
    let back = fx.p.diff("main", "s1").expect("diff back");
    let kinds: Vec<_> = back
        .entries
        .iter()
        .map(|c| (&c.path[..], c.change))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (&b"/new"[..], PathChangeKind::Removed),
            (&b"/old"[..], PathChangeKind::Added),
            (&b"/open"[..], PathChangeKind::Added),
        ]
    );
    fx.p.release_inode(fx.b, g).expect("release");
}

#[test]
fn bytes_rewritten_unchanged_are_not_reported() {
    let mut fx = Fx::new();
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let f = fx.file("f", &data);
    let z = fx.file("z", &[0u8; 3 * 4096]);
    let small = fx.file("small", &[5u8; 100]);
    fx.p.setxattr(fx.b, f, b"user.big", &[4u8; 3000], 0)
        .expect("setxattr");
    let got = fx.diff_after(|p, b| {
        // The same bytes over two blocks, and over part of a third.
        p.write_file(b, f, 4096, &data[4096..14_000])
            .expect("write");
        // Written zeros punched into a hole (and zeros written again).
        p.punch_hole(b, z, 0, 4096).expect("punch");
        p.write_file(b, z, 4096, &[0u8; 4096]).expect("write");
        // Blocks reserved past the end move a small file out of its inline item
        // into block 0, bytes, size and times unchanged.
        p.fallocate(b, small, 20_000, 4096, true)
            .expect("fallocate");
        // A large value set again to the bytes it had (new chunks).
        p.setxattr(b, f, b"user.big", &[4u8; 3000], 0)
            .expect("setxattr");
    });
    assert_eq!(
        got,
        vec![modified("/f", &[], &[Times]), modified("/z", &[], &[Times])]
    );
}

/// Two branches taken from one snapshot: a directory and a file made in each under
/// other names. Each branch used to number its new inodes from the snapshot's
/// counter, so both pairs got the same numbers and the diff took them for one
/// directory renamed and one file modified (`/d1/f` removed and `/d2/f` added were
/// missing). New numbers now come from above every branch's, also for a branch
/// that makes its files after the pool was opened again.
#[test]
fn sibling_branches_made_from_one_snapshot_never_share_new_inode_numbers() {
    let opts = PoolOptions {
        capacity_bytes: Some(256 << 20),
        ..Default::default()
    };
    let dev = Arc::new(MemDevice::new());
    let o = Owner::default();
    let make = |p: &Pool, branch: &str, dir: &str| {
        let b = p.branch_id(branch).expect("branch");
        let d = p.mkdir(b, 1, dir.as_bytes(), 0o755, o).expect("mkdir");
        let f = p
            .mknod(b, d.ino, b"f", libc::S_IFREG | 0o644, 0, o)
            .expect("mknod");
        p.write_file(b, f.ino, 0, dir.as_bytes()).expect("write");
    };
    {
        let p = Pool::create_on(dev.clone(), &opts).expect("pool");
        p.snapshot_create("s", "main").expect("snapshot");
        p.branch_create("a", "s").expect("branch a");
        p.branch_create("b", "s").expect("branch b");
        p.branch_create("c", "s").expect("branch c");
        make(&p, "a", "d1");
        make(&p, "b", "d2");
        p.commit().expect("commit");
    }
    let p = Pool::open_on(dev, &opts).expect("reopen");
    make(&p, "c", "d3");
    let rows = |x: &str, y: &str| -> Vec<(String, PathChangeKind)> {
        let mut r: Vec<_> = p
            .diff(x, y)
            .expect("diff")
            .entries
            .into_iter()
            .map(|c| (String::from_utf8_lossy(&c.path).into_owned(), c.change))
            .collect();
        r.sort_by(|l, r| l.0.cmp(&r.0));
        r
    };
    use PathChangeKind::{Added, Removed};
    let want = |from: &str, to: &str| {
        vec![
            (format!("/{from}"), Removed),
            (format!("/{from}/f"), Removed),
            (format!("/{to}"), Added),
            (format!("/{to}/f"), Added),
        ]
    };
    assert_eq!(rows("a", "b"), want("d1", "d2"));
    // c's files were made after the reopen: the first numbers after the
    // snapshot's would have been a's.
    assert_eq!(rows("a", "c"), want("d1", "d3"));
}
