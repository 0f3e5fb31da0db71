//! Fuzz targets for every decoder of cowfs that reads untrusted bytes. Each target
//! must never panic, hang or allocate without bound; where a decoder accepts its
//! input, encoding the result and decoding again must give the same value.
//!
//! The fuzz binaries in fuzz_targets/ call these functions; tests/fuzz_regressions.rs
//! in the main workspace includes this file and replays fuzz/regressions/<target>/*.

use std::sync::{Arc, OnceLock};

mod blank_device;
mod ctl_reply;
mod mountinfo;
mod posix_acl;
mod sanitize_scan;
mod scratch;
mod side_files;

pub use blank_device::blank_device;
pub use ctl_reply::ctl_reply;
pub use mountinfo::mountinfo;
pub use posix_acl::posix_acl;
pub use sanitize_scan::sanitize_scan;
pub use side_files::side_files;

use cowfs::btree::Node;
use cowfs::fs::items::{
    xattr_chunk_key, xattr_chunk_pos, xattr_chunks, xattr_decode, xattr_encode,
    xattr_encode_chunked, DirEntry, Extent, Inode, XattrValue,
};
use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::catalog::{BranchRecord, DropRecord};
use cowfs::pool::{FsckOptions, Pool, PoolOptions};
use cowfs::store::block::{block_crc, verify, BlockKind, BLOCK_MAGIC, OFF_CRC};
use cowfs::store::device::{BlockDevice, MemDevice};
use cowfs::store::intent_log::LogRecord;
use cowfs::store::superblock::{Superblock, MANIFEST_MAX, SB_MAGIC};
use cowfs::store::BLOCK_SIZE;

/// A fuzz target: takes any bytes, must not panic.
pub type Target = fn(&[u8]);

/// Every target by name (the directory names under fuzz/regressions/).
pub const TARGETS: [(&str, Target); 15] = [
    ("superblock", superblock),
    ("intent_log", intent_log),
    ("block_header", block_header),
    ("btree_node", btree_node),
    ("catalog_record", catalog_record),
    ("fs_items", fs_items),
    ("pool_image", pool_image),
    ("control_request", control_request),
    ("sanitize_config", sanitize_config),
    ("side_files", side_files),
    ("ctl_reply", ctl_reply),
    ("mountinfo", mountinfo),
    ("posix_acl", posix_acl),
    ("sanitize_scan", sanitize_scan),
    ("blank_device", blank_device),
];

/// The input as one 4 KiB block (cut or zero-padded).
fn block_of(data: &[u8]) -> Vec<u8> {
    let mut b = data[..data.len().min(BLOCK_SIZE)].to_vec();
    b.resize(BLOCK_SIZE, 0);
    b
}

/// Superblock slot: a decoded slot re-encodes to a slot that decodes to the same.
pub fn superblock(data: &[u8]) {
    // (A version-1 slot may list more blocks than a version-2 slot holds; the
    // engine never re-encodes a slot it read.)
    if let Ok(sb) = Superblock::decode(data) {
        if sb.manifest.len() <= MANIFEST_MAX {
            let again = Superblock::decode(&sb.encode()).expect("re-encoded slot decodes");
            assert_eq!(again, sb);
        }
    }
    // As a full block, with a valid checksum if it has the magic, so the checks after
    // the checksum are reached.
    let mut b = block_of(data);
    if b.starts_with(&SB_MAGIC) {
        let crc = crc32fast::hash(&b[..BLOCK_SIZE - 4]);
        b[BLOCK_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
    }
    if let Ok(sb) = Superblock::decode(&b) {
        if sb.manifest.len() <= MANIFEST_MAX {
            assert_eq!(Superblock::decode(&sb.encode()).ok(), Some(sb));
        }
    }
}

/// Intent log record: input = address (8 bytes), base generation (8), pool id (8),
/// block. The block's header is made valid for those (kind, magic, checksum), so
/// decoding reaches the payload; a decoded record re-encodes to one that decodes the
/// same.
pub fn intent_log(data: &[u8]) {
    if data.len() < 24 {
        return;
    }
    let word = |i: usize| u64::from_le_bytes(data[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    let (addr, base, pool_id) = (word(0), word(1), word(2));
    let _ = LogRecord::decode(&block_of(&data[24..]), addr, base, pool_id);
    let mut b = block_of(&data[24..]);
    b[..4].copy_from_slice(&BLOCK_MAGIC.to_le_bytes());
    b[8..16].copy_from_slice(&addr.to_le_bytes());
    b[16..24].copy_from_slice(&base.to_le_bytes());
    b[24..32].copy_from_slice(&pool_id.to_le_bytes());
    b[32] = BlockKind::LogRecord as u8;
    b[33] = 0;
    let crc = block_crc(&b);
    b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    if let Some(r) = LogRecord::decode(&b, addr, base, pool_id) {
        assert!(r.fits(), "a decoded record fits a block");
        let again = LogRecord::decode(&r.encode(addr, base, pool_id), addr, base, pool_id);
        assert_eq!(again, Some(r));
    }
}

/// Block header: input = expected address (8 bytes), pool id (8), kind (1), block.
/// With bit 0 of the kind byte's high nibble set, magic and checksum are made valid.
pub fn block_header(data: &[u8]) {
    if data.len() < 17 {
        return;
    }
    let addr = u64::from_le_bytes(data[0..8].try_into().expect("8 bytes"));
    let pool_id = u64::from_le_bytes(data[8..16].try_into().expect("8 bytes"));
    let kind = match data[16] & 3 {
        0 => BlockKind::TreeNode,
        1 => BlockKind::SpaceLeaf,
        _ => BlockKind::SpaceIndex,
    };
    let mut b = block_of(&data[17..]);
    let _ = verify(&data[17..], addr, pool_id, kind);
    if data[16] & 0x10 != 0 {
        b[..4].copy_from_slice(&BLOCK_MAGIC.to_le_bytes());
        let crc = block_crc(&b);
        b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
    }
    let _ = verify(&b, addr, pool_id, kind);
}

/// Tree node: input = level (1 byte), item count (2), block payload. A node that
/// decodes re-encodes into a block that decodes to the same node.
pub fn btree_node(data: &[u8]) {
    if data.len() < 3 {
        return;
    }
    let level = data[0];
    let count = u16::from_le_bytes([data[1], data[2]]);
    let b = block_of(&data[3..]);
    if let Ok(n) = Node::decode(&b, level, count) {
        let mut out = vec![0u8; BLOCK_SIZE];
        n.encode(&mut out);
        let again = Node::decode(&out, n.level(), n.len() as u16).expect("re-encoded node");
        assert_eq!(again, n);
    }
}

/// Catalog records: a decoded branch record encodes to exactly the input (or
/// a version-2 one gains the zero owner); so does a decoded drop record, and
/// any other input is refused, never a panic.
pub fn catalog_record(data: &[u8]) {
    if let Some(r) = DropRecord::decode(data) {
        assert_eq!(r.encode(), data);
    }
    if let Some(r) = BranchRecord::decode(data) {
        let again = r.encode();
        assert_eq!(BranchRecord::decode(&again).as_ref(), Some(&r));
        // A current record encodes back to its bytes; a version-2 one (no owner)
        // gains the zero owner.
        assert!(again == data || (again.starts_with(data) && again[data.len()..] == [0; 8]));
    }
}

/// Filesystem items: inode, directory entry, extent, xattr (inline or chunked).
pub fn fs_items(data: &[u8]) {
    if let Some(i) = Inode::decode(data) {
        assert_eq!(Inode::decode(&i.encode()), Some(i));
    }
    if let Some(d) = DirEntry::decode(data) {
        assert_eq!(d.encode(), data);
    }
    if let Some(e) = Extent::decode(data) {
        assert_eq!(e.encode(), data);
        if !e.is_empty() {
            let s = e.slice(0, e.len());
            assert_eq!(s, e);
        }
    }
    match xattr_decode(data) {
        Some((n, XattrValue::Inline(v))) => assert_eq!(xattr_encode(n, v), data),
        Some((n, XattrValue::Chunked { id, len })) => {
            assert_eq!(xattr_encode_chunked(n, id, len), data);
            // Every chunk of the value has a key that gives back its id and index.
            for index in 0..xattr_chunks(len as usize) {
                let k = xattr_chunk_key(1, id, index);
                assert_eq!(xattr_chunk_pos(k.off), (id, index));
            }
        }
        None => {}
    }
}

fn opts() -> PoolOptions {
    PoolOptions {
        cache_bytes: 1 << 20,
        dirty_limit_bytes: 1 << 20,
        capacity_bytes: None,
        root_uid: 0,
        root_gid: 0,
    }
}

/// A small real pool: files inline and in extents, a directory, xattrs, a symlink, a
/// branch with changes and a snapshot.
pub fn base_image() -> &'static MemDevice {
    static BASE: OnceLock<MemDevice> = OnceLock::new();
    BASE.get_or_init(|| {
        let dev = MemDevice::new();
        let o = PoolOptions {
            capacity_bytes: Some(1024 * BLOCK_SIZE as u64),
            ..opts()
        };
        let pool = Pool::create_on(Arc::new(dev.clone()), &o).expect("create");
        let b = pool.branch_id("main").expect("main");
        let own = Owner::default();
        let d = pool.mkdir(b, ROOT_INO, b"dir", 0o755, own).expect("mkdir");
        for i in 0..12u8 {
            let parent = if i % 2 == 0 { ROOT_INO } else { d.ino };
            let f = pool
                .mknod(b, parent, &[b'f', b'a' + i], libc::S_IFREG | 0o644, 0, own)
                .expect("mknod");
            let len = if i % 3 == 0 { 9000 } else { 40 };
            pool.write_file(b, f.ino, 0, &vec![i; len]).expect("write");
            pool.setxattr(b, f.ino, b"user.x", &[i; 7], 0)
                .expect("xattr");
        }
        pool.symlink(b, ROOT_INO, b"ln", b"dir/fb", own)
            .expect("symlink");
        pool.commit().expect("commit");
        pool.snapshot_create("snap", "main").expect("snapshot");
        let dev_b = pool.branch_create("dev", "main").expect("branch");
        let f = pool.lookup(dev_b, ROOT_INO, b"fa").expect("lookup");
        pool.write_file(dev_b, f.ino, 100, b"changed")
            .expect("write");
        drop(pool);
        dev
    })
}

/// Make the checksums of every slot and metadata block match their content, so that
/// structural checks behind the checksums get exercised.
fn reseal(dev: &MemDevice) {
    let mut b = vec![0u8; BLOCK_SIZE];
    for a in 0..dev.len_blocks() {
        dev.read_at(a, &mut b).expect("read");
        if a < 2 && b.starts_with(&SB_MAGIC) {
            let crc = crc32fast::hash(&b[..BLOCK_SIZE - 4]);
            b[BLOCK_SIZE - 4..].copy_from_slice(&crc.to_le_bytes());
            dev.apply(a, &b);
        } else if b[..4] == BLOCK_MAGIC.to_le_bytes() {
            let crc = block_crc(&b);
            b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
            dev.apply(a, &b);
        }
    }
}

/// Whole pool image. First byte: bit 0 clear = the rest is a raw image (4 KiB blocks
/// in order); set = the rest is patches (block u16, offset u16, xor byte) to a small
/// real pool. Bit 1 = fix checksums afterwards. The image is opened; if that works,
/// every branch is walked and read, fsck runs, and a write and a commit are tried.
/// None of it may panic.
pub fn pool_image(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let dev = if mode & 1 == 0 {
        let dev = MemDevice::new();
        for (i, chunk) in rest.chunks(BLOCK_SIZE).enumerate() {
            dev.apply(i as u64, chunk);
        }
        dev
    } else {
        let dev = base_image().snapshot();
        let n = dev.len_blocks().max(1);
        let mut b = vec![0u8; BLOCK_SIZE];
        for p in rest.chunks_exact(5) {
            let a = u16::from_le_bytes([p[0], p[1]]) as u64 % n;
            let off = u16::from_le_bytes([p[2], p[3]]) as usize % BLOCK_SIZE;
            dev.read_at(a, &mut b).expect("read");
            b[off] ^= p[4];
            dev.apply(a, &b);
        }
        dev
    };
    if mode & 2 != 0 {
        reseal(&dev);
    }
    let Ok(pool) = Pool::open_on(Arc::new(dev), &opts()) else {
        return;
    };
    for info in pool.list() {
        walk(&pool, info.id);
    }
    // fsck's work follows the capacity (one pass over the space map): keep absurd
    // capacities from a hostile superblock out of a time-limited run.
    if pool.statfs().blocks <= 1 << 22 {
        let _ = pool.fsck(&FsckOptions { verify_data: true });
    }
    if let Some(w) = pool.list().into_iter().find(|i| !i.snapshot) {
        if let Ok(a) = pool.mknod(
            w.id,
            ROOT_INO,
            b"fuzz-new",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        ) {
            let _ = pool.write_file(w.id, a.ino, 5000, b"written by the fuzzer");
        }
        let _ = pool.unlink(w.id, ROOT_INO, b"fa");
        let _ = pool.commit();
    }
}

/// Read a branch the way a mount would, bounded in entries and bytes.
fn walk(pool: &Pool, b: u64) {
    let mut stack = vec![ROOT_INO];
    let mut seen = 0;
    while let Some(ino) = stack.pop() {
        seen += 1;
        if seen > 200 {
            return;
        }
        let Ok(a) = pool.getattr(b, ino) else {
            continue;
        };
        let _ = pool.listxattr(b, ino);
        let _ = pool.getxattr(b, ino, b"user.x");
        match a.mode & libc::S_IFMT {
            libc::S_IFDIR => {
                if let Ok(entries) = pool.readdir(b, ino, 0, 64) {
                    for e in entries {
                        if e.name != b"." && e.name != b".." {
                            let _ = pool.lookup(b, ino, &e.name);
                            stack.push(e.ino);
                        }
                    }
                }
            }
            libc::S_IFREG => {
                let _ = pool.read_file(b, ino, 0, 64 * 1024);
                let _ = pool.read_file(b, ino, a.size.saturating_sub(100), 4096);
            }
            libc::S_IFLNK => {
                let _ = pool.readlink(b, ino);
            }
            _ => {}
        }
    }
}

/// Control protocol: any byte line gets a request or a typed error, never a panic.
pub fn control_request(data: &[u8]) {
    let (_, parsed) = cowfs::control::parse_request(data);
    drop(parsed);
}

/// The daemon's TOML config file, read by two modules (the sanitize profiles and
/// `[sanitize]`; the `[control]` table): any text parses or gives a typed error.
pub fn sanitize_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cowfs::control::sanitize::SanitizeConfig::parse(
            text,
            std::path::Path::new("/nonexistent"),
        );
        let _ = cowfs::control::config::ServerConfig::parse(text);
    }
}
