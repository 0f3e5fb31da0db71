//! Replays every input kept under fuzz/regressions/<target>/ (the inputs that made a
//! fuzz target fail once, kept after the fix) and the seeds under fuzz/seeds/<target>/
//! (valid inputs, which reach the round-trip checks) through the same code the fuzz
//! targets run, plus a fixed set of edge inputs for each target, so `cargo test`
//! catches a decoder regression without cargo-fuzz or a nightly toolchain.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

use cowfs::store::device::BlockDevice;
use cowfs::store::BLOCK_SIZE;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

#[test]
fn kept_fuzz_inputs_replay_without_failure() {
    replay("regressions");
}

#[test]
fn seed_inputs_replay_without_failure() {
    replay("seeds");
}

fn replay(folder: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(folder);
    let mut replayed = Vec::new();
    for (name, target) in targets::TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(name)) else {
            continue;
        };
        for entry in dir {
            let path = entry.expect("entry").path();
            let data = std::fs::read(&path).expect("read input");
            println!("replaying {}", path.display());
            target(&data);
            replayed.push(path);
        }
    }
    println!("{} inputs of fuzz/{folder} replayed", replayed.len());
    assert!(!replayed.is_empty(), "no inputs under fuzz/{folder}");
}

#[test]
fn every_target_survives_edge_inputs() {
    let base = targets::base_image();
    let mut image = vec![0u8];
    let mut b = vec![0u8; BLOCK_SIZE];
    for a in 0..base.len_blocks() {
        base.read_at(a, &mut b).expect("read");
        image.extend_from_slice(&b);
    }
    let mut rng = SmallRng::seed_from_u64(1);
    let random: Vec<u8> = (0..3 * BLOCK_SIZE).map(|_| rng.gen()).collect();
    let mut patches = vec![3u8];
    for _ in 0..200 {
        patches.extend_from_slice(&rng.gen::<[u8; 5]>());
    }
    let inputs: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![1],
        vec![0; 5000],
        vec![0xff; 5000],
        random,
        image.clone(),
        vec![1],
        patches,
        image[1..].to_vec(),
    ];
    for (name, target) in targets::TARGETS {
        for (i, input) in inputs.iter().enumerate() {
            println!("{name}: input {i} ({} bytes)", input.len());
            target(input);
        }
    }
}
