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
//!   owners, times, user and trusted xattrs, symlinks, device nodes, hard-link
//!   groups), which is what `branch create` promises: every write completed
//!   before the request;
//! - or a child is unmounted and deleted, unmounted and `reset` to its source
//!   (its native copy becomes a fresh copy of the source's native directory at
//!   that moment: "makes `branch` identical to `to`"), or unmounted and mounted
//!   again.
//!
//! Random calls then go to `main` and to every mounted writable child,
//! interleaved, each against its own native copy, with the same step-by-step
//! comparison as mount_differential; every COMPARE_EVERY steps every mounted
//! tree (snapshots too) must equal its native copy (tests/mount_diff/tree.rs),
//! and a snapshot must refuse writes with EROFS. At the end every branch is
//! unmounted, mounted again and compared, the daemon stops with exit 0 and
//! `cowfs fsck` must be clean.
//!
//! What legitimately differs from the native copy: inode numbers and the times
//! tree.rs does not compare; the copier preserves times with utimensat, so
//! whether a probed mtime is still the probe's is compared across branching.
//!
//! Runs as root. By default DEFAULT_SEEDS seeds of DEFAULT_STEPS steps. Longer:
//!   COWFS_BDIFF_STEPS=20000 COWFS_BDIFF_SEEDS=100,101 \
//!     cargo test -p cowfs --test branch_differential -- --nocapture
//! A failure prints its seed, step, the branch and the operations before it.

mod control_support;
mod mount;
mod mount_diff;

use std::collections::{HashMap, VecDeque};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use control_support::{connect, Served};
use cowfs_ctl::proto::MountSpec;
use cowfs_ctl::Client;
use mount::{cowfs_bin, Fixture};
use mount_diff::apply::{Outcome, Side};
use mount_diff::ops::{Data, Gen, Op, SLOTS};
use mount_diff::sys::{c, compared_xattrs, cs, fstat, lstat, readlink, ret};
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
    /// The branch it was made from (for `reset`).
    source: String,
}

struct Run {
    seed: u64,
    steps: usize,
    history: VecDeque<(usize, String, Op)>,
    events: Vec<String>,
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

/// Every write a read-only mount must refuse, with EROFS. Paths that exist in
/// the tree and a new one.
fn assert_read_only(run: &Run, step: usize, p: &Pair) {
    let root = &p.cow.root;
    let new = c(&root.join("new-on-snapshot"));
    let file = std::fs::read_dir(root)
        .expect("readdir snapshot")
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| c(&e.path()));
    let rootc = c(root);
    let name = cs("user.a");
    // SAFETY (all calls): valid NUL-terminated paths and buffers of the lengths passed.
    let mut tries: Vec<(&str, i64)> = vec![
        (
            "create",
            unsafe { libc::open(new.as_ptr(), libc::O_WRONLY | libc::O_CREAT, 0o644) } as i64,
        ),
        ("mkdir", unsafe { libc::mkdir(new.as_ptr(), 0o755) } as i64),
        ("chmod root", unsafe { libc::chmod(rootc.as_ptr(), 0o700) }
            as i64),
        ("setxattr root", unsafe {
            libc::setxattr(rootc.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0)
        } as i64),
    ];
    if let Some(f) = &file {
        tries.push((
            "open existing for writing",
            unsafe { libc::open(f.as_ptr(), libc::O_WRONLY) } as i64,
        ));
        tries.push((
            "truncate existing",
            unsafe { libc::truncate(f.as_ptr(), 0) } as i64,
        ));
    }
    for (what, r) in tries {
        let r = ret(r);
        if r != Err(libc::EROFS) {
            if let Ok(fd) = r {
                // SAFETY: the descriptor the failed check opened.
                unsafe { libc::close(fd as i32) };
            }
            run.fail(
                step,
                &format!("snapshot {}: {what} gave {r:?}, not EROFS", p.name),
            );
        }
    }
}

/// A faithful copy of the tree at `src` into the new directory `dst`, as
/// `cp -a` makes it: types, data, symlink targets, device numbers, owners,
/// permission bits, user and trusted xattrs, times, and hard-link groups.
fn copy_tree(src: &Path, dst: &Path) {
    let mut links: HashMap<u64, PathBuf> = HashMap::new();
    copy_node(src, dst, &mut links);
}

fn copy_node(src: &Path, dst: &Path, links: &mut HashMap<u64, PathBuf>) {
    let st = lstat(src).unwrap_or_else(|e| panic!("lstat {}: errno {e}", src.display()));
    let ftype = st.st_mode & libc::S_IFMT;
    if ftype != libc::S_IFDIR && st.st_nlink > 1 {
        if let Some(first) = links.get(&st.st_ino) {
            std::fs::hard_link(first, dst).expect("link in the copy");
            return;
        }
        links.insert(st.st_ino, dst.to_path_buf());
    }
    let d = c(dst);
    match ftype {
        libc::S_IFDIR => {
            std::fs::create_dir(dst).expect("mkdir in the copy");
            for e in std::fs::read_dir(src).expect("readdir") {
                let e = e.expect("dirent");
                copy_node(&e.path(), &dst.join(e.file_name()), links);
            }
        }
        libc::S_IFREG => {
            std::fs::write(dst, std::fs::read(src).expect("read")).expect("write copy")
        }
        libc::S_IFLNK => {
            let t = readlink(src).expect("readlink");
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), dst).expect("symlink");
        }
        _ => {
            // SAFETY: a valid path.
            let r = unsafe { libc::mknod(d.as_ptr(), st.st_mode, st.st_rdev) };
            assert_eq!(r, 0, "mknod {}", dst.display());
        }
    }
    for (name, value) in compared_xattrs(src).expect("xattrs") {
        let n = std::ffi::CString::new(name).expect("xattr name");
        // SAFETY: valid strings and a buffer of the given length.
        let r = unsafe {
            libc::lsetxattr(
                d.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(r, 0, "lsetxattr {}", dst.display());
    }
    // Owner before mode: chown clears set-user-ID bits. Times last: everything
    // above moves them.
    // SAFETY: valid paths and timespecs.
    unsafe {
        assert_eq!(libc::lchown(d.as_ptr(), st.st_uid, st.st_gid), 0);
        if ftype != libc::S_IFLNK {
            assert_eq!(libc::chmod(d.as_ptr(), st.st_mode & 0o7777), 0);
        }
        let ts = [
            libc::timespec {
                tv_sec: st.st_atime,
                tv_nsec: st.st_atime_nsec,
            },
            libc::timespec {
                tv_sec: st.st_mtime,
                tv_nsec: st.st_mtime_nsec,
            },
        ];
        let r = libc::utimensat(
            libc::AT_FDCWD,
            d.as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
        assert_eq!(r, 0, "utimensat {}", dst.display());
    }
}

/// The test runs as root and the trees hold modes like 000: removal as root.
fn remove_tree(p: &Path) {
    if p.exists() {
        std::fs::remove_dir_all(p).expect("remove native copy");
    }
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
            source: "main".into(),
        };
        World {
            served,
            fx,
            base,
            admin,
            pairs: vec![main],
            next_id: 0,
        }
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.pairs.iter().position(|p| p.name == name)
    }

    /// A branch or snapshot of `main` or of a mounted child, taken while its
    /// files are open and dirty, mounted; its native side a copy made now.
    fn create(&mut self, run: &mut Run, step: usize, rng: &mut SmallRng) {
        let writable: Vec<usize> = (1..self.pairs.len())
            .filter(|i| self.pairs[*i].mounted && !self.pairs[*i].snapshot)
            .collect();
        let si = match writable.choose(rng) {
            Some(i) if rng.gen_bool(0.25) => *i,
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
        run.events.push(format!(
            "step {step}: {} {name} of {src}",
            if snap { "snapshot" } else { "branch" }
        ));
        let p = Pair {
            name,
            dir: dir.clone(),
            native: Side::new(&native),
            cow: Side::new(&dir),
            mounted: true,
            snapshot: snap,
            source: src,
        };
        run.compare(step, &p, "just made");
        if snap {
            assert_read_only(run, step, &p);
        }
        self.pairs.push(p);
    }

    fn unmount(&mut self, run: &Run, step: usize, i: usize) {
        let p = &mut self.pairs[i];
        run.close_all(step, p);
        if let Err(e) = self.admin.unmount(&s(&p.dir)) {
            run.fail(step, &format!("unmount {}: {e}", p.name));
        }
        p.mounted = false;
    }

    fn mount(&mut self, run: &Run, step: usize, i: usize, when: &str) {
        let p = &mut self.pairs[i];
        if let Err(e) = self.admin.mount(&p.name, &s(&p.dir), p.snapshot) {
            run.fail(step, &format!("mount {}: {e}", p.name));
        }
        p.mounted = true;
        run.compare(step, p, when);
    }

    /// Something happens to a child: mounted again if it is not; otherwise
    /// unmounted and deleted, reset to its source, mounted again, or left
    /// unmounted for a while.
    fn retire(&mut self, run: &mut Run, step: usize, rng: &mut SmallRng) {
        let i = rng.gen_range(1..self.pairs.len());
        let name = self.pairs[i].name.clone();
        if !self.pairs[i].mounted {
            run.events.push(format!("step {step}: mount {name}"));
            return self.mount(run, step, i, "mounted again");
        }
        let source = self.index(&self.pairs[i].source.clone());
        let what = rng.gen_range(0..10);
        self.unmount(run, step, i);
        match what {
            0..=2 => {
                run.events.push(format!("step {step}: delete {name}"));
                if let Err(e) = self.admin.delete(&name) {
                    run.fail(step, &format!("delete {name}: {e}"));
                }
                let p = self.pairs.remove(i);
                remove_tree(&p.native.root);
            }
            3..=5 if !self.pairs[i].snapshot && source.is_some_and(|s| self.pairs[s].mounted) => {
                let si = source.expect("checked");
                let src = self.pairs[si].name.clone();
                run.events
                    .push(format!("step {step}: reset {name} to {src}"));
                // The source is mounted and busy: its dirty pages are part of
                // what `reset` makes the branch identical to.
                dirty(run, step, rng, &mut self.pairs[si]);
                let maps = Mappings::dirty(run, step, rng, &self.pairs[si]);
                if let Err(e) = self.admin.reset(&name, &src) {
                    run.fail(step, &format!("reset {name} to {src}: {e}"));
                }
                let native = self.pairs[i].native.root.clone();
                remove_tree(&native);
                copy_tree(&self.pairs[si].native.root, &native);
                maps.release();
                self.mount(run, step, i, "after reset");
            }
            6..=7 => run.events.push(format!("step {step}: unmount {name}")),
            _ => {
                run.events.push(format!("step {step}: remount {name}"));
                self.mount(run, step, i, "after remount");
            }
        }
    }

    fn compare_all(&self, run: &Run, step: usize) {
        for p in self.pairs.iter().filter(|p| p.mounted) {
            run.compare(step, p, "while mounted");
            if p.snapshot {
                assert_read_only(run, step, p);
            }
        }
    }
}

fn run_seed(seed: u64, steps: usize) -> (usize, usize, usize) {
    let mut w = World::start();
    let mut rng = SmallRng::seed_from_u64(seed);
    let gen = Gen::new();
    let mut run = Run {
        seed,
        steps,
        history: VecDeque::new(),
        events: Vec::new(),
    };
    let mut succeeded = 0;
    let mut next_event = rng.gen_range(BRANCH_MIN..BRANCH_MAX);
    for step in 0..steps {
        let writable: Vec<usize> = (1..w.pairs.len())
            .filter(|i| w.pairs[*i].mounted && !w.pairs[*i].snapshot)
            .collect();
        let i = match writable.choose(&mut rng) {
            Some(i) if rng.gen_bool(0.5) => *i,
            _ => 0,
        };
        let p = &mut w.pairs[i];
        let op = gen.op(&mut rng, &p.native.slots_in_use());
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
    let made = w.next_id;
    for i in 0..w.pairs.len() {
        if w.pairs[i].mounted {
            w.unmount(&run, steps, i);
        }
        w.mount(&run, steps, i, "at the end, after remount");
        w.unmount(&run, steps, i);
    }
    assert_eq!(w.served.stop(), Some(0), "cowfs serve exits 0 on SIGTERM");
    w.fx.assert_fsck_clean();
    (succeeded, steps, made)
}

#[test]
fn branches_match_native_copies() {
    // SAFETY: umask only sets the process's creation mask; fixed so that modes
    // are the same on every machine.
    unsafe { libc::umask(0o022) };
    let steps = env_list("COWFS_BDIFF_STEPS").map_or(DEFAULT_STEPS, |v| v[0] as usize);
    for seed in env_list("COWFS_BDIFF_SEEDS").unwrap_or(DEFAULT_SEEDS.to_vec()) {
        let (ok, n, made) = run_seed(seed, steps);
        eprintln!("seed {seed}: {n} steps, {ok} succeeded, {made} branches and snapshots made");
        assert!(
            ok * 5 > n,
            "seed {seed}: only {ok} of {n} operations succeeded: the workload exercises little"
        );
        assert!(made > 0, "seed {seed}: no branch was made");
    }
}

/// `reset BRANCH --to PARENT` with the parent mounted and busy: the branch gets
/// every write completed on the parent before the request, as `branch create`
/// does, also those still in the parent mount's page cache (written with
/// pwrite(2) or through a shared mapping, never fsync'ed). Before, the reset
/// took the daemon's tree as the kernel had happened to write it back, so the
/// branch got the parent's older data (found by the random test above). The
/// daemon runs as its own process: a process that serves a mount deadlocks
/// unmapping a dirty mapping of it (the write-back waits on its own threads).
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
