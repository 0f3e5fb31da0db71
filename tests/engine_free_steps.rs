//! A big orphan (an unlinked file with more than 1 GiB mapped) is freed in
//! steps by the pool's freeing thread, the pool lock let go between them
//! (pool/free_steps.rs): other requests run while it is freed, a crash at any
//! step leaves an orphan the next mount frees, and an operation that finds no
//! room (ENOSPC, EDQUOT) while frees are pending finishes them first.
//! The freeing thread's pause hook holds it before a chosen step,
//! deterministically, while the test acts on the pool.

#[path = "support/free_pause.rs"]
mod free_pause;
#[path = "support/pool_fixture.rs"]
mod pool_fixture;
#[path = "support/stepping.rs"]
mod stepping;

use std::sync::Arc;
use std::time::Duration;

use cowfs::fs::ROOT_INO;
use cowfs::pool::Pool;
use cowfs::store::device::MemDevice;
use free_pause::hold_steps;
use pool_fixture::{file, opts};
use stepping::{branch_at_quota, clean, fill, settle};

const GIB: u64 = 1 << 30;
/// Long enough for the freeing thread to reach its pause unless something
/// holds the pool lock throughout.
const WAIT: Duration = Duration::from_secs(30);

/// While a 3.5 GiB file is freed, a getattr and a write on another branch run
/// between two of its steps: held before its second step, the freeing thread
/// has done one and let go of the lock, and the file is not freed yet.
#[test]
fn other_branches_run_between_the_steps_of_a_big_unlink() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let other = p.branch_create("other", "main").unwrap();
    let f = file(&p, other, b"f");
    let big = file(&p, m, b"big");
    settle(&p);
    let base = p.used_blocks();
    p.fallocate(m, big, 0, 7 * GIB / 2, false).unwrap();
    let (reached, go) = hold_steps(&p, 2);
    p.unlink(m, ROOT_INO, b"big").unwrap();
    let step = reached
        .recv_timeout(WAIT)
        .expect("the freeing thread reached its second step");
    assert_eq!(step, 2);
    p.getattr(other, f).expect("getattr on another branch");
    p.write_file(other, f, 0, &[7u8; 8192])
        .expect("write on another branch");
    assert_eq!(p.pending_frees(), 1, "the file is still being freed");
    assert!(p.used_blocks() > base + 2 * GIB / 4096, "not freed yet");
    drop(go);
    p.finish_frees();
    assert_eq!(p.pending_frees(), 0);
    settle(&p);
    // What is left: the 8 KiB written on `other` and the nodes it changed.
    let left = p.used_blocks().saturating_sub(base);
    assert!(left < 32, "{left} blocks more than before the file");
    assert_eq!(p.read_file(other, f, 0, 8192).unwrap(), vec![7u8; 8192]);
    clean(&p);
}

/// A crash before each step of a stepped free (its state committed, the image
/// taken there) leaves a pool that fsck finds clean, with the file an orphan
/// no larger than before; the next mount's cleanup frees it, back to the free
/// count from before the file was written (but for a few tree nodes). So does
/// closing the pool mid-way.
#[test]
fn a_crash_between_steps_leaves_an_orphan_the_next_mount_frees() {
    let dev = Arc::new(MemDevice::new());
    let p = Pool::create_on(dev.clone(), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let big = file(&p, m, b"big");
    settle(&p);
    let base = p.used_blocks();
    let len = 7 * GIB / 2;
    p.fallocate(m, big, 0, len, false).unwrap();
    p.commit().unwrap();
    let (reached, go) = hold_steps(&p, 1);
    p.unlink(m, ROOT_INO, b"big").unwrap();
    let mut images = Vec::new();
    for want in 1..=3 {
        let step = reached.recv_timeout(WAIT).expect("the next step");
        assert_eq!(step, want);
        p.commit().unwrap();
        images.push(dev.snapshot());
        go.send(()).unwrap();
    }
    // The pool closed while the fourth step waits: the rest stays an orphan.
    drop(go);
    drop(p);
    images.push(dev.snapshot());
    let mut sizes = Vec::new();
    for (n, img) in images.into_iter().enumerate() {
        let q = Pool::open_on(Arc::new(img), &opts(8 * GIB)).unwrap();
        clean(&q);
        let a = q.getattr(m, big).expect("the orphan is there");
        assert_eq!(a.nlink, 0, "image {n}");
        assert!(a.size <= len, "image {n}: size {}", a.size);
        sizes.push(a.size);
        assert_eq!(q.cleanup_orphans(m).unwrap(), 1, "image {n}");
        q.finish_frees();
        settle(&q);
        // fsck's reference count check finds no leak; the few blocks above the
        // count from before are tree nodes the deletes left less full.
        let used = q.used_blocks();
        assert!(
            used <= base + 8,
            "image {n}: {used} blocks in use, {base} before"
        );
        clean(&q);
    }
    // The steps from the end: each image's orphan is shorter than the one before.
    assert!(sizes.windows(2).take(2).all(|w| w[1] < w[0]), "{sizes:?}");
}

/// A 2 GiB file (its blocks this tree's alone) with extents on a pool filled to
/// the brim: `rm` it, then write 1 MiB. The freeing thread is held before its
/// first step, so the write finds the pool full and must free the file first.
#[test]
fn rm_then_write_on_a_full_pool() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(5 * GIB / 2)).unwrap();
    let m = p.branch_id("main").unwrap();
    let big = file(&p, m, b"big");
    let rest = file(&p, m, b"rest");
    let new = file(&p, m, b"new");
    let err = p.fallocate(m, big, 0, 3 * GIB, false).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "{err}");
    fill(&p, m, rest);
    let chunk = vec![5u8; 1 << 20];
    let err = p.write_file(m, new, 0, &chunk).unwrap_err();
    assert_eq!(err.errno(), libc::ENOSPC, "the pool is full: {err}");
    let (_reached, _go) = hold_steps(&p, 1);
    p.unlink(m, ROOT_INO, b"big").unwrap();
    p.write_file(m, new, 0, &chunk)
        .expect("a write after rm on a full pool");
    assert_eq!(p.read_file(m, new, 0, chunk.len()).unwrap(), chunk);
    assert_eq!(p.pending_frees(), 0, "the write freed the file");
    clean(&p);
}

/// The same at a branch's quota: the orphan's blocks count to the quota until
/// freed, so the write (EDQUOT otherwise) frees it first.
#[test]
fn rm_then_write_at_a_quota() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let (agent, new) = branch_at_quota(&p, "agent", 3 * GIB, 2 * GIB);
    let chunk = vec![5u8; 1 << 20];
    let (_reached, _go) = hold_steps(&p, 1);
    p.unlink(agent, ROOT_INO, b"big").unwrap();
    p.write_file(agent, new, 0, &chunk)
        .expect("a write after rm at the quota");
    assert_eq!(p.pending_frees(), 0, "the write freed the file");
    clean(&p);
}
