//! The parts of the branch differential test (tests/branch_differential.rs)
//! that are its own; the random calls and tree comparison are tests/mount_diff/.

pub mod copy;
pub mod read_only;
