//! Corruption test (issue 2, check 3): flip bytes in every live metadata block (tree
//! nodes of every branch, the catalog, space-map index and leaf pages) and in each
//! superblock slot; damage a data block; truncate the pool; present foreign bytes.
//! Open and reads must return a typed error naming the damaged block (or fall back to
//! the other slot), reads that succeed must return exactly the committed content
//! (never garbage), fsck must name the damage, and nothing may panic.

#[path = "support/dump.rs"]
mod dump;

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cowfs::btree::Node;
use cowfs::fs::items::{Extent, Inode, KIND_EXTENT, KIND_INODE};
use cowfs::fs::{FsError, Owner, ROOT_INO};
use cowfs::pool::catalog::BranchRecord;
use cowfs::pool::{FsckOptions, Pool, PoolError, PoolOptions};
use cowfs::store::block::{seal, verify, BlockKind, HEADER_SIZE};
use cowfs::store::device::{BlockDevice, MemDevice};
use cowfs::store::le::u64_at;
use cowfs::store::spacemap::PTRS_PER_INDEX;
use cowfs::store::superblock::Superblock;
use cowfs::store::{StoreError, BLOCK_SIZE};
use dump::{dump_branch, first_difference, Content, Tree};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

type PoolState = BTreeMap<String, Tree>;

fn opts() -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(64 << 20),
        cache_bytes: 1 << 20,
        ..Default::default()
    }
}

fn state(pool: &Pool) -> PoolState {
    pool.list()
        .into_iter()
        .map(|i| (i.name.clone(), dump_branch(pool, i.id).expect("walk")))
        .collect()
}

/// A pool image and the content of each of its last generations: a fallback to the
/// other slot must show exactly the older one.
struct Built {
    dev: MemDevice,
    states: BTreeMap<u64, PoolState>,
}

/// A pool with inline, extent and sparse files, directories, xattrs, links, a branch
/// with changes and a snapshot, and a small last commit.
fn build() -> Built {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).expect("create");
    let main = pool.branch_id("main").expect("main");
    let o = Owner::default();
    let d = pool.mkdir(main, ROOT_INO, b"dir", 0o755, o).expect("mkdir");
    for i in 0..250u32 {
        let parent = if i % 2 == 0 { ROOT_INO } else { d.ino };
        let name = format!("file-{i:03}-{}", "x".repeat((i % 40) as usize));
        let f = pool
            .mknod(main, parent, name.as_bytes(), libc::S_IFREG | 0o644, 0, o)
            .expect("mknod");
        let len = match i % 4 {
            0 => 100,
            1 => 5000,
            2 => 70_000,
            _ => 3,
        };
        let data: Vec<u8> = (0..len).map(|j| (j as u32 * 31 + i) as u8).collect();
        pool.write_file(main, f.ino, (i as u64 % 3) * 9000, &data)
            .expect("write");
        if i % 5 == 0 {
            pool.setxattr(main, f.ino, b"user.tag", name.as_bytes(), 0)
                .expect("xattr");
        }
    }
    pool.symlink(main, ROOT_INO, b"link", b"dir/file-001", o)
        .expect("symlink");
    pool.commit().expect("commit");
    pool.snapshot_create("snap", "main").expect("snapshot");
    let dev_b = pool.branch_create("dev", "main").expect("branch");
    let f = pool
        .lookup(dev_b, ROOT_INO, b"file-002-xx")
        .expect("lookup");
    pool.write_file(dev_b, f.ino, 100, b"changed in dev")
        .expect("write");
    pool.commit().expect("commit");
    let g_prev = pool.generation();
    let prev = state(&pool);
    // The last commit is small (one flush, manifest in the superblock).
    pool.write_file(main, f.ino, 0, b"last commit")
        .expect("write");
    pool.commit().expect("commit");
    let g_last = pool.generation();
    let last = state(&pool);
    drop(pool);
    // Closing may seal the last commit: one more generation, same content.
    let mut states = BTreeMap::from([(g_prev, prev)]);
    for g in g_last..=layout(&dev).generation {
        states.insert(g, last.clone());
    }
    Built { dev, states }
}

/// Where things live in an image, found with the public decoders only.
#[derive(Default)]
struct Layout {
    generation: u64,
    /// (block, what it is)
    meta: Vec<(u64, String)>,
    /// (branch, inode, file offset, block)
    data: Vec<(String, u64, u64, u64)>,
}

fn read_block(dev: &MemDevice, addr: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BLOCK_SIZE];
    dev.read_at(addr, &mut buf).expect("read");
    buf
}

fn walk_tree(
    dev: &MemDevice,
    pool_id: u64,
    root: u64,
    what: &str,
    l: &mut Layout,
) -> Vec<(cowfs::btree::Key, cowfs::btree::node::Value)> {
    let mut items = Vec::new();
    let mut stack = vec![root];
    while let Some(a) = stack.pop() {
        let buf = read_block(dev, a);
        let h = verify(&buf, a, pool_id, BlockKind::TreeNode).expect("intact node");
        l.meta.push((a, format!("{what} node, level {}", h.level)));
        match Node::decode(&buf, h.level, h.count).expect("decodes") {
            Node::Leaf(v) => items.extend(v),
            Node::Internal(_, kids) => stack.extend(kids.iter().map(|(_, c)| *c)),
        }
    }
    items
}

fn layout(dev: &MemDevice) -> Layout {
    let sb = (0..2)
        .filter_map(|s| Superblock::decode(&read_block(dev, s)).ok())
        .max_by_key(|s| s.generation)
        .expect("a valid slot");
    let mut l = Layout {
        generation: sb.generation,
        ..Default::default()
    };
    for (_, v) in walk_tree(dev, sb.pool_id, sb.catalog_root, "catalog", &mut l) {
        let r = BranchRecord::decode(&v).expect("catalog record");
        for (k, v) in walk_tree(
            dev,
            sb.pool_id,
            r.root,
            &format!("branch '{}'", r.name),
            &mut l,
        ) {
            if k.kind == KIND_EXTENT {
                let e = Extent::decode(&v).expect("extent");
                if !e.unwritten() {
                    for b in 0..e.len() {
                        l.data
                            .push((r.name.clone(), k.id, k.off + b * 4096, e.phys + b));
                    }
                }
            }
        }
    }
    // Space map: index pages from the root down to the leaves (level 0).
    let mut stack = vec![(sb.space_root, sb.space_depth)];
    while let Some((a, level)) = stack.pop() {
        let kind = if level == 0 {
            BlockKind::SpaceLeaf
        } else {
            BlockKind::SpaceIndex
        };
        let buf = read_block(dev, a);
        verify(&buf, a, sb.pool_id, kind).expect("intact space page");
        l.meta.push((a, format!("space map page, level {level}")));
        if level > 0 {
            for i in 0..PTRS_PER_INDEX as usize {
                let p = u64_at(&buf, HEADER_SIZE + i * 8);
                if p != 0 {
                    stack.push((p, level - 1));
                }
            }
        }
    }
    l.meta.sort();
    l.meta.dedup_by_key(|m| m.0);
    l
}

/// Read everything `want` says a branch holds. Every successful read must return
/// exactly the committed bytes; failures must be EIO. Returns (ok, eio) counts.
/// `names_damage` says whether a read error is the typed error naming the damage.
fn check_reads(
    pool: &Pool,
    want: &PoolState,
    ctx: &str,
    names_damage: &dyn Fn(&StoreError) -> bool,
) -> (usize, usize) {
    let (mut ok, mut eio) = (0, 0);
    let mut tally = |r: Result<bool, FsError>, what: &dyn Fn() -> String| match r {
        Ok(true) => ok += 1,
        Ok(false) => panic!("{ctx}: {}: garbage returned", what()),
        Err(e) => {
            assert_eq!(e.errno(), libc::EIO, "{ctx}: {}: {e}", what());
            match &e {
                FsError::Store(s) if names_damage(s) => {}
                _ => panic!("{ctx}: {}: error does not name the damage: {e:?}", what()),
            }
            eio += 1;
        }
    };
    for (bname, tree) in want {
        let b = pool
            .branch_id(bname)
            .unwrap_or_else(|e| panic!("{ctx}: branch '{bname}' missing: {e}"));
        for (path, e) in tree {
            let what = || format!("'{bname}' {:?}", String::from_utf8_lossy(path));
            let r = pool.getattr(b, e.ino);
            tally(
                r.map(|a| a.size == e.size && a.mode & 0o7777 == e.perm && a.nlink == e.nlink),
                &what,
            );
            match &e.content {
                Content::File(d) => {
                    let r = pool.read_file(b, e.ino, 0, d.len() + 1);
                    tally(r.map(|x| x == *d), &what);
                }
                Content::Symlink(t) => {
                    let r = pool.readlink(b, e.ino);
                    tally(r.map(|x| x == *t), &what);
                }
                Content::Dir => {
                    let r = pool.readdir(b, e.ino, 0, 10_000);
                    let kids = tree
                        .keys()
                        .filter(|p| {
                            p.len() > path.len()
                                && p.starts_with(path)
                                && !p[path.len()..].iter().skip(1).any(|c| *c == b'/')
                                && (path.is_empty() || p[path.len()] == b'/')
                        })
                        .count();
                    tally(r.map(|l| l.len() == kids + 2), &what);
                }
                Content::Special(_) => {}
            }
            for (k, v) in &e.xattrs {
                let r = pool.getxattr(b, e.ino, k);
                tally(r.map(|x| x == *v), &what);
            }
        }
    }
    (ok, eio)
}

#[derive(Default, Debug)]
struct Outcomes {
    open_refused: usize,
    fell_back: usize,
    read_errors: usize,
    fsck_only: usize,
}

/// Open a damaged image and hold it to the rules. `damaged` is the block that was
/// changed, one the newest commit (generation `gen`) references.
fn check_damaged(
    img: MemDevice,
    damaged: u64,
    states: &BTreeMap<u64, PoolState>,
    gen: u64,
    ctx: &str,
    out: &mut Outcomes,
) {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let pool = match Pool::open_on(Arc::new(img), &opts()) {
            Err(PoolError::Store(StoreError::Corrupt { block, .. })) => {
                assert_eq!(block, damaged, "{ctx}: open error names another block");
                out.open_refused += 1;
                return;
            }
            Err(e) => panic!("{ctx}: open failed with an unexpected error: {e:?}"),
            Ok(p) => p,
        };
        let opened = pool.generation();
        let want = states
            .get(&opened)
            .unwrap_or_else(|| panic!("{ctx}: opened unexpected generation {opened}"));
        if opened < gen {
            out.fell_back += 1;
        }
        let named =
            |e: &StoreError| matches!(e, StoreError::Corrupt { block, .. } if *block == damaged);
        let (_, eio) = check_reads(&pool, want, ctx, &named);
        let report = pool
            .fsck(&FsckOptions::default())
            .unwrap_or_else(|e| panic!("{ctx}: fsck could not run: {e}"));
        let names_it = report.errors.iter().any(|e| {
            e.contains(&format!("block {damaged}")) || e.contains(&format!("node {damaged}"))
        });
        if opened == gen {
            assert!(
                names_it,
                "{ctx}: fsck does not name block {damaged}:\n{report}"
            );
            if eio > 0 {
                out.read_errors += 1;
            } else {
                out.fsck_only += 1;
            }
        } else {
            assert!(
                report.errors.is_empty() || names_it,
                "{ctx}: fsck:\n{report}"
            );
        }
    }));
    if let Err(p) = r {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!("{ctx}: panicked: {msg}");
    }
}

#[test]
fn flipped_bytes_in_every_live_metadata_block() {
    let Built { dev, states } = build();
    let l = layout(&dev);
    let mut rng = SmallRng::seed_from_u64(7);
    let mut out = Outcomes::default();
    let kinds: BTreeMap<String, usize> = l.meta.iter().fold(BTreeMap::new(), |mut m, (_, w)| {
        let k = w
            .split(',')
            .next()
            .unwrap_or("")
            .split(' ')
            .next()
            .unwrap_or("")
            .to_string();
        *m.entry(k).or_insert(0) += 1;
        m
    });
    assert!(l.meta.len() > 20, "expected a multi-level pool: {kinds:?}");
    let mut cases = 0;
    for (addr, what) in &l.meta {
        // Header fields (magic, CRC, self address, generation, level), the first
        // payload byte, a random payload byte, the last byte.
        for off in [
            0,
            5,
            9,
            17,
            33,
            HEADER_SIZE,
            rng.gen_range(HEADER_SIZE..BLOCK_SIZE),
            BLOCK_SIZE - 1,
        ] {
            let img = dev.snapshot();
            img.flip_byte(*addr, off);
            let ctx = format!("block {addr} ({what}), byte {off}");
            check_damaged(img, *addr, &states, l.generation, &ctx, &mut out);
            cases += 1;
        }
    }
    println!(
        "corruption: {cases} flips in {} live metadata blocks {kinds:?}: {out:?}",
        l.meta.len()
    );
}

#[test]
fn superblock_slots_fall_back_or_refuse() {
    let Built { dev, states } = build();
    let l = layout(&dev);
    let (prev, last) = (&states[&(l.generation - 1)], &states[&l.generation]);
    let newest = l.generation % 2;
    let older = 1 - newest;
    let open = |img: MemDevice| Pool::open_on(Arc::new(img), &opts());
    for off in [0, 8, 20, 40, 90, 200, BLOCK_SIZE - 1] {
        // Newest slot damaged: the previous commit, intact.
        let img = dev.snapshot();
        img.flip_byte(newest, off);
        let p = open(img).unwrap_or_else(|e| panic!("newest slot byte {off}: {e}"));
        assert_eq!(p.generation(), l.generation - 1, "newest slot byte {off}");
        let got = state(&p);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            prev.keys().collect::<Vec<_>>()
        );
        for (name, t) in prev {
            assert!(
                got[name] == *t,
                "newest slot byte {off}: fallback content of '{name}': {}",
                first_difference(t, &got[name])
            );
        }
        let r = p.fsck(&FsckOptions::default()).expect("fsck");
        assert!(r.is_clean(), "newest slot byte {off}: {r}");
        // Older slot damaged: nothing changes.
        let img = dev.snapshot();
        img.flip_byte(older, off);
        let p = open(img).unwrap_or_else(|e| panic!("older slot byte {off}: {e}"));
        assert_eq!(p.generation(), l.generation);
        assert!(state(&p) == *last, "older slot byte {off}");
        // Both damaged: a typed error naming a slot.
        let img = dev.snapshot();
        img.flip_byte(newest, off);
        img.flip_byte(older, off);
        match open(img) {
            Err(PoolError::Store(StoreError::Corrupt { block, .. })) => assert!(block < 2),
            Err(PoolError::Store(StoreError::Foreign { .. })) => {
                assert_eq!(off, 0, "only a broken magic looks foreign")
            }
            other => panic!("both slots byte {off}: {:?}", other.err()),
        }
    }
}

#[test]
fn damaged_data_block_fails_only_its_reads() {
    let Built { dev, states } = build();
    let l = layout(&dev);
    // A block inside a multi-block file of main (snapshots may share it: their reads
    // of it fail too, which check_reads accepts as EIO).
    let &(_, ino, foff, phys) = l
        .data
        .iter()
        .find(|d| d.0 == "main" && d.2 >= 8192)
        .expect("a data block");
    let img = dev.snapshot();
    img.flip_byte(phys, 1234);
    let pool = Pool::open_on(Arc::new(img), &opts()).expect("open");
    let last = &states[&l.generation];
    let main = pool.branch_id("main").expect("main");
    let e = pool
        .read_file(main, ino, foff, 4096)
        .expect_err("damaged block read");
    assert_eq!(e.errno(), libc::EIO);
    assert!(e.to_string().contains(&format!("block {phys}")), "{e}");
    // A read that spans the damaged block fails too; its neighbours read fine.
    assert!(pool.read_file(main, ino, foff - 100, 200).is_err());
    let good = pool
        .read_file(main, ino, foff - 8192, 8192)
        .expect("block before");
    let Some(Content::File(d)) = last["main"]
        .values()
        .find(|x| x.ino == ino)
        .map(|x| &x.content)
    else {
        panic!("no such file")
    };
    assert_eq!(good, d[(foff - 8192) as usize..foff as usize]);
    // Everything else still reads correctly.
    let named = |e: &StoreError| matches!(e, StoreError::Corrupt { block, .. } if *block == phys);
    let (ok, eio) = check_reads(&pool, last, "data block", &named);
    assert!(eio >= 1 && ok > 300, "ok {ok}, eio {eio}");
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(
        r.errors
            .iter()
            .any(|x| x.contains(&format!("block {phys}"))),
        "fsck must name block {phys}:\n{r}"
    );
}

#[test]
fn truncated_pool() {
    let Built { dev, states } = build();
    let len = dev.len_blocks();
    let mut outcomes = BTreeMap::new();
    for keep in [0, 1, 2, 3, 10, len / 4, len / 2, len - 10, len - 1] {
        let img = dev.snapshot();
        img.truncate(keep);
        let ctx = format!("truncated to {keep} of {len} blocks");
        let r = catch_unwind(AssertUnwindSafe(|| {
            match Pool::open_on(Arc::new(img), &opts()) {
                Err(PoolError::Store(StoreError::Truncated { block, len, .. })) => {
                    assert!(
                        block >= len,
                        "{ctx}: Truncated names block {block} inside {len}"
                    );
                    "open: truncated"
                }
                Err(PoolError::Store(StoreError::Foreign { .. })) => {
                    assert!(keep < 2, "{ctx}: called foreign");
                    "open: foreign"
                }
                Err(e) => panic!("{ctx}: unexpected error {e:?}"),
                Ok(p) => {
                    let want = &states[&p.generation()];
                    let past_end = |e: &StoreError| matches!(e, StoreError::Truncated { block, len, .. } if *block >= *len);
                    let (_, eio) = check_reads(&p, want, &ctx, &past_end);
                    if eio > 0 {
                        "opened, some reads fail"
                    } else {
                        "opened, all reads fine"
                    }
                }
            }
        }));
        let what = r.unwrap_or_else(|_| panic!("{ctx}: panicked"));
        outcomes.insert(keep, what);
    }
    println!("truncation outcomes: {outcomes:?}");
    assert_eq!(outcomes[&0], "open: foreign");
}

#[test]
fn foreign_files_are_refused_by_name() {
    let mut rng = SmallRng::seed_from_u64(3);
    let random = MemDevice::new();
    for b in 0..64 {
        let block: Vec<u8> = (0..BLOCK_SIZE).map(|_| rng.gen()).collect();
        random.apply(b, &block);
    }
    let zeros = MemDevice::new();
    zeros.apply(63, &[0u8; BLOCK_SIZE]);
    for (what, dev) in [
        ("random", random),
        ("zeros", zeros),
        ("empty", MemDevice::new()),
    ] {
        match Pool::open_on(Arc::new(dev), &opts()) {
            Err(PoolError::Store(StoreError::Foreign { .. })) => {}
            other => panic!("{what}: {:?}", other.err()),
        }
    }
    // A real file: the error names it.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("not-a-pool");
    let bytes: Vec<u8> = (0..256 * 1024).map(|_| rng.gen()).collect();
    std::fs::write(&path, bytes).expect("write");
    let e = Pool::open(&path, &opts()).err().expect("refused");
    assert!(
        matches!(e, PoolError::Store(StoreError::Foreign { .. })),
        "{e:?}"
    );
    assert!(e.to_string().contains(&*path.to_string_lossy()), "{e}");
    // A cowfs superblock with a broken checksum in both slots is corruption, not foreign.
    let Built { dev, .. } = build();
    let img = dev.snapshot();
    img.flip_byte(0, 30);
    img.flip_byte(1, 30);
    match Pool::open_on(Arc::new(img), &opts()) {
        Err(PoolError::Store(StoreError::Corrupt { block, .. })) => assert!(block < 2),
        other => panic!("{:?}", other.err()),
    }
}

/// Rewrite the inode item of `ino` in branch `branch` of the newest commit with `f`,
/// keeping the node's checksum valid (a hostile or buggy writer, not bit rot).
fn patch_inode(dev: &MemDevice, branch: &str, ino: u64, f: impl Fn(&mut Inode)) {
    patch_item(dev, branch, ino, KIND_INODE, |v| {
        let mut i = Inode::decode(v).expect("inode");
        f(&mut i);
        i.encode()
    });
}

/// The newest valid superblock and the root of branch `branch` in it.
fn branch_root(dev: &MemDevice, branch: &str) -> (Superblock, u64) {
    let sb = (0..2)
        .filter_map(|s| Superblock::decode(&read_block(dev, s)).ok())
        .max_by_key(|s| s.generation)
        .expect("a valid slot");
    let mut l = Layout::default();
    let root = walk_tree(dev, sb.pool_id, sb.catalog_root, "catalog", &mut l)
        .into_iter()
        .filter_map(|(_, v)| BranchRecord::decode(&v))
        .find(|r| r.name == branch)
        .expect("branch")
        .root;
    (sb, root)
}

/// Rewrite tree node `addr` with `f` (which says whether it changed it), keeping
/// its checksum valid.
fn patch_node(dev: &MemDevice, pool_id: u64, addr: u64, f: impl FnOnce(&mut Node) -> bool) -> bool {
    let mut buf = read_block(dev, addr);
    let Ok(h) = verify(&buf, addr, pool_id, BlockKind::TreeNode) else {
        return false;
    };
    let Ok(mut n) = Node::decode(&buf, h.level, h.count) else {
        return false;
    };
    if !f(&mut n) {
        return false;
    }
    n.encode(&mut buf);
    seal(
        &mut buf,
        BlockKind::TreeNode,
        addr,
        h.generation,
        pool_id,
        h.level,
        n.len() as u16,
    );
    dev.apply(addr, &buf);
    true
}

/// Rewrite the first item of kind `kind` of `ino` in branch `branch` of the newest
/// commit with `f`, keeping the node's checksum valid.
fn patch_item(dev: &MemDevice, branch: &str, ino: u64, kind: u8, f: impl Fn(&[u8]) -> Vec<u8>) {
    let (sb, root) = branch_root(dev, branch);
    let mut l = Layout::default();
    walk_tree(dev, sb.pool_id, root, branch, &mut l);
    for (addr, _) in &l.meta {
        let patched = patch_node(dev, sb.pool_id, *addr, |n| {
            let Node::Leaf(items) = n else {
                return false;
            };
            let Some(item) = items
                .iter_mut()
                .find(|(k, _)| k.id == ino && k.kind == kind)
            else {
                return false;
            };
            item.1 = f(&item.1).into();
            true
        });
        if patched {
            return;
        }
    }
    panic!("no item of kind {kind} for inode {ino}");
}

#[test]
fn hostile_inode_fields_behind_valid_checksums() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).expect("create");
    let b = pool.branch_id("main").expect("main");
    let o = Owner::default();
    let ln = pool
        .symlink(b, ROOT_INO, b"ln", b"target", o)
        .expect("symlink");
    let f = pool
        .mknod(b, ROOT_INO, b"f", libc::S_IFREG | 0o644, 0, o)
        .expect("mknod");
    pool.write_file(b, f.ino, 0, &[7u8; 10_000]).expect("write");
    // A large last commit: two flushes, no manifest, so patched nodes are accepted.
    let big = pool
        .mknod(b, ROOT_INO, b"big", libc::S_IFREG | 0o644, 0, o)
        .expect("mknod");
    pool.write_file(b, big.ino, 0, &vec![1u8; 4 << 20])
        .expect("write");
    drop(pool);
    patch_inode(&dev, "main", ln.ino, |i| i.size = 1 << 50);
    patch_inode(&dev, "main", f.ino, |i| i.size = u64::MAX);
    let pool = Pool::open_on(Arc::new(dev.clone()), &opts()).expect("open");
    // Refused as corrupt (EIO), not an allocation of 2^50 bytes (an abort).
    let r = pool.readlink(b, ln.ino).map_err(|e| e.errno());
    assert_eq!(
        r,
        Err(libc::EIO),
        "readlink of a symlink claiming 2^50 bytes"
    );
    // Refused as corrupt, not an overflow in the offset arithmetic (a panic).
    let r = pool
        .read_file(b, f.ino, u64::MAX - 10, 4096)
        .map_err(|e| e.errno());
    assert_eq!(r, Err(libc::EIO), "read of a file claiming u64::MAX bytes");
    // The rest of the branch still reads.
    assert_eq!(
        pool.read_file(b, big.ino, 0, 10).expect("read"),
        vec![1u8; 10]
    );
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    let flagged = r.errors.iter().filter(|e| e.contains("impossible")).count();
    assert_eq!(flagged, 2, "fsck must flag both impossible sizes:\n{r}");
}

/// Block addresses near u64::MAX behind valid checksums (a hostile image): an extent
/// whose last block is past u64::MAX, an internal node pointing at block u64::MAX.
/// Reads, fsck, an unlink that frees the extent and a copy of a shared node that
/// adds references to its children must report the damage (EIO, fsck) and never
/// overflow in `start + len` (a panic in debug builds; a wrapped, empty range in
/// release ones, which silently skipped the reference counting).
#[test]
fn block_addresses_near_u64_max_behind_valid_checksums() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).expect("create");
    let b = pool.branch_id("main").expect("main");
    let o = Owner::default();
    let f = pool
        .mknod(b, ROOT_INO, b"f", libc::S_IFREG | 0o644, 0, o)
        .expect("mknod");
    pool.write_file(b, f.ino, 0, &[7u8; 10_000]).expect("write");
    let small = pool
        .mknod(b, ROOT_INO, b"small", libc::S_IFREG | 0o644, 0, o)
        .expect("mknod");
    pool.write_file(b, small.ino, 0, &[3u8; 8192])
        .expect("write");
    // Enough extent items for a root above two leaves.
    let big = pool
        .mknod(b, ROOT_INO, b"big", libc::S_IFREG | 0o644, 0, o)
        .expect("mknod");
    pool.write_file(b, big.ino, 0, &vec![1u8; 4 << 20])
        .expect("write");
    // Shares main's root: the next change in main copies it (references to its
    // children are added).
    pool.branch_create("other", "main").expect("branch");
    drop(pool);
    let pristine = dev.snapshot();

    // 1. An extent of f mapping blocks [u64::MAX - 2, u64::MAX + 1).
    patch_item(&dev, "main", f.ino, KIND_EXTENT, |v| {
        let mut e = Extent::decode(v).expect("extent");
        assert_eq!(e.len(), 3);
        e.phys = u64::MAX - 2;
        e.encode()
    });
    let pool = Pool::open_on(Arc::new(dev.clone()), &opts()).expect("open");
    let r = pool.read_file(b, f.ino, 0, 4096).map_err(|e| e.errno());
    assert_eq!(r, Err(libc::EIO), "read of the extent");
    let report = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(!report.is_clean(), "fsck must flag the extent");
    // Removing the file drops the item (it references no block it could name);
    // an error would do too. What it must not do is overflow.
    let r = pool.unlink(b, ROOT_INO, b"f").map_err(|e| e.errno());
    assert!(matches!(r, Ok(()) | Err(libc::EIO)), "unlink: {r:?}");
    std::mem::forget(pool);

    // 2. main's root points at block u64::MAX.
    let dev = pristine;
    let (sb, root) = branch_root(&dev, "main");
    let patched = patch_node(&dev, sb.pool_id, root, |n| match n {
        Node::Internal(_, kids) if kids.len() > 1 => {
            kids.last_mut().expect("kids").1 = u64::MAX;
            true
        }
        _ => false,
    });
    assert!(patched, "main's root is an internal node");
    let pool = Pool::open_on(Arc::new(dev.clone()), &opts()).expect("open");
    // small's items are in the first leaf: its path is intact, the root is copied.
    let r = pool
        .write_file(b, small.ino, 0, b"changed")
        .map_err(|e| e.errno());
    assert_eq!(r, Err(libc::EIO), "copy of the shared root");
    let report = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(!report.is_clean(), "fsck must flag the pointer");
    std::mem::forget(pool);
}

/// A superblock whose used-block figure is below the blocks the space map counts,
/// behind a valid checksum: freeing blocks must not take the figure below zero (a
/// panic in debug builds; u64::MAX in release ones, after which every allocation
/// failed with ENOSPC). fsck reports the wrong figure.
#[test]
fn a_used_block_figure_too_low_behind_a_valid_checksum() {
    let dev = MemDevice::new();
    let pool = Pool::create_on(Arc::new(dev.clone()), &opts()).expect("create");
    let b = pool.branch_id("main").expect("main");
    let f = pool
        .mknod(
            b,
            ROOT_INO,
            b"f",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("mknod");
    pool.write_file(b, f.ino, 0, &[7u8; 10_000]).expect("write");
    drop(pool);
    for slot in 0..2 {
        if let Ok(mut sb) = Superblock::decode(&read_block(&dev, slot)) {
            sb.used_blocks = 0;
            dev.apply(slot, &sb.encode());
        }
    }
    let pool = Pool::open_on(Arc::new(dev.clone()), &opts()).expect("open");
    pool.write_file(b, f.ino, 0, &[8u8; 10_000])
        .expect("an overwrite frees the old blocks");
    pool.unlink(b, ROOT_INO, b"f").expect("unlink");
    pool.commit().expect("commit");
    let g = pool
        .mknod(
            b,
            ROOT_INO,
            b"g",
            libc::S_IFREG | 0o644,
            0,
            Owner::default(),
        )
        .expect("mknod");
    pool.write_file(b, g.ino, 0, &[9u8; 10_000])
        .expect("room is left");
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(!r.is_clean(), "fsck must flag the used-block figure");
    std::mem::forget(pool);
}

/// Space-map index pages behind valid checksums whose entries past the pool's
/// capacity point at real pages (a hostile image): each entry on the path to leaf
/// 0 points at the page below it. fsck walked every position such pages name and
/// kept each page it read: PTRS_PER_INDEX^2 (256,036) reads and about 1 GiB for a
/// 1 TiB pool, PTRS_PER_INDEX^3 for a larger one. Such an entry is damage now.
#[test]
fn space_map_index_entries_past_the_capacity_are_damage() {
    let dev = MemDevice::new();
    let o = PoolOptions {
        capacity_bytes: Some(1 << 40),
        ..opts()
    };
    drop(Pool::create_on(Arc::new(dev.clone()), &o).unwrap());
    let (sb, _) = branch_root(&dev, "main");
    assert!(sb.space_depth >= 3, "depth {}", sb.space_depth);
    let mut addr = sb.space_root;
    for _ in 1..sb.space_depth {
        let mut buf = read_block(&dev, addr);
        let h = verify(&buf, addr, sb.pool_id, BlockKind::SpaceIndex).unwrap();
        let child = u64_at(&buf, HEADER_SIZE);
        assert_ne!(child, 0, "the path to leaf 0 exists");
        for i in 0..PTRS_PER_INDEX as usize {
            let at = HEADER_SIZE + 8 * i;
            buf[at..at + 8].copy_from_slice(&child.to_le_bytes());
        }
        seal(
            &mut buf,
            BlockKind::SpaceIndex,
            addr,
            h.generation,
            sb.pool_id,
            h.level,
            0,
        );
        dev.apply(addr, &buf);
        addr = child;
    }
    let pool = Pool::open_on(Arc::new(dev.snapshot()), &o).expect("open");
    let report = pool
        .fsck(&FsckOptions::default())
        .expect("fsck")
        .to_string();
    assert!(
        report.contains("points past the pool's capacity"),
        "{report}"
    );
}
