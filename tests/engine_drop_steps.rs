//! A deleted branch's tree (or the old tree of a reset branch) that only it
//! held is freed in steps by the pool's freeing thread (pool/drops.rs), through
//! a DROP record in the catalog: the delete returns without freeing it, other
//! branches run between the steps, a pool closed or crashed mid-way is clean
//! and goes on at the next open, and an operation that finds no room finishes
//! the drops first. The freeing thread's pause hook holds it before a chosen
//! step while the test acts on the pool.

#[path = "support/free_pause.rs"]
mod free_pause;
#[path = "support/pool_fixture.rs"]
mod pool_fixture;
#[path = "support/stepping.rs"]
mod stepping;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cowfs::fs::ROOT_INO;
use cowfs::pool::{BranchId, FsckOptions, Pool};
use cowfs::store::device::MemDevice;
use free_pause::hold_steps;
use pool_fixture::{file, opts};
use stepping::{branch_at_quota, clean, fill, settle};

const GIB: u64 = 1 << 30;
/// Long enough for the freeing thread to reach its pause unless something
/// holds the pool lock throughout.
const WAIT: Duration = Duration::from_secs(60);

/// A branch `name` taken from `main` holding `size` bytes of fallocated
/// extents of its own, committed.
fn big_branch(p: &Pool, name: &str, size: u64) -> BranchId {
    let b = p.branch_create(name, "main").expect("branch");
    let f = file(p, b, b"big");
    p.fallocate(b, f, 0, size, false).expect("fallocate");
    p.commit().expect("commit");
    b
}

/// Deleting a branch with 3.5 GiB of its own returns after one step (at most
/// 2 GiB freed), the rest queued; held before its first step, the freeing
/// thread waits without the lock: another branch's getattr and write run, the
/// pool is clean, and the tree is still being dropped. Then it is freed to
/// the last block.
#[test]
fn deleting_a_big_branch_frees_it_in_steps() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let other = p.branch_create("other", "main").unwrap();
    let f = file(&p, other, b"f");
    settle(&p);
    let base = p.used_blocks();
    big_branch(&p, "big", 7 * GIB / 2);
    let (reached, go) = hold_steps(&p, 1);
    p.branch_delete("big").unwrap();
    assert!(p.branch_id("big").is_err(), "the branch is gone at once");
    let step = reached
        .recv_timeout(WAIT)
        .expect("the freeing thread reached its first step");
    assert_eq!(step, 1);
    p.getattr(other, f).expect("getattr on another branch");
    p.write_file(other, f, 0, &[7u8; 8192])
        .expect("write on another branch");
    assert_eq!(p.pending_frees(), 1, "the tree is still being dropped");
    assert!(p.used_blocks() > base + GIB / 4096, "not freed yet");
    clean(&p);
    drop(go);
    p.finish_frees();
    assert_eq!(p.pending_frees(), 0);
    settle(&p);
    let left = p.used_blocks().saturating_sub(base);
    assert!(left < 32, "{left} blocks more than before the branch");
    assert_eq!(p.read_file(other, f, 0, 8192).unwrap(), vec![7u8; 8192]);
    clean(&p);
}

/// A crash after any step (its state committed, the image taken there) and a
/// pool closed mid-drop leave pools fsck finds clean, with 0 leaked blocks,
/// whose next open goes on with the drop and frees everything.
#[test]
fn a_drop_cut_by_a_crash_or_a_close_goes_on_at_the_next_open() {
    let dev = Arc::new(MemDevice::new());
    let p = Pool::create_on(dev.clone(), &opts(16 * GIB)).unwrap();
    settle(&p);
    let base = p.used_blocks();
    big_branch(&p, "big", 12 * GIB);
    let (reached, go) = hold_steps(&p, 1);
    p.branch_delete("big").unwrap();
    let mut images = Vec::new();
    for want in 1..=3 {
        let step = reached.recv_timeout(WAIT).expect("the next step");
        assert_eq!(step, want);
        p.commit().unwrap();
        clean(&p);
        images.push(dev.snapshot());
        go.send(()).unwrap();
    }
    // Close while the thread waits before its fourth step (the fifth, with the
    // delete's own): the close stops it
    // after that step at the latest (it cannot join the thread before).
    assert_eq!(reached.recv_timeout(WAIT).expect("the fourth step"), 4);
    let closer = std::thread::spawn(move || drop(p));
    std::thread::sleep(Duration::from_millis(300));
    drop(go);
    closer.join().expect("close");
    images.push(dev.snapshot());
    for (n, img) in images.into_iter().enumerate() {
        let q = Pool::open_on(Arc::new(img), &opts(16 * GIB)).unwrap();
        // Steps of 2 GiB at most, five at most done: 2 GiB or more are left of 12.
        assert!(
            q.used_blocks() > base + GIB / 4096,
            "image {n}: the drop was not cut"
        );
        clean(&q);
        q.finish_frees();
        assert_eq!(q.pending_frees(), 0, "image {n}");
        settle(&q);
        // fsck finds no leak; the few blocks above the count from before are
        // space-map and catalog pages the 12 GiB touched.
        let used = q.used_blocks();
        assert!(
            used < base + 32,
            "image {n}: {used} blocks in use, {base} before"
        );
        clean(&q);
    }
}

/// The dropped branch shares most of its tree with a snapshot (and with a
/// branch taken from it that keeps writing): between any two steps that branch
/// copies shared nodes and writes blocks the drop freed (the pool is full but
/// for them). The snapshot and the branch read back intact and fsck is clean
/// after every step.
#[test]
fn a_drop_beside_a_snapshot_and_a_writing_branch() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let shared = file(&p, m, b"shared");
    p.fallocate(m, shared, 0, GIB, false).unwrap();
    let small = file(&p, m, b"small");
    let content: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    p.write_file(m, small, 0, &content).unwrap();
    p.snapshot_create("snap", "main").unwrap();
    let d = p.branch_create("d", "snap").unwrap();
    let own = file(&p, d, b"own");
    p.fallocate(d, own, 0, 5 * GIB, false).unwrap();
    p.write_file(d, small, 0, &[1u8; 4096]).unwrap();
    p.write_file(d, shared, 8 * GIB / 16, &[2u8; 4096]).unwrap();
    let other = p.branch_create("other", "snap").unwrap();
    let snap = p.branch_id("snap").unwrap();
    // Fill the pool: what `other` writes next must come from what the drop frees.
    let filler = file(&p, m, b"filler");
    let mut at = 0;
    let mut len = 64 << 20;
    while len >= 4096 {
        match p.fallocate(m, filler, at, len, false) {
            Ok(()) => at += len,
            Err(e) if e.errno() == libc::ENOSPC => len /= 2,
            Err(e) => panic!("fallocate: {e}"),
        }
    }
    settle(&p);
    let (reached, go) = hold_steps(&p, 1);
    p.branch_delete("d").unwrap();
    let deadline = Instant::now() + 10 * WAIT;
    let mut written = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "the drop did not end");
        match reached.recv_timeout(Duration::from_millis(200)) {
            Ok(_) => {
                clean(&p);
                settle(&p);
                // Copies the shared nodes on the way to both files.
                let n = written.len() as u8 + 3;
                p.write_file(other, small, 4096 * u64::from(n), &[n; 4096])
                    .expect("write to a shared file");
                let f = file(&p, other, format!("o{n}").as_bytes());
                p.write_file(other, f, 0, &vec![n; 1 << 20])
                    .expect("write of blocks the drop freed");
                written.push((n, f));
                go.send(()).unwrap();
            }
            Err(_) if p.pending_frees() == 0 => break,
            Err(_) => {}
        }
    }
    assert!(written.len() >= 2, "{} steps of the thread", written.len());
    clean(&p);
    assert_eq!(p.read_file(snap, small, 0, 65536).unwrap(), content);
    assert_eq!(p.getattr(snap, shared).unwrap().size, GIB);
    let mut expect = content.clone();
    for (n, f) in &written {
        let at = 4096 * usize::from(*n);
        expect[at..at + 4096].fill(*n);
        assert_eq!(
            p.read_file(other, *f, 0, 1 << 20).unwrap(),
            vec![*n; 1 << 20]
        );
    }
    assert_eq!(p.read_file(other, small, 0, 65536).unwrap(), expect);
    drop(go);
}

/// Resetting a branch with 3.5 GiB of its own to a snapshot drops its old tree
/// in steps too: the branch shows the snapshot at once, and the old tree is
/// freed by the thread.
#[test]
fn reset_drops_the_old_tree_in_steps() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let keep = file(&p, m, b"keep");
    p.write_file(m, keep, 0, b"before").unwrap();
    p.snapshot_create("base", "main").unwrap();
    settle(&p);
    let base = p.used_blocks();
    let big = file(&p, m, b"big");
    p.fallocate(m, big, 0, 7 * GIB / 2, false).unwrap();
    p.write_file(m, keep, 0, b"after!").unwrap();
    p.commit().unwrap();
    let (reached, go) = hold_steps(&p, 1);
    p.reset_to("main", "base").unwrap();
    assert_eq!(reached.recv_timeout(WAIT).expect("a step of the thread"), 1);
    assert_eq!(p.read_file(m, keep, 0, 100).unwrap(), b"before");
    assert!(p.lookup(m, ROOT_INO, b"big").is_err());
    assert_eq!(p.pending_frees(), 1, "the old tree is still being dropped");
    assert!(p.used_blocks() > base + GIB / 4096, "not freed yet");
    clean(&p);
    drop(go);
    p.finish_frees();
    settle(&p);
    let left = p.used_blocks().saturating_sub(base);
    assert!(left < 32, "{left} blocks more than before");
    clean(&p);
}

/// On a pool filled to the brim, delete a branch with 4 GiB of its own, then
/// fallocate 3 GiB on another branch: the delete's own step freed at most 2
/// GiB and the freeing thread is held before its first step, so the fallocate
/// finds no room and must finish the drop first.
#[test]
fn delete_then_write_on_a_full_pool() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(5 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let rest = file(&p, m, b"rest");
    let new = file(&p, m, b"new");
    big_branch(&p, "big", 4 * GIB);
    fill(&p, m, rest);
    let err = p.write_file(m, new, 0, &[5u8; 1 << 20]).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "the pool is full: {err}");
    let (_reached, _go) = hold_steps(&p, 1);
    p.branch_delete("big").expect("delete on a full pool");
    p.fallocate(m, new, 0, 3 * GIB, false)
        .expect("3 GiB after a branch delete on a full pool");
    assert_eq!(p.getattr(m, new).unwrap().size, 3 * GIB);
    assert_eq!(p.pending_frees(), 0, "the fallocate finished the drop");
    clean(&p);
}

/// A branch at its quota while another branch's deleted tree waits to be
/// dropped (the freeing thread held before its first step) and a big file of
/// its own, just removed, waits to be freed as an orphan: a write that meets
/// the quota frees the orphan, whose blocks count to the quota, and leaves the
/// drop alone: a deleted branch's blocks count to no branch, so freeing them
/// would give nothing back and hold the pool lock for the whole drop. A write
/// that does not fit even then fails with EDQUOT, the drop still queued.
#[test]
fn a_write_at_a_quota_leaves_dropped_trees_to_the_thread() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(16 * GIB)).unwrap();
    let (agent, new) = branch_at_quota(&p, "agent", 3 * GIB, 2 * GIB);
    let chunk = vec![5u8; 1 << 20];
    big_branch(&p, "gone", 4 * GIB);
    let (reached, go) = hold_steps(&p, 1);
    p.branch_delete("gone").unwrap();
    reached
        .recv_timeout(WAIT)
        .expect("the freeing thread reached its first step");
    assert_eq!(p.pending_frees(), 1, "the deleted tree is being dropped");
    p.unlink(agent, ROOT_INO, b"big").unwrap();
    p.write_file(agent, new, 0, &chunk)
        .expect("a write after rm at the quota");
    assert_eq!(p.read_file(agent, new, 0, chunk.len()).unwrap(), chunk);
    assert_eq!(
        p.pending_frees(),
        1,
        "the orphan is freed, the dropped tree left to the freeing thread"
    );
    let err = p.fallocate(agent, new, 0, 3 * GIB, false).unwrap_err();
    assert_eq!(err.errno(), libc::EDQUOT, "past the quota: {err}");
    assert_eq!(p.pending_frees(), 1, "still left to the freeing thread");
    clean(&p);
    drop(go);
    p.finish_frees();
    assert_eq!(p.pending_frees(), 0);
    clean(&p);
}

/// Branch "agent" of main with a 4 GiB quota and a file "f" of 2 GiB
/// (fallocated) in it.
fn agent_with_quota(p: &Pool) -> (BranchId, u64) {
    let agent = p.branch_create("agent", "main").unwrap();
    let f = file(p, agent, b"f");
    p.fallocate(agent, f, 0, 2 * GIB, false).unwrap();
    let limits = cowfs::pool::quota::QuotaLimits {
        max_bytes: Some(4 * GIB),
        reserve_bytes: 0,
    };
    p.quota_set("agent", limits).expect("quota");
    (agent, f)
}

/// A snapshot of a branch with a quota is deleted while the branch shares
/// most of it: what becomes the branch's alone is in its figure after the
/// control plane's recount (`quota_recount_all`), although the snapshot's tree
/// is dropped in steps and the thread is held before its first.
#[test]
fn a_recount_after_a_delete_sees_what_the_drop_leaves_alone() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let (agent, f) = agent_with_quota(&p);
    p.snapshot_create("snap", "agent").unwrap();
    // The branch's root is copied: the snapshot's is its alone again.
    p.write_file(agent, f, 0, &[1u8; 4096]).unwrap();
    p.commit().unwrap();
    assert!(
        p.quota_list()[0].used_bytes < GIB,
        "shared with the snapshot"
    );
    let (_reached, _go) = hold_steps(&p, 1);
    p.branch_delete("snap").unwrap();
    p.quota_recount_all().expect("recount");
    let used = p.quota_list()[0].used_bytes;
    assert!(
        used >= 2 * GIB,
        "{used} bytes counted after the snapshot went"
    );
    clean(&p);
}

/// A reset drops the branch's old tree as a delete does, and what a branch
/// with a quota shared with that tree becomes its alone: the reset counts it
/// (as the control plane's recount after a delete does), although the old
/// tree is dropped in steps and the thread is held before its first.
#[test]
fn a_reset_counts_what_its_old_tree_leaves_to_a_sharer() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    p.snapshot_create("empty", "main").unwrap();
    let (agent, f) = agent_with_quota(&p);
    p.branch_create("other", "agent").unwrap();
    // The agent's root is copied: the other branch's is its alone again.
    p.write_file(agent, f, 0, &[1u8; 4096]).unwrap();
    p.commit().unwrap();
    assert!(
        p.quota_list()[0].used_bytes < GIB,
        "shared with the other branch"
    );
    let (_reached, _go) = hold_steps(&p, 1);
    p.reset_to("other", "empty").unwrap();
    let used = p.quota_list()[0].used_bytes;
    assert!(
        used >= 2 * GIB,
        "{used} bytes counted after the other branch's tree went"
    );
    clean(&p);
}

/// The rightmost leaf of branch `name`'s tree in the newest commit on `dev`.
fn last_leaf(dev: &MemDevice, name: &str) -> u64 {
    use cowfs::btree::Node;
    use cowfs::pool::catalog::BranchRecord;
    use cowfs::store::block::{verify, BlockKind};
    use cowfs::store::device::BlockDevice;
    use cowfs::store::superblock::Superblock;
    let read = |a: u64| {
        let mut buf = vec![0u8; cowfs::store::BLOCK_SIZE];
        dev.read_at(a, &mut buf).expect("read");
        buf
    };
    let sb = (0..2)
        .filter_map(|s| Superblock::decode(&read(s)).ok())
        .max_by_key(|s| s.generation)
        .expect("a valid slot");
    let node = |a: u64| {
        let buf = read(a);
        let h = verify(&buf, a, sb.pool_id, BlockKind::TreeNode).expect("intact node");
        Node::decode(&buf, h.level, h.count).expect("decodes")
    };
    // The catalog of a few branches is one leaf.
    let Node::Leaf(items) = node(sb.catalog_root) else {
        panic!("catalog of one leaf");
    };
    let mut at = items
        .iter()
        .filter_map(|(_, v)| BranchRecord::decode(v))
        .find(|r| r.name == name)
        .expect("branch")
        .root;
    while let Node::Internal(_, kids) = node(at) {
        at = kids.last().expect("children").1;
    }
    at
}

/// The errors fsck finds in a copy of `dev` as it is now (sorted), and how
/// many blocks it finds leaked.
fn findings(dev: &MemDevice) -> (Vec<String>, u64) {
    let q = Pool::open_on(Arc::new(dev.snapshot()), &opts(4 * GIB)).expect("open");
    let r = q.fsck(&FsckOptions::default()).expect("fsck");
    let mut errors = r.errors;
    errors.sort();
    (errors, r.leaked_blocks)
}

/// A delete or reset that meets a node it cannot read while dropping the old
/// tree fails and changes nothing: the branch is still there (also after a
/// reopen), and fsck finds only the damaged node, no count changed by the
/// part of the drop done before it.
#[test]
fn a_drop_that_meets_a_damaged_node_changes_nothing() {
    let dev = Arc::new(MemDevice::new());
    let p = Pool::create_on(dev.clone(), &opts(4 * GIB)).unwrap();
    big_branch(&p, "big", GIB);
    drop(p);
    // The walk goes left to right: the last leaf is met after everything else.
    dev.flip_byte(last_leaf(&dev, "big"), 200);
    let before = findings(&dev);
    assert!(!before.0.is_empty(), "fsck sees the damaged leaf");
    let p = Pool::open_on(dev.clone(), &opts(4 * GIB)).unwrap();
    p.branch_delete("big")
        .expect_err("delete through a damaged leaf");
    assert!(p.branch_id("big").is_ok(), "the branch stays");
    p.reset_to("big", "main")
        .expect_err("reset through a damaged leaf");
    p.commit().unwrap();
    assert_eq!(p.pending_frees(), 0);
    drop(p);
    // Before the fix: 998 more errors, "block N: referenced 1 times but marked
    // free", blocks of the branch the failed delete had freed.
    let after = findings(&dev);
    assert_eq!(after.1, before.1, "leaked blocks");
    assert!(
        after.0 == before.0,
        "{} errors after, {} before; first new: {:?}",
        after.0.len(),
        before.0.len(),
        after.0.iter().find(|e| !before.0.contains(e))
    );
    let p = Pool::open_on(dev.clone(), &opts(4 * GIB)).unwrap();
    let b = p.branch_id("big").expect("the branch is still there");
    assert_eq!(
        p.getattr(b, p.lookup(b, ROOT_INO, b"big").unwrap().ino)
            .unwrap()
            .size,
        GIB
    );
}
