//! Crash images of a pool driven by several threads at once, with the commit
//! flushes that run without the pool lock (`Pool::sync`, `Pool::commit`) and
//! the flush gate in play: writers overwrite whole files (some too big for a
//! superblock manifest: two-flush commits) and fsync them (an intent log record
//! or a commit), a timer thread commits, and a branch thread creates and
//! deletes branches (commits under the lock, dropped trees freed in steps).
//!
//! Every flush returns only after a delay taken after the device recorded it,
//! so writes made meanwhile by other threads are, in the crash model, not
//! covered by that flush (as the gate assumes: a flush covers the writes
//! completed before it started). Every cut must open, fsck clean, with every
//! file holding a whole version no older than the last one an fsync or sync
//! acknowledged before the cut.

// (`Cut::open` is not used: see `check`.)
#[allow(dead_code)]
#[path = "support/crash_cuts.rs"]
mod crash_cuts;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cowfs::fs::Owner;
use cowfs::pool::{BranchId, FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, DeviceEvent, MemDevice};
use crash_cuts::{for_each_cut, Cut};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A recording MemDevice whose flushes take a while after they are recorded.
struct SlowFlush {
    inner: MemDevice,
    n: AtomicU64,
}

impl BlockDevice for SlowFlush {
    fn read_at(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.read_at(addr, buf)
    }
    fn write_at(&self, addr: u64, buf: &[u8]) -> std::io::Result<()> {
        self.inner.write_at(addr, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.inner.flush()?;
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_micros(200 + (n * 7919) % 1500));
        Ok(())
    }
    fn len_blocks(&self) -> u64 {
        self.inner.len_blocks()
    }
    fn fixed_capacity(&self) -> Option<u64> {
        self.inner.fixed_capacity()
    }
    fn host_free_bytes(&self) -> Option<u64> {
        None
    }
    fn name(&self) -> std::path::PathBuf {
        "<slow flush>".into()
    }
}

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(16 << 20),
        cache_bytes: 512 << 10,
        ..Default::default()
    }
}

const WRITERS: usize = 2;
const FILES_PER_WRITER: usize = 3;
const SMALL: usize = 16 << 10;
/// More blocks than a manifest lists: its commit is a two-flush one.
const BIG: usize = 1536 << 10;

/// File `k`'s length: the first file of each writer is big.
fn len_of(k: usize) -> usize {
    if k.is_multiple_of(FILES_PER_WRITER) {
        BIG
    } else {
        SMALL
    }
}

/// Version `v` of a file: every byte the same, never 0.
fn content(v: u64, len: usize) -> Vec<u8> {
    vec![(v % 255) as u8 + 1; len]
}

/// An acknowledged fsync or sync: file `k` holds version `v` or newer in every
/// image that keeps the first `at` events.
struct Ack {
    k: usize,
    v: u64,
    at: usize,
}

struct Recording {
    base: MemDevice,
    base_gen: u64,
    events: Vec<DeviceEvent>,
    acks: Vec<Ack>,
    inos: Vec<u64>,
    main: BranchId,
}

fn run(seed: u64, rounds: usize) -> Recording {
    let dev = Arc::new(SlowFlush {
        inner: MemDevice::new(),
        n: AtomicU64::new(0),
    });
    let pool = Pool::create_on(dev.clone(), &opts()).unwrap();
    let main = pool.branch_id("main").unwrap();
    let inos: Vec<u64> = (0..WRITERS * FILES_PER_WRITER)
        .map(|k| {
            let name = format!("f{k}");
            let ino = pool
                .mknod(
                    main,
                    1,
                    name.as_bytes(),
                    libc::S_IFREG | 0o644,
                    0,
                    Owner::default(),
                )
                .unwrap()
                .ino;
            pool.write_file(main, ino, 0, &content(0, len_of(k)))
                .unwrap();
            ino
        })
        .collect();
    pool.commit().unwrap();
    let base = dev.inner.snapshot();
    let base_gen = pool.generation();
    dev.inner.start_recording();
    let acks = Mutex::new(Vec::new());
    let done = AtomicU64::new(0);
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (pool, dev, acks, inos, done) = (&pool, &dev, &acks, &inos, &done);
            s.spawn(move || {
                let mut rng = SmallRng::seed_from_u64(seed * 31 + w as u64);
                let mut version = [0u64; FILES_PER_WRITER];
                for _ in 0..rounds {
                    let j = rng.gen_range(0..FILES_PER_WRITER);
                    // The big file less often: its versions are 1.5 MiB each.
                    let j = if j == 0 && rng.gen_bool(0.6) { 1 } else { j };
                    let k = w * FILES_PER_WRITER + j;
                    version[j] += 1;
                    let v = version[j];
                    pool.write_file(main, inos[k], 0, &content(v, len_of(k)))
                        .unwrap();
                    let synced = match rng.gen_range(0..10) {
                        0..=5 => pool.sync_file(main, inos[k]),
                        6..=7 => pool.sync(),
                        _ => continue,
                    };
                    synced.unwrap();
                    let at = dev.inner.log_len();
                    acks.lock().unwrap().push(Ack { k, v, at });
                }
                done.fetch_add(1, Ordering::SeqCst);
            });
        }
        let (pool, done) = (&pool, &done);
        s.spawn(move || {
            while done.load(Ordering::SeqCst) < WRITERS as u64 {
                pool.commit().unwrap();
                std::thread::sleep(Duration::from_millis(3));
            }
        });
        s.spawn(move || {
            let mut n = 0;
            while done.load(Ordering::SeqCst) < WRITERS as u64 {
                let name = format!("b{n}");
                pool.branch_create(&name, "main").unwrap();
                std::thread::sleep(Duration::from_millis(4));
                pool.branch_delete(&name).unwrap();
                n += 1;
            }
        });
    });
    pool.commit().unwrap();
    let events = dev.inner.take_log();
    Recording {
        base,
        base_gen,
        events,
        acks: acks.into_inner().unwrap(),
        inos,
        main,
    }
}

fn check(rec: &Recording, seed: u64) -> (usize, usize) {
    let mut checked = 0;
    let mut newest_acked = 0;
    let check = |img: MemDevice, cut: &Cut| {
        let ctx = format!(
            "seed {seed} cut {} (after event {} of {}, between flushes: {})",
            cut.n,
            cut.at,
            rec.events.len(),
            cut.random
        );
        // (Not `Cut::open`: replaying the intent log commits, one generation
        // past the newest superblock.)
        let pool =
            Pool::open_on(Arc::new(img), &opts()).unwrap_or_else(|e| panic!("{ctx}: open: {e}"));
        let gen = pool.generation();
        assert!(
            gen >= cut.durable_gen && gen <= cut.newest_sb + 1,
            "{ctx}: opened generation {gen}, flushed {}, newest superblock {}",
            cut.durable_gen,
            cut.newest_sb
        );
        let r = pool
            .fsck(&FsckOptions::default())
            .unwrap_or_else(|e| panic!("{ctx}: fsck: {e}"));
        assert!(r.is_clean(), "{ctx}: fsck:\n{r}");
        for (k, &ino) in rec.inos.iter().enumerate() {
            let want = rec
                .acks
                .iter()
                .filter(|a| a.k == k && a.at <= cut.at)
                .map(|a| a.v)
                .max()
                .unwrap_or(0);
            newest_acked = newest_acked.max(want);
            let got = pool
                .read_file(rec.main, ino, 0, len_of(k))
                .unwrap_or_else(|e| panic!("{ctx}: read f{k}: {e}"));
            assert_eq!(got.len(), len_of(k), "{ctx}: f{k} length");
            let first = got[0];
            assert!(
                got.iter().all(|&b| b == first),
                "{ctx}: f{k} mixes versions"
            );
            // Versions wrap at 255; no file gets that many in a run.
            let v = u64::from(first - 1);
            assert!(
                v >= want,
                "{ctx}: f{k} holds version {v}, an fsync acknowledged {want}"
            );
        }
        checked += 1;
    };
    for_each_cut(&rec.base, &rec.events, rec.base_gen, seed, 1, check);
    (checked, newest_acked as usize)
}

#[test]
fn concurrent_syncs_commits_and_branch_ops_crash_clean() {
    for seed in [1u64, 2] {
        let rec = run(seed, 60);
        let flushes = rec
            .events
            .iter()
            .filter(|e| matches!(e, DeviceEvent::Flush))
            .count();
        let (checked, newest) = check(&rec, seed);
        println!(
            "seed {seed}: {} events, {flushes} flushes, {} acknowledged syncs, \
             {checked} cuts checked (newest acknowledged version {newest})",
            rec.events.len(),
            rec.acks.len()
        );
        assert!(rec.acks.len() > 40, "too few acknowledged syncs");
    }
}
