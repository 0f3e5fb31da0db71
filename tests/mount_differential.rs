//! Differential test of the mounted filesystem against the native one: seeded
//! random system-call sequences over a small namespace (tests/mount_diff/ops.rs:
//! a few directories and about twenty names, so that creates collide, renames
//! land on existing entries and rmdir meets full directories) are applied step
//! by step to a cowfs mount and to a directory on the host's filesystem (a
//! tempdir beside the pool: ext4 on the machine this was written on). Up to six
//! descriptors stay open across steps, so they outlive unlinks, renames and
//! truncates; a fifth of the calls run as an unprivileged user (filesystem uid
//! and gid, and supplementary groups that may or may not hold a file's group);
//! a tenth are probes that say whether a call moved a path's mtime. Xattr calls
//! include POSIX ACLs (valid access and default ACLs, and invalid blobs).
//!
//! Every call must return the same value or errno and the same bytes on both
//! (tests/mount_diff/apply.rs says what is compared and what the two may
//! legitimately differ in). Every COMPARE_EVERY steps the whole trees must agree
//! in what POSIX fixes (tests/mount_diff/tree.rs: types, modes, owners, link
//! counts, sizes but directories', data, symlink targets, user and trusted
//! xattrs and POSIX ACLs, sorted names, hard-link groups, the paths each open descriptor
//! reaches, whether a probed mtime moved); every REMOUNT_EVERY steps and at the
//! end the descriptors are closed, cowfs is unmounted and remounted and the
//! trees compared again (what was written must persist); at the end
//! `cowfs fsck` must be clean.
//!
//! Runs as root (chown, mknod, other users' ids). By default DEFAULT_SEEDS seeds
//! of DEFAULT_STEPS steps (about 20 s on 2 cores). Longer runs:
//!   COWFS_DIFF_STEPS=20000 COWFS_DIFF_SEEDS=100,101,102 \
//!     cargo test -p cowfs --test mount_differential -- --nocapture
//! A failure prints its seed, step and the operations before it; rerun with that
//! seed and at least that many steps to reproduce it.

mod mount;
mod mount_diff;

use std::collections::VecDeque;

use mount::Fixture;
use mount_diff::apply::{Outcome, Side};
use mount_diff::ops::{Gen, Op};
use mount_diff::tree::{differences, fd_paths, snapshot};
use rand::rngs::SmallRng;
use rand::SeedableRng;

const DEFAULT_SEEDS: [u64; 4] = [1, 2, 3, 4];
const DEFAULT_STEPS: usize = 6000;
const COMPARE_EVERY: usize = 100;
const REMOUNT_EVERY: usize = 500;
/// Operations shown before a mismatch, to help minimise it.
const HISTORY: usize = 40;

fn env_steps() -> usize {
    std::env::var("COWFS_DIFF_STEPS")
        .ok()
        .map_or(DEFAULT_STEPS, |s| {
            s.parse()
                .unwrap_or_else(|_| panic!("COWFS_DIFF_STEPS={s:?} is not a number"))
        })
}

fn env_seeds() -> Vec<u64> {
    std::env::var("COWFS_DIFF_SEEDS")
        .ok()
        .map_or(DEFAULT_SEEDS.to_vec(), |s| {
            s.split(',')
                .map(|x| {
                    x.trim()
                        .parse()
                        .unwrap_or_else(|_| panic!("COWFS_DIFF_SEEDS: {x:?} is not a number"))
                })
                .collect()
        })
}

struct Run {
    seed: u64,
    steps: usize,
    history: VecDeque<(usize, Op)>,
}

impl Run {
    fn fail(&self, step: usize, what: &str) -> ! {
        let recent: Vec<String> = self
            .history
            .iter()
            .map(|(i, op)| format!("  {i}: {op:?}"))
            .collect();
        panic!(
            "seed {} step {step}: {what}\nrecent operations:\n{}\nreproduce: COWFS_DIFF_SEEDS={} COWFS_DIFF_STEPS={}",
            self.seed,
            recent.join("\n"),
            self.seed,
            self.steps.max(step + 1)
        );
    }

    fn compare_trees(&self, step: usize, native: &Side, cow: &Side, when: &str) {
        let (a, b) = (snapshot(&native.root), snapshot(&cow.root));
        let d = differences(&a, &b);
        if !d.is_empty() {
            self.fail(step, &format!("trees differ {when}:\n{d}"));
        }
        let (fa, fb) = (
            fd_paths(&a, native.open_fds()),
            fd_paths(&b, cow.open_fds()),
        );
        if fa != fb {
            self.fail(
                step,
                &format!("open descriptors lead to different paths {when}:\n native {fa:?}\n  cowfs {fb:?}"),
            );
        }
    }
}

fn run_seed(seed: u64, steps: usize) -> (usize, usize) {
    let fx = Fixture::new();
    let mut native = Side::new(&fx.native_dir("native"));
    let mut m = fx.mount();
    let mut cow = Side::new(&m.mnt);
    let mut rng = SmallRng::seed_from_u64(seed);
    let gen = Gen::new();
    let mut run = Run {
        seed,
        steps,
        history: VecDeque::new(),
    };
    let mut succeeded = 0;
    for step in 0..steps {
        let op = gen.op(&mut rng, &native.slots_in_use());
        run.history.push_back((step, op.clone()));
        if run.history.len() > HISTORY {
            run.history.pop_front();
        }
        let a = native.apply(&op);
        let b = cow.apply(&op);
        if a != b {
            run.fail(step, &format!("{op:?}\n native {a:?}\n  cowfs {b:?}"));
        }
        if let Outcome::BadSeek { .. } = a {
            run.fail(
                step,
                &format!("{op:?}: the native answer is inconsistent: {a:?}"),
            );
        }
        succeeded += usize::from(a.succeeded());
        if (step + 1) % COMPARE_EVERY == 0 {
            run.compare_trees(step, &native, &cow, "while mounted");
        }
        if (step + 1) % REMOUNT_EVERY == 0 || step + 1 == steps {
            let (a, b) = (native.close_all(), cow.close_all());
            if a != b {
                run.fail(step, &format!("closing all: native {a:?} / cowfs {b:?}"));
            }
            m.stop();
            m = fx.mount();
            run.compare_trees(step, &native, &cow, "after remount");
        }
    }
    m.stop();
    fx.assert_fsck_clean();
    (succeeded, steps)
}

#[test]
fn random_syscalls_match_the_native_filesystem() {
    // SAFETY: umask only sets the process's creation mask; fixed so that modes
    // are the same on every machine.
    unsafe { libc::umask(0o022) };
    let steps = env_steps();
    for seed in env_seeds() {
        let (ok, n) = run_seed(seed, steps);
        eprintln!("seed {seed}: {n} steps, {ok} succeeded");
        assert!(
            ok * 5 > n,
            "seed {seed}: only {ok} of {n} operations succeeded: the workload exercises little"
        );
    }
}
