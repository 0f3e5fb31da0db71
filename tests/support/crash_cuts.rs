//! Shared by the crash tests: the images a power cut would leave, built from a
//! recording MemDevice's log. A cut at a flush boundary keeps every write before
//! it; a cut between two flushes keeps what the last flush made durable plus a
//! random subset of the writes after it, applied in random order (the device may
//! reorder and drop anything not yet flushed).

use std::sync::Arc;

use cowfs::pool::{Pool, PoolOptions};
use cowfs::store::device::{DeviceEvent, MemDevice};
use cowfs::store::superblock::Superblock;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// One power cut and what the image it left must open at.
pub struct Cut {
    /// Its number, in the order the cuts are checked.
    pub n: usize,
    /// Events of the log kept before the cut.
    pub at: usize,
    /// Between two flushes (a random subset of the unflushed writes applied).
    pub random: bool,
    /// The newest superblock the last flush before the cut made durable: the
    /// image opens no older than this.
    pub durable_gen: u64,
    /// The newest superblock that reached the image: it opens no newer.
    pub newest_sb: u64,
}

impl Cut {
    /// Open the image of this cut with `opts`: it must open, at a generation
    /// between the last flushed commit and the newest superblock that reached
    /// it (newer than the flushed one: a commit whose flush had not finished).
    pub fn open(&self, img: MemDevice, opts: &PoolOptions, ctx: &str) -> Pool {
        let pool = Pool::open_on(Arc::new(img), opts)
            .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
        let gen = pool.generation();
        assert!(
            gen >= self.durable_gen && gen <= self.newest_sb,
            "{ctx}: opened generation {gen}, flushed {}, newest superblock {}",
            self.durable_gen,
            self.newest_sb
        );
        pool
    }
}

/// The generation of a superblock write (slots 0 and 1), None for other blocks.
fn sb_generation(addr: u64, data: &[u8]) -> Option<u64> {
    (addr < 2)
        .then(|| Superblock::decode(&data[..4096]).ok().map(|s| s.generation))
        .flatten()
}

/// Cut points of `events`: every flush boundary, and `per_gap` random points
/// inside each run of unflushed writes. Sorted; (events kept, between flushes).
fn cut_points(events: &[DeviceEvent], rng: &mut SmallRng, per_gap: usize) -> Vec<(usize, bool)> {
    let mut cuts = Vec::new();
    let mut gap_start = 0;
    for (i, e) in events.iter().enumerate() {
        if matches!(e, DeviceEvent::Flush) {
            if i > gap_start {
                for _ in 0..per_gap {
                    cuts.push((rng.gen_range(gap_start + 1..=i), true));
                }
            }
            cuts.push((i + 1, false));
            gap_start = i + 1;
        }
    }
    cuts.sort();
    cuts
}

/// Build the image of every cut point of `events` (recorded after `base`, whose
/// generation is `base_gen`) and hand it to `check`.
pub fn for_each_cut(
    base: &MemDevice,
    events: &[DeviceEvent],
    base_gen: u64,
    seed: u64,
    per_gap: usize,
    mut check: impl FnMut(MemDevice, &Cut),
) {
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    let cuts = cut_points(events, &mut rng, per_gap);
    let durable = base.snapshot();
    let mut durable_upto = 0;
    let mut durable_gen = base_gen;
    for (n, (at, random)) in cuts.into_iter().enumerate() {
        // Everything before the last flush inside the cut is on the medium.
        let last_flush = events[..at]
            .iter()
            .rposition(|e| matches!(e, DeviceEvent::Flush))
            .map(|p| p + 1)
            .unwrap_or(0);
        for e in &events[durable_upto..last_flush] {
            if let DeviceEvent::Write { addr, data } = e {
                durable.apply(*addr, data);
                if let Some(g) = sb_generation(*addr, data) {
                    durable_gen = durable_gen.max(g);
                }
            }
        }
        durable_upto = durable_upto.max(last_flush);
        let img = durable.snapshot();
        let mut newest_sb = durable_gen;
        let mut pending: Vec<(u64, &Vec<u8>)> = events[last_flush..at]
            .iter()
            .filter_map(|e| match e {
                DeviceEvent::Write { addr, data } => Some((*addr, data)),
                DeviceEvent::Flush => None,
            })
            .collect();
        let landed = if random {
            pending.shuffle(&mut rng);
            rng.gen_range(0..=pending.len())
        } else {
            assert!(pending.is_empty(), "a boundary cut has no unflushed write");
            0
        };
        for (addr, data) in &pending[..landed] {
            img.apply(*addr, data);
            if let Some(g) = sb_generation(*addr, data) {
                newest_sb = newest_sb.max(g);
            }
        }
        let cut = Cut {
            n,
            at,
            random,
            durable_gen,
            newest_sb,
        };
        check(img, &cut);
    }
}
