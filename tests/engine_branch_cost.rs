//! Branch cost (issue 2, check 5): creating a branch or a snapshot, and deleting an
//! unmodified one, writes a small, fixed number of blocks whatever the size of the
//! parent (counted on the device, after a commit, not timed). Plus a regression guard
//! on tree nodes read per 4 KiB read.

use std::sync::Arc;

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::MemDevice;

/// Blocks one branch operation may write: catalog leaf, space-map leaf and index
/// pages, superblock (4-5 measured), with room for a catalog split.
const MAX_BLOCKS: u64 = 8;

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(1 << 30),
        cache_bytes: 8 << 20,
        ..Default::default()
    }
}

/// A pool whose `main` holds `files` files of `file_bytes` each (in directories of
/// 100), committed.
fn pool_with(files: u64, file_bytes: usize) -> (MemDevice, Pool) {
    pool_committing(files, file_bytes, u64::MAX)
}

/// `pool_with`, committing after every `every` files, as a busy pool does.
fn pool_committing(files: u64, file_bytes: usize, every: u64) -> (MemDevice, Pool) {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).expect("create");
    let b = pool.branch_id("main").expect("main");
    let o = Owner::default();
    let data: Vec<u8> = (0..file_bytes).map(|i| (i % 253) as u8).collect();
    let mut dir = ROOT_INO;
    for i in 0..files {
        if i % 100 == 0 {
            dir = pool
                .mkdir(b, ROOT_INO, format!("d{i}").as_bytes(), 0o755, o)
                .expect("mkdir")
                .ino;
        }
        let f = pool
            .mknod(
                b,
                dir,
                format!("f{i}").as_bytes(),
                libc::S_IFREG | 0o644,
                0,
                o,
            )
            .expect("mknod");
        pool.write_file(b, f.ino, 0, &data).expect("write");
        if (i + 1) % every == 0 {
            pool.commit().expect("commit");
        }
    }
    pool.commit().expect("commit");
    (dev, pool)
}

/// Blocks written by `f` (the pool is committed before, and `f` commits itself).
fn written(dev: &MemDevice, pool: &Pool, f: impl FnOnce()) -> u64 {
    pool.commit().expect("commit");
    let before = dev.blocks_written();
    f();
    pool.commit().expect("commit");
    dev.blocks_written() - before
}

/// (branch create, snapshot create, delete, branch of a branch) block counts.
fn costs(dev: &MemDevice, pool: &Pool) -> [u64; 4] {
    let branch = written(dev, pool, || {
        pool.branch_create("b1", "main").expect("branch");
    });
    let snap = written(dev, pool, || {
        pool.snapshot_create("s1", "main").expect("snapshot");
    });
    let chained = written(dev, pool, || {
        pool.branch_create("b2", "b1").expect("branch of a branch");
    });
    let delete = written(dev, pool, || {
        pool.branch_delete("b1").expect("delete");
    });
    [branch, snap, delete, chained]
}

#[test]
fn branch_and_snapshot_cost_does_not_grow_with_the_parent() {
    let (sdev, small) = pool_with(1, 100);
    let (ldev, large) = pool_with(3000, 16 * 1024);
    assert!(
        large.used_blocks() > 12_000,
        "the large parent is large: {} blocks",
        large.used_blocks()
    );
    let s = costs(&sdev, &small);
    let l = costs(&ldev, &large);
    println!(
        "blocks written [branch, snapshot, delete, branch of a branch]: \
         small parent ({} blocks) {s:?}, large parent ({} blocks) {l:?}",
        small.used_blocks(),
        large.used_blocks()
    );
    for (what, i) in [
        ("branch", 0),
        ("snapshot", 1),
        ("delete", 2),
        ("chained branch", 3),
    ] {
        assert!(
            s[i] <= MAX_BLOCKS && l[i] <= MAX_BLOCKS,
            "{what}: {} / {} blocks",
            s[i],
            l[i]
        );
        assert!(
            l[i] <= s[i] + 2,
            "{what} costs more with a large parent: {} vs {}",
            l[i],
            s[i]
        );
    }
    // Deep chains cost the same per link.
    let mut prev = "main".to_string();
    for i in 0..30 {
        let name = format!("chain{i}");
        let n = written(&ldev, &large, || {
            large.branch_create(&name, &prev).expect("chain");
        });
        assert!(n <= MAX_BLOCKS, "link {i} of a chain wrote {n} blocks");
        prev = name;
    }
}

#[test]
fn nodes_read_per_4k_read_stay_bounded() {
    let (dev, pool) = pool_with(2000, 64 * 1024);
    let b = pool.branch_id("main").expect("main");
    let f = pool.lookup(b, ROOT_INO, b"d1000").expect("dir");
    let f = pool.lookup(b, f.ino, b"f1042").expect("file");
    drop(pool);
    // Cold cache: a fresh open reads each tree level of the path once.
    let pool = Pool::open_on(Arc::new(dev), &opts()).expect("open");
    let b = pool.branch_id("main").expect("main");
    let before = pool.io_stats();
    pool.read_file(b, f.ino, 20_000, 4096).expect("read");
    let cold = pool.io_stats().nodes_read - before.nodes_read;
    // Warm: the same file again, anywhere.
    let before = pool.io_stats();
    for off in (0..60_000).step_by(4096) {
        pool.read_file(b, f.ino, off, 4096).expect("read");
    }
    let warm = pool.io_stats().nodes_read - before.nodes_read;
    // Another file in another directory, path lookup included: only the leaves not
    // seen yet.
    let before = pool.io_stats();
    let g = pool.lookup(b, ROOT_INO, b"d300").expect("dir");
    let g = pool.lookup(b, g.ino, b"f377").expect("file");
    pool.read_file(b, g.ino, 0, 4096).expect("read");
    let other = pool.io_stats().nodes_read - before.nodes_read;
    println!("nodes read per 4 KiB read: cold {cold}, warm {warm} (15 reads), other file {other}");
    // The root is read at open; a read needs the inode leaf and the extent leaf.
    assert!(cold <= 4, "cold 4 KiB read read {cold} nodes");
    assert_eq!(warm, 0, "warm reads of one file read {warm} nodes");
    assert!(
        other <= 8,
        "lookups and a read of a second file read {other} nodes"
    );
}

/// The parent's first change after a branch copies the nodes on its path, which
/// adds a reference to each of their children (the branch still uses them). The
/// commit then rewrites every space-map page in which a count changed, so nodes
/// must lie together (spacemap/meta_area.rs), not among the data they describe:
/// mixed with the data, this commit wrote 27 blocks (measured); kept together, 10.
#[test]
fn the_first_write_after_a_branch_rewrites_few_space_map_pages() {
    let (dev, pool) = pool_committing(2000, 64 * 1024, 20);
    let b = pool.branch_id("main").expect("main");
    let d = pool.lookup(b, ROOT_INO, b"d1000").expect("dir");
    let f = pool.lookup(b, d.ino, b"f1042").expect("file");
    pool.branch_create("b1", "main").expect("branch");
    let n = written(&dev, &pool, || {
        pool.write_file(b, f.ino, 0, &[7u8; 4096]).expect("write");
    });
    // A few copied nodes and the data block; their space-map pages and index;
    // the superblock.
    println!("first write to the parent after a branch: {n} blocks written");
    assert!(n <= 16, "{n} blocks written");
}
