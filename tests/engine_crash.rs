//! Crash test (issue 2, check 2; issue 7, crash consistency at every flush boundary).
//!
//! A workload of file operations, branch/snapshot/delete/rename and commits (explicit,
//! automatic on the dirty limit, small one-flush commits and large two-flush ones) runs
//! on a recording MemDevice. The state of every branch is recorded at each commit
//! (keyed by generation). Then for every flush boundary, and for random points between
//! flushes with a random subset of the unflushed writes applied in random order, the
//! image a power cut would leave is built and opened: open must succeed, fsck must be
//! clean, the pool must be at a generation no older than the last commit whose flush
//! completed before the cut (and no newer than a superblock that reached the image),
//! and every branch must equal the state recorded for that generation.

#[path = "support/crash_cuts.rs"]
mod crash_cuts;
#[path = "support/dump.rs"]
mod dump;

use std::collections::BTreeMap;
use std::sync::Arc;

use cowfs::fs::{Owner, SetAttr, ROOT_INO};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{DeviceEvent, MemDevice};
use crash_cuts::{for_each_cut, Cut};
use dump::{dump_branch, first_difference, Tree};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type PoolState = BTreeMap<String, (bool, Tree)>;

fn dump_pool(pool: &Pool) -> PoolState {
    pool.list()
        .into_iter()
        .map(|i| {
            let t = dump_branch(pool, i.id).unwrap_or_else(|e| panic!("walk '{}': {e}", i.name));
            (i.name, (i.snapshot, t))
        })
        .collect()
}

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(64 << 20),
        cache_bytes: 256 << 10,
        // Automatic commits in the middle of the workload.
        dirty_limit_bytes: 160 << 10,
        root_uid: 0,
        root_gid: 0,
    }
}

/// What the workload left behind: the base image, every device event after it, and
/// the state of the pool at each generation.
struct Recording {
    base: MemDevice,
    events: Vec<DeviceEvent>,
    states: BTreeMap<u64, PoolState>,
}

fn run_workload(seed: u64, steps: usize) -> Recording {
    let mut rng = SmallRng::seed_from_u64(seed);
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).expect("create");
    let main = pool.branch_id("main").expect("main");
    let f = pool
        .mknod(
            main,
            ROOT_INO,
            b"seed",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("mknod");
    pool.write_file(main, f.ino, 0, b"before the recording")
        .expect("write");
    pool.commit().expect("commit");
    let base = dev.snapshot();
    let mut states = BTreeMap::new();
    states.insert(pool.generation(), dump_pool(&pool));
    dev.start_recording();
    let mut events = Vec::new();
    let mut seq = 0;
    for step in 0..steps {
        let gen0 = pool.generation();
        let branches: Vec<(String, u64, bool)> = pool
            .list()
            .into_iter()
            .map(|i| (i.name, i.id, i.snapshot))
            .collect();
        let writable: Vec<&(String, u64, bool)> = branches.iter().filter(|b| !b.2).collect();
        let (bname, b, _) = writable[rng.gen_range(0..writable.len())].clone();
        let name = format!("f{}", rng.gen_range(0..12)).into_bytes();
        let dir = if rng.gen_bool(0.3) {
            match pool.lookup(b, ROOT_INO, b"d") {
                Ok(a) => a.ino,
                Err(_) => pool
                    .mkdir(b, ROOT_INO, b"d", 0o755, Owner::default())
                    .map(|a| a.ino)
                    .unwrap_or(ROOT_INO),
            }
        } else {
            ROOT_INO
        };
        let target = pool.lookup(b, dir, &name).ok().filter(|a| !a.is_dir());
        match rng.gen_range(0..100) {
            0..=39 => {
                let ino = match target {
                    Some(a) => a.ino,
                    None => {
                        pool.mknod(b, dir, &name, libc::S_IFREG | 0o600, 0, Owner::default())
                            .expect("mknod")
                            .ino
                    }
                };
                let len = match rng.gen_range(0..10) {
                    0..=3 => rng.gen_range(1..1000),
                    4..=7 => rng.gen_range(1000..40_000),
                    8 => rng.gen_range(40_000..300_000),
                    // Over the one-flush manifest limit: a two-flush commit.
                    _ => rng.gen_range(1_400_000..2_000_000),
                };
                let off = rng.gen_range(0..200_000);
                let byte: u8 = rng.gen();
                pool.write_file(b, ino, off, &vec![byte; len])
                    .expect("write");
            }
            40..=47 => {
                if let Some(a) = target {
                    let s = SetAttr {
                        size: Some(rng.gen_range(0..100_000)),
                        ..Default::default()
                    };
                    pool.setattr(b, a.ino, &s).expect("truncate");
                }
            }
            48..=55 => {
                let _ = pool.unlink(b, dir, &name);
            }
            56..=61 => {
                let to = format!("f{}", rng.gen_range(0..12)).into_bytes();
                let _ = pool.rename(b, dir, &name, ROOT_INO, &to, 0);
            }
            62..=65 => {
                let other = format!("f{}", rng.gen_range(0..12)).into_bytes();
                if let (Some(s), Ok(d)) = (target, pool.lookup(b, ROOT_INO, &other)) {
                    if !d.is_dir() && d.ino != s.ino {
                        let _ = pool.clone_range(b, s.ino, 0, d.ino, 0, 1 << 20);
                    }
                }
            }
            66..=69 => {
                if let Some(a) = target {
                    let v = vec![rng.gen::<u8>(); rng.gen_range(0..200)];
                    pool.setxattr(b, a.ino, b"user.k", &v, 0).expect("setxattr");
                }
            }
            70..=72 => {
                if let Some(a) = target {
                    let off = rng.gen_range(0..100_000);
                    pool.punch_hole(b, a.ino, off, rng.gen_range(1..50_000))
                        .expect("punch");
                }
            }
            73..=74 => {
                if let Some(a) = target {
                    let n = format!("l{}", rng.gen_range(0..4)).into_bytes();
                    let _ = pool.link(b, a.ino, ROOT_INO, &n);
                }
            }
            75..=80 => {
                seq += 1;
                let new = format!("b{seq}");
                let from = &branches[rng.gen_range(0..branches.len())].0;
                if rng.gen_bool(0.5) {
                    pool.snapshot_create(&new, from).expect("snapshot");
                } else {
                    pool.branch_create(&new, from).expect("branch");
                }
            }
            81..=84 => {
                let victim = &branches[rng.gen_range(0..branches.len())];
                if victim.2 || writable.len() > 1 {
                    pool.branch_delete(&victim.0).expect("delete");
                }
            }
            85..=86 => {
                seq += 1;
                pool.branch_rename(&bname, &format!("r{seq}"))
                    .expect("rename");
            }
            _ => pool.commit().expect("commit"),
        }
        let gen = pool.generation();
        assert!(
            gen <= gen0 + 1,
            "step {step}: more than one commit in one step"
        );
        if gen != gen0 {
            states.insert(gen, dump_pool(&pool));
        }
        events.extend(dev.take_log());
        dev.start_recording();
    }
    pool.commit().expect("final commit");
    events.extend(dev.take_log());
    states
        .entry(pool.generation())
        .or_insert_with(|| dump_pool(&pool));
    Recording {
        base,
        events,
        states,
    }
}

struct CutStats {
    boundaries: usize,
    between: usize,
    newer_than_flushed: usize,
}

/// Check every flush boundary and `per_gap` random points inside each run of
/// unflushed writes.
fn check_cuts(rec: &Recording, seed: u64, per_gap: usize) -> CutStats {
    let mut stats = CutStats {
        boundaries: 0,
        between: 0,
        newer_than_flushed: 0,
    };
    let base_gen = *rec.states.keys().next().expect("a state");
    let check = |img: MemDevice, cut: &Cut| {
        if cut.random {
            stats.between += 1;
        } else {
            stats.boundaries += 1;
        }
        let ctx = format!(
            "seed {seed} cut {} (after event {} of {})",
            cut.n,
            cut.at,
            rec.events.len()
        );
        let pool = cut.open(img, &opts(), &ctx);
        let gen = pool.generation();
        if gen > cut.durable_gen {
            stats.newer_than_flushed += 1;
        }
        let report = pool
            .fsck(&FsckOptions::default())
            .unwrap_or_else(|e| panic!("{ctx}: fsck: {e}"));
        assert!(report.is_clean(), "{ctx}: fsck:\n{report}");
        let want = rec
            .states
            .get(&gen)
            .unwrap_or_else(|| panic!("{ctx}: no recorded state for generation {gen}"));
        let got = dump_pool(&pool);
        let names = |s: &PoolState| s.keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&got), names(want), "{ctx}: branches");
        for (name, (snap, tree)) in want {
            let (gsnap, gtree) = &got[name];
            assert_eq!(snap, gsnap, "{ctx}: '{name}' snapshot flag");
            assert!(
                tree == gtree,
                "{ctx}: branch '{name}' at generation {gen}: {}",
                first_difference(tree, gtree)
            );
        }
    };
    for_each_cut(&rec.base, &rec.events, base_gen, seed, per_gap, check);
    stats
}

#[test]
fn every_cut_point_opens_clean_at_a_completed_commit() {
    let mut total = 0;
    for seed in [1u64, 2, 3] {
        let rec = run_workload(seed, 250);
        let flushes = rec
            .events
            .iter()
            .filter(|e| matches!(e, DeviceEvent::Flush))
            .count();
        let s = check_cuts(&rec, seed, 4);
        println!(
            "crash seed {seed}: {} commits recorded, {} events, {flushes} flushes; \
             checked {} flush-boundary cuts and {} cuts between flushes \
             ({} opened a commit newer than the last flush); all passed",
            rec.states.len(),
            rec.events.len(),
            s.boundaries,
            s.between,
            s.newer_than_flushed
        );
        assert!(rec.states.len() > 40, "workload made too few commits");
        assert_eq!(s.boundaries, flushes);
        total += s.boundaries + s.between;
    }
    println!("crash: {total} cut points checked, all passed");
}
