//! Fast fsync through the intent log (format-spec §8.1): an fsync whose file changed
//! only by data writes and time updates since the last commit costs one record block
//! and one flush; crash images built from the recorded writes show that a record is
//! applied exactly when it and all its data landed, that replay survives a crash of
//! its own, that logged blocks stay put until the next commit, and that every change
//! a record cannot describe (and a full log) makes fsync commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use cowfs::fs::{FsError, Owner, SetAttr, Timespec, ROOT_INO};
use cowfs::pool::{BranchId, FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{DeviceEvent, MemDevice};

const BS: usize = 4096;

/// A recorded device write: address and bytes (one block or more).
type DevWrite = (u64, Vec<u8>);
/// Size of the committed files: extents, never inline.
const FILE: usize = 64 << 10;

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    }
}

/// 16 MiB: a log region of 16 blocks (one record each).
fn small_opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(16 << 20),
        ..Default::default()
    }
}

/// Bytes that differ per seed and per block, so a block from the wrong place shows.
fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| seed.wrapping_mul(31).wrapping_add((i / 7) as u8) ^ (i / BS) as u8)
        .collect()
}

fn writes_of(events: &[DeviceEvent]) -> Vec<DevWrite> {
    events
        .iter()
        .filter_map(|e| match e {
            DeviceEvent::Write { addr, data } => Some((*addr, data.clone())),
            DeviceEvent::Flush => None,
        })
        .collect()
}

fn flushes(events: &[DeviceEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, DeviceEvent::Flush))
        .count()
}

/// The writes split into single blocks.
fn blocks(writes: &[DevWrite]) -> Vec<DevWrite> {
    writes
        .iter()
        .flat_map(|(addr, data)| {
            data.chunks(BS)
                .enumerate()
                .map(move |(i, c)| (addr + i as u64, c.to_vec()))
        })
        .collect()
}

fn covers(addr: u64, data: &[u8], block: u64) -> bool {
    (addr..addr + data.len().div_ceil(BS) as u64).contains(&block)
}

/// Whether a write touches superblock slot 0 or 1 (that is, a commit was written).
fn is_superblock(addr: u64, data: &[u8]) -> bool {
    covers(addr, data, 0) || covers(addr, data, 1)
}

fn touches_superblock(events: &[DeviceEvent]) -> bool {
    writes_of(events).iter().any(|(a, d)| is_superblock(*a, d))
}

/// `before` plus `writes`, applied in order: what a power cut could leave.
fn image<'a>(before: &MemDevice, writes: impl IntoIterator<Item = &'a DevWrite>) -> MemDevice {
    let img = before.snapshot();
    for (addr, data) in writes {
        img.apply(*addr, data);
    }
    img
}

fn open(img: &MemDevice, o: &PoolOptions) -> Pool {
    Pool::open_on(Arc::new(img.snapshot()), o).unwrap()
}

fn assert_clean(p: &Pool, what: &str) {
    let r = p.fsck(&FsckOptions::default()).unwrap();
    assert!(r.is_clean(), "{what}: {r}");
}

/// File `ino` of `p` holds exactly `want`.
fn assert_file(p: &Pool, b: BranchId, ino: u64, want: &[u8], what: &str) {
    assert_eq!(
        p.getattr(b, ino).unwrap().size,
        want.len() as u64,
        "{what}: size"
    );
    let got = p.read_file(b, ino, 0, want.len() + 2 * BS).unwrap();
    if got != want {
        let at = got.iter().zip(want).position(|(x, y)| x != y);
        panic!(
            "{what}: content differs (len {} vs {}), first difference at byte {at:?} (block {:?})",
            got.len(),
            want.len(),
            at.map(|a| a / BS)
        );
    }
}

/// A pool holding file "f" (64 KiB, committed) and the model of every file.
struct Fx {
    dev: MemDevice,
    pool: Pool,
    b: BranchId,
    f: u64,
    model: BTreeMap<u64, Vec<u8>>,
}

impl Fx {
    fn new(o: &PoolOptions) -> Fx {
        let dev = MemDevice::new();
        let pool = Pool::create_on(Arc::new(dev.clone()), o).unwrap();
        let b = pool.branch_id("main").unwrap();
        let mut fx = Fx {
            dev,
            pool,
            b,
            f: 0,
            model: BTreeMap::new(),
        };
        fx.f = fx.add_file(b"f", 1);
        fx.pool.commit().unwrap();
        fx
    }

    /// Another 64 KiB file (not committed).
    fn add_file(&mut self, name: &[u8], seed: u8) -> u64 {
        let ino = self
            .pool
            .mknod(
                self.b,
                ROOT_INO,
                name,
                libc::S_IFREG | 0o644,
                0,
                Owner::default(),
            )
            .unwrap()
            .ino;
        self.model.insert(ino, Vec::new());
        self.write(ino, 0, &pattern(seed, FILE));
        ino
    }

    fn write(&mut self, ino: u64, off: usize, data: &[u8]) {
        assert_eq!(
            self.pool.write_file(self.b, ino, off as u64, data).unwrap(),
            data.len()
        );
        let m = self.model.get_mut(&ino).unwrap();
        if m.len() < off + data.len() {
            m.resize(off + data.len(), 0);
        }
        m[off..off + data.len()].copy_from_slice(data);
    }

    fn model(&self, ino: u64) -> Vec<u8> {
        self.model[&ino].clone()
    }

    /// `sync_file` of `ino` (recording must be on): its events; recording goes on.
    fn sync_file(&self, ino: u64) -> Vec<DeviceEvent> {
        let mark = self.dev.log_len();
        self.pool.sync_file(self.b, ino).unwrap();
        let log = self.dev.take_log();
        self.dev.start_recording();
        log[mark..].to_vec()
    }
}

#[test]
fn an_fsync_of_overwrites_is_one_record_and_one_flush() {
    let mut fx = Fx::new(&opts());
    let (b, f) = (fx.b, fx.f);
    let g = fx.pool.generation();
    fx.dev.start_recording();
    for (blk, seed) in [(1, 2), (5, 3), (9, 4)] {
        fx.write(f, blk * BS, &pattern(seed, BS));
    }
    fx.write(f, FILE, &pattern(5, 100));
    let mark = fx.dev.log_len();
    fx.pool.sync_file(b, f).unwrap();
    let crash = fx.dev.snapshot();
    let live_mtime = fx.pool.getattr(b, f).unwrap().mtime;
    let events = fx.dev.take_log();
    let (data_ev, sync_ev) = events.split_at(mark);

    // The writes themselves only put data on disk: no flush, no metadata.
    assert_eq!(flushes(data_ev), 0);
    // Copy-on-write data: 3 overwritten blocks and the block the append started.
    let data_blocks = blocks(&writes_of(data_ev));
    assert_eq!(data_blocks.len(), 4, "data blocks written by the 4 writes");
    // The fsync: one record block, then one flush, in that order.
    let rec = blocks(&writes_of(sync_ev));
    assert_eq!(
        rec.len(),
        1,
        "fsync wrote {} blocks, not one record",
        rec.len()
    );
    assert_eq!(flushes(sync_ev), 1);
    assert!(matches!(sync_ev.last(), Some(DeviceEvent::Flush)));
    assert!(matches!(sync_ev.first(), Some(DeviceEvent::Write { .. })));
    // The record is not one of the data blocks, and no commit was written.
    assert!(data_blocks.iter().all(|(a, _)| *a != rec[0].0));
    assert!(
        !touches_superblock(&events),
        "a logged fsync wrote a superblock"
    );
    assert_eq!(blocks(&writes_of(&events)).len(), 4 + 1);

    // Power cut right after the fsync: replay brings back every range and the size.
    let p = open(&crash, &opts());
    assert_file(&p, b, f, &fx.model(f), "after replay");
    assert_eq!(p.getattr(b, f).unwrap().size, (FILE + 100) as u64);
    // The record carries the times the file had at fsync.
    assert_eq!(p.getattr(b, f).unwrap().mtime, live_mtime);
    // Replay commits the record on top of the commit it was written against.
    assert_eq!(p.generation(), g + 1);
    assert_clean(&p, "after replay");
}

/// One fsync of `f` after a commit, recorded: the image before it, the data writes
/// and the record write, and the file before and after.
struct OneFsync {
    before: MemDevice,
    b: BranchId,
    f: u64,
    data: Vec<DevWrite>,
    record: DevWrite,
    old: Vec<u8>,
    new: Vec<u8>,
}

fn one_fsync() -> OneFsync {
    let mut fx = Fx::new(&opts());
    let (b, f) = (fx.b, fx.f);
    let old = fx.model(f);
    let before = fx.dev.snapshot();
    fx.dev.start_recording();
    for (blk, seed) in [(2, 12), (7, 13), (12, 14)] {
        fx.write(f, blk * BS, &pattern(seed, BS));
    }
    fx.write(f, FILE, &pattern(15, 3000));
    let data = blocks(&writes_of(&fx.dev.take_log()));
    fx.dev.start_recording();
    let sync = fx.sync_file(f);
    let rec = blocks(&writes_of(&sync));
    // One record, else the scenario below is not the one meant.
    assert_eq!(rec.len(), 1, "fsync was not logged");
    assert_eq!(data.len(), 4);
    OneFsync {
        before,
        b,
        f,
        data,
        record: rec[0].clone(),
        old,
        new: fx.model(f),
    }
}

#[test]
fn torn_fsync_tails_are_ignored() {
    let OneFsync {
        before,
        b,
        f,
        data,
        record,
        old,
        new,
    } = one_fsync();

    // Control: everything landed, so the fsync is there.
    let p = open(&image(&before, data.iter().chain([&record])), &opts());
    assert_file(&p, b, f, &new, "complete fsync");
    assert_clean(&p, "complete fsync");

    // (a) Data but no record: nothing says where the data went, the file is as committed.
    let p = open(&image(&before, &data), &opts());
    assert_file(&p, b, f, &old, "no record");
    assert_clean(&p, "no record");

    // (b) The record but one data block lost: the whole record is ignored, not just
    // that block (else the file would mix old and new blocks of one fsync).
    for skip in 0..data.len() {
        let img = image(
            &before,
            data.iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, w)| w)
                .chain([&record]),
        );
        let p = open(&img, &opts());
        assert_file(&p, b, f, &old, &format!("data block {skip} lost"));
        assert_clean(&p, &format!("data block {skip} lost"));
    }

    // (c) A torn record block (any byte wrong) is no record.
    for off in [0, 40, 200, 2000, BS - 1] {
        let img = image(&before, data.iter().chain([&record]));
        img.flip_byte(record.0, off);
        let p = open(&img, &opts());
        assert_file(&p, b, f, &old, &format!("record byte {off} flipped"));
        assert_clean(&p, &format!("record byte {off} flipped"));
    }

    torn_second_fsync_keeps_the_first();
}

/// (d) Two fsyncs of one file, the second torn: the first stands alone.
fn torn_second_fsync_keeps_the_first() {
    let mut fx = Fx::new(&opts());
    let (b, f) = (fx.b, fx.f);
    let before = fx.dev.snapshot();
    fx.dev.start_recording();
    fx.write(f, 2 * BS, &pattern(21, BS));
    fx.write(f, 6 * BS, &pattern(22, BS));
    let s1 = fx.sync_file(f);
    assert!(!touches_superblock(&s1), "first fsync was not logged");
    let after1 = fx.model(f);
    // The device right after fsync 1 (its data and record all landed).
    let full1 = fx.dev.snapshot();
    fx.write(f, 3 * BS, &pattern(23, BS));
    fx.write(f, 11 * BS, &pattern(24, BS));
    fx.write(f, FILE, &pattern(25, 500));
    let data2 = writes_of(&fx.dev.take_log());
    fx.dev.start_recording();
    let s2 = fx.sync_file(f);
    let rec2 = writes_of(&s2);
    assert_eq!(blocks(&rec2).len(), 1, "second fsync was not logged");
    let after2 = fx.model(f);
    assert_eq!(data2.len(), 3);

    // Everything of fsync 1 (the device right after it) and fsync 2's data, not its
    // record: fsync 1 is there, fsync 2 is not.
    let p = open(&image(&full1, &data2), &opts());
    assert_file(&p, b, f, &after1, "second record lost");
    assert_clean(&p, "second record lost");
    // Same with fsync 2's record but one of its data blocks lost.
    let p = open(&image(&full1, data2[1..].iter().chain(&rec2)), &opts());
    assert_file(&p, b, f, &after1, "second fsync torn");
    assert_clean(&p, "second fsync torn");
    // Control: both complete, both there.
    let p = open(&image(&full1, data2.iter().chain(&rec2)), &opts());
    assert_file(&p, b, f, &after2, "both fsyncs");
    assert_clean(&p, "both fsyncs");
    // And the committed state is what a cut before fsync 1's record leaves.
    let p = open(&before, &opts());
    assert_file(&p, b, f, &pattern(1, FILE), "before");
}

#[test]
fn replay_is_idempotent_across_a_crash_during_replay() {
    let mut fx = Fx::new(&opts());
    let g_ino = fx.add_file(b"g", 7);
    fx.pool.commit().unwrap();
    let (b, f) = (fx.b, fx.f);
    let g0 = fx.pool.generation();
    fx.dev.start_recording();
    // Two records: f (an extent of two blocks and an append), then g.
    fx.write(f, BS, &pattern(31, 2 * BS));
    fx.write(f, FILE, &pattern(32, 5000));
    assert!(!touches_superblock(&fx.sync_file(f)));
    fx.write(g_ino, 4 * BS, &pattern(33, BS));
    fx.write(g_ino, 8 * BS, &pattern(34, BS));
    assert!(!touches_superblock(&fx.sync_file(g_ino)));
    let x = fx.dev.snapshot();
    let (want_f, want_g) = (fx.model(f), fx.model(g_ino));
    assert_ne!(want_f, pattern(1, FILE));

    // X opened directly: both records applied.
    let p = open(&x, &opts());
    assert_file(&p, b, f, &want_f, "X");
    assert_file(&p, b, g_ino, &want_g, "X");
    assert_eq!(p.generation(), g0 + 1, "replay commits");
    drop(p);

    // The writes replay's commit makes.
    let y = x.snapshot();
    y.start_recording();
    let p = Pool::open_on(Arc::new(y.clone()), &opts()).unwrap();
    let replay = writes_of(&y.take_log());
    assert_file(&p, b, f, &want_f, "Y");
    assert!(
        replay.iter().any(|(a, d)| is_superblock(*a, d)),
        "replay did not commit"
    );
    let others: Vec<DevWrite> = replay
        .iter()
        .filter(|(a, d)| !is_superblock(*a, d))
        .cloned()
        .collect();
    assert!(!others.is_empty());

    // A power cut during replay's commit leaves X plus some of those writes: replay
    // again must give the same files (its writes went to free blocks only).
    let mut subsets: Vec<(String, Vec<&DevWrite>)> = Vec::new();
    for k in 0..=others.len() {
        subsets.push((format!("first {k}"), others[..k].iter().collect()));
    }
    subsets.push(("every other".into(), others.iter().step_by(2).collect()));
    subsets.push(("all but first".into(), others.iter().skip(1).collect()));
    for (what, ws) in subsets {
        let img = image(&x, ws);
        let p = open(&img, &opts());
        assert_file(&p, b, f, &want_f, &what);
        assert_file(&p, b, g_ino, &want_g, &what);
        assert_eq!(
            p.generation(),
            g0 + 1,
            "{what}: replayed on top of X's commit"
        );
        assert_clean(&p, &what);
    }
    // Replay's commit complete: no second replay, same files.
    let p2 = open(&image(&x, &replay), &opts());
    assert_file(&p2, b, f, &want_f, "replayed");
    assert_file(&p2, b, g_ino, &want_g, "replayed");
    assert_eq!(
        p2.generation(),
        g0 + 1,
        "records of commit g0 applied twice"
    );
    assert_clean(&p2, "replayed");
    drop(p2);

    // The replayed pool, closed and opened again: nothing to apply, nothing written.
    drop(p);
    let z = y.snapshot();
    z.start_recording();
    let p = Pool::open_on(Arc::new(z.clone()), &opts()).unwrap();
    assert_eq!(z.log_len(), 0, "opening a replayed pool wrote something");
    assert_file(&p, b, f, &want_f, "reopened");
    assert_file(&p, b, g_ino, &want_g, "reopened");
    assert_clean(&p, "reopened");
}

#[test]
fn a_logged_block_is_not_overwritten_before_the_next_commit() {
    // A small pool (4096 blocks), so the allocator goes around it below.
    let o = small_opts();
    let mut fx = Fx::new(&o);
    let g_ino = fx.add_file(b"g", 7);
    fx.pool.commit().unwrap();
    let (b, f) = (fx.b, fx.f);
    let g_old = fx.model(g_ino);
    fx.dev.start_recording();
    let a = pattern(41, BS);
    fx.write(f, 5 * BS, &a);
    let w = writes_of(&fx.dev.take_log());
    let a_at: Vec<u64> = w
        .iter()
        .filter(|(_, d)| *d == a)
        .map(|(addr, _)| *addr)
        .collect();
    assert_eq!(a_at.len(), 1, "A went to one block");
    let a_at = a_at[0];
    fx.dev.start_recording();
    assert!(
        !touches_superblock(&fx.sync_file(f)),
        "fsync of A not logged"
    );
    let durable_f = fx.model(f);

    // Overwrite A: its block was born in this transaction, so without the record it
    // would be rewritten in place.
    fx.write(f, 5 * BS, &pattern(42, BS));
    // Then fill g and truncate it, over and over: each round allocates 16 blocks
    // and frees them (born in this transaction: reusable at once), so the next-fit
    // allocator goes around the whole pool twice and would hand out A's block had
    // freeing it made it free.
    let empty = SetAttr {
        size: Some(0),
        ..Default::default()
    };
    for round in 0..512usize {
        fx.write(g_ino, 0, &pattern(50 + (round % 150) as u8, FILE));
        fx.pool.setattr(b, g_ino, &empty).unwrap();
    }
    fx.write(f, 5 * BS, &pattern(43, BS));
    let crash = fx.dev.snapshot();
    let later = fx.dev.take_log();
    // No commit came in between (it would make the record moot).
    assert!(!touches_superblock(&later));
    // The allocator did go around the pool (16 MiB = 4096 blocks) at least once.
    let written = blocks(&writes_of(&later));
    assert!(
        written.len() >= 2 * 4096,
        "only {} blocks written",
        written.len()
    );
    // It wrapped: a write back near the start of the pool after higher ones. (A's
    // block is near the start too, and the blocks before it are live, so the
    // first one free after the wrap can be just past it.)
    let order: Vec<u64> = writes_of(&later).iter().map(|(x, _)| *x).collect();
    assert!(
        order.windows(2).any(|w| w[1] < w[0] && w[1] <= a_at + 64),
        "allocator never wrapped"
    );
    assert!(
        !written.iter().any(|(x, _)| *x == a_at),
        "block {a_at}, named by the record, was written again before a commit"
    );

    let p = open(&crash, &o);
    // The record still verifies: block 5 is A, not B or anything later.
    assert_eq!(p.read_file(b, f, 5 * BS as u64, BS).unwrap(), a);
    assert_file(&p, b, f, &durable_f, "f after crash");
    assert_file(&p, b, g_ino, &g_old, "g after crash (never fsynced)");
    assert_clean(&p, "after crash");
}

#[test]
fn changes_a_record_cannot_describe_commit() {
    // A new file: its directory entry and inode are in no record.
    {
        let mut fx = Fx::new(&opts());
        fx.dev.start_recording();
        let g = fx.add_file(b"g", 60);
        let ev = fx.sync_file(g);
        assert!(
            touches_superblock(&ev),
            "fsync of a new file did not commit"
        );
        let p = open(&fx.dev.snapshot(), &opts());
        let ino = p.lookup(fx.b, ROOT_INO, b"g").unwrap().ino;
        assert_eq!(ino, g);
        assert_file(&p, fx.b, g, &fx.model(g), "new file");
        assert_clean(&p, "new file");
    }
    // A truncate (then a data write a record could carry): the shrink is in no record.
    {
        let mut fx = Fx::new(&opts());
        let f = fx.f;
        fx.dev.start_recording();
        let s = SetAttr {
            size: Some(10_000),
            ..Default::default()
        };
        fx.pool.setattr(fx.b, f, &s).unwrap();
        fx.model.get_mut(&f).unwrap().truncate(10_000);
        fx.write(f, BS, &pattern(61, BS));
        let ev = fx.sync_file(f);
        assert!(
            touches_superblock(&ev),
            "fsync after a truncate did not commit"
        );
        let p = open(&fx.dev.snapshot(), &opts());
        assert_file(&p, fx.b, f, &fx.model(f), "truncated");
        assert_eq!(p.getattr(fx.b, f).unwrap().size, 10_000);
        assert_clean(&p, "truncated");
    }
    // A zero range (FALLOC_FL_ZERO_RANGE): it unmaps blocks and maps unwritten
    // ones, which no record describes.
    {
        let mut fx = Fx::new(&opts());
        let f = fx.f;
        fx.dev.start_recording();
        fx.pool
            .zero_range(fx.b, f, 100, 3 * BS as u64, false)
            .unwrap();
        fx.model.get_mut(&f).unwrap()[100..100 + 3 * BS].fill(0);
        fx.write(f, 8 * BS, &pattern(66, BS));
        let ev = fx.sync_file(f);
        assert!(
            touches_superblock(&ev),
            "fsync after a zero range did not commit"
        );
        let p = open(&fx.dev.snapshot(), &opts());
        assert_file(&p, fx.b, f, &fx.model(f), "zero range");
        assert_clean(&p, "zero range");
    }
    // A chmod.
    {
        let mut fx = Fx::new(&opts());
        let f = fx.f;
        fx.dev.start_recording();
        let s = SetAttr {
            mode: Some(0o600),
            ..Default::default()
        };
        fx.pool.setattr(fx.b, f, &s).unwrap();
        fx.write(f, BS, &pattern(62, BS));
        let ev = fx.sync_file(f);
        assert!(
            touches_superblock(&ev),
            "fsync after a chmod did not commit"
        );
        let p = open(&fx.dev.snapshot(), &opts());
        assert_eq!(p.getattr(fx.b, f).unwrap().mode & 0o7777, 0o600);
        assert_file(&p, fx.b, f, &fx.model(f), "chmod");
    }
    // A rename of the file itself.
    {
        let mut fx = Fx::new(&opts());
        let f = fx.f;
        fx.dev.start_recording();
        fx.pool
            .rename(fx.b, ROOT_INO, b"f", ROOT_INO, b"h", 0)
            .unwrap();
        fx.write(f, BS, &pattern(63, BS));
        let ev = fx.sync_file(f);
        assert!(
            touches_superblock(&ev),
            "fsync after a rename did not commit"
        );
        let p = open(&fx.dev.snapshot(), &opts());
        assert_eq!(p.lookup(fx.b, ROOT_INO, b"h").unwrap().ino, f);
        assert_file(&p, fx.b, f, &fx.model(f), "rename");
    }
    // An unlink of another file, then a write to this one: a record of f cannot
    // carry the unlink, so fsync of f commits it too.
    {
        let mut fx = Fx::new(&opts());
        fx.add_file(b"g", 64);
        fx.pool.commit().unwrap();
        let f = fx.f;
        fx.dev.start_recording();
        fx.pool.unlink(fx.b, ROOT_INO, b"g").unwrap();
        fx.write(f, BS, &pattern(65, BS));
        let ev = fx.sync_file(f);
        assert!(
            touches_superblock(&ev),
            "fsync after an unlink did not commit"
        );
        let p = open(&fx.dev.snapshot(), &opts());
        assert!(matches!(
            p.lookup(fx.b, ROOT_INO, b"g"),
            Err(FsError::Posix(libc::ENOENT))
        ));
        assert_file(&p, fx.b, f, &fx.model(f), "unlink");
        assert_clean(&p, "unlink");
    }
}

#[test]
fn more_writes_than_a_record_holds_commit() {
    // One record names at most MAX_RECORD_BLOCKS blocks: a file with more written
    // since its last record (here 4 MiB, in 4 KiB writes) is made durable by a
    // commit; one block more than that in a fresh round is logged again.
    let mut fx = Fx::new(&opts());
    let (b, f) = (fx.b, fx.f);
    fx.dev.start_recording();
    let n = cowfs::store::intent_log::MAX_RECORD_BLOCKS + 33;
    for i in 0..n {
        fx.write(f, i * BS, &pattern(i as u8, BS));
    }
    assert!(
        touches_superblock(&fx.sync_file(f)),
        "{n} blocks were logged"
    );
    fx.write(f, 3 * BS, &pattern(77, BS));
    assert!(
        !touches_superblock(&fx.sync_file(f)),
        "one block was not logged"
    );
    let p = open(&fx.dev.snapshot(), &opts());
    assert_file(&p, b, f, &fx.model(f), "after crash");
    assert_clean(&p, "after crash");
}

#[test]
fn a_full_log_falls_back_to_a_commit() {
    let mut fx = Fx::new(&small_opts());
    let (b, f) = (fx.b, fx.f);
    fx.dev.start_recording();
    let mut committed = Vec::new();
    for round in 0..40usize {
        let blk = (round * 7) % 16;
        fx.write(f, blk * BS, &pattern(10 + round as u8, BS));
        if round % 5 == 4 {
            // Now and then an append, so sizes are replayed too.
            let end = fx.model(f).len();
            fx.write(f, end, &pattern(200 + round as u8, 333));
        }
        let ev = fx.sync_file(f);
        if touches_superblock(&ev) {
            committed.push(round);
        }
        let p = open(&fx.dev.snapshot(), &small_opts());
        assert_file(&p, b, f, &fx.model(f), &format!("round {round}"));
        assert_clean(&p, &format!("round {round}"));
    }
    // 16 log blocks: 16 logged fsyncs, then the 17th finds the region full and
    // commits, which empties it for the next 16.
    assert_eq!(committed, vec![16, 33]);
    assert_clean(&fx.pool, "end");
}

#[test]
fn times_only_setattr_is_logged() {
    let mut fx = Fx::new(&opts());
    let (b, f) = (fx.b, fx.f);
    fx.dev.start_recording();
    fx.write(f, 3 * BS, &pattern(70, BS));
    let t = Timespec {
        sec: 1_234_567_890,
        nsec: 987_654_321,
    };
    let s = SetAttr {
        mtime: Some(t),
        ..Default::default()
    };
    assert_eq!(fx.pool.setattr(b, f, &s).unwrap().mtime, t);
    let ev = fx.sync_file(f);
    // Data and times only: a record, no commit.
    assert!(
        !touches_superblock(&ev),
        "times-only setattr made fsync commit"
    );
    assert_eq!(blocks(&writes_of(&ev)).len(), 1);
    let p = open(&fx.dev.snapshot(), &opts());
    assert_eq!(p.getattr(b, f).unwrap().mtime, t);
    assert_file(&p, b, f, &fx.model(f), "write + mtime");
    assert_clean(&p, "write + mtime");
    drop(p);

    // A times-only change alone: a record without extents.
    let a = Timespec {
        sec: 2_000_000_000,
        nsec: 5,
    };
    let s = SetAttr {
        atime: Some(a),
        ..Default::default()
    };
    fx.pool.setattr(b, f, &s).unwrap();
    let ev = fx.sync_file(f);
    assert!(
        !touches_superblock(&ev),
        "atime-only setattr made fsync commit"
    );
    assert_eq!(blocks(&writes_of(&ev)).len(), 1);
    let p = open(&fx.dev.snapshot(), &opts());
    let attr = p.getattr(b, f).unwrap();
    assert_eq!(attr.atime, a);
    assert_eq!(attr.mtime, t);
    assert_file(&p, b, f, &fx.model(f), "atime");
    assert_clean(&p, "atime");
}
