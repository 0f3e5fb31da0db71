//! `Pool::diff` cross-checked against full dumps of both sides. Rounds of random
//! changes (writes, truncates, holes, renames across directories, hard links,
//! directory renames with changes below, a file replaced by a directory, symlink
//! retargets, chmod, chown, touch, xattrs small and chunked, unlink of an open
//! file, fallocate, shared and copied ranges) are applied to a branch; before each round a snapshot is taken. The diff
//! of snapshot and branch (both ways) must list exactly the paths a comparison of
//! the two dumps finds, with the right kind, file type and aspects, and ranges
//! that cover exactly the changed blocks. A side against itself, and a snapshot against its
//! parent before any change, must diff empty.

#[path = "support/diff_expect.rs"]
mod diff_expect;
#[path = "support/dump.rs"]
mod dump;

use std::sync::Arc;

use cowfs::fs::{Owner, SetAttr, Timespec};
use cowfs::pool::{BranchId, Pool, PoolOptions};
use cowfs::store::device::MemDevice;
use diff_expect::{check_diff, Side};
use dump::{Content, Tree};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const ROUNDS: usize = 40;
const OPS_PER_ROUND: usize = 10;

fn pool() -> Pool {
    let opts = PoolOptions {
        capacity_bytes: Some(512 << 20),
        ..Default::default()
    };
    Pool::create_on(Arc::new(MemDevice::new()), &opts).expect("create pool")
}

fn random_bytes(rng: &mut SmallRng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.gen()).collect()
}

/// The paths of `tree` (dump form: "" is the root) whose content matches `pick`.
fn paths_where(tree: &Tree, pick: impl Fn(&Content) -> bool) -> Vec<Vec<u8>> {
    tree.iter()
        .filter(|(_, e)| pick(&e.content))
        .map(|(p, _)| p.clone())
        .collect()
}

fn one(rng: &mut SmallRng, v: &[Vec<u8>]) -> Option<Vec<u8>> {
    (!v.is_empty()).then(|| v[rng.gen_range(0..v.len())].clone())
}

fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|c| *c == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

struct Work<'a> {
    p: &'a Pool,
    b: BranchId,
    rng: SmallRng,
    /// Inodes opened then unlinked this round, released after the diff.
    open: Vec<u64>,
    next_name: u64,
}

impl Work<'_> {
    fn tree(&self) -> Tree {
        dump::dump_branch(self.p, self.b).expect("dump")
    }

    fn ino(&self, tree: &Tree, path: &[u8]) -> u64 {
        tree[path].ino
    }

    fn fresh_name(&mut self) -> Vec<u8> {
        self.next_name += 1;
        format!("n{}", self.next_name).into_bytes()
    }

    fn new_file(&mut self, dir: u64, name: &[u8], len: usize) -> u64 {
        let ino = self
            .p
            .mknod(
                self.b,
                dir,
                name,
                libc::S_IFREG | 0o644,
                0,
                Owner::default(),
            )
            .expect("mknod")
            .ino;
        let data = random_bytes(&mut self.rng, len);
        self.p.write_file(self.b, ino, 0, &data).expect("write");
        ino
    }

    /// A random change; returns what it did, for failure messages.
    fn step(&mut self) -> String {
        let t = self.tree();
        let files = paths_where(&t, |c| matches!(c, Content::File(_)));
        let dirs = paths_where(&t, |c| matches!(c, Content::Dir));
        let links = paths_where(&t, |c| matches!(c, Content::Symlink(_)));
        let any: Vec<Vec<u8>> = t.keys().filter(|p| !p.is_empty()).cloned().collect();
        let (b, p) = (self.b, self.p);
        let show = |x: &[u8]| String::from_utf8_lossy(x).into_owned();
        let op = self.rng.gen_range(0..24);
        let Some(f) = one(&mut self.rng, &files) else {
            // Unlinks and replacements took every file: start again.
            let name = self.fresh_name();
            self.new_file(1, &name, 3000);
            return format!("create /{}", show(&name));
        };
        let d = one(&mut self.rng, &dirs).expect("the root is a directory");
        let (fi, di) = (self.ino(&t, &f), self.ino(&t, &d));
        match op {
            0..=3 => {
                let off = if self.rng.gen_bool(0.3) {
                    self.rng.gen_range(0..3000)
                } else {
                    self.rng.gen_range(0..80_000)
                };
                let len = self.rng.gen_range(1..12_000);
                let data = random_bytes(&mut self.rng, len);
                p.write_file(b, fi, off, &data).expect("write");
                format!("write {} {off}+{len}", show(&f))
            }
            4 => {
                let size = self.rng.gen_range(0..90_000);
                let s = SetAttr {
                    size: Some(size),
                    ..Default::default()
                };
                p.setattr(b, fi, &s).expect("truncate");
                format!("truncate {} {size}", show(&f))
            }
            5 => {
                let (off, len) = (self.rng.gen_range(0..80_000), self.rng.gen_range(1..30_000));
                p.punch_hole(b, fi, off, len).expect("punch");
                format!("punch {} {off}+{len}", show(&f))
            }
            6 => {
                // A file moved into another directory, under a new name or over
                // another file.
                let (pf, nf) = split(&f);
                let (pi, nf) = (self.ino(&t, pf), nf.to_vec());
                let target = match one(&mut self.rng, &files) {
                    Some(g) if g != f && self.rng.gen_bool(0.3) => g,
                    _ => {
                        let mut g = d.clone();
                        if !g.is_empty() {
                            g.push(b'/');
                        }
                        g.extend(self.fresh_name());
                        g
                    }
                };
                let (pt, nt) = split(&target);
                let ti = self.ino(&t, pt);
                p.rename(b, pi, &nf, ti, nt, 0).expect("rename");
                format!("rename {} -> {}", show(&f), show(&target))
            }
            7 => {
                let name = self.fresh_name();
                p.link(b, fi, di, &name).expect("link");
                format!("link {} as {}/{}", show(&f), show(&d), show(&name))
            }
            8 => {
                // Write to a hard-linked file (both names changed).
                let linked: Vec<Vec<u8>> =
                    files.iter().filter(|x| t[*x].nlink > 1).cloned().collect();
                let Some(h) = one(&mut self.rng, &linked) else {
                    return "no hard-linked file".into();
                };
                let off = self.rng.gen_range(0..20_000);
                let data = random_bytes(&mut self.rng, 100);
                p.write_file(b, self.ino(&t, &h), off, &data)
                    .expect("write");
                format!("write hard-linked {} {off}+100", show(&h))
            }
            9 => {
                // Rename a directory into another one, then change a file below it.
                let movable: Vec<Vec<u8>> = dirs
                    .iter()
                    .filter(|x| !x.is_empty() && !d.starts_with(x))
                    .cloned()
                    .collect();
                let Some(m) = one(&mut self.rng, &movable) else {
                    return "no movable directory".into();
                };
                let (pm, nm) = split(&m);
                let name = self.fresh_name();
                p.rename(b, self.ino(&t, pm), nm, di, &name, 0)
                    .expect("rename dir");
                let below: Vec<Vec<u8>> = files
                    .iter()
                    .filter(|x| x.starts_with(&m) && x.get(m.len()) == Some(&b'/'))
                    .cloned()
                    .collect();
                let mut what = format!("rename dir {} -> {}/{}", show(&m), show(&d), show(&name));
                if let Some(x) = one(&mut self.rng, &below) {
                    let data = random_bytes(&mut self.rng, 10);
                    p.write_file(b, self.ino(&t, &x), 5, &data).expect("write");
                    what += &format!(", write {}", show(&x));
                }
                what
            }
            10 => {
                // Replace a file by a directory of the same name, with a file in it.
                let (pf, nf) = split(&f);
                let pi = self.ino(&t, pf);
                p.unlink(b, pi, nf).expect("unlink");
                let nd = p.mkdir(b, pi, nf, 0o755, Owner::default()).expect("mkdir");
                self.new_file(nd.ino, b"inside", 50);
                format!("replace {} by a directory", show(&f))
            }
            11 => {
                // Retarget a symlink as `ln -sfn` does: a new link renamed over it.
                let Some(l) = one(&mut self.rng, &links) else {
                    let name = self.fresh_name();
                    p.symlink(b, di, &name, b"first-target", Owner::default())
                        .expect("symlink");
                    return format!("symlink {}/{}", show(&d), show(&name));
                };
                let (pl, nl) = split(&l);
                let pi = self.ino(&t, pl);
                let tmp = self.fresh_name();
                let target = format!("target-{}", self.next_name).into_bytes();
                p.symlink(b, pi, &tmp, &target, Owner::default())
                    .expect("symlink");
                p.rename(b, pi, &tmp, pi, nl, 0).expect("rename symlink");
                format!("retarget {}", show(&l))
            }
            12 => {
                let x = one(&mut self.rng, &any).unwrap_or_default();
                let modes = [0o600, 0o644, 0o640, 0o755, 0o700, 0o444];
                let mode = modes[self.rng.gen_range(0..modes.len())];
                let s = SetAttr {
                    mode: Some(mode),
                    ..Default::default()
                };
                p.setattr(b, self.ino(&t, &x), &s).expect("chmod");
                format!("chmod {} {mode:o}", show(&x))
            }
            13 => {
                let x = one(&mut self.rng, &any).unwrap_or_default();
                let id = self.rng.gen_range(0..3);
                let s = SetAttr {
                    uid: Some(id),
                    gid: Some(id + 1),
                    ..Default::default()
                };
                p.setattr(b, self.ino(&t, &x), &s).expect("chown");
                format!("chown {} {id}", show(&x))
            }
            14 => {
                let sec = self.rng.gen_range(1_000_000..2_000_000);
                let s = SetAttr {
                    mtime: Some(Timespec { sec, nsec: 0 }),
                    ..Default::default()
                };
                p.setattr(b, fi, &s).expect("touch");
                format!("touch {} {sec}", show(&f))
            }
            15 | 16 => {
                let x = one(&mut self.rng, &any).unwrap_or_default();
                let xi = self.ino(&t, &x);
                let large = self.rng.gen_bool(0.5);
                let len = if large {
                    self.rng.gen_range(2_001..9_000)
                } else {
                    self.rng.gen_range(1..200)
                };
                let name = format!("user.x{}", self.rng.gen_range(0..3)).into_bytes();
                let value = random_bytes(&mut self.rng, len);
                p.setxattr(b, xi, &name, &value, 0).expect("setxattr");
                format!("setxattr {} {} {}", show(&x), show(&name), value.len())
            }
            17 => {
                let with: Vec<(Vec<u8>, Vec<u8>)> = t
                    .iter()
                    .flat_map(|(path, e)| e.xattrs.keys().map(move |n| (path.clone(), n.clone())))
                    .collect();
                if with.is_empty() {
                    return "no xattrs".into();
                }
                let (x, name) = with[self.rng.gen_range(0..with.len())].clone();
                if self.rng.gen_bool(0.5) {
                    // The value it has: the xattrs do not change (a large value's
                    // items do: new chunks).
                    let value = t[&x].xattrs[&name].clone();
                    p.setxattr(b, self.ino(&t, &x), &name, &value, 0)
                        .expect("setxattr");
                    return format!("setxattr {} {} again", show(&x), show(&name));
                }
                p.removexattr(b, self.ino(&t, &x), &name)
                    .expect("removexattr");
                format!("removexattr {} {}", show(&x), show(&name))
            }
            18 => {
                // Unlink a file still open, then change it: only its removal shows.
                let (pf, nf) = split(&f);
                p.open_inode(b, fi);
                p.unlink(b, self.ino(&t, pf), nf).expect("unlink open");
                let data = random_bytes(&mut self.rng, 5000);
                p.write_file(b, fi, 0, &data).expect("write unlinked");
                self.open.push(fi);
                format!("unlink open {}", show(&f))
            }
            19 => {
                let name = self.fresh_name();
                let len = self.rng.gen_range(0..20_000);
                self.new_file(di, &name, len);
                format!("create {}/{} {len}", show(&d), show(&name))
            }
            20 => {
                let name = self.fresh_name();
                p.mkdir(b, di, &name, 0o755, Owner::default())
                    .expect("mkdir");
                format!("mkdir {}/{}", show(&d), show(&name))
            }
            21 => {
                // Unwritten blocks, inside the file or past its end.
                let (off, len) = (self.rng.gen_range(0..80_000), self.rng.gen_range(1..30_000));
                let keep = self.rng.gen_bool(0.5);
                p.fallocate(b, fi, off, len, keep).expect("fallocate");
                format!("fallocate {} {off}+{len} keep_size {keep}", show(&f))
            }
            22 => {
                // Blocks shared with another file (block aligned: extents shared),
                // or copied (unaligned); may be refused, which changes nothing.
                let g = one(&mut self.rng, &files).unwrap_or_default();
                let gi = self.ino(&t, &g);
                let aligned = self.rng.gen_bool(0.7);
                let pick = |rng: &mut SmallRng, n: u64| {
                    if aligned {
                        rng.gen_range(0..n) * 4096
                    } else {
                        rng.gen_range(0..n * 4096)
                    }
                };
                let (so, dof, len) = (
                    pick(&mut self.rng, 16),
                    pick(&mut self.rng, 16),
                    pick(&mut self.rng, 6) + 1,
                );
                let r = p.clone_range(b, gi, so, fi, dof, len);
                format!("clone {} {so}+{len} -> {} {dof}: {r:?}", show(&g), show(&f))
            }
            _ => {
                let (pf, nf) = split(&f);
                p.unlink(b, self.ino(&t, pf), nf).expect("unlink");
                format!("unlink {}", show(&f))
            }
        }
    }

    fn release_open(&mut self) {
        for ino in self.open.drain(..) {
            self.p.release_inode(self.b, ino).expect("release");
        }
    }
}

#[test]
fn diff_matches_a_comparison_of_full_dumps() {
    let seed: u64 = std::env::var("DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xd1ff);
    let p = pool();
    let b = p.branch_id("main").expect("main");
    let mut w = Work {
        p: &p,
        b,
        rng: SmallRng::seed_from_u64(seed),
        open: Vec::new(),
        next_name: 0,
    };
    // A starting tree: files inline and in blocks, nested directories.
    let o = Owner::default();
    let d1 = p.mkdir(b, 1, b"d1", 0o755, o).expect("mkdir").ino;
    let d2 = p.mkdir(b, d1, b"d2", 0o755, o).expect("mkdir").ino;
    let d3 = p.mkdir(b, 1, b"d3", 0o755, o).expect("mkdir").ino;
    for (i, dir) in [1, d1, d2, d3].into_iter().enumerate() {
        for j in 0..3 {
            let len = [100, 5_000, 70_000][j];
            w.new_file(dir, format!("f{i}{j}").as_bytes(), len);
        }
    }
    p.symlink(b, d3, b"ln", b"../d1", o).expect("symlink");
    let mut checked = 0;
    for round in 0..ROUNDS {
        let snap = format!("s{round}");
        p.snapshot_create(&snap, "main").expect("snapshot");
        let before = Side::of(&p, p.branch_id(&snap).expect("snap"));
        let same = dump::first_difference(&before.tree, &w.tree());
        assert_eq!(same, "no difference", "round {round}: a fresh snapshot");
        for (x, y) in [(&snap[..], "main"), ("main", &snap[..]), ("main", "main")] {
            let r = p.diff(x, y).expect("diff");
            assert!(
                r.entries.is_empty(),
                "round {round}: {x} vs {y} before any change: {:?}",
                r.entries
            );
        }
        let mut log = Vec::new();
        for _ in 0..OPS_PER_ROUND {
            log.push(w.step());
        }
        let after = Side::of(&p, b);
        let ctx = format!("seed {seed} round {round}, ops:\n  {}", log.join("\n  "));
        checked += check_diff(&before, &after, &p.diff(&snap, "main").expect("diff"), &ctx);
        checked += check_diff(&after, &before, &p.diff("main", &snap).expect("diff"), &ctx);
        assert!(p.diff(&snap, &snap).expect("diff").entries.is_empty());
        w.release_open();
    }
    assert!(
        checked > ROUNDS * 4,
        "only {checked} entries checked: the workload changes little"
    );
}
