//! A new empty regular file in the root directory of a branch, through the
//! library: the fixture most engine tests start from.

use cowfs::fs::{Owner, ROOT_INO};
use cowfs::pool::{BranchId, Pool};

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
