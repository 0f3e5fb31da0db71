//! Differential stress: the same random operations (create, write at random
//! offsets, truncate, rename, unlink, mkdir, rmdir, chmod, link, fsync, punch hole,
//! copy_file_range, writes through mmap) applied to a cowfs mount and to a
//! directory on the native filesystem, by several threads at once, each in its own
//! subtree. Every operation must succeed or fail the same way on both; at the end,
//! and again after unmount + remount, both trees must hold the same names, types,
//! sizes, modes, link counts and contents; fsck must be clean.

mod mount;

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use mount::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const WORKERS: u64 = 4;
const OPS_PER_WORKER: usize = 2500;

const FILES: [&str; 12] = [
    "f0", "f1", "f2", "f3", "f4", "f5", "d0/f0", "d0/f1", "d0/f2", "d1/f0", "d1/f1", "d0/e/f0",
];
const DIRS: [&str; 4] = ["d0", "d1", "d0/e", "d2"];

/// What an operation did: Ok, or the errno it failed with.
fn outcome(r: io::Result<()>) -> Result<(), i32> {
    r.map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[derive(Debug)]
enum Op {
    Create(&'static str),
    Write(&'static str, u64, Vec<u8>),
    Truncate(&'static str, u64),
    Rename(&'static str, &'static str),
    Unlink(&'static str),
    Mkdir(&'static str),
    Rmdir(&'static str),
    Chmod(&'static str, u32),
    Link(&'static str, &'static str),
    Fsync(&'static str),
    /// fallocate(PUNCH_HOLE | KEEP_SIZE).
    Punch(&'static str, u64, u64),
    /// copy_file_range(src, src_off, dst, dst_off, len): extent sharing on cowfs.
    Copy(&'static str, u64, &'static str, u64, u64),
    /// Overwrite through a shared mapping (within the file), then msync.
    Mmap(&'static str, u64, Vec<u8>),
}

fn random_op(rng: &mut SmallRng) -> Op {
    let file = |rng: &mut SmallRng| FILES[rng.gen_range(0..FILES.len())];
    let dir = |rng: &mut SmallRng| DIRS[rng.gen_range(0..DIRS.len())];
    let any = |rng: &mut SmallRng| {
        if rng.gen_bool(0.8) {
            FILES[rng.gen_range(0..FILES.len())]
        } else {
            DIRS[rng.gen_range(0..DIRS.len())]
        }
    };
    match rng.gen_range(0..115) {
        0..=14 => Op::Create(file(rng)),
        15..=44 => {
            let off = rng.gen_range(0..300_000u64);
            let len = if rng.gen_bool(0.7) {
                rng.gen_range(1..8192)
            } else {
                rng.gen_range(8192..200_000)
            };
            let seed: u8 = rng.gen();
            let data = (0..len).map(|i| seed.wrapping_add((i / 7) as u8)).collect();
            Op::Write(file(rng), off, data)
        }
        45..=52 => Op::Truncate(file(rng), rng.gen_range(0..400_000)),
        53..=62 => Op::Rename(any(rng), any(rng)),
        63..=70 => Op::Unlink(file(rng)),
        71..=76 => Op::Mkdir(dir(rng)),
        77..=80 => Op::Rmdir(dir(rng)),
        81..=87 => {
            let modes = [0o600, 0o644, 0o640, 0o755, 0o700, 0o444, 0o1777, 0o2755];
            Op::Chmod(any(rng), modes[rng.gen_range(0..modes.len())])
        }
        88..=94 => Op::Link(file(rng), file(rng)),
        95..=99 => Op::Fsync(file(rng)),
        100..=104 => Op::Punch(
            file(rng),
            rng.gen_range(0..300_000),
            rng.gen_range(1..100_000),
        ),
        105..=109 => {
            // Block-aligned copies share extents; the others take the byte path.
            let (so, dof, len) = if rng.gen_bool(0.5) {
                (
                    rng.gen_range(0..64) * 4096,
                    rng.gen_range(0..64) * 4096,
                    rng.gen_range(1..32) * 4096,
                )
            } else {
                (
                    rng.gen_range(0..300_000),
                    rng.gen_range(0..300_000),
                    rng.gen_range(1..100_000),
                )
            };
            Op::Copy(file(rng), so, file(rng), dof, len)
        }
        _ => {
            let seed: u8 = rng.gen();
            let len = rng.gen_range(1..20_000);
            let data = (0..len).map(|i| seed ^ (i as u8)).collect();
            Op::Mmap(file(rng), rng.gen_range(0..200_000), data)
        }
    }
}

fn apply(root: &Path, op: &Op) -> Result<(), i32> {
    let p = |n: &str| root.join(n);
    outcome(match op {
        Op::Create(n) => OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p(n))
            .map(drop),
        Op::Write(n, off, data) => OpenOptions::new().write(true).open(p(n)).and_then(|mut f| {
            f.seek(SeekFrom::Start(*off))?;
            f.write_all(data)
        }),
        Op::Truncate(n, len) => OpenOptions::new()
            .write(true)
            .open(p(n))
            .and_then(|f| f.set_len(*len)),
        Op::Rename(a, b) => fs::rename(p(a), p(b)),
        Op::Unlink(n) => fs::remove_file(p(n)),
        Op::Mkdir(n) => fs::create_dir(p(n)),
        Op::Rmdir(n) => fs::remove_dir(p(n)),
        Op::Chmod(n, mode) => fs::set_permissions(p(n), fs::Permissions::from_mode(*mode)),
        Op::Link(a, b) => fs::hard_link(p(a), p(b)),
        Op::Fsync(n) => fs::File::open(p(n)).and_then(|f| f.sync_all()),
        Op::Punch(n, off, len) => OpenOptions::new().write(true).open(p(n)).and_then(|f| {
            fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                *off as i64,
                *len as i64,
            )
        }),
        Op::Copy(src, so, dst, dof, len) => copy_range(&p(src), *so, &p(dst), *dof, *len),
        Op::Mmap(n, off, data) => mmap_write(&p(n), *off, data),
    })
}

/// copy_file_range until `len` bytes are copied or the source ends.
fn copy_range(src: &Path, so: u64, dst: &Path, dof: u64, len: u64) -> io::Result<()> {
    let s = fs::File::open(src)?;
    let d = OpenOptions::new().write(true).open(dst)?;
    let (mut so, mut dof, mut left) = (so as i64, dof as i64, len as usize);
    while left > 0 {
        // SAFETY: both descriptors are open; the offsets are locals the call updates.
        let n = unsafe {
            libc::copy_file_range(s.as_raw_fd(), &mut so, d.as_raw_fd(), &mut dof, left, 0)
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        left -= n as usize;
    }
    Ok(())
}

/// Write `data` at `off` through a shared mapping, clipped to the file's size (a
/// mapping cannot grow a file), then msync.
fn mmap_write(path: &Path, off: u64, data: &[u8]) -> io::Result<()> {
    let f = OpenOptions::new().read(true).write(true).open(path)?;
    let size = f.metadata()?.len();
    if off >= size {
        return Ok(());
    }
    let n = data.len().min((size - off) as usize);
    let page = off & !4095;
    let map_len = (off - page) as usize + n;
    // SAFETY: a shared mapping of [page, off + n) of an open file, all inside the
    // file; written only within that range, synced and unmapped before `f` closes.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            map_len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            page as i64,
        );
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let dst = p.cast::<u8>().add((off - page) as usize);
        std::ptr::copy_nonoverlapping(data.as_ptr(), dst, n);
        let r = libc::msync(p, map_len, libc::MS_SYNC);
        libc::munmap(p, map_len);
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    File {
        mode: u32,
        nlink: u64,
        data: Vec<u8>,
    },
    Dir {
        mode: u32,
    },
}

fn snapshot(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let e = e.expect("dir entry");
            let path = e.path();
            let md = fs::symlink_metadata(&path).expect("lstat");
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            let mode = md.mode() & 0o7777;
            if md.is_dir() {
                out.insert(rel, Node::Dir { mode });
                stack.push(path);
            } else {
                let data = fs::read(&path).expect("read");
                assert_eq!(data.len() as u64, md.len(), "{rel}: size vs content");
                out.insert(
                    rel,
                    Node::File {
                        mode,
                        nlink: md.nlink(),
                        data,
                    },
                );
            }
        }
    }
    out
}

fn assert_same(native: &Path, cow: &Path, when: &str) {
    let a = snapshot(native);
    let b = snapshot(cow);
    let names_a: Vec<&String> = a.keys().collect();
    let names_b: Vec<&String> = b.keys().collect();
    assert_eq!(names_a, names_b, "{when}: names differ");
    for (name, na) in &a {
        let nb = &b[name];
        if na != nb {
            let describe = |n: &Node| match n {
                Node::File { mode, nlink, data } => {
                    format!("file mode {mode:o} nlink {nlink} size {}", data.len())
                }
                Node::Dir { mode } => format!("dir mode {mode:o}"),
            };
            panic!(
                "{when}: {name} differs: native {} / cowfs {}",
                describe(na),
                describe(nb)
            );
        }
    }
    assert!(
        a.len() > WORKERS as usize,
        "{when}: the trees are nearly empty"
    );
}

#[test]
fn random_operations_match_the_native_filesystem() {
    let fx = Fixture::new();
    let native = fx.native_dir("native");
    let m = fx.mount();
    let seed: u64 = std::env::var("STRESS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0f5);
    let threads: Vec<_> = (0..WORKERS)
        .map(|w| {
            let (nroot, croot) = (native.join(format!("w{w}")), m.mnt.join(format!("w{w}")));
            std::thread::spawn(move || {
                fs::create_dir(&nroot).expect("mkdir native worker dir");
                fs::create_dir(&croot).expect("mkdir cowfs worker dir");
                let mut rng = SmallRng::seed_from_u64(seed ^ (w * 0x9e37_79b9));
                let mut ok = 0;
                for i in 0..OPS_PER_WORKER {
                    let op = random_op(&mut rng);
                    let a = apply(&nroot, &op);
                    let b = apply(&croot, &op);
                    assert_eq!(
                        a, b,
                        "worker {w} op {i} {op:?}: native vs cowfs (seed {seed})"
                    );
                    ok += usize::from(a.is_ok());
                }
                ok
            })
        })
        .collect();
    let mut succeeded = 0;
    for t in threads {
        succeeded += t.join().expect("worker panicked");
    }
    assert!(
        succeeded > (WORKERS as usize * OPS_PER_WORKER) / 3,
        "only {succeeded} operations succeeded: the workload is not exercising much"
    );
    assert_same(&native, &m.mnt, "while mounted");
    m.stop();
    let m = fx.mount();
    assert_same(&native, &m.mnt, "after remount");
    m.stop();
    fx.assert_fsck_clean();
}
