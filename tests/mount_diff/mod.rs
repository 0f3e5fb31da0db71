//! The parts of the mount differential test (tests/mount_differential.rs).

pub mod apply;
pub mod ops;
pub mod sys;
pub mod tree;
