//! `diff` takes the pool lock in bounded steps (pool/diff_steps.rs): other
//! requests run between them, and whatever they do to the two sides (writes,
//! commits, deleting a side, ZERO_RANGE) changes nothing the diff reports,
//! since it compares both sides as of its start. The diff's pause hook holds
//! it mid-way, deterministically, while another thread acts on the pool.

#[path = "support/dump.rs"]
mod dump;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::diff::DiffResult;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;
use dump::{dump_branch, first_difference, Tree};

/// 4,096 blocks that keep their checksums but not their addresses: each is
/// read on both sides to compare, a few dozen steps of the diff.
const BIG: usize = 16 << 20;
/// Long enough for the other thread to take the lock unless the diff holds it.
const WAIT: Duration = Duration::from_secs(30);

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(96 << 20),
        root_uid: 0,
        root_gid: 0,
        ..Default::default()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i / 4096) as u8 ^ (i as u8) ^ seed)
        .collect()
}

/// main with a big file rewritten with one byte changed and a few small
/// changes, against snapshot `s` taken before them. Between the two versions
/// of the big file, 40 MiB were written and freed: the allocator, which goes
/// on from where it stopped, finds free room there once it wraps (at 96 MiB).
fn setup(dev: Arc<MemDevice>) -> Pool {
    let p = Pool::create_on(dev, &opts()).unwrap();
    let m = p.branch_id("main").unwrap();
    let o = Owner::default();
    let reg = libc::S_IFREG | 0o644;
    let big = p.mknod(m, ROOT_INO, b"big", reg, 0, o).unwrap().ino;
    let mut data = pattern(BIG, 0);
    p.write_file(m, big, 0, &data).unwrap();
    let d = p.mkdir(m, ROOT_INO, b"d", 0o755, o).unwrap().ino;
    for i in 0..20u8 {
        let f = p
            .mknod(m, d, format!("f{i}").as_bytes(), reg, 0, o)
            .unwrap();
        p.write_file(m, f.ino, 0, &[i; 5000]).unwrap();
    }
    p.mknod(m, ROOT_INO, b"other", reg, 0, o).unwrap();
    let tmp = p.mknod(m, ROOT_INO, b"tmp", reg, 0, o).unwrap().ino;
    p.write_file(m, tmp, 0, &pattern(40 << 20, 3)).unwrap();
    p.unlink(m, ROOT_INO, b"tmp").unwrap();
    p.snapshot_create("s", "main").unwrap();
    data[5_000_000] ^= 1;
    p.write_file(m, big, 0, &data).unwrap();
    let f3 = p.lookup(m, d, b"f3").unwrap().ino;
    p.write_file(m, f3, 100, b"changed").unwrap();
    p.unlink(m, d, b"f4").unwrap();
    p.mknod(m, d, b"new", reg, 0, o).unwrap();
    // Past its quarantine, the freed room is allocatable.
    for _ in 0..3 {
        p.commit().unwrap();
    }
    p
}

/// Run `diff s main`, calling `act(pause number)` on another thread at each
/// pause and waiting for it there (up to `WAIT`); the result, and how many
/// pauses the other thread's work completed in.
fn diff_with(p: &Pool, act: impl Fn(usize) + Sync) -> (DiffResult, usize, usize) {
    let (go_tx, go_rx) = mpsc::channel::<usize>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            for n in go_rx {
                act(n);
                let _ = done_tx.send(());
            }
        });
        let (mut pauses, mut served) = (0, 0);
        let go = go_tx;
        let r = p.diff_pausing("s", "main", &mut || {
            pauses += 1;
            // After one wait in vain the other thread is stuck: no more.
            if served + 1 == pauses {
                go.send(served).unwrap();
                if done_rx.recv_timeout(WAIT).is_ok() {
                    served += 1;
                }
            }
        });
        drop(go);
        (r.unwrap(), pauses, served)
    })
}

#[test]
fn other_requests_run_while_a_diff_is_in_progress() {
    let p = setup(Arc::new(MemDevice::new()));
    let m = p.branch_id("main").unwrap();
    let want = p.diff("s", "main").unwrap();
    let big = p.lookup(m, ROOT_INO, b"big").unwrap().ino;
    let other = p.lookup(m, ROOT_INO, b"other").unwrap().ino;
    let (got, pauses, served) = diff_with(&p, |n| {
        if n == 0 {
            assert_eq!(p.getattr(m, big).unwrap().size, BIG as u64);
            p.write_file(m, other, 0, b"written mid-diff").unwrap();
            p.sync_file(m, other).unwrap();
        }
    });
    assert!(pauses >= 16, "{pauses} pauses: the diff ran in few steps");
    assert_eq!(
        served, pauses,
        "a getattr or write+fsync waited for the diff"
    );
    assert_eq!(got, want);
    // The write happened, after the diff's start.
    let after = p.diff("s", "main").unwrap();
    assert!(after.entries.iter().any(|c| c.path == b"/other"));
    assert!(p.fsck(&FsckOptions::default()).unwrap().is_clean());
}

#[test]
fn a_diff_sees_both_sides_as_of_its_start_whatever_happens_meanwhile() {
    let dev = Arc::new(MemDevice::new());
    let p = setup(dev.clone());
    let m = p.branch_id("main").unwrap();
    let want = p.diff("s", "main").unwrap();
    let big = p.lookup(m, ROOT_INO, b"big").unwrap().ino;
    let d = p.lookup(m, ROOT_INO, b"d").unwrap().ino;
    let o = Owner::default();
    let reg = libc::S_IFREG | 0o644;
    // A power cut while the diff pins its trees: the image and main as it was.
    let crash: std::sync::Mutex<Option<(MemDevice, Tree)>> = Default::default();
    let (got, pauses, served) = diff_with(&p, |n| {
        match n {
            // The blocks of main's big file the diff reads (only main has
            // them) become unwritten in place...
            0 => p.zero_range(m, big, 0, BIG as u64, true).unwrap(),
            // ...and are freed.
            1 => p.write_file(m, big, 0, &pattern(BIG, 7)).map(drop).unwrap(),
            // A side of the diff goes away: everything only it held is freed.
            2 => p.branch_delete("s").unwrap(),
            // 24 MiB of new data: the allocator wraps past the pool's end and
            // takes the first free blocks, those the diff reads unless held.
            3..=8 => {
                let name = format!("new{n}");
                let f = p.mknod(m, ROOT_INO, name.as_bytes(), reg, 0, o).unwrap();
                p.write_file(m, f.ino, 0, &pattern(4 << 20, n as u8))
                    .unwrap();
            }
            9 => {
                for i in 0..20 {
                    let _ = p.unlink(m, d, format!("f{i}").as_bytes());
                }
            }
            10 => {
                p.commit().unwrap();
                *crash.lock().unwrap() = Some((dev.snapshot(), dump_branch(&p, m).unwrap()));
            }
            _ => return,
        }
        p.commit().unwrap();
    });
    assert!(pauses > 10, "{pauses} pauses");
    assert_eq!(served, pauses, "the other thread waited for the diff");
    assert_eq!(got, want);
    let report = p.fsck(&FsckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    // Held blocks are in memory only: the image opens clean, with main as it
    // was when it was taken.
    let (image, main) = crash.into_inner().unwrap().unwrap();
    let q = Pool::open_on(Arc::new(image), &opts()).unwrap();
    let report = q.fsck(&FsckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
    let reopened = dump_branch(&q, q.branch_id("main").unwrap()).unwrap();
    assert!(reopened == main, "{}", first_difference(&main, &reopened));
}

/// A pool that fills while a diff pins its trees: writes fail with ENOSPC
/// (held blocks count as used), commits and deletes still work, nothing
/// hangs, and the room comes back when the diff ends.
#[test]
fn a_pool_filling_during_a_diff_reports_enospc_and_recovers_after_it() {
    let p = setup(Arc::new(MemDevice::new()));
    let m = p.branch_id("main").unwrap();
    let want = p.diff("s", "main").unwrap();
    let reg = libc::S_IFREG | 0o644;
    let other = p.lookup(m, ROOT_INO, b"other").unwrap().ino;
    let chunk = pattern(1 << 20, 5);
    let fill = |name: &[u8]| -> u64 {
        let f = p
            .mknod(m, ROOT_INO, name, reg, 0, Owner::default())
            .unwrap();
        let mut off = 0;
        while let Ok(n) = p.write_file(m, f.ino, off, &chunk) {
            off += n as u64;
            assert!(off < 96 << 20, "a 96 MiB pool never filled");
        }
        let err = p.write_file(m, f.ino, off, &chunk).unwrap_err();
        assert_eq!(err.errno(), libc::ENOSPC);
        off
    };
    let filled = std::sync::Mutex::new(0);
    let (got, pauses, served) = diff_with(&p, |n| {
        if n == 0 {
            *filled.lock().unwrap() = fill(b"fill");
            p.commit().unwrap();
            // Freed while pinned: held, not reusable yet.
            p.unlink(m, ROOT_INO, b"fill").unwrap();
            p.commit().unwrap();
            let r = p.write_file(m, other, 0, &pattern(8 << 20, 6));
            assert_eq!(r.unwrap_err().errno(), libc::ENOSPC);
            p.commit().unwrap();
        }
    });
    assert_eq!(served, pauses);
    assert_eq!(got, want);
    // Unpinned: the room the unlink freed is there again.
    p.commit().unwrap();
    assert!(fill(b"again") >= *filled.lock().unwrap());
    let report = p.fsck(&FsckOptions::default()).unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// `df` while a diff pins its trees: blocks freed meanwhile are held once their
/// commit is durable, so they are no room until the diff ends, and statfs does
/// not show them free in between (it counted the running transaction's frees as
/// free at once, and lost them again two commits later).
#[test]
fn statfs_does_not_count_frees_a_pin_will_hold() {
    let p = setup(Arc::new(MemDevice::new()));
    let m = p.branch_id("main").unwrap();
    let want = p.diff("s", "main").unwrap();
    // Slack for the tree nodes and map pages the unlink and commits move.
    let slack = 64;
    let shown = std::sync::Mutex::new(0);
    let (got, pauses, served) = diff_with(&p, |n| {
        if n == 0 {
            let before = p.statfs().bfree;
            // Main's own copy of the big file: 4,096 blocks only main holds.
            p.unlink(m, ROOT_INO, b"big").unwrap();
            let freed = p.statfs().bfree;
            p.commit().unwrap();
            p.commit().unwrap();
            let held = p.statfs().bfree;
            assert!(
                freed <= held + slack,
                "df showed {} blocks free that the pin then held",
                freed - held
            );
            assert!(held + slack >= before, "{before} -> {held}");
            *shown.lock().unwrap() = held;
        }
    });
    assert_eq!(served, pauses);
    assert_eq!(got, want);
    // Unpinned: the 4,096 blocks are room again.
    p.commit().unwrap();
    assert!(p.statfs().bfree >= *shown.lock().unwrap() + 4000);
}
