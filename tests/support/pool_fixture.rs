//! The fixtures most engine tests start from: a pool's options and a new
//! empty regular file in the root directory of a branch, through the library.

#![allow(dead_code)] // each test file uses the part it needs

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{BranchId, Pool, PoolOptions};

/// A pool of `capacity` bytes whose root belongs to root.
pub fn opts(capacity: u64) -> PoolOptions {
    PoolOptions {
        capacity_bytes: Some(capacity),
        root_uid: 0,
        root_gid: 0,
        ..Default::default()
    }
}

/// A new empty regular file `name` (mode 0644) in the root of branch `b`.
pub fn file(p: &Pool, b: BranchId, name: &[u8]) -> u64 {
    p.mknod(
        b,
        ROOT_INO,
        name,
        libc::S_IFREG | 0o644,
        0,
        Owner::default(),
    )
    .expect("mknod")
    .ino
}
