//! Power cuts inside the steps of a dropped tree and of a big orphan.
//!
//! engine_drop_steps.rs and engine_free_steps.rs cut between two steps (an
//! image taken after a step's commit). Here a recording MemDevice logs every
//! write and flush from before `branch_delete("big")`, through the unlink of a
//! big file on `main`, a reset of branch `big2` (its old tree dropped in steps
//! too), every step of the freeing thread (held between steps, so writes on
//! `other` and commits interleave deterministically) and a final commit. Every
//! flush boundary, and random points between flushes with a random subset of
//! the unflushed writes applied in random order (tests/support/crash_cuts.rs,
//! as engine_crash.rs), gives an image that must open, fsck clean with no leaked
//! block, and show what was committed at its generation: `other`'s files, and
//! `big` whole or gone. Then the pool finishes what the workload did (delete,
//! unlink, reset, for the images cut before them), frees everything in steps,
//! and comes back to the blocks in use before the big trees were made.

#[path = "support/crash_cuts.rs"]
mod crash_cuts;
#[path = "support/dump.rs"]
mod dump;
#[path = "support/free_pause.rs"]
mod free_pause;

#[path = "support/pool_fixture.rs"]
mod pool_fixture;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cowfs::fs::ROOT_INO;
use cowfs::pool::{BranchId, FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{DeviceEvent, MemDevice};
use crash_cuts::{for_each_cut, Cut};
use dump::{dump_branch, first_difference, Tree};
use free_pause::hold_steps;
use pool_fixture::file;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const GIB: u64 = 1 << 30;
const BS: u64 = 4096;
/// Long enough for the freeing thread to reach its pause unless something
/// holds the pool lock throughout.
const WAIT: Duration = Duration::from_secs(60);
/// Extents of `big` of its own: a drop step releases 8192 nodes and extents
/// (pool/drops.rs STEP_BUDGET), so the delete's own step and two or more of
/// the freeing thread's.
const BIG_EXTENTS: u64 = 20_000;
/// Extents of `big2`'s own file, dropped by its reset: two steps or more.
const BIG2_EXTENTS: u64 = 12_000;
/// Small extents after the 1 GiB of full-size ones of `main`'s file `huge`:
/// an orphan step unmaps 4096 extents (fs/free_steps.rs), so three steps.
const HUGE_TAIL_EXTENTS: u64 = 8_000;
/// Blocks in use after everything is freed above the count from before the
/// big trees were made: tree nodes of `main` and `other` the unlink and the
/// writes left less full, and space-map and catalog pages (4 at most seen over
/// every cut; engine_drop_steps.rs allows 32 after a 12 GiB drop). A tree not
/// freed would be thousands over; a leak fsck finds anyway.
const TOLERANCE: u64 = 16;

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(2 * GIB),
        root_uid: 0,
        root_gid: 0,
        // The default dirty limit: only the test's commits, none inside a step
        // of the freeing thread, so a generation read just after an open is the
        // one the image opened at.
        ..Default::default()
    }
}

/// Allocate `n` one-block extents in file `ino` from byte `from` on, a hole
/// between each two (so they stay separate items): a drop or orphan step's
/// work is counted in extents, and these cost far less to make, walk and
/// check than as many full-size ones (GiBs).
fn fragments(p: &Pool, b: BranchId, ino: u64, from: u64, n: u64) {
    for i in 0..n {
        p.fallocate(b, ino, from + 2 * i * BS, BS, false)
            .expect("fallocate");
    }
}

/// Commits until the blocks freed before are out of quarantine.
fn settle(p: &Pool) {
    for _ in 0..3 {
        p.commit().expect("commit");
    }
}

/// fsck finds nothing wrong and no leaked block.
fn clean(p: &Pool, ctx: &str) {
    let r = p
        .fsck(&FsckOptions::default())
        .unwrap_or_else(|e| panic!("{ctx}: fsck: {e}"));
    assert!(r.is_clean(), "{ctx}: fsck:\n{r}");
    assert_eq!(r.leaked_blocks, 0, "{ctx}: leaked blocks");
}

/// The names in branch `b`'s root and their sizes.
fn root_sizes(p: &Pool, b: BranchId) -> BTreeMap<Vec<u8>, u64> {
    let mut out = BTreeMap::new();
    let mut cookie = 0;
    loop {
        let chunk = p.readdir(b, ROOT_INO, cookie, 64).expect("readdir");
        let Some(last) = chunk.last() else { break };
        cookie = last.offset;
        for e in chunk {
            if e.name != b"." && e.name != b".." {
                let size = p.getattr(b, e.ino).expect("getattr").size;
                out.insert(e.name, size);
            }
        }
    }
    out
}

/// What a commit holds, as the test checks it: every branch's root listing
/// (the big files' sizes, not their GiBs of zeros) and `other` whole.
#[derive(PartialEq, Debug)]
struct View {
    roots: BTreeMap<String, BTreeMap<Vec<u8>, u64>>,
    other: Tree,
}

fn view(p: &Pool) -> View {
    let roots = p
        .list()
        .into_iter()
        .map(|i| (i.name, root_sizes(p, i.id)))
        .collect();
    let other = dump_branch(p, p.branch_id("other").expect("other")).expect("dump other");
    View { roots, other }
}

/// The recorded workload: the image it started from, every device event
/// after it, and the view at each generation.
struct Recording {
    base: MemDevice,
    base_gen: u64,
    /// Blocks in use before the big trees were made.
    base_used: u64,
    events: Vec<DeviceEvent>,
    states: BTreeMap<u64, View>,
}

/// Notes the view at the pool's generation if it is a new one: called after
/// every action, each of which commits once at most (asserted).
struct Notes<'a> {
    p: &'a Pool,
    states: BTreeMap<u64, View>,
    gen: u64,
}

impl Notes<'_> {
    fn note(&mut self, what: &str) {
        let gen = self.p.generation();
        assert!(gen <= self.gen + 1, "{what}: more than one commit");
        if gen != self.gen {
            self.states.insert(gen, view(self.p));
            self.gen = gen;
        }
    }
}

/// Overwrite a random range inside one of `other`'s files (sizes stay, so the
/// blocks in use do) with a random byte.
fn write_other(p: &Pool, rng: &mut SmallRng, files: &[(u64, u64)]) {
    let other = p.branch_id("other").expect("other");
    let (ino, size) = files[rng.gen_range(0..files.len())];
    let off = rng.gen_range(0..size);
    let len = rng.gen_range(1..=(size - off).min(40_000));
    p.write_file(other, ino, off, &vec![rng.gen::<u8>(); len as usize])
        .expect("write on other");
}

fn record(seed: u64) -> Recording {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev = MemDevice::new();
    let p = Pool::create_on(Arc::new(dev.clone()), &opts()).expect("create");
    let main = p.branch_id("main").expect("main");
    let other = p.branch_create("other", "main").expect("other");
    let mut files = Vec::new();
    for (n, size) in [(0u8, 3000u64), (1, 70_000), (2, 300_000)] {
        let ino = file(&p, other, &[b'f', b'0' + n]);
        p.write_file(other, ino, 0, &vec![n + 1; size as usize])
            .expect("write");
        files.push((ino, size));
    }
    p.snapshot_create("base", "main").expect("snapshot");
    settle(&p);
    let base_used = p.used_blocks();
    let big = p.branch_create("big", "main").expect("big");
    let f = file(&p, big, b"big");
    fragments(&p, big, f, 0, BIG_EXTENTS);
    let big2 = p.branch_create("big2", "base").expect("big2");
    let f = file(&p, big2, b"big2");
    fragments(&p, big2, f, 0, BIG2_EXTENTS);
    let huge = file(&p, main, b"huge");
    p.fallocate(main, huge, 0, GIB, false).expect("fallocate");
    fragments(&p, main, huge, GIB, HUGE_TAIL_EXTENTS);
    settle(&p);
    let base = dev.snapshot();
    let base_gen = p.generation();
    let mut notes = Notes {
        p: &p,
        states: BTreeMap::from([(base_gen, view(&p))]),
        gen: base_gen,
    };
    // The freeing thread waits before each of its steps until told to go.
    let (reached, go) = hold_steps(&p, 1);
    dev.start_recording();
    write_other(&p, &mut rng, &files);
    notes.note("write");
    p.branch_delete("big").expect("delete big");
    notes.note("delete");
    write_other(&p, &mut rng, &files);
    notes.note("write");
    p.commit().expect("commit");
    notes.note("commit");
    p.unlink(main, ROOT_INO, b"huge").expect("unlink huge");
    notes.note("unlink");
    write_other(&p, &mut rng, &files);
    notes.note("write");
    p.commit().expect("commit");
    notes.note("commit");
    p.reset_to("big2", "base").expect("reset big2");
    notes.note("reset");
    p.commit().expect("commit");
    notes.note("commit");
    // Each step of the thread, between the test's writes and commits; some
    // steps share a commit. Its steps commit nothing themselves (opts).
    let deadline = Instant::now() + WAIT;
    let mut steps = 0;
    loop {
        assert!(Instant::now() < deadline, "the frees did not end");
        match reached.recv_timeout(Duration::from_millis(20)) {
            Ok(_) => {
                notes.note("a step of the freeing thread");
                write_other(&p, &mut rng, &files);
                notes.note("write");
                if rng.gen_bool(0.7) {
                    p.commit().expect("commit");
                    notes.note("commit");
                }
                steps += 1;
                go.send(()).expect("the thread waits");
            }
            Err(_) if p.pending_frees() == 0 => break,
            Err(_) => {}
        }
    }
    p.commit().expect("final commit");
    notes.note("final commit");
    let states = notes.states;
    let events = dev.take_log();
    assert!(steps >= 6, "only {steps} steps of the freeing thread");
    drop(go);
    drop(p);
    Recording {
        base,
        base_gen,
        base_used,
        events,
        states,
    }
}

/// Random cut points between two flushes, per run of unflushed writes.
const PER_GAP: usize = 3;

/// What the cut images showed, to check the sweep reached the states it is for.
#[derive(Default, Debug)]
struct Seen {
    boundaries: usize,
    between: usize,
    /// Opened at a commit whose flush had not completed (all its writes landed).
    newer_than_flushed: usize,
    /// Opened with `big` whole (cut before the delete's commit), or gone.
    big_whole: usize,
    big_gone: usize,
    /// Opened with a dropped tree still to free (a DROP record).
    drop_pending: usize,
    /// Opened with `huge` an orphan part freed, for the mount's cleanup.
    orphan_left: usize,
    /// The most blocks in use after recovery above the count from before.
    most_extra: u64,
}

/// Open the image of one cut and check it (see the file's comment).
fn check(rec: &Recording, img: MemDevice, cut: &Cut, seen: &mut Seen) {
    let ctx = format!(
        "cut {} (after event {} of {}, {})",
        cut.n,
        cut.at,
        rec.events.len(),
        if cut.random {
            "between flushes"
        } else {
            "at a flush"
        }
    );
    if cut.random {
        seen.between += 1;
    } else {
        seen.boundaries += 1;
    }
    let p = cut.open(img, &opts(), &ctx);
    let gen = p.generation();
    if gen > cut.durable_gen {
        seen.newer_than_flushed += 1;
    }
    // The freeing thread has started on a resumed DROP record: it is gone
    // only once every step of it is done, many steps for most cuts.
    if p.pending_frees() > 0 {
        seen.drop_pending += 1;
    }
    let want = rec
        .states
        .get(&gen)
        .unwrap_or_else(|| panic!("{ctx}: no recorded state for generation {gen}"));
    let got = view(&p);
    assert_eq!(got.roots, want.roots, "{ctx}: branches at generation {gen}");
    assert!(
        got.other == want.other,
        "{ctx}: 'other' at generation {gen}: {}",
        first_difference(&want.other, &got.other)
    );
    match got.roots.get("big") {
        Some(r) => {
            let size = (2 * BIG_EXTENTS - 1) * BS;
            assert_eq!(r.get(&b"big"[..]), Some(&size), "{ctx}: 'big' whole");
            seen.big_whole += 1;
        }
        None => seen.big_gone += 1,
    }
    clean(&p, &ctx);
    // Finish what the workload did, for images cut before it, then free it all.
    if got.roots.contains_key("big") {
        p.branch_delete("big").expect("delete big");
    }
    let main = p.branch_id("main").expect("main");
    if got.roots["main"].contains_key(&b"huge"[..]) {
        p.unlink(main, ROOT_INO, b"huge").expect("unlink huge");
    } else if p.cleanup_orphans(main).expect("cleanup") > 0 {
        seen.orphan_left += 1;
    }
    if got.roots["big2"].contains_key(&b"big2"[..]) {
        p.reset_to("big2", "base").expect("reset big2");
    }
    p.finish_frees();
    assert_eq!(p.pending_frees(), 0, "{ctx}");
    settle(&p);
    let used = p.used_blocks();
    assert!(
        used.abs_diff(rec.base_used) <= TOLERANCE,
        "{ctx}: {used} blocks in use after the frees, {} before the big trees",
        rec.base_used
    );
    seen.most_extra = seen.most_extra.max(used.saturating_sub(rec.base_used));
    clean(&p, &ctx);
}

#[test]
fn every_cut_inside_drop_and_orphan_steps_recovers() {
    let started = Instant::now();
    let rec = record(1);
    let flushes = rec
        .events
        .iter()
        .filter(|e| matches!(e, DeviceEvent::Flush))
        .count();
    let recorded = started.elapsed();
    let mut seen = Seen::default();
    for_each_cut(
        &rec.base,
        &rec.events,
        rec.base_gen,
        1,
        PER_GAP,
        |img, cut| check(&rec, img, cut, &mut seen),
    );
    println!(
        "drop crash: {} commits, {} events, {flushes} flushes recorded in {recorded:?}; \
         {seen:?}; all passed in {:?}",
        rec.states.len(),
        rec.events.len(),
        started.elapsed()
    );
    assert_eq!(seen.boundaries, flushes);
    assert!(seen.big_whole > 0 && seen.big_gone > 0, "{seen:?}");
    assert!(seen.drop_pending > 0 && seen.orphan_left > 0, "{seen:?}");
}
