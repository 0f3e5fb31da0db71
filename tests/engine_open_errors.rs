//! Open falls back to the older superblock slot only for a torn commit (format-spec
//! §8). The newest complete commit is the pool's state: when it cannot be read, or
//! its intent log cannot, open reports the error and changes nothing. Falling back,
//! or ending replay early, would open an older state whose next commit reuses the
//! newer generation's slot, and the newer commit, or acknowledged fsyncs, would be
//! lost for good. Once the cause is gone, the next open finds everything.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{BranchId, FsckOptions, Pool, PoolError, PoolOptions};
use cowfs::store::device::{BlockDevice, DeviceEvent, MemDevice};
use cowfs::store::superblock::Superblock;
use cowfs::store::{BlockAddr, StoreError, BLOCK_SIZE};

const BS: usize = BLOCK_SIZE;

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(64 << 20),
        ..Default::default()
    }
}

/// A crash image whose reads of some blocks fail (EIO) while `bad` lists them.
struct FailingReads {
    image: MemDevice,
    bad: Mutex<Vec<BlockAddr>>,
}

impl FailingReads {
    fn new(image: &MemDevice, bad: &[BlockAddr]) -> Arc<FailingReads> {
        Arc::new(FailingReads {
            image: image.snapshot(),
            bad: Mutex::new(bad.to_vec()),
        })
    }
}

impl BlockDevice for FailingReads {
    fn read_at(&self, addr: BlockAddr, buf: &mut [u8]) -> std::io::Result<()> {
        let n = buf.len().div_ceil(BS) as u64;
        if self
            .bad
            .lock()
            .unwrap()
            .iter()
            .any(|b| (addr..addr + n).contains(b))
        {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        self.image.read_at(addr, buf)
    }
    fn write_at(&self, addr: BlockAddr, buf: &[u8]) -> std::io::Result<()> {
        self.image.write_at(addr, buf)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.image.flush()
    }
    fn len_blocks(&self) -> u64 {
        self.image.len_blocks()
    }
    fn fixed_capacity(&self) -> Option<u64> {
        self.image.fixed_capacity()
    }
    fn host_free_bytes(&self) -> Option<u64> {
        self.image.host_free_bytes()
    }
    fn name(&self) -> PathBuf {
        self.image.name()
    }
}

fn newest_superblock(dev: &MemDevice) -> Superblock {
    (0..2)
        .filter_map(|slot| {
            let mut b = vec![0u8; BS];
            dev.read_at(slot, &mut b).ok()?;
            Superblock::decode(&b).ok()
        })
        .max_by_key(|s| s.generation)
        .unwrap()
}

/// Open must fail with an I/O error (not open an older state).
fn assert_open_fails_with_io(dev: Arc<FailingReads>, what: &str) {
    match Pool::open_on(dev, &opts()) {
        Err(PoolError::Store(StoreError::Io { .. })) => {}
        Err(e) => panic!("{what}: expected an I/O error, got: {e}"),
        Ok(p) => panic!(
            "{what}: opened at generation {} instead of reporting the read error",
            p.generation()
        ),
    }
}

/// A pool on a MemDevice with file "f" of `len` bytes of 1s in `main`, committed.
fn committed_file(len: usize) -> (MemDevice, Pool, BranchId, u64) {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).unwrap();
    let b = pool.branch_id("main").unwrap();
    let ino = pool
        .mknod(
            b,
            ROOT_INO,
            b"f",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .unwrap()
        .ino;
    pool.write_file(b, ino, 0, &vec![1u8; len]).unwrap();
    pool.commit().unwrap();
    (dev, pool, b, ino)
}

fn read_all(p: &Pool, b: BranchId, ino: u64, len: usize) -> Vec<u8> {
    p.read_file(b, ino, 0, len).unwrap()
}

/// A pool with file "f" holding `old`, committed (generation g - 1), then `new`
/// written over it by a large (two-flush) commit g, whose superblock has an empty
/// manifest: nothing of g is torn, so the older slot must never be used. g's
/// catalog root, which g - 1 does not reference, cannot be read at open.
#[test]
fn an_unreadable_block_of_a_complete_commit_fails_open_instead_of_falling_back() {
    const LEN: usize = 2 << 20;
    let (dev, pool, b, ino) = committed_file(LEN);
    let older = newest_superblock(&dev);
    pool.write_file(b, ino, 0, &vec![2u8; LEN]).unwrap();
    pool.commit().unwrap();
    let image = dev.snapshot();
    drop(pool);
    let sb = newest_superblock(&image);
    assert_eq!(sb.generation, older.generation + 1);
    assert!(sb.manifest.is_empty(), "commit g is a two-flush commit");
    assert_ne!(sb.catalog_root, older.catalog_root);

    let failing = FailingReads::new(&image, &[sb.catalog_root]);
    assert_open_fails_with_io(failing.clone(), "catalog root of g unreadable");
    // Nothing was written: the fault gone, the same image opens at g.
    failing.bad.lock().unwrap().clear();
    let p = Pool::open_on(failing, &opts()).unwrap();
    assert_eq!(p.generation(), sb.generation);
    assert_eq!(read_all(&p, b, ino, LEN), vec![2u8; LEN]);
    assert!(p.fsck(&FsckOptions::default()).unwrap().is_clean());
}

/// An fsync logged after commit g (one record, one flush), then a crash. Reading
/// the record block, or a data block it names, fails at open: replay must report
/// it rather than stop there as at a torn tail, which would drop the fsync.
#[test]
fn a_read_error_in_the_intent_log_fails_open_instead_of_dropping_fsyncs() {
    const LEN: usize = 64 << 10;
    let (dev, pool, b, ino) = committed_file(LEN);
    let g = pool.generation();
    dev.start_recording();
    pool.write_file(b, ino, 4 * BS as u64, &[3u8; BS]).unwrap();
    let data_block = match dev.take_log().first() {
        Some(DeviceEvent::Write { addr, .. }) => *addr,
        other => panic!("the overwrite wrote no data block first: {other:?}"),
    };
    pool.sync_file(b, ino).unwrap();
    let image = dev.snapshot();
    drop(pool);
    let sb = newest_superblock(&image);
    assert_eq!(sb.generation, g, "the fsync was logged, not committed");
    let (record, _) = sb.log.expect("a 64 MiB pool has a log region");
    let mut want = vec![1u8; LEN];
    want[4 * BS..5 * BS].fill(3);

    for (bad, what) in [
        (record, "the record block"),
        (data_block, "a logged data block"),
    ] {
        let failing = FailingReads::new(&image, &[bad]);
        assert_open_fails_with_io(failing.clone(), what);
        failing.bad.lock().unwrap().clear();
        let p = Pool::open_on(failing, &opts()).unwrap();
        assert_eq!(
            read_all(&p, b, ino, LEN),
            want,
            "{what}: the fsync after the fault is gone"
        );
        assert!(p.fsck(&FsckOptions::default()).unwrap().is_clean());
    }
}
