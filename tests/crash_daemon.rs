//! Crash consistency through the daemon (issue 7): the FUSE daemon serves a pool on
//! a recording in-memory block device while real workloads run through the kernel:
//! PostgreSQL (pgbench, 4 clients, fsync on) plus acknowledged single-row inserts,
//! file churn (create, append, rename, unlink, each made durable with fsync of the
//! file and its directory), and branch/snapshot/delete in between, with a commit
//! timer like `cowfs serve`'s.
//!
//! Then for every flush boundary, and for a random point between each pair of
//! flushes with a random subset of the unflushed writes, the image a power cut would
//! leave is built, opened and fsck'd (metadata at every cut, data checksums on every
//! 16th); every file operation acknowledged by fsync before the cut must be there (a
//! rename never loses both names; files acknowledged near the cut are read at every
//! cut, all files on every 16th), every branch
//! operation acknowledged must be there, and at sampled cuts PostgreSQL starts on
//! the image, recovers, keeps every acknowledged insert and passes pg_amcheck.

#[path = "mount/mod.rs"]
mod mount;
mod pg_support;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cowfs::fs::ROOT_INO;
use cowfs::fuse::MountTable;
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::device::{BlockDevice, DeviceEvent, MemDevice};
use cowfs::store::{BlockAddr, BLOCK_SIZE};
use parking_lot::Mutex;
use pg_support::Postgres;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(2 << 30),
        // Small enough that dirty-limit commits happen in the middle of the load.
        dirty_limit_bytes: 4 << 20,
        root_uid: 0,
        root_gid: 0,
        ..Default::default()
    }
}

/// A crash image: the durable contents (shared, read-only while the image lives)
/// plus the writes that happened to reach the medium and whatever opening the pool
/// writes, kept privately so no image is ever copied whole.
struct Image {
    durable: MemDevice,
    local: Mutex<HashMap<BlockAddr, Box<[u8]>>>,
}

impl Image {
    fn new(durable: &MemDevice) -> Image {
        Image {
            durable: durable.clone(),
            local: Mutex::new(HashMap::new()),
        }
    }
}

impl BlockDevice for Image {
    fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        let local = self.local.lock();
        for (i, chunk) in buf.chunks_mut(BLOCK_SIZE).enumerate() {
            match local.get(&(addr + i as u64)) {
                Some(b) => chunk.copy_from_slice(&b[..chunk.len()]),
                None => self.durable.read_at(addr + i as u64, chunk)?,
            }
        }
        Ok(())
    }
    fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        let mut local = self.local.lock();
        for (i, chunk) in buf.chunks(BLOCK_SIZE).enumerate() {
            let mut b = vec![0u8; BLOCK_SIZE].into_boxed_slice();
            b[..chunk.len()].copy_from_slice(chunk);
            local.insert(addr + i as u64, b);
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn len_blocks(&self) -> u64 {
        let top = self.local.lock().keys().max().map_or(0, |a| a + 1);
        self.durable.len_blocks().max(top)
    }
    fn fixed_capacity(&self) -> Option<u64> {
        None
    }
    fn host_free_bytes(&self) -> Option<u64> {
        None
    }
    fn name(&self) -> PathBuf {
        PathBuf::from("<crash image>")
    }
}

/// Mounts served in this process; dropping unmounts them, also when a test fails.
struct Served {
    table: Arc<MountTable>,
    dirs: Vec<PathBuf>,
}

impl Served {
    fn mount(pool: &Arc<Pool>, branch: &str, dir: &Path) -> Served {
        let table = MountTable::new(pool.clone());
        table.mount(branch, dir, false).expect("mount");
        Served {
            table,
            dirs: vec![dir.to_path_buf()],
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.table.unmount_all();
        for d in &self.dirs {
            mount::lazy_umount(d);
        }
    }
}

/// The state of one path once an operation on it was acknowledged.
#[derive(Clone, PartialEq)]
enum FileState {
    Absent,
    Data(Vec<u8>),
}

/// Acknowledged states of each path, in order, with the log position at which the
/// acknowledgement (fsync of the file and of its directory) returned.
#[derive(Default)]
struct FileLog {
    paths: BTreeMap<String, Vec<(usize, FileState)>>,
    /// (old, new, log position when the rename started, data)
    renames: Vec<(String, String, usize, Vec<u8>)>,
}

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| ((i * 131 + j * 7) % 253) as u8).collect()
}

/// File churn on the mount until `stop`: every operation is acknowledged only after
/// fsync of the file and of its directory.
fn file_churn(root: PathBuf, dev: MemDevice, stop: Arc<AtomicBool>) -> FileLog {
    let dir = root.join("files");
    let mut log = FileLog::default();
    let mut rng = SmallRng::seed_from_u64(7);
    // Files that may still be appended to, renamed or unlinked.
    let mut live: Vec<(String, Vec<u8>)> = Vec::new();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let roll = rng.gen_range(0..10);
        if roll < 5 || live.len() < 4 {
            let name = format!("f{i}");
            let len = [100, 5000, 70_000, 300_000][rng.gen_range(0..4)];
            let data = body(i, len);
            let p = dir.join(&name);
            let mut f = File::create(&p).expect("create");
            f.write_all(&data).expect("write");
            f.sync_all().expect("fsync file");
            fsync_dir(&dir).expect("fsync dir");
            log.paths
                .entry(name.clone())
                .or_default()
                .push((dev.log_len(), FileState::Data(data.clone())));
            live.push((name, data));
        } else if roll < 7 {
            let k = rng.gen_range(0..live.len());
            let (name, data) = &mut live[k];
            let more = body(i, rng.gen_range(1..20_000));
            let mut f = OpenOptions::new()
                .append(true)
                .open(dir.join(&*name))
                .expect("open for append");
            f.write_all(&more).expect("append");
            f.sync_data().expect("fdatasync");
            data.extend_from_slice(&more);
            log.paths
                .get_mut(name.as_str())
                .expect("known")
                .push((dev.log_len(), FileState::Data(data.clone())));
        } else if roll < 9 {
            let (old, data) = live.swap_remove(rng.gen_range(0..live.len()));
            let new = format!("r{i}-{old}");
            let start = dev.log_len();
            fs::rename(dir.join(&old), dir.join(&new)).expect("rename");
            fsync_dir(&dir).expect("fsync dir");
            let at = dev.log_len();
            log.paths
                .get_mut(&old)
                .expect("known")
                .push((at, FileState::Absent));
            log.paths
                .entry(new.clone())
                .or_default()
                .push((at, FileState::Data(data.clone())));
            log.renames.push((old, new, start, data));
        } else {
            let (name, _) = live.swap_remove(rng.gen_range(0..live.len()));
            fs::remove_file(dir.join(&name)).expect("unlink");
            fsync_dir(&dir).expect("fsync dir");
            log.paths
                .get_mut(&name)
                .expect("known")
                .push((dev.log_len(), FileState::Absent));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    log
}

/// A branch or snapshot made by the workload: (name, log position when its creation
/// was acknowledged, the generation that created it, deletion (started at,
/// acknowledged at)).
type BranchOp = (String, usize, u64, Option<(usize, usize)>);

/// Branch operations acknowledged (operation returned after its commit).
#[derive(Default)]
struct BranchLog {
    branches: Vec<BranchOp>,
}

fn branch_churn(
    table: Arc<MountTable>,
    pool: Arc<Pool>,
    dev: MemDevice,
    stop: Arc<AtomicBool>,
) -> BranchLog {
    let mut log = BranchLog::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let name = format!("b{n}");
        // What `cowfs-ctl branch create` does: flush the mount, then branch.
        table.sync_branch("main").expect("sync main");
        if n % 2 == 0 {
            pool.snapshot_create(&name, "main").expect("snapshot");
        } else {
            pool.branch_create(&name, "main").expect("branch");
        }
        pool.commit().expect("commit");
        log.branches
            .push((name, dev.log_len(), pool.generation(), None));
        if n % 3 == 0 {
            let k = log
                .branches
                .iter()
                .position(|b| b.3.is_none())
                .expect("a live branch");
            let start = dev.log_len();
            pool.branch_delete(&log.branches[k].0).expect("delete");
            pool.commit().expect("commit");
            log.branches[k].3 = Some((start, dev.log_len()));
        }
        std::thread::sleep(Duration::from_millis(80));
    }
    log
}

/// Path of `name` under /files in branch `main` of `pool`, if it exists.
fn read_file(pool: &Pool, name: &str) -> FileState {
    let main = pool.branch_id("main").expect("main");
    let dir = pool.lookup(main, ROOT_INO, b"files").expect("files dir");
    match pool.lookup(main, dir.ino, name.as_bytes()) {
        Ok(a) => FileState::Data(
            pool.read_file(main, a.ino, 0, a.size as usize)
                .expect("read file"),
        ),
        Err(_) => FileState::Absent,
    }
}

/// Log events around a cut within which a file's acknowledgements make it worth
/// reading on every image; the others are read on every `FULL_CHECK_EVERY`th cut.
const ACTIVE_WINDOW: usize = 300;
const FULL_CHECK_EVERY: usize = 16;

/// Check the file log against the image of a cut after `cut` log events: every
/// path when `all`, else those acknowledged near the cut.
fn check_files(pool: &Pool, files: &FileLog, cut: usize, all: bool, ctx: &str) -> usize {
    let mut checked = 0;
    for (name, states) in &files.paths {
        let Some(k) = states.iter().rposition(|(at, _)| *at <= cut) else {
            continue;
        };
        let near = |at: usize| at.abs_diff(cut) <= ACTIVE_WINDOW;
        if !all && !near(states[k].0) && !states.get(k + 1).is_some_and(|s| near(s.0)) {
            continue;
        }
        let got = read_file(pool, name);
        let want = &states[k].1;
        let next = states.get(k + 1).map(|s| &s.1);
        // The operation after the acknowledged one may have reached the medium
        // through a commit before the cut, or an append partly.
        let ok = got == *want
            || next == Some(&got)
            || match (&got, want, next) {
                (FileState::Data(g), FileState::Data(w), Some(FileState::Data(n))) => {
                    g.starts_with(w) && n.starts_with(g)
                }
                _ => false,
            };
        assert!(
            ok,
            "{ctx}: /files/{name}: acknowledged state #{k} lost ({} bytes on the image, {} acknowledged)",
            match &got {
                FileState::Data(d) => d.len() as i64,
                FileState::Absent => -1,
            },
            match want {
                FileState::Data(d) => d.len() as i64,
                FileState::Absent => -1,
            }
        );
        checked += 1;
    }
    for (old, new, start, data) in &files.renames {
        if *start <= cut && (all || cut - start <= ACTIVE_WINDOW) {
            let (a, b) = (read_file(pool, old), read_file(pool, new));
            let present = [&a, &b]
                .iter()
                .filter(|s| ***s == FileState::Data(data.clone()))
                .count();
            assert_eq!(present, 1, "{ctx}: rename {old} -> {new} is not atomic");
        }
    }
    checked
}

fn check_branches(pool: &Pool, branches: &BranchLog, cut: usize, ctx: &str) {
    let names: Vec<String> = pool.list().into_iter().map(|b| b.name).collect();
    let gen = pool.generation();
    for (name, created, created_gen, deleted) in &branches.branches {
        let exists = names.contains(name);
        match deleted {
            Some((_, acked)) if *acked <= cut => {
                assert!(!exists, "{ctx}: deleted branch {name} is back")
            }
            // Being deleted at the cut: either way is right.
            Some((started, _)) if *started <= cut => {}
            _ if *created <= cut => assert!(
                exists,
                "{ctx}: branch {name} (acknowledged at event {created}, generation \
                 {created_gen}) is lost; the image opened at generation {gen}"
            ),
            _ => {}
        }
    }
}

/// Start PostgreSQL on the image, let it recover, and check acknowledged inserts and
/// pg_amcheck; the image keeps whatever recovery writes.
fn check_postgres(img: Arc<Image>, work: &Path, acked: usize, ctx: &str) {
    let pool = Arc::new(Pool::open_on(img, &opts()).expect("open image"));
    let mnt = work.join("check");
    fs::create_dir_all(&mnt).expect("mkdir check");
    let served = Served::mount(&pool, "main", &mnt);
    let sock = work.join("check-sock");
    fs::create_dir_all(&sock).expect("socket dir");
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o1777)).expect("chmod socket dir");
    let pg = Postgres::new(mnt.join("pg"), sock);
    let server = pg.start();
    let present: usize = pg
        .sql(&format!("SELECT count(*) FROM acked WHERE id <= {acked}"))
        .parse()
        .expect("count");
    assert_eq!(
        present, acked,
        "{ctx}: PostgreSQL lost acknowledged inserts after recovery"
    );
    pg.amcheck();
    server.stop();
    drop(served);
}

struct Recorded {
    base: MemDevice,
    events: Vec<DeviceEvent>,
    files: FileLog,
    branches: BranchLog,
    /// (log position after the insert returned, id) for acknowledged inserts.
    inserts: Vec<(usize, usize)>,
    pgbench_tx: u64,
}

fn record_workload(work: &Path) -> Recorded {
    let dev = MemDevice::new();
    let pool = Arc::new(Pool::create_on(Arc::new(dev.clone()), &opts()).expect("create"));
    let mnt = work.join("mnt");
    fs::create_dir(&mnt).expect("mkdir mnt");
    let served = Served::mount(&pool, "main", &mnt);
    let sock = work.join("sock");
    fs::create_dir(&sock).expect("socket dir");
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o1777)).expect("chmod socket dir");
    let data = mnt.join("pg");
    let pg = Postgres::new(data.clone(), sock);
    fs::create_dir(&data).expect("mkdir pg");
    std::os::unix::fs::chown(&data, Some(pg.uid), Some(pg.gid)).expect("chown");
    fs::set_permissions(&data, fs::Permissions::from_mode(0o700)).expect("chmod");
    pg.run(
        "initdb",
        &[
            "-D",
            data.to_str().expect("utf-8"),
            "-A",
            "trust",
            "--no-sync",
        ],
    );
    fs::create_dir(mnt.join("files")).expect("mkdir files");
    let server = pg.start();
    pg.run("pgbench", &["-i", "-s", "1", "-q", "postgres"]);
    pg.sql("CREATE TABLE acked (id int PRIMARY KEY)");
    server.stop();
    served.table.sync_branch("main").expect("sync");

    // Recording starts before the base copy: a write in between is in both, and
    // replaying it is harmless.
    dev.start_recording();
    let base = dev.snapshot();

    let stop = Arc::new(AtomicBool::new(false));
    let committer = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(300));
                pool.commit().expect("timer commit");
            }
        })
    };
    let churn = {
        let (root, dev, stop) = (mnt.clone(), dev.clone(), stop.clone());
        std::thread::spawn(move || file_churn(root, dev, stop))
    };
    let brancher = {
        let (t, p, d, s) = (
            served.table.clone(),
            pool.clone(),
            dev.clone(),
            stop.clone(),
        );
        std::thread::spawn(move || branch_churn(t, p, d, s))
    };
    let server = pg.start();
    let mut bench = pg
        .cmd("pgbench")
        .args(["-n", "-c", "4", "-j", "2", "-t", "60", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("pgbench");
    let mut inserts = Vec::new();
    let mut id = 0;
    loop {
        let done = bench.try_wait().expect("pgbench").is_some();
        id += 1;
        pg.sql(&format!("INSERT INTO acked VALUES ({id})"));
        inserts.push((dev.log_len(), id));
        if done && id >= 40 {
            break;
        }
    }
    let st = bench.wait().expect("pgbench");
    assert!(st.success(), "pgbench failed: {st}");
    let pgbench_tx = pg.count("pgbench_history");
    // Stopped hard, like the power cut it stands for: nothing after this matters.
    drop(server);
    stop.store(true, Ordering::Relaxed);
    let files = churn.join().expect("file churn panicked");
    let branches = brancher.join().expect("branch churn panicked");
    committer.join().expect("committer panicked");
    drop(served);
    pool.commit().expect("final commit");
    let events = dev.take_log();
    Recorded {
        base,
        events,
        files,
        branches,
        inserts,
        pgbench_tx,
    }
}

#[test]
fn every_cut_through_the_daemon_keeps_what_was_acknowledged() {
    let tmp = tempfile::Builder::new()
        .prefix("cowfs-crash-daemon-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let work = tmp.path().canonicalize().expect("canonical");
    let rec = record_workload(&work);
    let ev = &rec.events;
    let flushes: Vec<usize> = ev
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, DeviceEvent::Flush))
        .map(|(i, _)| i)
        .collect();
    assert!(flushes.len() > 100, "only {} flushes", flushes.len());
    assert!(rec.inserts.len() >= 40 && rec.pgbench_tx >= 240);

    // Cuts: (events before the cut, random subset of the unflushed writes?).
    let mut rng = SmallRng::seed_from_u64(11);
    let mut cuts: Vec<(usize, bool)> = Vec::new();
    let mut gap_start = 0;
    for &f in &flushes {
        if f > gap_start {
            cuts.push((rng.gen_range(gap_start + 1..=f), true));
        }
        cuts.push((f + 1, false));
        gap_start = f + 1;
    }
    cuts.sort();
    // PostgreSQL starts on a few flush-boundary images spread over the run.
    let boundaries: Vec<usize> = cuts.iter().filter(|c| !c.1).map(|c| c.0).collect();
    let pg_cuts: Vec<usize> = [1, 3, 5]
        .iter()
        .map(|q| boundaries[boundaries.len() * q / 6])
        .chain([*boundaries.last().expect("a boundary")])
        .collect();

    let durable = rec.base.snapshot();
    let mut durable_upto = 0;
    let (mut n_boundary, mut n_between, mut n_files, mut n_pg) = (0, 0, 0, 0);
    for (n, &(cut, random)) in cuts.iter().enumerate() {
        let last_flush = ev[..cut]
            .iter()
            .rposition(|e| matches!(e, DeviceEvent::Flush))
            .map_or(0, |p| p + 1);
        for e in &ev[durable_upto..last_flush] {
            if let DeviceEvent::Write { addr, data } = e {
                durable.apply(*addr, data);
            }
        }
        durable_upto = durable_upto.max(last_flush);
        let img = Arc::new(Image::new(&durable));
        if random {
            let mut pending: Vec<(BlockAddr, &Vec<u8>)> = ev[last_flush..cut]
                .iter()
                .filter_map(|e| match e {
                    DeviceEvent::Write { addr, data } => Some((*addr, data)),
                    DeviceEvent::Flush => None,
                })
                .collect();
            pending.shuffle(&mut rng);
            let keep = rng.gen_range(0..=pending.len());
            for (addr, data) in &pending[..keep] {
                img.write_at(*addr, data).expect("apply");
            }
            n_between += 1;
        } else {
            n_boundary += 1;
        }
        let ctx = format!("cut {n} (after event {cut} of {})", ev.len());
        {
            let pool = Pool::open_on(img.clone(), &opts())
                .unwrap_or_else(|e| panic!("{ctx}: open failed: {e}"));
            // Every cut gets the full metadata check (trees, reference counts,
            // leaks); data block checksums and every file are read on a sample.
            let all = n % FULL_CHECK_EVERY == 0 || n + 1 == cuts.len() || pg_cuts.contains(&cut);
            let report = pool
                .fsck(&FsckOptions { verify_data: all })
                .unwrap_or_else(|e| panic!("{ctx}: fsck: {e}"));
            assert!(report.is_clean(), "{ctx}: fsck:\n{report}");
            n_files += check_files(&pool, &rec.files, cut, all, &ctx);
            check_branches(&pool, &rec.branches, cut, &ctx);
        }
        if !random && pg_cuts.contains(&cut) {
            let acked = rec.inserts.iter().filter(|(at, _)| *at <= cut).count();
            check_postgres(img, &work, acked, &ctx);
            n_pg += 1;
        }
    }
    println!(
        "crash through the daemon: {} events, {} flushes, {} pgbench transactions, {} acknowledged inserts, \
         {} file states, {} renames, {} branch operations; checked {n_boundary} flush-boundary cuts and \
         {n_between} cuts between flushes (fsck clean, {n_files} acknowledged file states), \
         PostgreSQL recovered on {n_pg} of them; all passed",
        ev.len(),
        flushes.len(),
        rec.pgbench_tx,
        rec.inserts.len(),
        rec.files.paths.values().map(Vec::len).sum::<usize>(),
        rec.files.renames.len(),
        rec.branches.branches.len(),
    );
}
