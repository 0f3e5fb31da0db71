//! The FUSE adapter: kernel requests become pool calls on one branch. Nothing but
//! the translation lives here; the engine holds every semantic.
//!
//! - `filesystem`: the fuser `Filesystem` for one mounted branch
//! - `create`: owner and mode of new inodes (setgid directories, ACLs, umask)
//! - `kernel`: the mount, its options and the capabilities negotiated with the kernel
//! - `acl`: POSIX ACL inheritance and mode/ACL consistency
//! - `attr`: attribute, time and error conversions
//! - `handles`: open file handles (unlinked-but-open files)
//! - `privileges`: set-id bits and file capabilities dropped on write, truncate, chown;
//!   trusted.* names listed only to privileged callers
//! - `mounts`: the daemon's mount table (mount, unmount, sync a branch)
//! - `write_back`: waiting until a mount's dirty pages reached the daemon
//!
//! Durability: fsync, fdatasync and fsync on a directory answer only once what they
//! cover is durable: a pool commit, or for a file whose changes are all data writes
//! an intent log record and its flush (format-spec §8.1). syncfs(2) and sync(2)
//! push the kernel's dirty pages to the daemon as plain writes; no sync request
//! reaches it (fuser 0.18 has no FUSE_SYNCFS handler), so they become durable at
//! the daemon's next periodic commit (every 5 s) or through
//! `MountTable::sync_branch` (which also waits for those writes: `write_back`).
//!
//! Access times are not updated on read (mounts are `noatime`). Locks (fcntl,
//! flock) are kept by the kernel, which is exact between the processes of one
//! machine.

mod abort;
pub mod acl;
mod attr;
mod create;
mod filesystem;
mod handles;
mod kernel;
mod lookups;
pub mod mounts;
mod pinned;
mod privileges;
mod sys;
#[cfg(test)]
mod test_mounts;
mod unmount;
mod write_back;

pub use mounts::{Ended, MountError, MountInfo, MountTable};
pub(crate) use pinned::PinnedDir;
