//! Fixtures of the tests of freeing in steps (engine_free_steps.rs: big
//! orphans; engine_drop_steps.rs: dropped trees): fsck, settling commits, filling a branch (holding the freeing thread:
//! free_pause.rs).

use cowfs::pool::quota::QuotaLimits;
use cowfs::pool::{BranchId, FsckOptions, Pool};

use super::pool_fixture::file;

/// fsck finds nothing wrong and no leaked block.
pub fn clean(p: &Pool) {
    let r = p.fsck(&FsckOptions::default()).expect("fsck");
    assert!(r.is_clean(), "fsck:\n{r}");
    assert_eq!(r.leaked_blocks, 0);
}

/// Commits until the blocks freed before are out of quarantine.
pub fn settle(p: &Pool) {
    for _ in 0..3 {
        p.commit().expect("commit");
    }
}

/// Fallocate file `ino` until not even a block fits (the pool or the
/// branch's quota is full).
pub fn fill(p: &Pool, b: BranchId, ino: u64) {
    let mut at = 0;
    let mut len = 64 << 20;
    while len >= 4096 {
        match p.fallocate(b, ino, at, len, false) {
            Ok(()) => at += len,
            Err(e) if matches!(e.errno(), libc::ENOSPC | libc::EDQUOT) => len /= 2,
            Err(e) => panic!("fallocate: {e}"),
        }
    }
}

/// A branch `name` of `main` with a quota of `quota` bytes, filled to it: a
/// file `big` of `big_bytes` (fallocated), a file `rest` filling the rest, and
/// an empty file `new` that a 1 MiB write no longer fits in (EDQUOT).
/// The branch and `new`.
pub fn branch_at_quota(p: &Pool, name: &str, quota: u64, big_bytes: u64) -> (BranchId, u64) {
    let b = p.branch_create(name, "main").expect("branch");
    let big = file(p, b, b"big");
    let rest = file(p, b, b"rest");
    let new = file(p, b, b"new");
    let limits = QuotaLimits {
        max_bytes: Some(quota),
        reserve_bytes: 0,
    };
    p.quota_set(name, limits).expect("quota");
    p.fallocate(b, big, 0, big_bytes, false).expect("fallocate");
    fill(p, b, rest);
    let err = p.write_file(b, new, 0, &[5u8; 1 << 20]).unwrap_err();
    assert_eq!(err.errno(), libc::EDQUOT, "at the quota: {err}");
    (b, new)
}
