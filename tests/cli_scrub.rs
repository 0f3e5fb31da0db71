//! The `cowfs` command on pool files: `scrub` reports a damaged data block by
//! branch and path with exit code 4 and exits 0 on a clean pool; `init
//! --preallocate`; `init` refusing an earlier pool's side files.

use std::process::Command;

use cowfs::fs::Owner;
use cowfs::pool::{Pool, PoolOptions};

#[test]
fn scrub_names_the_damaged_file_and_exits_4() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool");
    {
        let pool = Pool::create(&path, &PoolOptions::default()).unwrap();
        let b = pool.branch_id("main").unwrap();
        let own = Owner::default();
        let d = pool.mkdir(b, 1, b"srv", 0o755, own).unwrap();
        let f = pool
            .mknod(b, d.ino, b"db.bin", libc::S_IFREG | 0o644, 0, own)
            .unwrap();
        pool.write_file(b, f.ino, 0, &vec![0xEE; 8192]).unwrap();
        pool.snapshot_create("snap", "main").unwrap();
        pool.commit().unwrap();
    }
    let scrub = || {
        Command::new(env!("CARGO_BIN_EXE_cowfs"))
            .arg("scrub")
            .arg(&path)
            .output()
            .unwrap()
    };
    let clean = scrub();
    assert_eq!(
        clean.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&clean.stderr)
    );

    let mut bytes = std::fs::read(&path).unwrap();
    let block = bytes
        .chunks(4096)
        .position(|b| b.iter().all(|&x| x == 0xEE))
        .expect("the file's data block");
    bytes[block * 4096 + 7] ^= 0xFF;
    std::fs::write(&path, &bytes).unwrap();

    let out = scrub();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(text.contains("/srv/db.bin"), "{text}");
    assert!(text.contains(&format!("block {block}")), "{text}");
}

/// `cowfs init --preallocate` writes the whole capacity of a pool file, and the
/// pool is as usable as a sparse one.
#[test]
fn init_preallocate_writes_the_whole_capacity() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let out = Command::new(env!("CARGO_BIN_EXE_cowfs"))
        .args(["init", "--size", "64M", "--preallocate"])
        .arg(&pool)
        .output()
        .expect("cowfs init");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::metadata(&pool).expect("stat pool");
    assert_eq!(md.len(), 64 << 20);
    assert!(md.blocks() * 512 >= 64 << 20, "{} blocks", md.blocks());
    let p = Pool::open(&pool, &PoolOptions::default()).expect("open");
    let b = p.branch_id("main").expect("main");
    let f = p
        .mknod(b, 1, b"f", libc::S_IFREG | 0o644, 0, Owner::default())
        .expect("mknod");
    p.write_file(b, f.ino, 0, &[5u8; 100_000]).expect("write");
    drop(p);
    let out = Command::new(env!("CARGO_BIN_EXE_cowfs"))
        .arg("fsck")
        .arg(&pool)
        .output()
        .expect("cowfs fsck");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `cowfs init` where an earlier pool's side files are left (its pool file was
/// deleted): refused before anything is written, since its tokens would be
/// accepted by the new pool; with them moved away, init works.
#[test]
fn init_refuses_the_side_files_of_an_earlier_pool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let init = || init_64m(&pool);
    assert!(init().status.success());
    std::fs::remove_file(&pool).expect("rm pool");
    let out = init();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second init succeeded");
    assert!(
        err.contains("files of an earlier pool are in the way"),
        "{err}"
    );
    assert!(err.contains("pool.tokens"), "{err}");
    assert!(!pool.exists(), "the refused init created a pool file");
    for suffix in ["token", "tokens"] {
        std::fs::remove_file(dir.path().join(format!("pool.{suffix}"))).expect("rm");
    }
    assert!(init().status.success());
}

/// `cowfs init` on a live pool: refused because the pool is there, not because
/// of its side files, which the message must not advise removing (they are the
/// live pool's tokens and sanitize records).
#[test]
fn init_on_a_pool_refuses_the_pool_not_its_side_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pool = dir.path().join("pool");
    let init = || init_64m(&pool);
    assert!(init().status.success());
    let out = init();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "second init succeeded");
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert!(!err.contains("earlier pool"), "{err}");
}

/// `cowfs init` through a symlink to the pool file writes the admin token beside
/// the file itself, where `cowfs serve` (which resolves the name) looks for it.
/// (Before: beside the symlink; the daemon then found no token store and made a
/// new admin token, and the secret init printed did not work.)
#[test]
fn init_through_a_symlink_writes_the_tokens_where_the_daemon_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(real.join("pool"), &link).expect("symlink");
    let out = init_64m(&link);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        real.join("pool.tokens").exists(),
        "no token store beside the pool file"
    );
    assert!(
        !dir.path().join("link.tokens").exists(),
        "token store beside the symlink"
    );
    // The pool file deleted, the link dangles: init through it still finds the
    // earlier pool's side files and refuses before writing anything.
    std::fs::remove_file(real.join("pool")).expect("rm pool");
    let out = init_64m(&link);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("files of an earlier pool are in the way"),
        "{err}"
    );
    assert!(
        !real.join("pool").exists(),
        "the refused init created a pool file"
    );
}

/// `cowfs init --size 64M POOL`.
fn init_64m(pool: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_cowfs"))
        .args(["init", "--size", "64M"])
        .arg(pool)
        .output()
        .expect("cowfs init")
}
