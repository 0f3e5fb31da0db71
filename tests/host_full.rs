//! Full disk (issue 7): the pool file's nominal capacity (1 GiB) is far larger than
//! the host filesystem under it (a 96 MiB ext4 on a loop device), so the host runs
//! out first.
//!
//! - Writers (write + fsync) through the real daemon keep going until the first
//!   error: it must be ENOSPC (not EIO, not EROFS, not a hang), and every file whose
//!   fsync returned reads back intact. Deleting files on the same mount makes space
//!   again at once; after a restart fsck is clean, the data is there, and deleting
//!   and writing again works; fsck is clean at the end.
//! - A reservation on a protected branch holds when the host, not the pool, is the
//!   limit: another branch filling the host gets ENOSPC with the reserved space
//!   still free on the host, and the protected branch then writes it.

mod control_support;
mod mount;

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use control_support::{connect, init_pool, kind, Served};
use cowfs_ctl::proto::{ErrorKind, MountSpec};
use mount::{cpath, errno_of, is_mounted, Fixture};

const MIB: u64 = 1 << 20;
/// Size of the host filesystem under the pool.
const HOST_MIB: u64 = 96;
/// No writer may ever see an acknowledged total beyond this: the host is smaller.
const NEVER_MIB: u64 = 2 * HOST_MIB;

// ---------------------------------------------------------------------------
// The small host filesystem.

/// A small ext4 on a loop device, mounted in a temporary directory. Dropping it
/// unmounts it lazily and detaches the loop device, also when the test panics
/// (declare it before anything that uses it, so that it is dropped last).
struct HostFs {
    /// Holds the image file; removed after `drop` has unmounted.
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    loop_dev: Option<String>,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl HostFs {
    fn ext4(mib: u64) -> HostFs {
        let tmp = tempfile::Builder::new()
            .prefix("cowfs-hostfs-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let base = tmp.path().canonicalize().expect("canonical");
        let image = base.join("host.img");
        fs::File::create(&image)
            .and_then(|f| f.set_len(mib * MIB))
            .expect("image file");
        // -m 0: no blocks reserved for root, so free space is what anyone can use.
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image));
        let mut h = HostFs {
            _tmp: tmp,
            dir: base.join("host"),
            loop_dev: None,
        };
        fs::create_dir(&h.dir).expect("mkdir host");
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image));
        assert!(dev.starts_with("/dev/loop"), "losetup printed {dev:?}");
        h.loop_dev = Some(dev.clone());
        run(Command::new("mount")
            .args(["-t", "ext4"])
            .arg(&dev)
            .arg(&h.dir));
        fs::set_permissions(&h.dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        h
    }

    /// Free bytes on the host filesystem (what an unprivileged writer may use).
    fn free_bytes(&self) -> u64 {
        statvfs_free(&self.dir)
    }
}

impl Drop for HostFs {
    fn drop(&mut self) {
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
        if let Some(dev) = self.loop_dev.take() {
            // After a lazy unmount the device may still be busy: -d then marks it
            // to detach itself when its last user goes.
            let _ = Command::new("losetup").arg("-d").arg(&dev).status();
        }
    }
}

/// What `df` reports as used: size minus free.
fn statvfs_used(p: &Path) -> u64 {
    let c = cpath(p);
    // SAFETY: a valid path and a zeroed struct of the right type to fill.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0, "statvfs {p:?}");
        (st.f_blocks - st.f_bfree) as u64 * st.f_frsize as u64
    }
}

fn statvfs_free(p: &Path) -> u64 {
    let c = cpath(p);
    // SAFETY: a valid path and a zeroed struct of the right type to fill.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut st), 0, "statvfs {p:?}");
        st.f_bavail as u64 * st.f_frsize as u64
    }
}

// ---------------------------------------------------------------------------
// Files with checkable contents.

/// Deterministic contents of file `seed` (splitmix64 words).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A file whose fsync returned: it must read back exactly.
#[derive(Clone, Debug)]
struct Acked {
    path: PathBuf,
    seed: u64,
    len: usize,
}

fn check_intact(files: &[Acked], when: &str) {
    for f in files {
        let mut got = Vec::new();
        fs::File::open(&f.path)
            .and_then(|mut h| h.read_to_end(&mut got))
            .unwrap_or_else(|e| panic!("{when}: read {:?}: {e}", f.path));
        let want = pattern(f.seed, f.len);
        let at = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            got.len() == want.len() && at.is_none(),
            "{when}: acknowledged file {:?} changed: {} bytes (want {}), first difference at {at:?}",
            f.path,
            got.len(),
            want.len()
        );
    }
}

/// Create `path` with `len` bytes of `seed`'s pattern and fsync it. The error
/// says which step failed.
fn write_synced(path: &Path, seed: u64, len: usize) -> Result<Acked, (&'static str, io::Error)> {
    let mut f = fs::File::create(path).map_err(|e| ("create", e))?;
    f.write_all(&pattern(seed, len)).map_err(|e| ("write", e))?;
    f.sync_all().map_err(|e| ("fsync", e))?;
    drop(f);
    Ok(Acked {
        path: path.to_path_buf(),
        seed,
        len,
    })
}

/// How one writer ended.
struct Ended {
    acked: Vec<Acked>,
    step: &'static str,
    err: io::Error,
}

/// Write files of 256 KiB to 1.25 MiB (plus an odd tail) into `dir`, each with an
/// fsync, until the first error. Never more than NEVER_MIB in total.
fn fill(dir: &Path, seed0: u64) -> Ended {
    let mut acked = Vec::new();
    let mut total = 0u64;
    for i in 0u64.. {
        let len = (256 * 1024 * (1 + i % 5) + 4096 * (i % 3) + 17 * (i % 7)) as usize;
        let seed = seed0 + i;
        match write_synced(&dir.join(format!("f{i:05}")), seed, len) {
            Ok(a) => {
                total += len as u64;
                acked.push(a);
                assert!(
                    total < NEVER_MIB * MIB,
                    "{dir:?}: {total} bytes acknowledged on a {HOST_MIB} MiB host"
                );
            }
            Err((step, err)) => return Ended { acked, step, err },
        }
    }
    unreachable!()
}

/// Run `fill` in each of `dirs` at once (threads); each must end with ENOSPC within
/// `limit` (a hung writer is a failure: the guards then unmount and kill the
/// daemon, which also releases the thread). Returns every acknowledged file.
fn fill_parallel(dirs: &[PathBuf], seed0: u64, limit: Duration) -> Vec<Acked> {
    let (tx, rx) = mpsc::channel();
    for (n, d) in dirs.iter().enumerate() {
        fs::create_dir_all(d).expect("mkdir writer dir");
        let (tx, d) = (tx.clone(), d.clone());
        let seed = seed0 + 1_000_000 * n as u64;
        std::thread::spawn(move || {
            let _ = tx.send((d.clone(), fill(&d, seed)));
        });
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut all = Vec::new();
    for _ in dirs {
        let left = deadline.saturating_duration_since(Instant::now());
        let (d, end) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("a writer neither finished nor failed within {limit:?}"));
        assert_eq!(
            errno_of(&end.err),
            libc::ENOSPC,
            "writer in {d:?} stopped at {} after {} files: {} (want ENOSPC)",
            end.step,
            end.acked.len(),
            end.err
        );
        println!(
            "writer {d:?}: {} files acknowledged, then {} gave ENOSPC",
            end.acked.len(),
            end.step
        );
        all.extend(end.acked);
    }
    all
}

fn total_bytes(files: &[Acked]) -> u64 {
    files.iter().map(|f| f.len as u64).sum()
}

fn assert_fsck_clean(pool: &Path, when: &str) {
    let out = Command::new(mount::cowfs_bin())
        .arg("fsck")
        .arg(pool)
        .output()
        .expect("run cowfs fsck");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{when}: cowfs fsck is not clean:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------

#[test]
fn host_fs_full_gives_enospc_and_keeps_acknowledged_data() {
    let t0 = Instant::now();
    let host = HostFs::ext4(HOST_MIB);
    let pool = host.dir.join("pool");
    let fx = Fixture::with_pool_at(&pool, "1G");
    let host_free0 = host.free_bytes();

    // 1. Two writers fill the host through the daemon.
    let m = fx.mount();
    // df of the new pool: what it holds is used, not the capacity its host
    // cannot store.
    let used0 = statvfs_used(&fx.mnt);
    assert!(used0 < 16 * MIB, "df of a new pool: {used0} bytes used");
    let dirs: Vec<PathBuf> = (0..2).map(|n| fx.mnt.join(format!("w{n}"))).collect();
    let mut acked = fill_parallel(&dirs, 1, Duration::from_secs(40));
    let filled = total_bytes(&acked);
    println!(
        "{:?}: {} files, {} MiB acknowledged on a {HOST_MIB} MiB ext4 ({} MiB free before); \
         host free now {} KiB",
        t0.elapsed(),
        acked.len(),
        filled / MIB,
        host_free0 / MIB,
        host.free_bytes() / 1024
    );
    // The pool used the host, not its nominal 1 GiB: most of the free space went to
    // acknowledged files.
    assert!(
        filled > host_free0 / 4 * 3,
        "only {filled} bytes acknowledged of {host_free0} free"
    );
    // statfs of the mount reports the host as the limit, not the pool's capacity.
    let avail = statvfs_free(&fx.mnt);
    assert!(
        avail < 8 * MIB,
        "statfs of the full mount says {avail} bytes available"
    );
    check_intact(&acked, "full, same mount");

    // 2. Deleting files on the same mount makes space at once: new writes + fsync
    // succeed (the pool is not poisoned, and frees inside the file are reused).
    let (gone, kept): (Vec<Acked>, Vec<Acked>) = acked.into_iter().partition(|a| {
        a.path.starts_with(&dirs[0]) && a.path.to_string_lossy().ends_with(['0', '2', '4', '6'])
    });
    for g in &gone {
        fs::remove_file(&g.path).expect("unlink on a full pool");
    }
    acked = kept;
    let freed = total_bytes(&gone);
    assert!(freed >= 8 * MIB, "freed only {freed} bytes");
    let again = fx.mnt.join("again");
    fs::create_dir(&again).expect("mkdir after deleting");
    let mut n = 0u64;
    let mut rewritten = 0u64;
    while rewritten < freed / 2 {
        let a = write_synced(&again.join(format!("a{n}")), 50_000 + n, MIB as usize)
            .unwrap_or_else(|(s, e)| {
                panic!(
                    "{s} after deleting {freed} bytes ({rewritten} rewritten): {e}\n{}",
                    m.log_text()
                )
            });
        rewritten += a.len as u64;
        acked.push(a);
        n += 1;
    }
    check_intact(&acked, "after deleting and rewriting");
    m.stop();

    // 3. Offline: fsck clean. Remount: the data is there; delete, write, fill again.
    assert_fsck_clean(&pool, "after the full-host run");
    let m = fx.mount();
    check_intact(&acked, "after remount");
    let (gone, kept): (Vec<Acked>, Vec<Acked>) = acked
        .into_iter()
        .partition(|a| a.path.starts_with(&dirs[1]));
    for g in &gone {
        fs::remove_file(&g.path).expect("unlink after remount");
    }
    acked = kept;
    let more = fill_parallel(&[fx.mnt.join("w2")], 2_000_000, Duration::from_secs(30));
    assert!(
        total_bytes(&more) >= total_bytes(&gone) / 2,
        "after deleting {} bytes only {} could be written again",
        total_bytes(&gone),
        total_bytes(&more)
    );
    acked.extend(more);
    check_intact(&acked, "full again after remount");
    m.stop();
    assert_fsck_clean(&pool, "at the end");
    let m = fx.mount_ro();
    check_intact(&acked, "read-only mount at the end");
    m.stop();
    println!("full-host scenario took {:?}", t0.elapsed());
    drop(fx);
    drop(host);
}

// ---------------------------------------------------------------------------
// Reservation of a protected branch when the host is the limit.

#[test]
fn reservation_of_a_protected_branch_holds_when_the_host_is_full() {
    const RESERVE: u64 = 24 * MIB;
    let host = HostFs::ext4(HOST_MIB);
    let pool = host.dir.join("pool");
    // The socket and mount points live outside the small filesystem.
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-ctl-test-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let base = tmp.path().canonicalize().expect("canonical");
    let secret = init_pool(mount::cowfs_bin(), &pool);
    let socket = base.join("pool.sock");
    let (m_main, m_agent) = (base.join("main"), base.join("agent"));
    fs::create_dir(&m_main).expect("mkdir");
    fs::create_dir(&m_agent).expect("mkdir");
    let s = |p: &Path| p.to_str().expect("utf-8").to_string();

    let child = Command::new(mount::cowfs_bin())
        .arg("serve")
        .arg(&pool)
        .arg("--socket")
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cowfs serve");
    let mut served = Served::new(child, &base);
    let mut admin = connect(&socket, &secret);
    admin.mount("main", &s(&m_main), false).expect("mount main");
    admin
        .branch_create(
            "agent",
            "main",
            Some(MountSpec {
                dir: s(&m_agent),
                read_only: false,
            }),
        )
        .expect("agent branch, mounted");
    admin.protect("main").expect("protect main");
    let q = admin
        .quota_set("main", None, RESERVE)
        .expect("reserve for main");
    assert_eq!(q.reserve_bytes, RESERVE);
    // A reservation larger than the host can hold is refused (ENOSPC), though the
    // pool's nominal capacity would take it.
    let too_big = admin.quota_set("main", None, 2 * HOST_MIB * MIB);
    assert_eq!(
        kind(too_big),
        ErrorKind::NoSpace,
        "a {} MiB reservation on a {HOST_MIB} MiB host",
        2 * HOST_MIB
    );
    assert_eq!(
        admin.quota_list().expect("quota list")[0].reserve_bytes,
        RESERVE,
        "the refused reservation replaced the old one"
    );

    // The agent fills the host: ENOSPC, with main's reservation still free there.
    let agent_files = fill_parallel(&[m_agent.join("fill")], 7, Duration::from_secs(40));
    let host_free = host.free_bytes();
    println!(
        "agent: {} MiB acknowledged, host free {} KiB (main reserves {} MiB)",
        total_bytes(&agent_files) / MIB,
        host_free / 1024,
        RESERVE / MIB
    );
    assert!(
        host_free >= RESERVE - 2 * MIB,
        "the agent left only {host_free} bytes on the host; main reserved {RESERVE}"
    );
    assert!(
        total_bytes(&agent_files) > 32 * MIB,
        "the agent could write only {} bytes",
        total_bytes(&agent_files)
    );

    // Main (protected, reserved) still writes nearly its whole reservation.
    let mut main_files = Vec::new();
    let mut written = 0u64;
    let mut i = 0u64;
    while written < RESERVE - 4 * MIB {
        let a = write_synced(&m_main.join(format!("prod{i}")), 900 + i, MIB as usize)
            .unwrap_or_else(|(st, e)| {
                panic!("main: {st} failed after {written} of its {RESERVE} reserved bytes: {e}")
            });
        written += a.len as u64;
        main_files.push(a);
        i += 1;
    }
    check_intact(&main_files, "main within its reservation");
    check_intact(&agent_files, "agent after main wrote");
    // Main past its reservation runs into the full host: ENOSPC too, not EIO.
    let rest = fill_parallel(&[m_main.join("rest")], 5_000, Duration::from_secs(30));
    main_files.extend(rest);
    check_intact(&main_files, "main full");

    assert_eq!(served.stop(), Some(0), "cowfs serve did not exit 0");
    assert!(!is_mounted(&m_main) && !is_mounted(&m_agent));
    assert_fsck_clean(&pool, "after the reservation run");
    drop(served);
    drop(host);
}

/// A pool file of the default nominal size (1 TiB) on a host of 192 MiB: the
/// delete slop follows the space-map leaves in use, not the capacity, so the
/// pool stores about what the host holds (it held back 2 GiB, more than such a
/// host has: creating the pool failed with ENOSPC).
/// Filled to the host's brim with files of 1 MiB, one commit each, then emptied
/// a file and a commit at a time: every delete and every commit finds room
/// although the slop is far smaller than the map, and fsck is clean after a
/// reopen.
#[test]
fn a_default_size_pool_file_fills_a_small_host_and_empties_it() {
    use cowfs::fs::{Owner, ROOT_INO};
    use cowfs::pool::{Pool, PoolOptions};

    let host = HostFs::ext4(192);
    let path = host.dir.join("pool");
    let pool = Pool::create(&path, &PoolOptions::default()).expect("create");
    let b = pool.branch_id("main").expect("main");
    let chunk = pattern(1, (MIB / 4) as usize);
    let mut names = Vec::new();
    'fill: for i in 0.. {
        let name = format!("f{i}");
        let mode = libc::S_IFREG | 0o644;
        let Ok(at) = pool.mknod(b, ROOT_INO, name.as_bytes(), mode, 0, Owner::default()) else {
            break;
        };
        names.push(name);
        for j in 0..4 {
            let off = j * chunk.len() as u64;
            if pool.write_file(b, at.ino, off, &chunk).is_err() {
                break 'fill;
            }
        }
        pool.commit().expect("commit while filling");
    }
    pool.commit().expect("commit when full");
    let stored = pool.used_blocks() * 4096;
    let s = pool.statfs();
    println!(
        "1 TiB pool file on a 192 MiB host: {} MiB stored in {} files, {} blocks held back, host free {} KiB",
        stored / MIB,
        names.len(),
        s.bfree - s.bavail,
        host.free_bytes() / 1024
    );
    assert!(stored > 120 * MIB, "only {} MiB stored", stored / MIB);
    for name in &names {
        pool.unlink(b, ROOT_INO, name.as_bytes())
            .unwrap_or_else(|e| panic!("rm {name} on a full host: {e}"));
        pool.commit().expect("commit after rm");
    }
    pool.commit().expect("commit");
    pool.commit().expect("commit");
    assert!(pool.used_blocks() < 2048, "used {}", pool.used_blocks());
    drop(pool);
    let pool = Pool::open(&path, &PoolOptions::default()).expect("reopen");
    let r = pool.fsck(&Default::default()).expect("fsck");
    assert!(r.is_clean(), "fsck after emptying:\n{r}");
}
