//! Random branch, snapshot, write, fallocate, punch, delete and reset sequences
//! with the stepped drops (pool/drops.rs) interleaved one step at a time: the
//! freeing thread is held before every step and let go by the test. After each
//! step and each delete or reset the pool is fsck'd (clean, 0 leaked), and
//! every branch and snapshot is compared with its model. Now and then the pool
//! is closed and reopened mid-drop, and an image taken between commits (what a
//! crash would leave) is opened, fsck'd, finished and fsck'd again.
//! Failures print the seed and the operation index. `COWFS_DROPRAND_SEEDS`,
//! `COWFS_DROPRAND_OPS` for longer runs.

#[path = "support/free_pause.rs"]
mod free_pause;
#[path = "support/pool_fixture.rs"]
mod pool_fixture;

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::MemDevice;
use free_pause::hold_steps;
use pool_fixture::file;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const BS: u64 = 4096;
const CAPACITY: u64 = 20 * GIB;
/// Files are written and punched below this; fallocate reaches further.
const SPAN: u64 = 6 * GIB;
const WAIT: Duration = Duration::from_secs(120);

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(CAPACITY),
        root_uid: 0,
        root_gid: 0,
        ..Default::default()
    }
}

/// One branch's file: its size and the 4 KiB blocks written (fill byte);
/// everything else below the size reads as zeros.
#[derive(Clone, Default)]
struct Model {
    size: u64,
    blocks: BTreeMap<u64, u8>,
    snapshot: bool,
}

/// The freeing thread held before each step: `reached` says it waits, a word
/// on `go` lets one step run.
struct Held {
    reached: Receiver<usize>,
    go: Sender<()>,
    waiting: bool,
}

fn hold(p: &Pool) -> Held {
    let (reached, go) = hold_steps(p, 1);
    Held {
        reached,
        go,
        waiting: false,
    }
}

impl Held {
    /// Let one step run (if the thread waits for one); whether it ran.
    fn step(&mut self, p: &Pool) -> bool {
        if !self.waiting {
            match self.reached.recv_timeout(Duration::from_millis(20)) {
                Ok(_) => self.waiting = true,
                Err(_) => return false,
            }
        }
        self.go.send(()).unwrap();
        self.waiting = false;
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "the step did not end");
            match self.reached.recv_timeout(Duration::from_millis(10)) {
                Ok(_) => {
                    self.waiting = true;
                    return true;
                }
                Err(RecvTimeoutError::Timeout) if p.pending_frees() == 0 => return true,
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("freeing thread gone"),
            }
        }
    }
}

fn clean(p: &Pool, ctx: &str) {
    let r = p.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "{ctx}: fsck:\n{r}");
    assert_eq!(r.leaked_blocks, 0, "{ctx}");
}

/// Every branch reads as its model: size, written blocks, a few other blocks
/// as zeros.
fn check(p: &Pool, ino: u64, models: &HashMap<String, Model>, rng: &mut SmallRng, ctx: &str) {
    for (name, m) in models {
        let b = p
            .branch_id(name)
            .unwrap_or_else(|e| panic!("{ctx}: {name}: {e}"));
        let a = p
            .getattr(b, ino)
            .unwrap_or_else(|e| panic!("{ctx}: {name}: {e}"));
        assert_eq!(a.size, m.size, "{ctx}: {name}: size");
        for (&blk, &fill) in &m.blocks {
            if blk * BS >= m.size {
                continue;
            }
            let got = p.read_file(b, ino, blk * BS, BS as usize).unwrap();
            assert!(
                got.iter().all(|&x| x == fill),
                "{ctx}: {name}: block {blk} should be {fill}"
            );
        }
        for _ in 0..4 {
            if m.size < BS {
                break;
            }
            let blk = rng.gen_range(0..m.size / BS);
            if m.blocks.contains_key(&blk) {
                continue;
            }
            let got = p.read_file(b, ino, blk * BS, BS as usize).unwrap();
            assert!(
                got.iter().all(|&x| x == 0),
                "{ctx}: {name}: block {blk} should be zeros"
            );
        }
    }
}

/// An image of what is on the device now (the running transaction's blocks
/// not committed): it opens clean, its drops finish, clean again.
fn crash_image(dev: &MemDevice, ctx: &str) {
    let q = Pool::open_on(Arc::new(dev.snapshot()), &opts()).expect("open image");
    clean(&q, &format!("{ctx}: image"));
    q.finish_frees();
    assert_eq!(q.pending_frees(), 0, "{ctx}: image");
    clean(&q, &format!("{ctx}: image finished"));
}

fn run(seed: u64, ops: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev = Arc::new(MemDevice::new());
    let mut p = Pool::create_on(dev.clone(), &opts()).unwrap();
    let main = p.branch_id("main").unwrap();
    let ino = file(&p, main, b"f");
    p.commit().unwrap();
    let mut held = hold(&p);
    let mut models: HashMap<String, Model> = HashMap::new();
    models.insert("main".into(), Model::default());
    let mut next_name = 0;
    let mut steps = 0;
    let mut drops_seen = 0;
    for op in 0..ops {
        let ctx = format!("seed {seed} op {op}");
        let mut names: Vec<String> = models.keys().cloned().collect();
        names.sort();
        let writable: Vec<String> = names
            .iter()
            .filter(|n| !models[*n].snapshot)
            .cloned()
            .collect();
        let pick = |rng: &mut SmallRng, v: &[String]| v[rng.gen_range(0..v.len())].clone();
        let r = rng.gen_range(0..100);
        let mut verify = false;
        match r {
            0..=9 if models.len() < 7 => {
                let from = pick(&mut rng, &names);
                let snap = rng.gen_bool(0.4);
                let name = format!("b{next_name}");
                next_name += 1;
                let made = if snap {
                    p.snapshot_create(&name, &from)
                } else {
                    p.branch_create(&name, &from)
                };
                match made {
                    Ok(_) => {
                        let mut m = models[&from].clone();
                        m.snapshot = snap;
                        models.insert(name, m);
                    }
                    Err(e) => assert_eq!(e.errno(), libc::ENOSPC, "{ctx}: create: {e}"),
                }
            }
            10..=29 => {
                let name = pick(&mut rng, &writable);
                let b = p.branch_id(&name).unwrap();
                let blk = rng.gen_range(0..SPAN / BS);
                let fill = rng.gen_range(1..=255u8);
                match p.write_file(b, ino, blk * BS, &[fill; BS as usize]) {
                    Ok(_) => {
                        let m = models.get_mut(&name).unwrap();
                        m.blocks.insert(blk, fill);
                        m.size = m.size.max((blk + 1) * BS);
                    }
                    Err(e) if e.errno() == libc::ENOSPC => {}
                    Err(e) => panic!("{ctx}: write: {e}"),
                }
            }
            30..=41 => {
                let name = pick(&mut rng, &writable);
                let b = p.branch_id(&name).unwrap();
                let off = rng.gen_range(0..SPAN / (64 * MIB)) * 64 * MIB;
                let len = [256 * MIB, 3 * GIB, 5 * GIB][rng.gen_range(0..3)];
                let r = p.fallocate(b, ino, off, len, false);
                // Fallocate goes in steps: one that failed may have kept
                // those before it. Fallocated blocks read as zeros either way.
                let size = p.getattr(b, ino).unwrap().size;
                let m = models.get_mut(&name).unwrap();
                match r {
                    Ok(()) => assert_eq!(size, m.size.max(off + len), "{ctx}"),
                    Err(e) if e.errno() == libc::ENOSPC => {
                        assert!(size >= m.size && size <= m.size.max(off + len), "{ctx}")
                    }
                    Err(e) => panic!("{ctx}: fallocate: {e}"),
                }
                m.size = size;
            }
            42..=51 => {
                let name = pick(&mut rng, &writable);
                let b = p.branch_id(&name).unwrap();
                let off = rng.gen_range(0..SPAN / BS) * BS;
                let len = rng.gen_range(1..=(GIB / BS)) * BS;
                match p.punch_hole(b, ino, off, len) {
                    Ok(()) => {
                        let m = models.get_mut(&name).unwrap();
                        let gone: Vec<u64> = m
                            .blocks
                            .range(off / BS..(off + len) / BS)
                            .map(|(k, _)| *k)
                            .collect();
                        for k in gone {
                            m.blocks.remove(&k);
                        }
                    }
                    Err(e) if e.errno() == libc::ENOSPC => {}
                    Err(e) => panic!("{ctx}: punch: {e}"),
                }
            }
            52..=61 if names.len() > 1 => {
                let name = pick(&mut rng, &names);
                if name != "main" {
                    p.branch_delete(&name)
                        .unwrap_or_else(|e| panic!("{ctx}: delete {name}: {e}"));
                    models.remove(&name);
                    clean(&p, &format!("{ctx}: after delete {name}"));
                    verify = true;
                }
            }
            62..=67 => {
                let name = pick(&mut rng, &writable);
                let to = pick(&mut rng, &names);
                match p.reset_to(&name, &to) {
                    Ok(()) => {
                        let mut m = models[&to].clone();
                        m.snapshot = false;
                        models.insert(name.clone(), m);
                    }
                    Err(e) => assert_eq!(e.errno(), libc::ENOSPC, "{ctx}: reset: {e}"),
                }
                clean(&p, &format!("{ctx}: after reset {name} to {to}"));
                verify = true;
            }
            68..=89 => {
                if p.pending_frees() > 0 {
                    drops_seen += 1;
                }
                if held.step(&p) {
                    steps += 1;
                    clean(&p, &format!("{ctx}: after step {steps}"));
                    verify = true;
                }
            }
            90..=93 => p.commit().unwrap(),
            94..=95 => crash_image(&dev, &ctx),
            96 => {
                // Close mid-drop (the thread stops between two steps) and open.
                drop(held);
                drop(p);
                p = Pool::open_on(dev.clone(), &opts()).expect("reopen");
                held = hold(&p);
                clean(&p, &format!("{ctx}: reopened"));
                verify = true;
            }
            _ => {
                // A branch with GiBs of its own, deleted at once: a drop of
                // several steps that the operations after it run between.
                let from = pick(&mut rng, &names);
                let name = format!("b{next_name}");
                next_name += 1;
                if let Ok(b) = p.branch_create(&name, &from) {
                    match p.fallocate(b, ino, SPAN, 5 * GIB, false) {
                        Ok(()) => {}
                        Err(e) if e.errno() == libc::ENOSPC => {}
                        Err(e) => panic!("{ctx}: fallocate: {e}"),
                    }
                    p.branch_delete(&name)
                        .unwrap_or_else(|e| panic!("{ctx}: delete {name}: {e}"));
                    clean(&p, &format!("{ctx}: after delete of big {name}"));
                }
            }
        }
        if op % 50 == 0 {
            eprintln!("{ctx}: {steps} steps, {} branches", models.len());
        }
        if verify || op % 25 == 0 {
            check(&p, ino, &models, &mut rng, &ctx);
        }
    }
    drop(held);
    p.finish_frees();
    clean(&p, &format!("seed {seed}: end"));
    check(&p, ino, &models, &mut rng, &format!("seed {seed}: end"));
    eprintln!("seed {seed}: {steps} steps let run, {drops_seen} times a drop pending");
}

#[test]
fn random_sequences_with_drops_stepped() {
    let seeds: u64 = std::env::var("COWFS_DROPRAND_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let ops: usize = std::env::var("COWFS_DROPRAND_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    for seed in 0..seeds {
        run(0xd509 + seed, ops);
    }
}
