//! A truncate or hole punch that unmaps more than a step of a big file (more than
//! 1 GiB mapped, more than 4,096 extents to cut) runs in steps, the pool lock let
//! go between them (pool/cut_steps.rs): other requests run between two steps,
//! every state between two steps is the file truncated to a longer length (or
//! with a hole over the end of the range only), which a crash image (fsyncs
//! logged between two steps replayed onto it) and a snapshot taken there keep,
//! fsck-clean, and the end is the cut asked for, with every block back. As one
//! operation, it makes room on a full pool and at a quota. The pause hook holds
//! the cut between two steps, deterministically, while the test acts on the pool.

#[path = "support/cut_pause.rs"]
mod cut_pause;
#[path = "support/pool_fixture.rs"]
mod pool_fixture;
#[path = "support/stepping.rs"]
mod stepping;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cowfs::fs::{SetAttr, ROOT_INO};
use cowfs::pool::{BranchId, Pool};
use cowfs::store::device::MemDevice;
use cut_pause::{count_cuts, hold_cuts};
use pool_fixture::{file, opts};
use stepping::{branch_at_quota, clean, fill, settle};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const BS: u64 = 4096;
/// The big file: 3.5 GiB of fallocated extents, so three steps and a last one.
const LEN: u64 = 7 * GIB / 2;
/// Pauses between the steps of cutting all of it (14,336 extents of 64 blocks,
/// and the few its marks split: 4,096 per step).
const PAUSES: usize = 3;
/// A mark of `MARK` bytes every `MARK_EVERY`, from an offset inside a block.
const MARK_EVERY: u64 = 256 * MIB;
const MARK: usize = 5000;
/// Long enough for the cut to reach its pause unless something holds it.
const WAIT: Duration = Duration::from_secs(30);

fn marks() -> impl Iterator<Item = u64> {
    (0..LEN / MARK_EVERY).map(|k| k * MARK_EVERY + 12_345)
}

/// The bytes of the mark at `at`.
fn mark_bytes(at: u64) -> Vec<u8> {
    (0..MARK as u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) ^ (at >> 20)) as u8)
        .collect()
}

/// Fallocate `LEN` bytes of file `ino` and write its marks.
fn make_big(p: &Pool, b: BranchId, ino: u64) {
    p.fallocate(b, ino, 0, LEN, false).expect("fallocate");
    for at in marks() {
        p.write_file(b, ino, at, &mark_bytes(at)).expect("mark");
    }
}

/// File `ino` reads as the marked file cut to `size`: its size, the marks
/// below it whole (or cut at it), nothing past it.
fn assert_cut_to(p: &Pool, b: BranchId, ino: u64, size: u64) {
    assert_eq!(p.getattr(b, ino).expect("getattr").size, size);
    for at in marks() {
        let mut want = mark_bytes(at);
        want.truncate(size.saturating_sub(at).min(MARK as u64) as usize);
        let got = p.read_file(b, ino, at, MARK).expect("read");
        assert!(got == want, "mark at {at}, size {size}");
    }
    assert!(p.read_file(b, ino, size, 4096).unwrap().is_empty());
}

fn size(size: u64) -> SetAttr {
    SetAttr {
        size: Some(size),
        ..Default::default()
    }
}

/// While a 3.5 GiB file is truncated to 0, a getattr and a write on another
/// branch run between two of its steps (held after its first step, the cut let
/// go of the lock), and the file reads as truncated to a longer length; a
/// snapshot taken there (as one of a mounted branch may be) keeps that length
/// and prefix while the later steps cut the branch's copy. Then it is empty, an
/// extend reads zeros, and once the snapshot is deleted every block is back.
#[test]
fn other_branches_run_between_the_steps_of_a_big_truncate() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let other = p.branch_create("other", "main").unwrap();
    let f = file(&p, other, b"f");
    let big = file(&p, m, b"big");
    settle(&p);
    let base = p.used_blocks();
    make_big(&p, m, big);
    let (snap, mid) = std::thread::scope(|sc| {
        let (reached, go) = hold_cuts(&p);
        let cut = sc.spawn(|| p.setattr(m, big, &size(0)));
        let done = reached
            .recv_timeout(WAIT)
            .expect("the truncate paused between two steps");
        assert_eq!(done, 1);
        p.getattr(other, f).expect("getattr on another branch");
        p.write_file(other, f, 0, &[7u8; 8192])
            .expect("write on another branch");
        let now = p.getattr(m, big).unwrap().size;
        assert!(now > 0 && now < LEN, "an intermediate size: {now}");
        assert_cut_to(&p, m, big, now);
        let snap = p.snapshot_create("mid", "main").unwrap();
        drop(go);
        let a = cut.join().unwrap().expect("truncate");
        assert_eq!(a.size, 0);
        assert_eq!(reached.try_iter().count(), PAUSES - 1);
        (snap, now)
    });
    assert_cut_to(&p, m, big, 0);
    assert_cut_to(&p, snap, big, mid);
    clean(&p);
    p.branch_delete("mid").unwrap();
    p.finish_frees();
    p.setattr(m, big, &size(LEN)).expect("extend");
    for at in marks() {
        let got = p.read_file(m, big, at, MARK).unwrap();
        assert!(got.iter().all(|&x| x == 0), "old data at {at} after extend");
    }
    p.setattr(m, big, &size(0)).expect("back to 0");
    settle(&p);
    // What is left: the 8 KiB written on `other` and the nodes it changed.
    let left = p.used_blocks().saturating_sub(base);
    assert!(left < 32, "{left} blocks more than before the file");
    assert_eq!(p.read_file(other, f, 0, 8192).unwrap(), vec![7u8; 8192]);
    clean(&p);
}

/// A truncate to a size inside a block, in steps: the data below it stays, the
/// rest of its block reads zeros after an extend, and the blocks past it are
/// free.
#[test]
fn a_truncate_in_steps_keeps_what_is_below_the_new_size() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let big = file(&p, m, b"big");
    settle(&p);
    let base = p.used_blocks();
    make_big(&p, m, big);
    // A cut inside the mark at 512 MiB.
    let target = 2 * MARK_EVERY + 12_345 + 1_000;
    let pauses = count_cuts(&p);
    p.setattr(m, big, &size(target)).expect("truncate");
    assert!(pauses.load(Ordering::SeqCst) >= 2, "it ran in steps");
    assert_cut_to(&p, m, big, target);
    p.setattr(m, big, &size(target + MIB)).expect("extend");
    let tail = p.read_file(m, big, target, 8192).unwrap();
    assert!(tail.iter().all(|&x| x == 0), "old data past the cut");
    settle(&p);
    let used = p.used_blocks() - base;
    let kept = target.div_ceil(BS);
    assert!(
        used >= kept && used < kept + kept / 8,
        "{used} blocks in use for {kept} blocks of data"
    );
    clean(&p);
}

/// A crash between two steps of a truncate (its state committed, the image
/// taken there) leaves a pool that fsck finds clean, with the file truncated to
/// a longer length than asked: each image's shorter than the one before, its
/// data a prefix of the old.
#[test]
fn a_crash_between_truncate_steps_leaves_a_shorter_file() {
    let dev = Arc::new(MemDevice::new());
    let p = Pool::create_on(dev.clone(), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let big = file(&p, m, b"big");
    make_big(&p, m, big);
    p.commit().unwrap();
    let mut images = Vec::new();
    std::thread::scope(|sc| {
        let (reached, go) = hold_cuts(&p);
        let cut = sc.spawn(|| p.setattr(m, big, &size(0)));
        for want in 1..=PAUSES {
            let done = reached.recv_timeout(WAIT).expect("the next pause");
            assert_eq!(done, want);
            p.commit().unwrap();
            images.push(dev.snapshot());
            go.send(()).unwrap();
        }
        drop(go);
        cut.join().unwrap().expect("truncate");
        assert_eq!(reached.try_iter().count(), 0, "no more pauses");
    });
    let mut sizes = vec![LEN];
    for (n, img) in images.into_iter().enumerate() {
        let q = Pool::open_on(Arc::new(img), &opts(8 * GIB)).unwrap();
        clean(&q);
        let now = q.getattr(m, big).expect("the file").size;
        assert!(
            now > 0 && now < sizes[n],
            "image {n}: {now} after {}",
            sizes[n]
        );
        assert_cut_to(&q, m, big, now);
        sizes.push(now);
    }
}

/// Intent log records written between two steps of a truncate (a commit there,
/// then a write to another file and its fsync, which a record makes durable)
/// are replayed after a crash onto the file as that step left it: shorter in
/// each image, its data a prefix, the other file's write there, fsck clean.
/// A write past those lengths, made durable by a record before the cut (in the
/// log slot after the one the records between the steps take), does not come
/// back: an extend of the file reads zeros there.
#[test]
fn logged_fsyncs_between_truncate_steps_replay_onto_the_shorter_file() {
    let dev = Arc::new(MemDevice::new());
    let p = Pool::create_on(dev.clone(), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let big = file(&p, m, b"big");
    let other = file(&p, m, b"other");
    make_big(&p, m, big);
    p.commit().unwrap();
    // Past every length the steps leave (the first cuts 1 GiB), clear of marks.
    let late = 3 * GIB + MIB;
    let logged = |ino, off, byte| {
        p.write_file(m, ino, off, &[byte; 8192]).unwrap();
        let g = p.generation();
        p.sync_file(m, ino).unwrap();
        assert_eq!(p.generation(), g, "a record, not a commit");
    };
    logged(other, 0, 0xEE);
    logged(big, late, 0xAB);
    let mut images = vec![dev.snapshot()];
    std::thread::scope(|sc| {
        let (reached, go) = hold_cuts(&p);
        let cut = sc.spawn(|| p.setattr(m, big, &size(0)));
        for k in 1..=PAUSES {
            assert_eq!(reached.recv_timeout(WAIT).expect("the next pause"), k);
            p.commit().unwrap();
            logged(other, 0, k as u8);
            images.push(dev.snapshot());
            go.send(()).unwrap();
        }
        drop(go);
        cut.join().unwrap().expect("truncate");
    });
    let mut last = LEN + 1;
    for (k, img) in images.into_iter().enumerate() {
        let q = Pool::open_on(Arc::new(img), &opts(8 * GIB)).unwrap();
        clean(&q);
        let now = q.getattr(m, big).expect("the file").size;
        assert!(now < last, "image {k}: {now} after {last}");
        assert_cut_to(&q, m, big, now);
        let byte = if k == 0 { 0xEE } else { k as u8 };
        assert_eq!(q.read_file(m, other, 0, 8192).unwrap(), [byte; 8192]);
        q.setattr(m, big, &size(LEN)).expect("extend");
        let byte = if k == 0 { 0xAB } else { 0 };
        let at_late = q.read_file(m, big, late, 8192).unwrap();
        assert!(
            at_late == [byte; 8192],
            "image {k}: at {late} after an extend"
        );
        last = now;
    }
}

/// A hole punched over most of the 3.5 GiB file, in steps: between two, the
/// end of the range is a hole and its start still data; at the end the range
/// reads zeros, the partial blocks at its edges keep their outer bytes, the
/// size stays, and its whole blocks are free.
#[test]
fn a_big_punch_runs_in_steps() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let big = file(&p, m, b"big");
    settle(&p);
    let base = p.used_blocks();
    make_big(&p, m, big);
    // The marks at 256 MiB and at 3 GiB straddle the two edges of the range.
    let (from, to) = (MARK_EVERY + 12_345 + 100, 12 * MARK_EVERY + 12_345 + 4_000);
    settle(&p);
    let before = p.used_blocks();
    std::thread::scope(|sc| {
        let (reached, go) = hold_cuts(&p);
        let punch = sc.spawn(|| p.punch_hole(m, big, from, to - from));
        assert_eq!(reached.recv_timeout(WAIT).expect("a pause"), 1);
        let last = 11 * MARK_EVERY + 12_345;
        let got = p.read_file(m, big, last, MARK).unwrap();
        assert!(got.iter().all(|&x| x == 0), "the end of the range first");
        let first = 2 * MARK_EVERY + 12_345;
        assert_eq!(p.read_file(m, big, first, MARK).unwrap(), mark_bytes(first));
        drop(go);
        punch.join().unwrap().expect("punch");
        assert!(reached.try_iter().count() >= 1, "more than two steps");
    });
    assert_eq!(p.getattr(m, big).unwrap().size, LEN);
    for at in marks() {
        let got = p.read_file(m, big, at, MARK).unwrap();
        let want: Vec<u8> = mark_bytes(at)
            .into_iter()
            .enumerate()
            .map(|(i, x)| {
                let o = at + i as u64;
                if o >= from && o < to {
                    0
                } else {
                    x
                }
            })
            .collect();
        assert!(got == want, "mark at {at}");
    }
    settle(&p);
    let punched = to / BS - from.div_ceil(BS);
    let used = p.used_blocks();
    assert!(used <= before - punched, "{used} in use, {before} before");
    assert!(used >= base + LEN / BS - punched, "{used} in use");
    clean(&p);
}

/// A 2 GiB file of fallocated extents on a pool filled to the brim: truncating
/// it to 0 (in steps) succeeds, as `rm` does, and makes room for a write.
#[test]
fn truncate_then_write_on_a_full_pool() {
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
    let full = p.used_blocks();
    let pauses = count_cuts(&p);
    p.setattr(m, big, &size(0))
        .expect("truncate on a full pool");
    assert!(pauses.load(Ordering::SeqCst) >= 1, "it ran in steps");
    p.write_file(m, new, 0, &chunk)
        .expect("a write after the truncate");
    assert_eq!(p.read_file(m, new, 0, chunk.len()).unwrap(), chunk);
    settle(&p);
    // The 2 GiB are free; the 1 MiB written and tree nodes aside.
    let used = p.used_blocks();
    assert!(
        used + 2 * GIB / BS <= full + 1024,
        "{used} in use, {full} before"
    );
    clean(&p);
}

/// The same at a branch's quota.
#[test]
fn truncate_then_write_at_a_quota() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let (agent, new) = branch_at_quota(&p, "agent", 3 * GIB, 2 * GIB);
    let big = p.lookup(agent, ROOT_INO, b"big").unwrap().ino;
    let pauses = count_cuts(&p);
    p.setattr(agent, big, &size(0))
        .expect("truncate at the quota");
    assert!(pauses.load(Ordering::SeqCst) >= 1, "it ran in steps");
    p.write_file(agent, new, 0, &[5u8; 1 << 20])
        .expect("a write after the truncate at the quota");
    clean(&p);
}

/// A truncate that also changes the mode is one operation; one that would be
/// refused (a snapshot, a directory) is refused before any step.
#[test]
fn a_truncate_with_a_mode_or_refused_takes_no_step() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let big = file(&p, m, b"big");
    make_big(&p, m, big);
    let snap = p.snapshot_create("snap", "main").unwrap();
    let pauses = count_cuts(&p);
    let err = p.setattr(snap, big, &size(0)).unwrap_err();
    assert_eq!(err.errno(), libc::EROFS, "{err}");
    assert_cut_to(&p, snap, big, LEN);
    let err = p.setattr(m, ROOT_INO, &size(0)).unwrap_err();
    assert_eq!(err.errno(), libc::EISDIR, "{err}");
    let s = SetAttr {
        mode: Some(0o600),
        ..size(MIB)
    };
    let a = p.setattr(m, big, &s).expect("truncate and chmod");
    assert_eq!((a.size, a.mode & 0o7777), (MIB, 0o600));
    assert_eq!(pauses.load(Ordering::SeqCst), 0, "no step");
    assert_cut_to(&p, m, big, MIB);
    assert_cut_to(&p, snap, big, LEN);
    clean(&p);
}

/// Blocks fallocated past the end (KEEP_SIZE) are cut in steps too: between
/// two, the size and the data are as before, only blocks past the end gone.
#[test]
fn blocks_fallocated_past_the_end_are_cut_in_steps() {
    let p = Pool::create_on(Arc::new(MemDevice::new()), &opts(8 * GIB)).unwrap();
    let m = p.branch_id("main").unwrap();
    let big = file(&p, m, b"big");
    settle(&p);
    let base = p.used_blocks();
    let data = mark_bytes(1).repeat(200);
    p.write_file(m, big, 0, &data).unwrap();
    p.fallocate(m, big, 0, LEN, true)
        .expect("fallocate past the end");
    let len = data.len() as u64;
    std::thread::scope(|sc| {
        let (reached, go) = hold_cuts(&p);
        let cut = sc.spawn(|| p.setattr(m, big, &size(1000)));
        assert_eq!(reached.recv_timeout(WAIT).expect("a pause"), 1);
        assert_eq!(p.getattr(m, big).unwrap().size, len);
        assert!(p.read_file(m, big, 0, data.len()).unwrap() == data);
        drop(go);
        cut.join().unwrap().expect("truncate");
    });
    assert_eq!(p.getattr(m, big).unwrap().size, 1000);
    assert_eq!(p.read_file(m, big, 0, 2000).unwrap(), data[..1000]);
    settle(&p);
    let left = p.used_blocks().saturating_sub(base);
    assert!(left < 16, "{left} blocks more than before the file");
    clean(&p);
}
