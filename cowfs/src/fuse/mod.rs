//! The FUSE adapter: kernel requests become pool calls on one branch. Nothing but
//! the translation lives here; the engine holds every semantic.
//!
//! - `filesystem`: the fuser `Filesystem` for one mounted branch
//! - `kernel`: mount options and capabilities negotiated with the kernel
//! - `acl`: POSIX ACL inheritance and mode/ACL consistency
//! - `attr`: attribute, time and error conversions
//! - `handles`: open file handles (unlinked-but-open files)
//! - `mounts`: the daemon's mount table (mount, unmount, sync a branch)

mod acl;
mod attr;
mod filesystem;
mod handles;
mod kernel;
pub mod mounts;
mod sys;

pub use mounts::{MountError, MountInfo, MountTable};
