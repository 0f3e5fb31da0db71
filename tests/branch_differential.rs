//! Differential test of branching through the kernel: `cowfs serve` with branch
//! `main` mounted, random system calls (tests/mount_diff/ops.rs, as in
//! tests/mount_differential.rs) applied to that mount and to a native directory
//! step by step. Every BRANCH_MIN..BRANCH_MAX steps something happens to the
//! branches:
//!
//! - a branch (or, one time in four, a snapshot) is made of `main` or of a
//!   mounted child, while descriptors are open on it and writes, mmap writes
//!   included, sit unflushed in its page cache (each open file gets a fresh
//!   pwrite and an mmap write just before, and those that can be mapped
//!   read-write stay mapped and dirty until the request returned: unmapping
//!   writes a FUSE file back); the branch is mounted
//!   on its own directory and the native side gets a faithful copy of the
//!   source's native directory at that moment (`copy_tree`: data, modes,
//!   owners, times, user and trusted xattrs, POSIX ACLs, symlinks, device
//!   nodes, hard-link groups), which is what `branch create` promises: every write completed
//!   before the request;
//! - or a child is unmounted and deleted; unmounted and `reset` to its source
//!   (its native copy becomes a fresh copy of the source's native directory at
//!   that moment: "makes `branch` identical to `to`") or to any snapshot (its
//!   copy becomes a copy of the snapshot's), after which the snapshots and
//!   branches made of it must still equal their copies; unmounted and mounted
//!   again, read-write or, for a while, read-only; or left unmounted;
//! - branches are often made of the deepest mounted branch, so chains
//!   main -> a -> b -> c grow; when one reaches depth 3, half the events delete
//!   its middle (the parent of the depth-3 branch) and the children of the
//!   deleted branch must keep their data.
//!
//! Random calls then go to `main` and to every mounted child, snapshots too,
//! interleaved, each against its own native copy, with the same step-by-step
//! comparison as mount_differential; every COMPARE_EVERY steps every mounted
//! tree (snapshots too) must equal its native copy (tests/mount_diff/tree.rs),
//! and every read-only mount must refuse writes with EROFS. The calls include
//! those of mount_diff/ops.rs as another user (uid and gid 1000 or 65534, or
//! another gid, with supplementary groups that may or may not hold the file's
//! group: group permission bits, set-group-ID directories and bits) and POSIX
//! ACLs (access and default ACLs set as xattrs, compared with ext4's, and the
//! default ACL's inheritance). At the end every branch is unmounted, mounted
//! again and compared, the daemon stops with exit 0 and `cowfs fsck` must be
//! clean.
//!
//! A snapshot, and a branch mounted read-only, get the same random calls, as
//! root, and the native copy is a read-only bind mount of itself meanwhile
//! (`branch_diff::read_only`): every write-like call must fail as the native
//! one does (EROFS), reads must match, and nothing may change on either side
//! (compared on every later check). While a branch is mounted read-only, a
//! second read-only mount of it must be allowed and equal the copy, and the
//! daemon must refuse with `mounted` a read-write mount of it and a read-only
//! mount of `main` (mounted read-write), as control-protocol.md's `mount`
//! promises.
//!
//! What legitimately differs from the native copy: inode numbers and the times
//! tree.rs does not compare; the copier preserves times with utimensat, so
//! whether a probed mtime is still the probe's is compared across branching.
//! On a read-only mount the calls run as root because the native side's
//! read-only bind checks an unprivileged caller's permission before the
//! read-only flag (EACCES), where a read-only filesystem answers EROFS first;
//! unprivileged calls are covered on the writable mounts.
//!
//! The default run must meet every kind of branch event in EVENTS at least once.
//!
//! Runs as root. By default DEFAULT_SEEDS seeds of DEFAULT_STEPS steps. Longer:
//!   COWFS_BDIFF_STEPS=20000 COWFS_BDIFF_SEEDS=100,101 \
//!     cargo test -p cowfs --test branch_differential -- --nocapture
//! A failure prints its seed, step, the branch and the operations before it.

mod branch_diff;
mod control_support;
mod mount;
mod mount_diff;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use branch_diff::copy::{copy_tree, remove_tree};
use branch_diff::read_only::{bind_read_only, unbind, unrefused_writes};
use control_support::{connect, Served};
use cowfs_ctl::proto::{ErrorKind, MountSpec};
use cowfs_ctl::{Client, ClientResult};
use mount::{cowfs_bin, Fixture};
use mount_diff::apply::{Outcome, Side};
use mount_diff::ops::{Data, Gen, Op, SLOTS};
use mount_diff::sys::fstat;
use mount_diff::tree::{differences, fd_paths, snapshot};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const DEFAULT_SEEDS: [u64; 4] = [1, 2, 3, 4];
const DEFAULT_STEPS: usize = 8000;
const COMPARE_EVERY: usize = 100;
const BRANCH_MIN: usize = 150;
const BRANCH_MAX: usize = 400;
/// Children alive at once (mounted or not); beyond it events retire one.
const MAX_CHILDREN: usize = 4;
const HISTORY: usize = 40;

fn env_list(name: &str) -> Option<Vec<u64>> {
    let s = std::env::var(name).ok()?;
    Some(
        s.split(',')
            .map(|x| {
                x.trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{name}: {x:?} is not a number"))
            })
            .collect(),
    )
}

/// One cowfs branch and its native counterpart.
struct Pair {
    name: String,
    /// Where it is (or was) mounted; also `cow.root`.
    dir: PathBuf,
    native: Side,
    cow: Side,
    mounted: bool,
    snapshot: bool,
    /// Mounted read-only (a snapshot always is; a branch for a while). While
    /// such a pair is mounted, its native copy is a read-only bind mount too
    /// (`branch_diff::read_only`).
    read_only: bool,
    /// The branch it was made from (for `reset`).
    source: String,
    /// Branches between it and `main` (0 for `main`).
    depth: usize,
}

struct Run {
    seed: u64,
    steps: usize,
    history: VecDeque<(usize, String, Op)>,
    events: Vec<String>,
    /// How often each kind of branch event happened.
    counts: BTreeMap<&'static str, usize>,
}

impl Run {
    fn fail(&self, step: usize, what: &str) -> ! {
        let recent: Vec<String> = self
            .history
            .iter()
            .map(|(i, b, op)| format!("  {i} [{b}]: {op:?}"))
            .collect();
        let events: Vec<&String> = self.events.iter().rev().take(10).rev().collect();
        panic!(
            "seed {} step {step}: {what}\nrecent branch events: {events:?}\nrecent operations:\n{}\nreproduce: COWFS_BDIFF_SEEDS={} COWFS_BDIFF_STEPS={}",
            self.seed,
            recent.join("\n"),
            self.seed,
            self.steps.max(step + 1)
        );
    }

    fn compare(&self, step: usize, p: &Pair, when: &str) {
        let (a, b) = (snapshot(&p.native.root), snapshot(&p.cow.root));
        let d = differences(&a, &b);
        if !d.is_empty() {
            self.fail(
                step,
                &format!("branch {}: trees differ {when}:\n{d}", p.name),
            );
        }
        let (fa, fb) = (
            fd_paths(&a, p.native.open_fds()),
            fd_paths(&b, p.cow.open_fds()),
        );
        if fa != fb {
            self.fail(
                step,
                &format!(
                    "branch {}: open descriptors lead to different paths {when}:\n native {fa:?}\n  cowfs {fb:?}",
                    p.name
                ),
            );
        }
    }

    /// Apply `op` to both sides of `p`; the outcomes must agree.
    fn apply(&mut self, step: usize, p: &mut Pair, op: Op) -> Outcome {
        self.history.push_back((step, p.name.clone(), op.clone()));
        if self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let a = p.native.apply(&op);
        let b = p.cow.apply(&op);
        if a != b {
            self.fail(
                step,
                &format!("branch {}: {op:?}\n native {a:?}\n  cowfs {b:?}", p.name),
            );
        }
        if let Outcome::BadSeek { .. } = a {
            self.fail(step, &format!("{op:?}: the native answer is inconsistent"));
        }
        a
    }

    /// Record a branch event of kind `kind`.
    fn event(&mut self, kind: &'static str, what: String) {
        *self.counts.entry(kind).or_default() += 1;
        self.events.push(what);
    }

    fn assert_read_only(&self, step: usize, p: &Pair) {
        let wrong = unrefused_writes(&p.cow.root);
        if !wrong.is_empty() {
            self.fail(
                step,
                &format!("{} is mounted read-only, but: {wrong:?}", p.name),
            );
        }
    }

    /// A `mount` the daemon must refuse with `mounted`.
    fn assert_refused(&self, step: usize, what: &str, r: ClientResult<impl std::fmt::Debug>) {
        match r {
            Err(e) if e.server().is_some_and(|e| e.kind == ErrorKind::Mounted) => {}
            r => self.fail(step, &format!("{what}: {r:?}, not refused as `mounted`")),
        }
    }

    /// Close every descriptor of `p` on both sides (before an unmount).
    fn close_all(&self, step: usize, p: &mut Pair) {
        let (a, b) = (p.native.close_all(), p.cow.close_all());
        if a != b {
            self.fail(
                step,
                &format!("branch {}: closing all: native {a:?} / cowfs {b:?}", p.name),
            );
        }
    }
}

fn s(p: &Path) -> String {
    p.to_str().expect("UTF-8 path").to_string()
}

/// Data that is never zero, so that holes stand out (as ops.rs makes it).
fn fresh_data(rng: &mut SmallRng) -> Data {
    let len = rng.gen_range(1..20_000);
    let seed: u8 = rng.gen();
    Data(
        (0..len)
            .map(|k: usize| (k as u8).wrapping_mul(7).wrapping_add(seed) | 1)
            .collect(),
    )
}

/// Give every open regular file of `p` a pwrite and an mmap write without
/// msync, so that a branch taken now has dirty pages and times to flush.
fn dirty(run: &mut Run, step: usize, rng: &mut SmallRng, p: &mut Pair) {
    for slot in 0..SLOTS {
        if p.native.fds[slot].is_none_or(|o| o.dir) {
            continue;
        }
        for mmap in [false, true] {
            let (off, data) = (rng.gen_range(0..200_000), fresh_data(rng));
            let op = if mmap {
                Op::Mmap {
                    slot,
                    off,
                    data,
                    msync: false,
                }
            } else {
                Op::Pwrite { slot, off, data }
            };
            run.apply(step, p, op);
        }
    }
}

/// Shared writable mappings kept across a branch request: unmapping writes a
/// FUSE file's dirty pages back, so only a mapping still in place leaves them
/// for the request's own flush to find.
struct Mappings(Vec<(*mut libc::c_void, usize)>);

impl Mappings {
    /// Map every open regular file of `p` (where both sides allow it) and write
    /// the same fresh data through the mapping on both sides.
    fn dirty(run: &Run, step: usize, rng: &mut SmallRng, p: &Pair) -> Mappings {
        let mut maps = Vec::new();
        for slot in 0..SLOTS {
            let (Some(a), Some(b)) = (p.native.fds[slot], p.cow.fds[slot]) else {
                continue;
            };
            let size = match (fstat(a.fd), fstat(b.fd)) {
                (Ok(x), Ok(y)) if x.st_mode & libc::S_IFMT == libc::S_IFREG && x.st_size > 0 => {
                    assert_eq!(x.st_size, y.st_size, "sizes differ");
                    x.st_size as usize
                }
                _ => continue,
            };
            let data = fresh_data(rng).0;
            let off = rng.gen_range(0..size);
            let n = data.len().min(size - off);
            let prot = libc::PROT_READ | libc::PROT_WRITE;
            // SAFETY: fresh shared mappings of `size` bytes of open files,
            // written within their bounds, unmapped by `release`.
            let got = [a.fd, b.fd].map(|fd| unsafe {
                libc::mmap(std::ptr::null_mut(), size, prot, libc::MAP_SHARED, fd, 0)
            });
            let ok = got.map(|m| m != libc::MAP_FAILED);
            if ok[0] != ok[1] {
                run.fail(
                    step,
                    &format!(
                        "branch {}: mmap of slot {slot}: native {} / cowfs {}",
                        p.name, ok[0], ok[1]
                    ),
                );
            }
            if ok[0] {
                for m in got {
                    // SAFETY: within the mapping (off + n <= size).
                    unsafe {
                        std::ptr::copy_nonoverlapping(data.as_ptr(), m.cast::<u8>().add(off), n)
                    };
                    maps.push((m, size));
                }
            }
        }
        Mappings(maps)
    }

    fn release(self) {
        for (m, len) in self.0 {
            // SAFETY: a mapping made by `dirty`, unmapped once.
            unsafe { libc::munmap(m, len) };
        }
    }
}

struct World {
    // Dropped first: stops the daemon and detaches its mounts before the
    // fixture's directory goes.
    served: Served,
    fx: Fixture,
    base: PathBuf,
    admin: Client,
    pairs: Vec<Pair>,
    next_id: usize,
    /// A spare mount point, for the mounts the daemon must allow or refuse
    /// beside a branch's own.
    spare: PathBuf,
}

/// After a failure: the read-only binds of native copies go too (lazily: their
/// descriptors may still be open), or they would outlive the test.
impl Drop for World {
    fn drop(&mut self) {
        for p in self.pairs.iter().filter(|p| p.mounted && p.read_only) {
            unbind(&p.native.root, true);
        }
    }
}

impl World {
    fn start() -> World {
        let fx = Fixture::new();
        let base = fx.tmp.path().canonicalize().expect("canonical tmp");
        let socket = base.join("pool.sock");
        let child = Command::new(cowfs_bin())
            .arg("serve")
            .arg(&fx.pool)
            .arg("--socket")
            .arg(&socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cowfs serve");
        let served = Served::new(child, &base);
        let secret = std::fs::read_to_string(cowfs::control::tokens::secret_path(&fx.pool))
            .expect("POOL.token");
        let mut admin = connect(&socket, secret.trim());
        admin.mount("main", &s(&fx.mnt), false).expect("mount main");
        let main = Pair {
            name: "main".into(),
            dir: fx.mnt.clone(),
            native: Side::new(&fx.native_dir("n-main")),
            cow: Side::new(&fx.mnt),
            mounted: true,
            snapshot: false,
            read_only: false,
            source: "main".into(),
            depth: 0,
        };
        let spare = base.join("m-spare");
        std::fs::create_dir(&spare).expect("mkdir spare mount point");
        World {
            served,
            fx,
            base,
            admin,
            pairs: vec![main],
            next_id: 0,
            spare,
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.pairs.iter().position(|p| p.name == name)
    }

    /// A branch or snapshot of `main` or of a mounted child (the deepest one
    /// often, so that chains of branches grow), taken while its files are open
    /// and dirty, mounted; its native side a copy made now.
    fn create(&mut self, run: &mut Run, step: usize, rng: &mut SmallRng) {
        let writable: Vec<usize> = (1..self.pairs.len())
            .filter(|i| self.pairs[*i].mounted && !self.pairs[*i].snapshot)
            .collect();
        let deepest = writable
            .iter()
            .copied()
            .max_by_key(|i| self.pairs[*i].depth);
        let si = match rng.gen_range(0..4) {
            0..=1 => deepest.unwrap_or(0),
            2 => writable.choose(rng).copied().unwrap_or(0),
            _ => 0,
        };
        let snap = rng.gen_bool(0.25);
        self.next_id += 1;
        let name = format!("{}{}", if snap { "s" } else { "c" }, self.next_id);
        let dir = self.base.join(format!("m-{name}"));
        std::fs::create_dir(&dir).expect("mkdir mount point");
        dirty(run, step, rng, &mut self.pairs[si]);
        let maps = Mappings::dirty(run, step, rng, &self.pairs[si]);
        let src = self.pairs[si].name.clone();
        let r = if snap {
            self.admin
                .snapshot_create(&name, &src)
                .and_then(|_| self.admin.mount(&name, &s(&dir), true))
        } else {
            let spec = MountSpec {
                dir: s(&dir),
                read_only: false,
            };
            self.admin.branch_create(&name, &src, Some(spec))
        };
        if let Err(e) = r {
            run.fail(step, &format!("creating {name} from {src}: {e}"));
        }
        let native = self.base.join(format!("n-{name}"));
        copy_tree(&self.pairs[si].native.root, &native);
        maps.release();
        if snap {
            bind_read_only(&native);
        }
        let depth = self.pairs[si].depth + 1;
        run.event(
            if snap { "snapshot" } else { "branch" },
            format!(
                "step {step}: {} {name} of {src}",
                if snap { "snapshot" } else { "branch" }
            ),
        );
        if depth >= 3 && !snap {
            run.event(
                "branch at depth 3 or more",
                format!("step {step}: {name} at depth {depth}"),
            );
        }
        let p = Pair {
            name,
            dir: dir.clone(),
            native: Side::new(&native),
            cow: Side::new(&dir),
            mounted: true,
            snapshot: snap,
            read_only: snap,
            source: src,
            depth,
        };
        run.compare(step, &p, "just made");
        if snap {
            run.assert_read_only(step, &p);
        }
        self.pairs.push(p);
    }

    fn unmount(&mut self, run: &Run, step: usize, i: usize) {
        let p = &mut self.pairs[i];
        run.close_all(step, p);
        if let Err(e) = self.admin.unmount(&s(&p.dir)) {
            run.fail(step, &format!("unmount {}: {e}", p.name));
        }
        if p.read_only {
            unbind(&p.native.root, false);
        }
        p.mounted = false;
        p.read_only = p.snapshot;
    }

    /// Mount `i` again: read-write, or read-only if it is a snapshot.
    fn mount(&mut self, run: &Run, step: usize, i: usize, when: &str) {
        let p = &mut self.pairs[i];
        if let Err(e) = self.admin.mount(&p.name, &s(&p.dir), p.snapshot) {
            run.fail(step, &format!("mount {}: {e}", p.name));
        }
        if p.snapshot {
            bind_read_only(&p.native.root);
        }
        p.mounted = true;
        run.compare(step, p, when);
    }

    /// Mount the (unmounted) branch `i` read-only, its native copy too. The
    /// daemon allows any number of read-only mounts of it, refuses a read-write
    /// one while it is mounted read-only, and a read-only one of a branch mounted
    /// read-write (`main`), both with `mounted` (control-protocol.md, `mount`).
    fn mount_read_only(&mut self, run: &Run, step: usize, i: usize) {
        let p = &mut self.pairs[i];
        if let Err(e) = self.admin.mount(&p.name, &s(&p.dir), true) {
            run.fail(step, &format!("mount {} read-only: {e}", p.name));
        }
        bind_read_only(&p.native.root);
        (p.mounted, p.read_only) = (true, true);
        run.compare(step, p, "mounted read-only");
        run.assert_read_only(step, p);
        let spare = s(&self.spare);
        if let Err(e) = self.admin.mount(&p.name, &spare, true) {
            run.fail(step, &format!("second read-only mount of {}: {e}", p.name));
        }
        let second = Pair {
            name: format!("{} (second read-only mount)", p.name),
            dir: self.spare.clone(),
            native: Side::new(&p.native.root),
            cow: Side::new(&self.spare),
            source: p.source.clone(),
            ..*p
        };
        run.compare(step, &second, "mounted read-only twice");
        if let Err(e) = self.admin.unmount(&spare) {
            run.fail(
                step,
                &format!("unmount the second mount of {}: {e}", p.name),
            );
        }
        let name = p.name.clone();
        let rw = self.admin.mount(&name, &spare, false);
        run.assert_refused(
            step,
            &format!("read-write mount of {name}, mounted read-only"),
            rw,
        );
        let ro = self.admin.mount("main", &spare, true);
        run.assert_refused(step, "read-only mount of main, mounted read-write", ro);
    }

    /// `reset` branch `i` (unmounted) to `to`; its native copy becomes a copy of
    /// `to`'s. A mounted `to` is busy: its dirty pages are part of what `reset`
    /// makes the branch identical to. The branch's own snapshots must not change.
    fn reset(&mut self, run: &mut Run, step: usize, rng: &mut SmallRng, i: usize, to: usize) {
        let (name, target) = (self.pairs[i].name.clone(), self.pairs[to].name.clone());
        let maps = if self.pairs[to].mounted {
            dirty(run, step, rng, &mut self.pairs[to]);
            Some(Mappings::dirty(run, step, rng, &self.pairs[to]))
        } else {
            None
        };
        if let Err(e) = self.admin.reset(&name, &target) {
            run.fail(step, &format!("reset {name} to {target}: {e}"));
        }
        let native = self.pairs[i].native.root.clone();
        remove_tree(&native);
        copy_tree(&self.pairs[to].native.root, &native);
        if let Some(m) = maps {
            m.release();
        }
        self.mount(run, step, i, "after reset");
        self.check_children(run, step, &name, "after a reset of their source");
    }

    /// The snapshots and branches made of `name` still equal their copies
    /// (mounted for it if they are not).
    fn check_children(&mut self, run: &mut Run, step: usize, name: &str, when: &str) {
        for k in 0..self.pairs.len() {
            if self.pairs[k].source != name || self.pairs[k].name == name {
                continue;
            }
            if self.pairs[k].snapshot {
                let what = format!("step {step}: check {} {when}", self.pairs[k].name);
                run.event("snapshot checked after its source changed", what);
            }
            if self.pairs[k].mounted {
                run.compare(step, &self.pairs[k], when);
            } else {
                self.mount(run, step, k, when);
            }
        }
    }

    /// A branch between `main` and a branch at depth 3 or more.
    fn middle_of_chain(&self) -> Option<usize> {
        let deep = self.pairs.iter().filter(|p| !p.snapshot && p.depth >= 3);
        let parents: Vec<&String> = deep.map(|p| &p.source).collect();
        (1..self.pairs.len()).find(|i| parents.contains(&&self.pairs[*i].name))
    }

    fn delete(&mut self, run: &Run, step: usize, i: usize) {
        if self.pairs[i].mounted {
            self.unmount(run, step, i);
        }
        let name = self.pairs[i].name.clone();
        if let Err(e) = self.admin.delete(&name) {
            run.fail(step, &format!("delete {name}: {e}"));
        }
        let p = self.pairs.remove(i);
        remove_tree(&p.native.root);
    }

    /// Something happens to a child: mounted again if it is not; otherwise
    /// unmounted and deleted, reset to its source or to a snapshot, mounted
    /// again (read-write, or read-only if it is a branch), or left unmounted for
    /// a while. The middle of a chain of three branches is deleted whenever
    /// there is one (half the time): its children must keep their data.
    fn retire(&mut self, run: &mut Run, step: usize, rng: &mut SmallRng) {
        if let Some(m) = self.middle_of_chain().filter(|_| rng.gen_bool(0.5)) {
            let name = self.pairs[m].name.clone();
            run.event(
                "middle of a chain deleted",
                format!("step {step}: delete {name}, the middle of a chain"),
            );
            self.delete(run, step, m);
            return self.check_children(run, step, &name, "after their source was deleted");
        }
        let i = rng.gen_range(1..self.pairs.len());
        let name = self.pairs[i].name.clone();
        if !self.pairs[i].mounted {
            run.event("mount", format!("step {step}: mount {name}"));
            return self.mount(run, step, i, "mounted again");
        }
        let branch = !self.pairs[i].snapshot;
        let source = self
            .index(&self.pairs[i].source.clone())
            .filter(|s| self.pairs[*s].mounted);
        let snapshots: Vec<usize> = (1..self.pairs.len())
            .filter(|k| self.pairs[*k].snapshot)
            .collect();
        let what = rng.gen_range(0..12);
        self.unmount(run, step, i);
        match what {
            0..=2 => {
                run.event("delete", format!("step {step}: delete {name}"));
                self.delete(run, step, i);
            }
            3..=4 if branch && source.is_some() => {
                let to = source.expect("checked");
                let what = format!("step {step}: reset {name} to {}", self.pairs[to].name);
                run.event("reset to the source", what);
                self.reset(run, step, rng, i, to);
            }
            5..=6 if branch && !snapshots.is_empty() => {
                let to = *snapshots.choose(rng).expect("checked");
                let what = format!("step {step}: reset {name} to {}", self.pairs[to].name);
                run.event("reset to a snapshot", what);
                self.reset(run, step, rng, i, to);
            }
            7 => run.event("unmount", format!("step {step}: unmount {name}")),
            8..=9 if branch => {
                run.event(
                    "read-only mount of a branch",
                    format!("step {step}: mount {name} read-only"),
                );
                self.mount_read_only(run, step, i);
            }
            _ => {
                run.event("remount", format!("step {step}: remount {name}"));
                self.mount(run, step, i, "after remount");
            }
        }
    }

    fn compare_all(&self, run: &Run, step: usize) {
        for p in self.pairs.iter().filter(|p| p.mounted) {
            run.compare(step, p, "while mounted");
            if p.read_only {
                run.assert_read_only(step, p);
            }
        }
    }
}

/// A read-only mount gets the random calls as root: an unprivileged
/// caller's write meets the permission check before EROFS on the native copy's
/// read-only bind, where a read-only filesystem (the mount) answers EROFS first.
fn as_root(op: Op) -> Op {
    match op {
        Op::As { op, .. } => *op,
        Op::Probe { path, op } => Op::Probe {
            path,
            op: Box::new(as_root(*op)),
        },
        op => op,
    }
}

fn run_seed(seed: u64, steps: usize) -> (usize, BTreeMap<&'static str, usize>) {
    let mut w = World::start();
    let mut rng = SmallRng::seed_from_u64(seed);
    let gen = Gen::new();
    let mut run = Run {
        seed,
        steps,
        history: VecDeque::new(),
        events: Vec::new(),
        counts: BTreeMap::new(),
    };
    let mut succeeded = 0;
    let mut next_event = rng.gen_range(BRANCH_MIN..BRANCH_MAX);
    for step in 0..steps {
        let mounted: Vec<usize> = (1..w.pairs.len()).filter(|i| w.pairs[*i].mounted).collect();
        let i = match mounted.choose(&mut rng) {
            Some(i) if rng.gen_bool(0.5) => *i,
            _ => 0,
        };
        let p = &mut w.pairs[i];
        let mut op = gen.op(&mut rng, &p.native.slots_in_use());
        if p.read_only {
            op = as_root(op);
        }
        let a = run.apply(step, p, op);
        succeeded += usize::from(a.succeeded());
        if step + 1 == next_event {
            next_event += rng.gen_range(BRANCH_MIN..BRANCH_MAX);
            if w.pairs.len() <= MAX_CHILDREN && (w.pairs.len() == 1 || rng.gen_bool(0.6)) {
                w.create(&mut run, step, &mut rng);
            } else {
                w.retire(&mut run, step, &mut rng);
            }
        }
        if (step + 1) % COMPARE_EVERY == 0 {
            w.compare_all(&run, step);
        }
    }
    // Everything written must persist: each branch unmounted, mounted again and
    // compared, then unmounted for good.
    for i in 0..w.pairs.len() {
        if w.pairs[i].mounted {
            w.unmount(&run, steps, i);
        }
        w.mount(&run, steps, i, "at the end, after remount");
        w.unmount(&run, steps, i);
    }
    assert_eq!(w.served.stop(), Some(0), "cowfs serve exits 0 on SIGTERM");
    w.fx.assert_fsck_clean();
    (succeeded, run.counts)
}

/// The kinds of branch event the default run must have met at least once (over
/// all its seeds), so that a change of the generator cannot quietly drop one.
const EVENTS: [&str; 8] = [
    "snapshot",
    "reset to the source",
    "reset to a snapshot",
    "snapshot checked after its source changed",
    "read-only mount of a branch",
    "branch at depth 3 or more",
    "middle of a chain deleted",
    "delete",
];

#[test]
fn branches_match_native_copies() {
    // SAFETY: umask only sets the process's creation mask; fixed so that modes
    // are the same on every machine.
    unsafe { libc::umask(0o022) };
    let steps = env_list("COWFS_BDIFF_STEPS").map_or(DEFAULT_STEPS, |v| v[0] as usize);
    let seeds = env_list("COWFS_BDIFF_SEEDS");
    let mut total: BTreeMap<&str, usize> = BTreeMap::new();
    for seed in seeds.clone().unwrap_or(DEFAULT_SEEDS.to_vec()) {
        let (ok, counts) = run_seed(seed, steps);
        eprintln!("seed {seed}: {steps} steps, {ok} succeeded; branch events {counts:?}");
        assert!(
            ok * 5 > steps,
            "seed {seed}: only {ok} of {steps} operations succeeded: the workload exercises little"
        );
        assert!(
            counts.contains_key("branch"),
            "seed {seed}: no branch was made"
        );
        for (k, n) in counts {
            *total.entry(k).or_default() += n;
        }
    }
    if seeds.is_none() && env_list("COWFS_BDIFF_STEPS").is_none() {
        let missing: Vec<&&str> = EVENTS.iter().filter(|k| !total.contains_key(*k)).collect();
        assert!(missing.is_empty(), "the default run never met {missing:?}");
    }
}

/// `reset BRANCH --to PARENT` with the parent mounted and busy: the branch gets
/// every write completed on the parent before the request, as `branch create`
/// does, also those still in the parent mount's page cache (written with
/// pwrite(2) or through a shared mapping, never fsync'ed). Before, the reset
/// took the daemon's tree as the kernel had happened to write it back, so the
/// branch got the parent's older data (found by the random test above). It
/// still failed about once in 40 runs under load (the mmap write missing):
/// syncfs(2) does not wait for a FUSE mount's write-back, so the daemon now
/// waits for it itself (cowfs/src/fuse/write_back.rs): 5 of 200 runs failed
/// without that wait while random runs of the test above loaded the machine,
/// 0 of 260 with it. The daemon runs as its
/// own process: a process that serves a mount deadlocks unmapping a dirty
/// mapping of it (the write-back waits on its own threads).
#[test]
fn reset_to_a_mounted_branch_holds_its_unflushed_writes() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    const LEN: usize = 64 << 10;
    let mut w = World::start();
    let mnt = w.fx.mnt.clone();
    let open = |name: &str| {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(mnt.join(name))
            .expect("create");
        f.write_all_at(&[1u8; LEN], 0).expect("write");
        f.sync_all().expect("fsync");
        f
    };
    let (a, b) = (open("a"), open("b"));
    w.admin.branch_create("fork", "main", None).expect("fork");

    // Dirty pages only: no fsync, the files stay open and `b` stays mapped
    // (unmapping it would write it back).
    a.write_all_at(&[2u8; 4096], 8192).expect("pwrite");
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a shared mapping of `b`'s LEN bytes, written within them and
    // unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            prot,
            libc::MAP_SHARED,
            b.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED, "mmap");
    // SAFETY: within the mapping.
    unsafe { std::ptr::write_bytes(map.cast::<u8>().add(32 << 10), 3, 4096) };
    let (mut want_a, mut want_b) = (vec![1u8; LEN], vec![1u8; LEN]);
    want_a[8192..12288].fill(2);
    want_b[32 << 10..(32 << 10) + 4096].fill(3);

    w.admin.reset("fork", "main").expect("reset fork to main");
    let fork = w.base.join("fork");
    std::fs::create_dir(&fork).expect("mkdir");
    w.admin.mount("fork", &s(&fork), false).expect("mount fork");
    let got_a = std::fs::read(fork.join("a")).expect("read fork");
    let got_b = std::fs::read(fork.join("b")).expect("read fork");
    w.admin.unmount(&s(&fork)).expect("unmount fork");
    // SAFETY: the mapping made above, unmapped once.
    unsafe { libc::munmap(map, LEN) };
    drop((a, b));
    w.admin.unmount(&s(&mnt)).expect("unmount main");
    assert_eq!(w.served.stop(), Some(0), "cowfs serve exits 0 on SIGTERM");
    w.fx.assert_fsck_clean();
    assert!(
        got_a == want_a,
        "the reset branch misses the parent's unflushed pwrite: bytes at 8192 {:?}",
        &got_a[8192..8196]
    );
    assert!(
        got_b == want_b,
        "the reset branch misses the parent's unflushed mmap write: bytes at 32768 {:?}",
        &got_b[32768..32772]
    );
}

/// The wait for the parent's write-back (above) keeps the parent's page cache:
/// the daemon opens and closes each open file by handle. It first invalidated
/// every open file instead, so each `branch create` of a busy parent dropped its
/// cached pages (a 1 GiB file held open: 140 ms per create instead of 5, and the
/// whole file read from the daemon again).
#[test]
fn branching_a_mounted_branch_keeps_its_page_cache() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    const LEN: usize = 8 << 20;
    let mut w = World::start();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(w.fx.mnt.join("cached"))
        .expect("create");
    f.write_all_at(&vec![5u8; LEN], 0).expect("write");
    f.sync_all().expect("fsync");
    let mut buf = vec![0u8; LEN];
    f.read_exact_at(&mut buf, 0).expect("read");
    // A page still dirty too: the branch must hold it.
    f.write_all_at(&[6u8; 4096], 4096).expect("pwrite");
    let resident = || {
        // SAFETY: a read-only shared mapping of LEN bytes of an open file,
        // unmapped before the closure returns; `vec` has one byte per page.
        unsafe {
            let map = libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            );
            assert_ne!(map, libc::MAP_FAILED, "mmap");
            let mut vec = vec![0u8; LEN / 4096];
            assert_eq!(libc::mincore(map, LEN, vec.as_mut_ptr()), 0, "mincore");
            libc::munmap(map, LEN);
            vec.iter().filter(|b| **b & 1 == 1).count()
        }
    };
    // Not every page: the VM may page out a few cold ones at any time (a DAMON
    // pageout scheme on the machines this project runs on; seen taking 1 and
    // 12 of these 2,048 pages mid-test). The whole-file invalidation this test
    // guards against drops them all.
    let pages = LEN / 4096;
    let before = resident();
    assert!(
        before > pages * 3 / 4,
        "the file is cached before the branch: {before} of {pages} pages"
    );
    w.admin.branch_create("fork", "main", None).expect("fork");
    let after = resident();
    let fork = w.base.join("fork");
    std::fs::create_dir(&fork).expect("mkdir");
    w.admin.mount("fork", &s(&fork), false).expect("mount fork");
    let got = std::fs::read(fork.join("cached")).expect("read fork");
    w.admin.unmount(&s(&fork)).expect("unmount fork");
    drop(f);
    w.admin.unmount(&s(&w.fx.mnt)).expect("unmount main");
    assert_eq!(w.served.stop(), Some(0), "cowfs serve exits 0 on SIGTERM");
    w.fx.assert_fsck_clean();
    assert!(
        after > before / 2,
        "pages of the parent's open file dropped by branch create: {after} of {before} stayed"
    );
    let mut want = vec![5u8; LEN];
    want[4096..8192].fill(6);
    assert!(
        got == want,
        "the branch misses the parent's unflushed pwrite"
    );
}
