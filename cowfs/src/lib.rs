//! cowfs: a copy-on-write filesystem engine. A pool holds branches; each branch is a
//! full directory tree in a copy-on-write B+tree with reference-counted blocks, so a
//! branch or snapshot is a constant-time copy of a root pointer.

pub mod btree;
pub mod control;
pub mod fs;
pub mod fuse;
pub mod pool;
pub mod store;
