//! Shared by the full-pool engine tests (engine_shrink_full, engine_rename_full,
//! engine_unlink_full): filling a pool with data and then with metadata until not
//! even one more file fits, checking it with fsck, and reading its free count.
#![allow(dead_code)] // each test file uses the part it needs

use cowfs::fs::{FsError, Owner, ROOT_INO};
use cowfs::pool::{FsckOptions, Pool};

/// fsck finds nothing wrong and no leaked block; `stage` names the moment.
pub fn clean(pool: &Pool, stage: &str) {
    let r = pool.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "{stage}: fsck:\n{r}");
    assert_eq!(r.leaked_blocks, 0, "{stage}");
}

/// A new empty regular file `name` in `parent`: its inode.
pub fn mk(pool: &Pool, b: u64, parent: u64, name: &str) -> u64 {
    let mode = libc::S_IFREG | 0o644;
    pool.mknod(b, parent, name.as_bytes(), mode, 0, Owner::default())
        .expect("mknod")
        .ino
}

/// Append `chunk` to `ino` until a write fails, which it must with `errno`
/// (ENOSPC, or EDQUOT at a quota): the size reached.
pub fn write_until_full(pool: &Pool, b: u64, ino: u64, chunk: &[u8], errno: i32) -> u64 {
    let mut off = 0;
    loop {
        match pool.write_file(b, ino, off, chunk) {
            Ok(n) => off += n as u64,
            Err(e) => {
                assert_eq!(e.errno(), errno, "data fill stopped at {off}: {e}");
                return off;
            }
        }
    }
}

/// Files with a 1900-byte xattr each until an operation fails, after each commit
/// again until not even one more fits. The names made; the last error.
pub fn fill_metadata(pool: &Pool, b: u64) -> (Vec<String>, FsError) {
    let mut made: Vec<String> = Vec::new();
    loop {
        let before = made.len();
        let err = loop {
            let name = format!("x{}", made.len());
            let mode = libc::S_IFREG | 0o644;
            let a = match pool.mknod(b, ROOT_INO, name.as_bytes(), mode, 0, Owner::default()) {
                Ok(a) => a,
                Err(e) => break e,
            };
            made.push(name);
            if let Err(e) = pool.setxattr(b, a.ino, b"user.x", &[7u8; 1900], 0) {
                break e;
            }
        };
        pool.commit().expect("commit on a full pool");
        if made.len() == before {
            return (made, err);
        }
    }
}

/// Free blocks once what the running transaction freed is allocatable.
pub fn free_after_commits(pool: &Pool) -> u64 {
    pool.commit().expect("commit");
    pool.commit().expect("commit");
    pool.statfs().bfree
}
