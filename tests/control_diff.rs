//! `diff`: correct paths, change kinds and byte ranges between a snapshot and a
//! 2 GiB branch, and a cost that follows the difference: the tree nodes it reads
//! (counted by the pool's I/O counters on a cold cache, and by the walk itself) stay
//! bounded for 3 changed files and grow with the number of changed files, far below
//! the size of the tree.

mod control_support;

use std::sync::Arc;

use control_support::*;
use cowfs::fs::Owner;
use cowfs::pool::{BranchId, FsckOptions, Pool, PoolOptions};
use cowfs_ctl::proto::{ByteRange, Change, DiffEntry};

const GIB: u64 = 1 << 30;

fn file(p: &Pool, b: BranchId, dir: u64, name: &str) -> u64 {
    p.mknod(
        b,
        dir,
        name.as_bytes(),
        libc::S_IFREG | 0o644,
        0,
        Owner::default(),
    )
    .expect("mknod")
    .ino
}

fn lookup(p: &Pool, b: BranchId, path: &str) -> u64 {
    let mut ino = 1;
    for part in path.split('/').filter(|s| !s.is_empty()) {
        ino = p.lookup(b, ino, part.as_bytes()).expect("lookup").ino;
    }
    ino
}

fn entry(
    path: &str,
    change: Change,
    file_type: &str,
    ranges: &[(u64, u64)],
    aspects: &[&str],
) -> DiffEntry {
    DiffEntry {
        path: path.into(),
        change,
        file_type: file_type.into(),
        ranges: ranges
            .iter()
            .map(|&(offset, len)| ByteRange { offset, len })
            .collect(),
        aspects: aspects.iter().map(|a| a.to_string()).collect(),
    }
}

#[test]
fn diff_is_exact_and_its_cost_follows_the_difference() {
    let d = Daemon::start();
    let p = &d.pool;
    let main = p.branch_id("main").expect("main");
    // A 2 GiB branch: one 2 GiB file (allocated, its first 8 MiB written), plus
    // 40 directories of 50 small files each.
    let big = file(p, main, 1, "big.db");
    p.fallocate(main, big, 0, 2 * GIB, false)
        .expect("fallocate");
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
    for i in 0..8u64 {
        p.write_file(main, big, i << 20, &chunk).expect("write");
    }
    for dnum in 0..40 {
        let dir = p
            .mkdir(
                main,
                1,
                format!("d{dnum}").as_bytes(),
                0o755,
                Owner::default(),
            )
            .expect("mkdir")
            .ino;
        for f in 0..50 {
            let ino = file(p, main, dir, &format!("f{f}"));
            p.write_file(main, ino, 0, format!("file {dnum}/{f}").as_bytes())
                .expect("write small");
        }
    }
    let mut admin = d.admin_client();
    admin.snapshot_create("s1", "main").expect("snapshot");

    // Three changed files.
    p.write_file(main, big, GIB, &[7u8; 4096])
        .expect("write big");
    let f17 = lookup(p, main, "/d3/f17");
    p.write_file(main, f17, 0, b"FILE").expect("overwrite");
    let f5 = lookup(p, main, "/d9/f5");
    p.write_file(main, f5, 8, b" and more").expect("append");
    p.commit().expect("commit");

    let r = admin.diff("s1", "main").expect("diff");
    assert_eq!(
        r.entries,
        vec![
            entry(
                "/big.db",
                Change::Modified,
                "file",
                &[(GIB, 4096)],
                &["content", "times"]
            ),
            entry(
                "/d3/f17",
                Change::Modified,
                "file",
                &[(0, 9)],
                &["content", "times"]
            ),
            // An append: the bytes it had are as they were.
            entry(
                "/d9/f5",
                Change::Modified,
                "file",
                &[(0, 17)],
                &["size", "times"]
            ),
        ]
    );
    assert!(r.nodes_visited > 0);
    // The reverse direction is the same set of paths.
    let back = admin.diff("main", "s1").expect("diff back");
    assert_eq!(back.entries.len(), 3);
    assert!(admin
        .diff("s1", "s1")
        .expect("diff same")
        .entries
        .is_empty());

    // Cold cache: a second handle on the committed pool file reads every node it
    // needs from the device.
    let opts = PoolOptions::default();
    let cold = Pool::open(&d.pool_path, &opts).expect("open");
    let report = cold
        .fsck(&FsckOptions { verify_data: false })
        .expect("fsck");
    assert!(report.is_clean(), "{report}");
    let total_nodes = report.nodes;
    let cold = Pool::open(&d.pool_path, &opts).expect("reopen");
    let before = cold.io_stats().nodes_read;
    let small = cold.diff("s1", "main").expect("cold diff");
    let small_reads = cold.io_stats().nodes_read - before;
    assert_eq!(small.entries.len(), 3);
    assert_eq!(
        cold.io_stats().data_blocks_read,
        0,
        "diff never reads file data"
    );
    assert!(
        total_nodes > 1000,
        "the tree is large ({total_nodes} nodes)"
    );
    assert!(
        small_reads < 100 && small_reads * 10 < total_nodes && small.nodes_visited < 60,
        "3 changed files: {small_reads} nodes read, {} visited by the walk, of {total_nodes}",
        small.nodes_visited
    );
    drop(cold);

    // 300 changed files cost more, in proportion.
    admin.snapshot_create("s2", "main").expect("snapshot 2");
    for dnum in 0..30 {
        for f in 0..10 {
            let ino = lookup(p, main, &format!("/d{dnum}/f{}", f * 5));
            p.write_file(main, ino, 0, b"X").expect("write");
        }
    }
    p.commit().expect("commit");
    let many = admin.diff("s2", "main").expect("diff many");
    assert_eq!(many.entries.len(), 300);
    for e in &many.entries {
        assert_eq!(e.change, Change::Modified, "{e:?}");
        assert!(
            e.ranges.len() == 1 && e.ranges[0].offset == 0,
            "inline files change as a whole: {e:?}"
        );
    }
    assert!(
        many.nodes_visited > small.nodes_visited,
        "{} vs {}",
        many.nodes_visited,
        small.nodes_visited
    );
    assert!(
        many.nodes_visited < 300 * 6,
        "300 changes visited {} nodes",
        many.nodes_visited
    );
}

#[test]
fn added_removed_replaced_and_renamed_paths() {
    let d = Daemon::start();
    let p = Arc::clone(&d.pool);
    let main = p.branch_id("main").expect("main");
    let o = Owner::default();
    let dir = p.mkdir(main, 1, b"dir", 0o755, o).expect("mkdir").ino;
    file(&p, main, dir, "keep");
    file(&p, main, dir, "gone");
    file(&p, main, 1, "old-name");
    let x = file(&p, main, 1, "replaced");
    p.write_file(main, x, 0, b"first").expect("write");
    let mut admin = d.admin_client();
    admin.snapshot_create("s", "main").expect("snapshot");
    p.unlink(main, dir, b"gone").expect("unlink");
    let sub = p.mkdir(main, dir, b"sub", 0o700, o).expect("mkdir").ino;
    file(&p, main, sub, "deep");
    p.rename(main, 1, b"old-name", 1, b"new-name", 0)
        .expect("rename");
    p.unlink(main, 1, b"replaced").expect("unlink");
    file(&p, main, 1, "replaced");
    p.symlink(main, 1, b"link", b"dir/keep", o)
        .expect("symlink");
    let r = admin.diff("s", "main").expect("diff");
    let got: Vec<(String, Change, String)> = r
        .entries
        .into_iter()
        .map(|e| (e.path, e.change, e.file_type))
        .collect();
    let want: Vec<(String, Change, String)> = [
        ("/dir/gone", Change::Removed, "file"),
        ("/dir/sub", Change::Added, "dir"),
        ("/dir/sub/deep", Change::Added, "file"),
        ("/link", Change::Added, "symlink"),
        ("/new-name", Change::Added, "file"),
        ("/old-name", Change::Removed, "file"),
        ("/replaced", Change::Modified, "file"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.to_string(), b, c.to_string()))
    .collect();
    assert_eq!(got, want);
}
